package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Config is one harness run.
type Config struct {
	// Scale is "tiny" (make test: seconds, small N) or "full".
	Scale string
	// Duration of each measured load (after Warmup).
	Duration time.Duration
	Warmup   time.Duration
	// Concurrency of the throughput scenarios (baseline, exchange, read).
	Concurrency int
	// WriteConcurrency are the concurrencies of the durable-write scenarios.
	WriteConcurrency []int
	// ListSmall and ListLarge are the automation counts of the two list
	// workspaces (1,000 and 100,000 at full scale).
	ListSmall, ListLarge int
	// Restarts is how many start-up times are measured.
	Restarts int
	// Rounds is how many interleaved times the ratio scenarios (baseline,
	// exchange, read) run; each figure is the median round.
	Rounds int
	// Only runs these scenarios (empty: all).
	Only []string
	// Backlogd is a prebuilt binary (default: go build it into the temp dir).
	Backlogd string
	// TempDir is where the temp dir goes (default os.TempDir()).
	TempDir string
	// Keep leaves the temp dir (data dir, log) behind.
	Keep bool
	// Hydra is an Ory Hydra binary for the peer scenario (empty: the
	// scenario is skipped).
	Hydra string
	// Log receives progress lines (nil: silent).
	Log io.Writer
}

// DefaultConfig is the configuration of a scale.
func DefaultConfig(scale string) (Config, error) {
	switch scale {
	case "full":
		return Config{
			Scale: scale, Duration: 10 * time.Second, Warmup: time.Second, Concurrency: 16,
			WriteConcurrency: []int{1, 16, 64}, ListSmall: 1_000, ListLarge: 100_000, Restarts: 5, Rounds: 3,
		}, nil
	case "tiny":
		return Config{
			Scale: scale, Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, Concurrency: 4,
			WriteConcurrency: []int{1, 16, 64}, ListSmall: 100, ListLarge: 1_000, Restarts: 1, Rounds: 1,
		}, nil
	}
	return Config{}, fmt.Errorf("scale %q: want tiny or full", scale)
}

func (c Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

func (c Config) wants(scenario string) bool {
	if len(c.Only) == 0 {
		return true
	}
	for _, s := range c.Only {
		if strings.TrimSpace(s) == scenario {
			return true
		}
	}
	return false
}

// countLabel prints 1000 as 1k and 100000 as 100k.
func countLabel(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
