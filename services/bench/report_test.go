package bench

import (
	"strings"
	"testing"
)

// TestEvaluateIssueBars: every bar of the issue is a ratio of two figures
// of the same run, PASS or MISS by the issue's threshold.
func TestEvaluateIssueBars(t *testing.T) {
	cfg, err := DefaultConfig("full")
	if err != nil {
		t.Fatal(err)
	}
	r := &Report{}
	add := func(key string, st Stats) { s := st; r.add(Result{Key: key, Stats: &s}) }
	add("baseline.grpc", Stats{Throughput: 10000, ServerCPU: 70, P50: 1})
	add("exchange.grpc", Stats{Throughput: 8000, ServerCPU: 100, P50: 1})
	add("exchange.rest", Stats{Throughput: 5000, ServerCPU: 200, P50: 1}) // 0.625×: PASS
	add("read.grpc", Stats{Throughput: 10000, ServerCPU: 75, P50: 1})
	add("read.rest", Stats{Throughput: 5000, ServerCPU: 200, P50: 1}) // 0.5×: MISS
	add("disk.commit.c1", Stats{P50: 1, Throughput: 700})
	add("create.c1", Stats{P50: 1.9, Throughput: 400})         // 1.9×: PASS
	add("rotate.c1", Stats{P50: 3, Throughput: 300})           // 3×: MISS
	add("create.c64", Stats{Throughput: 3600, ServerCPU: 280}) // 4×, 0.36×: PASS, PASS
	add("rotate.c64", Stats{Throughput: 1000, ServerCPU: 700}) // 10×: MISS
	add("http-request.vault.c1", Stats{P50: 1.1})              // +0.9 ms: PASS
	add("http-request.direct.c1", Stats{P50: 0.2})
	add("http-request.vault.c16", Stats{P50: 3, TotalCPU: 400, ServerCPU: 300}) // 2×: MISS
	add("http-request.direct.c16", Stats{P50: 1, TotalCPU: 200})
	r.Evaluate(cfg)
	want := map[string]string{
		"exchange REST vs exchange gRPC":                                       "PASS",
		"authenticated read REST vs read gRPC":                                 "MISS",
		"durable create p50, lone client, vs a bare store commit":              "PASS",
		"durable rotate p50, lone client, vs a bare store commit":              "MISS",
		"server CPU per durable create at 64 clients vs an empty call's":       "PASS",
		"server CPU per durable rotate at 64 clients vs an empty call's":       "MISS",
		"durable creates at 64 clients vs the empty-call rate":                 "PASS",
		"HTTP Request step adds ≤ 1 ms p50 over the direct request (1 client)": "PASS",
		"HTTP Request step CPU vs the direct request's, 16 clients":            "MISS",
	}
	seen := 0
	for _, tg := range r.Targets {
		w, ok := want[tg.Name]
		if !ok {
			continue
		}
		seen++
		if tg.Status != w {
			t.Errorf("%s: %s (%s), want %s", tg.Name, tg.Status, tg.Measured, w)
		}
		if strings.HasPrefix(tg.Bar, "≥ 5000") || tg.Bar == "≤ 2 ms" {
			t.Errorf("%s: an absolute bar %q", tg.Name, tg.Bar)
		}
	}
	if seen != len(want) {
		t.Fatalf("found %d of the %d bars: %+v", seen, len(want), r.Targets)
	}
}
