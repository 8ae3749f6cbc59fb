package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Op is one request of a scenario. worker is the worker's index (0 ≤ worker
// < concurrency) and seq counts that worker's calls, so that an op can pick
// per-worker state (its own automation to rotate, a unique name to create)
// without locking.
type Op func(ctx context.Context, worker, seq int) error

// Load describes one closed-loop run: Concurrency workers each call Op in a
// loop, the next call starting when the previous one returned, for Duration
// (after Warmup, whose calls are not recorded).
type Load struct {
	Concurrency int
	Duration    time.Duration
	Warmup      time.Duration
	Op          Op
	// Window, when set, is called when recording starts and again when the
	// last worker has stopped (to read the server's CPU time around exactly
	// the recorded requests).
	Window func(start bool)
}

// Stats are the figures of one run. Latencies are in milliseconds.
type Stats struct {
	Concurrency int     `json:"concurrency"`
	Requests    int     `json:"requests"`
	Errors      int     `json:"errors"`
	Seconds     float64 `json:"seconds"`
	Throughput  float64 `json:"throughput"` // successful requests per second
	// ServerCPU is the server process's CPU time (user + system) per
	// successful request in microseconds, over the recorded window: a figure
	// that other load on a shared machine disturbs far less than req/s.
	ServerCPU float64 `json:"serverCpuUsPerReq,omitempty"`
	// TotalCPU is, for the loads that ask for it (the HTTP Request step and
	// the direct request), the CPU time per successful request of backlogd
	// and of the harness process together (load generator, gRPC client,
	// HTTPS target): the whole cost of a request wherever it is spent.
	TotalCPU float64 `json:"totalCpuUsPerReq,omitempty"`
	P50      float64 `json:"p50Ms"`
	P90      float64 `json:"p90Ms"`
	P99      float64 `json:"p99Ms"`
	Max      float64 `json:"maxMs"`
	Mean     float64 `json:"meanMs"`
	// FirstErrors holds up to three distinct error messages.
	FirstErrors []string `json:"firstErrors,omitempty"`
}

// overtime bounds how long past its window a worker that recorded nothing
// goes on (see Run).
const overtime = 5 * time.Second

// Run runs l and returns its figures. A cancelled ctx stops it early.
//
// This is a closed-loop load generator (like ghz or wrk with a fixed number
// of connections): throughput is what the server sustains at that many
// requests in flight, and every latency is a complete request. Each worker
// records into its own slice; the slices are merged and sorted at the end,
// so the percentiles are exact.
func Run(ctx context.Context, l Load) Stats {
	if l.Concurrency < 1 {
		l.Concurrency = 1
	}
	type workerOut struct {
		lat    []time.Duration
		errs   int
		errMsg []string
	}
	outs := make([]workerOut, l.Concurrency)
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		recordAt time.Time // set before start is closed
		stopAt   time.Time
	)
	for w := range l.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out := &outs[w]
			out.lat = make([]time.Duration, 0, 1024)
			for seq := 0; ; seq++ {
				if ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				// A worker whose warm-up request outlasted the window (a
				// first TLS handshake on a loaded machine) records one
				// request past it, within reason: a load never reports
				// nothing for want of time.
				if !t0.Before(stopAt) && (len(out.lat) > 0 || out.errs > 0 || !t0.Before(stopAt.Add(overtime))) {
					return
				}
				err := l.Op(ctx, w, seq)
				d := time.Since(t0)
				if t0.Before(recordAt) {
					continue // warm-up
				}
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					out.errs++
					if len(out.errMsg) < 3 {
						out.errMsg = append(out.errMsg, err.Error())
					}
					continue
				}
				out.lat = append(out.lat, d)
			}
		}()
	}
	now := time.Now()
	recordAt = now.Add(l.Warmup)
	stopAt = recordAt.Add(l.Duration)
	close(start)
	if l.Window != nil {
		select {
		case <-time.After(time.Until(recordAt)):
		case <-ctx.Done():
		}
		l.Window(true)
	}
	wg.Wait()
	if l.Window != nil {
		l.Window(false)
	}
	elapsed := time.Since(recordAt)
	if end := time.Since(now) - l.Warmup; end < elapsed {
		elapsed = end
	}

	var all []time.Duration
	s := Stats{Concurrency: l.Concurrency}
	for _, o := range outs {
		all = append(all, o.lat...)
		s.Errors += o.errs
		for _, m := range o.errMsg {
			if len(s.FirstErrors) < 3 && !slices.Contains(s.FirstErrors, m) {
				s.FirstErrors = append(s.FirstErrors, m)
			}
		}
	}
	s.Requests = len(all) + s.Errors
	s.Seconds = elapsed.Seconds()
	if s.Seconds > 0 {
		s.Throughput = float64(len(all)) / s.Seconds
	}
	summarize(&s, all)
	return s
}

// summarize fills the latency figures of s from lat (which it sorts).
func summarize(s *Stats, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	s.P50 = ms(percentile(lat, 50))
	s.P90 = ms(percentile(lat, 90))
	s.P99 = ms(percentile(lat, 99))
	s.Max = ms(lat[len(lat)-1])
	s.Mean = ms(sum / time.Duration(len(lat)))
}

// percentile is the nearest-rank percentile of sorted lat.
func percentile(lat []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(lat))))
	rank = max(1, min(rank, len(lat)))
	return lat[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Samples summarises a handful of one-off measurements (start-up times).
func Samples(ds []time.Duration) Stats {
	s := Stats{Concurrency: 1, Requests: len(ds)}
	var total time.Duration
	for _, d := range ds {
		total += d
	}
	s.Seconds = total.Seconds()
	summarize(&s, slices.Clone(ds))
	return s
}

func (s Stats) String() string {
	return fmt.Sprintf("%d req, %d err, %.0f/s, p50 %.3f ms, p99 %.3f ms", s.Requests, s.Errors, s.Throughput, s.P50, s.P99)
}
