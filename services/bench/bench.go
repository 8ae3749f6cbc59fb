// Package bench is the benchmark harness behind `make bench`: it builds
// backlogd, starts it as a real process on free loopback ports with a temp
// data dir, seeds data through the API (operator token → workspace → owner
// token → automations → exchange), and measures each scenario as throughput
// and p50/p99 latency at a stated concurrency, with the load generator in
// the same run. The targets are ratios of figures from the same run
// where possible, so that the noise of a shared machine mostly cancels.
//
// Benchmarks are never timed assertions: the package's test runs every
// scenario once at tiny scale and checks only that it produced figures
// without errors.
package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// RunAll sets up backlogd, runs every wanted scenario and evaluates the
// targets. The report is returned even when a scenario failed (listed in
// Failed); err is only for a harness that could not start at all.
func RunAll(ctx context.Context, cfg Config) (*Report, error) {
	for _, o := range cfg.Only {
		if !slices.ContainsFunc(Scenarios, func(s Scenario) bool { return s.Name == strings.TrimSpace(o) }) {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", o, strings.Join(ScenarioNames(), ", "))
		}
	}
	rep := &Report{Started: time.Now().UTC(), Scale: cfg.Scale, Duration: cfg.Duration.String(), Machine: machine()}
	e, err := Setup(ctx, cfg)
	if e != nil {
		defer e.Close()
	}
	if err != nil {
		return nil, err
	}
	e.Report = rep
	// The ratio scenarios first, in interleaved rounds; then the rest once.
	var order []Scenario
	for range max(1, cfg.Rounds) {
		for _, sc := range Scenarios {
			if sc.Rounds {
				order = append(order, sc)
			}
		}
	}
	for _, sc := range Scenarios {
		if !sc.Rounds {
			order = append(order, sc)
		}
	}
	skipped := map[string]bool{}
	for _, sc := range order {
		if !cfg.wants(sc.Name) || skipped[sc.Name] {
			continue
		}
		cfg.logf("%s: %s", sc.Name, sc.About)
		if err := sc.Run(ctx, e); err != nil {
			skipped[sc.Name] = true
			var se *SkipError
			if errors.As(err, &se) {
				rep.Skipped = append(rep.Skipped, Skip{Scenario: sc.Name, Reason: se.Reason})
				cfg.logf("  skipped: %s", se.Reason)
				continue
			}
			rep.Failed = append(rep.Failed, Skip{Scenario: sc.Name, Reason: err.Error()})
			cfg.logf("  %s: %v", sc.Name, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	rep.mergeRounds()
	rep.Machine.LoadAfter = loadAvg()
	rep.ServerLogLines, rep.ServerErrorLines = logLines(e.Server.LogPath)
	rep.Evaluate(cfg)
	return rep, nil
}

// ScenarioNames lists the scenarios in run order.
func ScenarioNames() []string {
	var out []string
	for _, s := range Scenarios {
		out = append(out, s.Name)
	}
	return out
}
