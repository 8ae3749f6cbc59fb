package bench

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHarnessTinyScale runs every scenario once at tiny scale (about 200 ms
// per load, 100 and 1,000 automations) against a real backlogd, to keep the
// harness working. It asserts that figures were produced without errors,
// never how fast anything was: benchmarks are not timed assertions.
func TestHarnessTinyScale(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the benchmark harness (it builds and starts backlogd)")
	}
	cfg, err := DefaultConfig("tiny")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log = logWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := RunAll(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	rep.WriteTable(&sb)
	t.Log(sb.String())

	for _, f := range rep.Failed {
		t.Errorf("scenario %s failed: %s", f.Scenario, f.Reason)
	}
	for _, s := range rep.Skipped {
		// Without -hydra the peer scenario is skipped, and says how to run it.
		if s.Scenario == "peer" && cfg.Hydra == "" && strings.Contains(s.Reason, "-hydra") {
			continue
		}
		t.Errorf("scenario %s skipped: %s", s.Scenario, s.Reason)
	}
	want := []string{"baseline.grpc", "exchange.grpc", "exchange.rest", "read.grpc", "read.rest",
		"create.c1", "create.c16", "create.c64", "rotate.c1", "rotate.c16", "rotate.c64",
		"rotate.fresh", "rotate.history", "list.small", "list.large", "memory.rssanon", "startup", "disk.commit.c1", "disk.commit.c64"}
	for _, k := range want {
		res, ok := rep.Get(k)
		switch {
		case !ok:
			t.Errorf("no figure for %s", k)
		case res.Stats != nil && (res.Stats.Requests == 0 || res.Stats.P50 <= 0):
			t.Errorf("%s: no requests measured: %+v", k, res.Stats)
		case res.Stats != nil && res.Stats.Errors > 0:
			t.Errorf("%s: %d errors: %v", k, res.Stats.Errors, res.Stats.FirstErrors)
		case res.Stats == nil && res.Value <= 0:
			t.Errorf("%s: no value", k)
		}
	}
	// The scenarios of services that may not be built yet, when they ran.
	for sc, keys := range map[string][]string{
		"agent-read":   {"agent-read.grpc", "agent-read.rest"},
		"http-request": {"http-request.empty.c1", "http-request.plain.c1", "http-request.vault.c1", "http-request.direct.c1", "http-request.vault.c4", "http-request.direct.c4"},
	} {
		if slices.ContainsFunc(rep.Skipped, func(s Skip) bool { return s.Scenario == sc }) {
			continue
		}
		for _, k := range keys {
			res, ok := rep.Get(k)
			switch {
			case !ok || res.Stats == nil:
				t.Errorf("no figure for %s", k)
			case res.Stats.Requests == 0 || res.Stats.Errors > 0:
				t.Errorf("%s: %d requests, %d errors: %v", k, res.Stats.Requests, res.Stats.Errors, res.Stats.FirstErrors)
			}
		}
	}
	for _, tg := range rep.Targets {
		if tg.Status == "n/a" {
			t.Errorf("target %q was not evaluated", tg.Name)
		}
	}
}

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 100; i++ {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(lat, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
}

func TestRunCountsErrorsApart(t *testing.T) {
	st := Run(context.Background(), Load{Concurrency: 3, Duration: 50 * time.Millisecond, Op: func(_ context.Context, w, seq int) error {
		time.Sleep(time.Millisecond)
		if seq%2 == 1 {
			return errTest
		}
		return nil
	}})
	if st.Requests == 0 || st.Errors == 0 || st.Errors >= st.Requests || len(st.FirstErrors) != 1 {
		t.Fatalf("stats: %+v", st)
	}
	if st.P50 <= 0 || st.Throughput <= 0 {
		t.Fatalf("no latency figures: %+v", st)
	}
}

// TestRunRecordsPastASlowWarmup: a warm-up request that outlasts the whole
// window still leaves the load one recorded request, not none.
func TestRunRecordsPastASlowWarmup(t *testing.T) {
	st := Run(context.Background(), Load{Concurrency: 1, Warmup: 10 * time.Millisecond, Duration: 20 * time.Millisecond, Op: func(_ context.Context, w, seq int) error {
		if seq == 0 {
			time.Sleep(100 * time.Millisecond) // the first request: past warm-up and window
		}
		return nil
	}})
	if st.Requests != 1 || st.Throughput <= 0 {
		t.Fatalf("stats: %+v, want one recorded request", st)
	}
}

type testErr struct{}

func (testErr) Error() string { return "test error" }

var errTest error = testErr{}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
