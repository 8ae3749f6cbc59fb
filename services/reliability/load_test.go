package reliability

// Load: a sustained mixed workload (exchanges, verifications, creates,
// rotations; secret uses and agent calls once those services are built)
// against -target=all for a fixed time. Every request must succeed; the
// figures are throughput and latency percentiles per operation.
//
// `make soak` runs it for BACKLOG_SOAK_DURATION (default 2m) with 16
// clients; `make test` runs a 2-second smoke with 4 clients so that the
// harness stays honest.

import (
	"context"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

type loadStats struct {
	mu     sync.Mutex
	lat    map[string][]time.Duration
	errors map[string]int
	sample map[string]string // first error of each operation (redacted)
}

func (s *loadStats) record(op string, d time.Duration, err string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != "" {
		s.errors[op]++
		if _, ok := s.sample[op]; !ok {
			s.sample[op] = redact(err)
		}
		return
	}
	s.lat[op] = append(s.lat[op], d)
}

func TestSoakLoad(t *testing.T) {
	duration, workers := 2*time.Second, 4
	if soak() {
		duration, workers = 2*time.Minute, 16
		if v := os.Getenv("BACKLOG_SOAK_DURATION"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("BACKLOG_SOAK_DURATION: %v", err)
			}
			duration = d
		}
	}
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	defer target.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: target.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	// info level: the load measures the services, not debug logging.
	c := startCluster(t, layoutAll, "-log-level=info", "-vault-egress-allow-private=true", "-vault-egress-ca-file="+caFile)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "load")
	inst := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/installations", ws.OwnerToken, map[string]any{"name": "load"}).str("installation.id")
	agentKey := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/installations/"+inst+"/agents", ws.OwnerToken,
		map[string]any{"name": "load agent", "role": "member"}).str("apiKey")
	rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/secrets", ws.OwnerToken,
		map[string]any{"name": "load-key", "kind": "webhook", "value": randomValue("load-")})

	stats := &loadStats{lat: map[string][]time.Duration{}, errors: map[string]int{}, sample: map[string]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range workers {
		id, secret := rc.createAutomation(t, ws.ID, ws.OwnerToken, fmt.Sprintf("load-%d", w), "automations:read")
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			token := ""
			n := 0
			op := func(name, method, path, tok string, body any) (*reply, bool) {
				start := time.Now()
				r, err := rc.do(ctx, method, path, tok, body)
				if ctx.Err() != nil {
					return nil, false // the run ended mid-request: not counted
				}
				switch {
				case err != nil:
					stats.record(name, 0, err.Error())
					return nil, false
				case r.Status != http.StatusOK:
					stats.record(name, 0, r.String())
					return nil, false
				}
				stats.record(name, time.Since(start), "")
				return r, true
			}
			for ctx.Err() == nil {
				p := rng.IntN(100)
				switch {
				case token == "" || p < 30:
					if r, ok := op("exchange", http.MethodPost, "/v1/auth/exchange", secret, map[string]any{}); ok {
						token = r.JSON().str("accessToken")
					}
				case p < 70:
					op("verify (GET automation with an access token)", http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations/"+id, token, nil)
				case p < 78:
					op("whoami", http.MethodGet, "/v1/auth/whoami", token, nil)
				case p < 86:
					n++
					op("create", http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken,
						map[string]any{"name": fmt.Sprintf("load-%d-%d", w, n), "scopes": []string{"automations:read"}})
				case p < 94:
					if r, ok := op("rotate", http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations/"+id+"/rotate-secret", ws.OwnerToken, map[string]any{}); ok {
						secret, token = r.JSON().str("secret"), "" // the old secret's tokens are dead
					}
				case p < 97:
					op("secret use (HTTP Request step)", http.MethodPost, "/v1/workspaces/"+ws.ID+"/http-requests", ws.OwnerToken,
						map[string]any{"method": "POST", "url": target.URL + "/hook", "headers": map[string]string{"X-Key": "{secret:load-key}"}})
				default:
					op("agent self", http.MethodGet, "/v1/agents/self", agentKey, nil)
				}
			}
		})
	}
	wg.Wait()
	c.stop(t)
	for _, p := range c.dbPaths(t) {
		if problems, _ := boltCheck(t, p); len(problems) > 0 {
			t.Errorf("after the load, bbolt check of %s: %v", p, problems)
		}
	}

	var ops []string
	total, errs := 0, 0
	for op := range stats.lat {
		ops = append(ops, op)
	}
	for op := range stats.errors {
		if _, ok := stats.lat[op]; !ok {
			ops = append(ops, op)
		}
	}
	sort.Strings(ops)
	var lines []string
	for _, op := range ops {
		l := stats.lat[op]
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		total += len(l)
		errs += stats.errors[op]
		lines = append(lines, fmt.Sprintf("  %-48s %7d ok %4d errors  p50 %8s  p99 %8s  max %8s", op, len(l), stats.errors[op],
			percentile(l, 50).Round(10*time.Microsecond), percentile(l, 99).Round(10*time.Microsecond), percentile(l, 100).Round(10*time.Microsecond)))
	}
	t.Logf("load: %d clients for %s against -target=all: %d requests, %.0f/s, %d errors\n%s",
		workers, duration, total, float64(total)/duration.Seconds(), errs, strings.Join(lines, "\n"))
	for op, n := range stats.errors {
		t.Errorf("%s: %d errors, e.g. %s", op, n, stats.sample[op])
	}
	if total == 0 {
		t.Fatal("no request succeeded")
	}
}
