package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one line of the table: a load (Stats) or a single value.
type Result struct {
	Key       string  `json:"key"`
	Scenario  string  `json:"scenario"`
	Name      string  `json:"name"`
	Transport string  `json:"transport,omitempty"`
	Stats     *Stats  `json:"stats,omitempty"`
	Value     float64 `json:"value,omitempty"`
	Unit      string  `json:"unit,omitempty"`
	Note      string  `json:"note,omitempty"`
	// RoundThroughputs are every round's req/s when the load ran in rounds.
	RoundThroughputs []float64 `json:"roundThroughputs,omitempty"`
}

// Target is one bar from the issue, checked against this run.
type Target struct {
	Name     string  `json:"name"`
	Bar      string  `json:"bar"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	// CPURatio is, for a throughput ratio, the inverse ratio of server CPU
	// per request: what the throughput ratio would be if the server alone
	// were the bottleneck.
	CPURatio float64 `json:"cpuRatio,omitempty"`
	// Status is PASS, MISS, n/a (a scenario it needs did not run), or info
	// (a figure with no bar in the issue).
	Status string `json:"status"`
}

// Skip is a scenario that did not run, and why.
type Skip struct {
	Scenario string `json:"scenario"`
	Reason   string `json:"reason"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs       int    `json:"cpus"`
	Model      string `json:"model"`
	GoVersion  string `json:"goVersion"`
	LoadBefore string `json:"loadAvgBefore"`
	LoadAfter  string `json:"loadAvgAfter"`
}

// Report is everything a run measured.
type Report struct {
	Started  time.Time `json:"started"`
	Scale    string    `json:"scale"`
	Duration string    `json:"durationPerLoad"`
	Machine  Machine   `json:"machine"`
	Results  []Result  `json:"results"`
	Targets  []Target  `json:"targets"`
	Skipped  []Skip    `json:"skipped,omitempty"`
	// Failed lists scenarios that returned an error.
	Failed []Skip `json:"failed,omitempty"`
	// ServerLogLines counts backlogd's log lines (-log-level=warn), and
	// ServerErrorLines those at level error.
	ServerLogLines   int `json:"serverLogLines"`
	ServerErrorLines int `json:"serverErrorLines"`
	// SecretsSeeded is how many vault secrets the memory scenario loaded
	// into the large workspace (0: none, the vault was not built).
	SecretsSeeded int `json:"secretsSeeded,omitempty"`
}

func (r *Report) add(res Result) { r.Results = append(r.Results, res) }

// mergeRounds keeps, for every key measured more than once, the round with
// the median throughput (in the position of the first), and records every
// round's throughput in RoundThroughputs.
func (r *Report) mergeRounds() {
	byKey := map[string][]int{}
	for i, res := range r.Results {
		if res.Stats != nil {
			byKey[res.Key] = append(byKey[res.Key], i)
		}
	}
	drop := map[int]bool{}
	for _, idx := range byKey {
		if len(idx) < 2 {
			continue
		}
		sorted := slices.Clone(idx)
		slices.SortFunc(sorted, func(a, b int) int {
			return cmp.Compare(r.Results[a].Stats.Throughput, r.Results[b].Stats.Throughput)
		})
		med := r.Results[sorted[len(sorted)/2]]
		for _, i := range idx {
			med.RoundThroughputs = append(med.RoundThroughputs, math.Round(r.Results[i].Stats.Throughput))
			drop[i] = true
		}
		med.Note = fmt.Sprintf("median of %d interleaved rounds: %v req/s", len(idx), med.RoundThroughputs)
		r.Results[idx[0]] = med
		delete(drop, idx[0])
	}
	var out []Result
	for i, res := range r.Results {
		if !drop[i] {
			out = append(out, res)
		}
	}
	r.Results = out
}

// Get returns the result under key.
func (r *Report) Get(key string) (Result, bool) {
	for _, res := range r.Results {
		if res.Key == key {
			return res, true
		}
	}
	return Result{}, false
}

// Errors is the total number of failed requests over every load.
func (r *Report) Errors() int {
	n := 0
	for _, res := range r.Results {
		if res.Stats != nil {
			n += res.Stats.Errors
		}
	}
	return n
}

// Evaluate fills Targets from Results: the bars of the issue. Ratios are of
// figures measured in the same run, so a shared machine's noise mostly
// cancels; absolute bars (writes/s, ms, MB, s) do not enjoy that.
func (r *Report) Evaluate(cfg Config) {
	r.Targets = nil
	ratio := func(name, num, den string, bar float64) {
		t := Target{Name: name, Bar: fmt.Sprintf("≥ %.1f×", bar), Status: "n/a"}
		a, ok1 := r.Get(num)
		b, ok2 := r.Get(den)
		if ok1 && ok2 && a.Stats != nil && b.Stats != nil && b.Stats.Throughput > 0 {
			t.Value = a.Stats.Throughput / b.Stats.Throughput
			t.Measured = fmt.Sprintf("%.2f× (%.0f/s vs %.0f/s)", t.Value, a.Stats.Throughput, b.Stats.Throughput)
			if n := len(a.RoundThroughputs); n > 1 && n == len(b.RoundThroughputs) {
				// The two sides of a ratio ran next to each other in every
				// round: the median of the per-round ratios cancels more of
				// the machine's drifting load than a ratio of medians.
				var rs []float64
				var parts []string
				for i := range n {
					if b.RoundThroughputs[i] > 0 {
						rs = append(rs, a.RoundThroughputs[i]/b.RoundThroughputs[i])
						parts = append(parts, fmt.Sprintf("%.2f", rs[len(rs)-1]))
					}
				}
				if len(rs) > 0 {
					slices.Sort(rs)
					t.Value = rs[len(rs)/2]
					t.Measured = fmt.Sprintf("%.2f× (median of per-round ratios %s)", t.Value, strings.Join(parts, " "))
				}
			}
			if a.Stats.ServerCPU > 0 && b.Stats.ServerCPU > 0 {
				// On a CPU-bound server the throughput ratio tends to the
				// inverse ratio of CPU per request, which other load on
				// the machine disturbs much less.
				t.CPURatio = b.Stats.ServerCPU / a.Stats.ServerCPU
				t.Measured += fmt.Sprintf("; server CPU %.0f vs %.0f µs/req → %.2f×", a.Stats.ServerCPU, b.Stats.ServerCPU, t.CPURatio)
			}
			t.Status = passMiss(t.Value >= bar)
		}
		r.Targets = append(r.Targets, t)
	}
	ratio("exchange gRPC vs empty call", "exchange.grpc", "baseline.grpc", 0.5)
	ratio("authenticated read gRPC vs empty call", "read.grpc", "baseline.grpc", 0.5)
	ratio("exchange REST vs exchange gRPC", "exchange.rest", "exchange.grpc", 0.6)
	ratio("authenticated read REST vs read gRPC", "read.rest", "read.grpc", 0.6)
	// The agent key's read has no bar of its own in the issue: the
	// access-token read's bars, shown for information.
	info := func(name, num, den string, bar float64) {
		n := len(r.Targets)
		ratio(name, num, den, bar)
		if t := &r.Targets[n]; t.Status != "n/a" {
			t.Bar += " (read's)"
			t.Measured += " → " + t.Status
			t.Status = "info"
		}
	}
	info("agent-key read gRPC vs empty call", "agent-read.grpc", "baseline.grpc", 0.5)
	info("agent-key read REST vs agent-key read gRPC", "agent-read.rest", "agent-read.grpc", 0.6)
	info("agent-key read gRPC vs access-token read gRPC", "agent-read.grpc", "read.grpc", 1)

	maxC := 0
	for _, c := range cfg.WriteConcurrency {
		maxC = max(maxC, c)
	}
	stats := func(key string) *Stats {
		if res, ok := r.Get(key); ok {
			return res.Stats
		}
		return nil
	}
	base, disk := stats("baseline.grpc"), stats("disk.commit.c1")
	for _, op := range []string{"create", "rotate"} {
		// One commit's latency: a lone write's p50 over a bare store
		// commit's, both of this run on this disk.
		t := Target{Name: fmt.Sprintf("durable %s p50, lone client, vs a bare store commit", op), Bar: "≤ 2.0×", Status: "n/a"}
		if w := stats(op + ".c1"); w != nil && disk != nil && disk.P50 > 0 {
			t.Value = w.P50 / disk.P50
			t.Measured = fmt.Sprintf("%.1f× (%.2f ms vs %.2f ms)", t.Value, w.P50, disk.P50)
			if pair := stats("disk.pair.c1"); pair != nil && pair.P50 > 0 {
				// The floor of a write to two services' stores at once.
				t.Measured += fmt.Sprintf("; two stores at once %.2f ms (%.1f×)", pair.P50, pair.P50/disk.P50)
			}
			t.Status = passMiss(t.Value <= 2)
		}
		r.Targets = append(r.Targets, t)
		// CPU per durable write over an empty call's, under load.
		t = Target{Name: fmt.Sprintf("server CPU per durable %s at %d clients vs an empty call's", op, maxC), Bar: "≤ 4.0×", Status: "n/a"}
		if w := stats(fmt.Sprintf("%s.c%d", op, maxC)); w != nil && base != nil {
			if w.ServerCPU > 0 && base.ServerCPU > 0 {
				t.Value = w.ServerCPU / base.ServerCPU
				t.Measured = fmt.Sprintf("%.1f× (%.0f vs %.0f µs/req; %.0f %ss/s)", t.Value, w.ServerCPU, base.ServerCPU, w.Throughput, op)
				t.Status = passMiss(t.Value <= 4)
			} else {
				// CPU per request is read only at 16 clients or more.
				t.Measured = fmt.Sprintf("no CPU figure: the empty call ran at %d clients (-concurrency 16 or more gives one)", base.Concurrency)
				t.Status = "info"
			}
		}
		r.Targets = append(r.Targets, t)
	}
	t := Target{Name: fmt.Sprintf("durable creates at %d clients vs the empty-call rate", maxC), Bar: "≥ 0.35×", Status: "n/a"}
	if w := stats(fmt.Sprintf("create.c%d", maxC)); w != nil && base != nil && base.Throughput > 0 {
		t.Value = w.Throughput / base.Throughput
		t.Measured = fmt.Sprintf("%.2f× (%.0f/s vs %.0f/s)", t.Value, w.Throughput, base.Throughput)
		t.Status = passMiss(t.Value >= 0.35)
	}
	r.Targets = append(r.Targets, t)

	t = Target{Name: "rotate p50 with a long history vs fresh (no bar in the issue)", Bar: "≈ 1×", Status: "n/a"}
	if a, ok := r.Get("rotate.history"); ok && a.Stats != nil {
		if b, ok := r.Get("rotate.fresh"); ok && b.Stats != nil && b.Stats.P50 > 0 {
			t.Value = a.Stats.P50 / b.Stats.P50
			t.Measured = fmt.Sprintf("%.2f× (%.2f ms vs %.2f ms)", t.Value, a.Stats.P50, b.Stats.P50)
			t.Status = "info"
		}
	}
	r.Targets = append(r.Targets, t)

	t = Target{Name: fmt.Sprintf("list p50 at %s vs at %s", countLabel(cfg.ListLarge), countLabel(cfg.ListSmall)), Bar: "≤ 2.0×", Status: "n/a"}
	if a, ok := r.Get("list.large"); ok && a.Stats != nil {
		if b, ok := r.Get("list.small"); ok && b.Stats != nil && b.Stats.P50 > 0 {
			t.Value = a.Stats.P50 / b.Stats.P50
			t.Measured = fmt.Sprintf("%.2f× (%.3f ms vs %.3f ms)", t.Value, a.Stats.P50, b.Stats.P50)
			t.Status = passMiss(t.Value <= 2)
		}
	}
	r.Targets = append(r.Targets, t)

	t = Target{Name: fmt.Sprintf("RssAnon with %s automations", countLabel(cfg.ListLarge)), Bar: "≤ 150 MB", Status: "n/a"}
	if r.SecretsSeeded > 0 {
		t.Name += fmt.Sprintf(" + %s secrets", countLabel(r.SecretsSeeded))
	}
	if res, ok := r.Get("memory.rssanon"); ok {
		t.Value = res.Value
		t.Measured = fmt.Sprintf("%.1f MB", t.Value)
		t.Status = passMiss(t.Value <= 150)
	}
	r.Targets = append(r.Targets, t)

	t = Target{Name: "HTTP Request step adds ≤ 1 ms p50 over the direct request (1 client)", Bar: "≤ 1 ms", Status: "n/a"}
	if a, ok := r.Get("http-request.vault.c1"); ok && a.Stats != nil {
		if b, ok := r.Get("http-request.direct.c1"); ok && b.Stats != nil {
			t.Value = a.Stats.P50 - b.Stats.P50
			t.Measured = fmt.Sprintf("+%.3f ms (%.3f ms vs %.3f ms direct)", t.Value, a.Stats.P50, b.Stats.P50)
			if c, ok := r.Get("http-request.empty.c1"); ok && c.Stats != nil {
				t.Measured += fmt.Sprintf("; an empty gRPC call %.3f ms", c.Stats.P50)
			}
			if c, ok := r.Get("http-request.plain.c1"); ok && c.Stats != nil {
				t.Measured += fmt.Sprintf("; a step without a secret %.3f ms", c.Stats.P50)
			}
			if d, ok := r.Get("disk.commit.c1"); ok && d.Stats != nil {
				// The use is committed durably before the response
				// returns: a commit's latency is the step's floor.
				t.Measured += fmt.Sprintf("; a bare store commit %.3f ms", d.Stats.P50)
			}
			t.Status = passMiss(t.Value <= 1)
		}
	}
	r.Targets = append(r.Targets, t)
	c := cfg.Concurrency
	// At c clients: what a step costs in CPU, all in (backlogd, and the
	// harness's gRPC client and HTTPS target), over what sending the same
	// request directly costs (the harness's HTTPS client and target).
	t = Target{Name: fmt.Sprintf("HTTP Request step CPU vs the direct request's, %d clients", c), Bar: "≤ 1.5×", Status: "n/a"}
	if a, b := stats(fmt.Sprintf("http-request.vault.c%d", c)), stats(fmt.Sprintf("http-request.direct.c%d", c)); a != nil && b != nil {
		t.Measured = fmt.Sprintf("p50 %.3f ms vs %.3f ms direct; %.0f/s vs %.0f/s", a.P50, b.P50, a.Throughput, b.Throughput)
		if a.TotalCPU > 0 && b.TotalCPU > 0 {
			t.Value = a.TotalCPU / b.TotalCPU
			t.Measured = fmt.Sprintf("%.2f× (%.0f vs %.0f µs/req, backlogd + harness; backlogd alone %.0f µs/step); ", t.Value, a.TotalCPU, b.TotalCPU, a.ServerCPU) + t.Measured
			t.Status = passMiss(t.Value <= 1.5)
		} else {
			// Fewer than 16 clients: no CPU figures (see measure).
			t.Status = "info"
		}
	}
	r.Targets = append(r.Targets, t)

	r.Targets = append(r.Targets, r.peerTargets()...)

	t = Target{Name: "start-up to /readyz (median)", Bar: "≤ 1 s", Status: "n/a"}
	if res, ok := r.Get("startup"); ok && res.Stats != nil {
		t.Value = res.Stats.P50
		t.Measured = fmt.Sprintf("%.0f ms (max %.0f ms)", t.Value, res.Stats.Max)
		t.Status = passMiss(t.Value <= 1000)
	}
	r.Targets = append(r.Targets, t)
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// Misses are the targets this run missed.
func (r *Report) Misses() []Target {
	var out []Target
	for _, t := range r.Targets {
		if t.Status == "MISS" {
			out = append(out, t)
		}
	}
	return out
}

// WriteTable prints the results, the targets and the skipped scenarios.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "\nbacklogd benchmark, scale %s, %s per load, %d CPUs (%s), load average %s → %s\n\n",
		r.Scale, r.Duration, r.Machine.CPUs, r.Machine.Model, r.Machine.LoadBefore, r.Machine.LoadAfter)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintln(tw, "scenario\t measurement\t via\t clients\t req/s\t p50 ms\t p99 ms\t errors\t server CPU µs/req\t")
	for _, res := range r.Results {
		if res.Stats != nil {
			s := res.Stats
			cpu := ""
			if s.ServerCPU > 0 {
				cpu = fmt.Sprintf("%.0f", s.ServerCPU)
			}
			fmt.Fprintf(tw, "%s\t %s\t %s\t %d\t %s\t %.3f\t %.3f\t %d\t %s\t\n", res.Scenario, res.Name, res.Transport, s.Concurrency,
				rate(res, s), s.P50, s.P99, s.Errors, cpu)
		} else {
			fmt.Fprintf(tw, "%s\t %s\t \t \t %.1f %s\t \t \t \t \t\n", res.Scenario, res.Name, res.Value, res.Unit)
		}
	}
	tw.Flush()
	for _, res := range r.Results {
		if res.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", res.Name, res.Note)
		}
		if res.Stats != nil && len(res.Stats.FirstErrors) > 0 {
			fmt.Fprintf(w, "  %s errors: %s\n", res.Name, strings.Join(res.Stats.FirstErrors, " | "))
		}
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "target\t bar\t measured\t \t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t %s\t %s\t %s\t\n", t.Name, t.Bar, t.Measured, t.Status)
	}
	tw.Flush()
	for _, s := range r.Skipped {
		fmt.Fprintf(w, "skipped %s: %s\n", s.Scenario, s.Reason)
	}
	for _, s := range r.Failed {
		fmt.Fprintf(w, "FAILED %s: %s\n", s.Scenario, s.Reason)
	}
	if r.ServerLogLines > 0 {
		fmt.Fprintf(w, "backlogd logged %d lines at warn or above, %d at error (see its log with -keep)\n", r.ServerLogLines, r.ServerErrorLines)
	}
}

func rate(res Result, s *Stats) string {
	if s.Throughput == 0 { // one-off samples (start-up, rotate-history)
		return fmt.Sprintf("(%d runs)", s.Requests)
	}
	return fmt.Sprintf("%.0f", s.Throughput)
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
