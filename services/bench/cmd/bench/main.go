// Command bench runs the backlogd benchmark harness (`make bench`): it
// builds backlogd, starts it on loopback with a temp data dir, seeds data,
// measures every scenario, prints a table with the targets (PASS/MISS) and
// writes the figures as JSON.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/backlog/controlplane/services/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	scale := flag.String("scale", "full", "tiny (seconds, small N) or full (10 s per load, 1k and 100k automations)")
	duration := flag.Duration("duration", 0, "measured time of each load (default: 10s at full scale, 200ms at tiny)")
	warmup := flag.Duration("warmup", -1, "unrecorded warm-up before each load (default: 1s full, 50ms tiny)")
	conc := flag.Int("concurrency", 0, "clients of the throughput scenarios: baseline, exchange, read (default 16 full, 4 tiny)")
	rounds := flag.Int("rounds", 0, "interleaved rounds of the ratio scenarios (baseline, exchange, read); each figure is the median round (default 3 full, 1 tiny)")
	only := flag.String("only", "", "comma list of scenarios to run (default all): "+strings.Join(bench.ScenarioNames(), ","))
	out := flag.String("out", "", "write the report as JSON to this file")
	large := flag.Int("list-large", 0, "automations in the large list workspace (default 100000 full, 1000 tiny)")
	backlogd := flag.String("backlogd", "", "a prebuilt backlogd binary (default: go build it into the temp dir)")
	keep := flag.Bool("keep", false, "keep the temp dir (data dir and backlogd log)")
	hydra := flag.String("hydra", "", "an Ory Hydra binary: the peer scenario runs the same mint/create/rotate loads against it, interleaved with backlogd's (default: peer is skipped)")
	flag.Parse()

	cfg, err := bench.DefaultConfig(*scale)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if *duration > 0 {
		cfg.Duration = *duration
	}
	if *warmup >= 0 {
		cfg.Warmup = *warmup
	}
	if *conc > 0 {
		cfg.Concurrency = *conc
	}
	if *rounds > 0 {
		cfg.Rounds = *rounds
	}
	if *large > 0 {
		cfg.ListLarge = *large
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	cfg.Backlogd, cfg.Keep, cfg.Hydra, cfg.Log = *backlogd, *keep, *hydra, os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	t0 := time.Now()
	rep, err := bench.RunAll(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	rep.WriteTable(os.Stdout)
	fmt.Printf("\n(run took %s)\n", time.Since(t0).Round(time.Second))
	if *out != "" {
		if err := rep.WriteJSON(*out); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Printf("wrote %s\n", *out)
	}
	if len(rep.Failed) > 0 || rep.Errors() > 0 {
		return 1
	}
	return 0
}
