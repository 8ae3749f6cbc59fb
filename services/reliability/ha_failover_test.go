package reliability

// High availability on etcd, on real processes: 3 etcd members, 2 replicas
// of every service and 2 gateways (-store=etcd, replica address lists).
// Under create/rotate/exchange load spread over both gateways, a service
// replica is SIGKILLed, then the etcd leader, then both are restarted. The
// suite proves: no acknowledged create is lost; no request fails with a 5xx
// other than a retryable 503; the history of rotations and exchanges of
// every automation is linearizable (porcupine; unknown outcomes may or may
// not have applied), so a secret is refused by every replica once its
// rotation was acknowledged and each automation ends with exactly one live
// secret; a retried rotation with the same Idempotency-Key returns the same
// secret whichever replica it lands on; and a suspension acknowledged by one
// replica is honoured by every replica of every service on the next request.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/backlog/controlplane/services/kit/proctest"
)

type haConfig struct {
	automations int           // automations rotated and exchanged concurrently
	workers     int           // concurrent clients
	phase       time.Duration // load before each fault, and after the restarts
	cycles      int           // kill/restart cycles
}

func TestHAFailover(t *testing.T) {
	runHAFailover(t, haConfig{automations: 3, workers: 6, phase: 1500 * time.Millisecond, cycles: 1})
}

func TestSoakHAFailover(t *testing.T) {
	requireSoak(t)
	runHAFailover(t, haConfig{automations: 6, workers: 12, phase: 4 * time.Second, cycles: 5})
}

// haRoundRobin sends each request to the next gateway in turn.
type haRoundRobin struct {
	hosts []string
	next  atomic.Uint64
	base  http.RoundTripper
}

func (r *haRoundRobin) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	u := *req.URL
	u.Host = r.hosts[r.next.Add(1)%uint64(len(r.hosts))]
	req.URL, req.Host = &u, u.Host
	return r.base.RoundTrip(req)
}

// startHACluster starts 3 etcd members and backlogd as 2 replicas of every
// target on them.
func startHACluster(t *testing.T, extra ...string) (*cluster, *proctest.EtcdCluster, *restClient) {
	t.Helper()
	etcd := proctest.NewEtcdCluster(t, 3)
	c := startCluster(t, "replicas", append([]string{"-store=etcd", "-etcd-endpoints=" + etcd.EndpointsFlag(), "-etcd-prefix=/ha-test"}, extra...)...)
	gws := c.Addrs(proctest.TargetGateway)
	if len(gws) < 2 {
		t.Fatalf("want 2 gateways, have %v", gws)
	}
	rr := &haRoundRobin{hosts: gws, base: c.http.Transport}
	return c, etcd, &restClient{base: "http://" + gws[0], http: &http.Client{Timeout: 15 * time.Second, Transport: rr}}
}

// haInput and haOutput are one operation of the porcupine history.
type haInput struct {
	rotate bool
	secret string // the secret an exchange presents
	op     int    // unique per operation
}

type haOutput struct {
	unknown bool   // 503 or no answer: may or may not have applied
	ok      bool   // an exchange was accepted
	secret  string // a rotation's new secret
}

// haModel: the state is the automation's one live secret.
var haModel = porcupine.NondeterministicModel{
	Init: func() []any { return nil }, // set per partition by the first op
	Step: func(state, input, output any) []any {
		s, in, out := state.(string), input.(haInput), output.(haOutput)
		switch {
		case in.rotate && out.unknown:
			return []any{s, fmt.Sprintf("unseen secret of op %d", in.op)}
		case in.rotate:
			return []any{out.secret}
		case out.unknown:
			return []any{s}
		case out.ok == (in.secret == s):
			return []any{s}
		}
		return nil
	},
	Equal: func(a, b any) bool { return a == b },
	DescribeOperation: func(input, output any) string {
		in, out := input.(haInput), output.(haOutput)
		if in.rotate {
			return fmt.Sprintf("rotate → unknown=%v", out.unknown)
		}
		return fmt.Sprintf("exchange → ok=%v unknown=%v", out.ok, out.unknown)
	},
}

type haAutomation struct {
	id string

	mu      sync.Mutex
	secrets []string // every secret seen, oldest first
	ops     []porcupine.Operation
}

func (a *haAutomation) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.secrets)
}

func (a *haAutomation) record(op porcupine.Operation, secret string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ops = append(a.ops, op)
	if secret != "" {
		a.secrets = append(a.secrets, secret)
	}
}

// haStats counts statuses.
type haStats struct {
	mu       sync.Mutex
	codes    map[int]int
	bad      []string // answers no client should ever get
	created  []string // acknowledged creates
	idemKeys map[string]string
}

func (s *haStats) saw(r *reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[r.Status]++
	if r.Status >= 500 && r.Status != http.StatusServiceUnavailable {
		s.bad = append(s.bad, r.String())
	}
	if r.Status == http.StatusServiceUnavailable && r.Header.Get("Content-Type") == "" {
		s.bad = append(s.bad, "a 503 without a body type: "+r.String())
	}
}

func haKey() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func runHAFailover(t *testing.T, cfg haConfig) {
	c, etcd, rc := startHACluster(t)
	ws := c.rest().createWorkspace(t, c.OperatorToken, "ha")
	stats := &haStats{codes: map[int]int{}, idemKeys: map[string]string{}}
	start := time.Now()
	var opSeq atomic.Int64
	autos := make([]*haAutomation, cfg.automations)
	for i := range autos {
		id, secret := rc.createAutomation(t, ws.ID, ws.OwnerToken, fmt.Sprintf("ha-%d", i), "issues:read")
		autos[i] = &haAutomation{id: id, secrets: []string{secret}}
	}

	// retry sends a write until it gets an answer that is not 503 or a
	// transport error, with the same Idempotency-Key, over both gateways.
	retry := func(ctx context.Context, method, path string, body any, key string) (*reply, bool) {
		for attempt := 0; attempt < 60 && ctx.Err() == nil; attempt++ {
			r, err := rc.do(ctx, method, path, ws.OwnerToken, body, "Idempotency-Key", key)
			if err == nil {
				stats.saw(r)
				if r.Status != http.StatusServiceUnavailable {
					return r, true
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		return nil, false
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range cfg.workers {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				a := autos[(w+i)%len(autos)]
				op := int(opSeq.Add(1))
				switch {
				case w == 0 && i%3 == 0: // creates
					key := haKey()
					r, ok := retry(ctx, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", map[string]any{"name": "created-" + key}, key)
					if ok && r.Status == http.StatusOK {
						stats.mu.Lock()
						stats.created = append(stats.created, r.JSON().str("automation.id"))
						stats.mu.Unlock()
					} else if ok {
						t.Errorf("create: %s", r)
					}
				case i%2 == 0: // rotations
					key := haKey()
					call := time.Since(start).Nanoseconds()
					r, ok := retry(ctx, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations/"+a.id+"/rotate-secret", map[string]any{}, key)
					if ok && r.Status == http.StatusOK {
						secret := r.JSON().str("secret")
						a.record(porcupine.Operation{ClientId: w, Input: haInput{rotate: true, op: op}, Call: call,
							Output: haOutput{secret: secret}, Return: time.Since(start).Nanoseconds()}, secret)
						stats.mu.Lock()
						stats.idemKeys[a.id+"/"+key] = secret
						stats.mu.Unlock()
					} else {
						if ok {
							t.Errorf("rotate: %s", r)
						}
						a.record(porcupine.Operation{ClientId: w, Input: haInput{rotate: true, op: op}, Call: call,
							Output: haOutput{unknown: true}, Return: -1}, "")
					}
				default: // exchanges, with a recent secret (often a dead one)
					seen := a.seen()
					secret := seen[len(seen)-1-(i/2)%min(len(seen), 3)]
					call := time.Since(start).Nanoseconds()
					r, err := rc.do(ctx, http.MethodPost, "/v1/auth/exchange", secret, map[string]any{})
					out := haOutput{unknown: true}
					if err == nil {
						stats.saw(r)
						switch r.Status {
						case http.StatusOK:
							out = haOutput{ok: true}
						case http.StatusUnauthorized:
							out = haOutput{}
						case http.StatusServiceUnavailable:
						default:
							t.Errorf("exchange: %s", r)
						}
					} else if ctx.Err() != nil {
						continue
					}
					ret := time.Since(start).Nanoseconds()
					if out.unknown {
						ret = -1
					}
					a.record(porcupine.Operation{ClientId: w, Input: haInput{secret: secret, op: op}, Call: call, Output: out, Return: ret}, "")
				}
			}
		})
	}

	// The faults.
	victim := c.Proc("credential-1")
	for cycle := range cfg.cycles {
		time.Sleep(cfg.phase)
		t.Logf("cycle %d: SIGKILL %s", cycle, victim.Name)
		victim.Kill()
		time.Sleep(cfg.phase)
		leader, err := etcd.WaitLeader(context.Background())
		if err != nil {
			t.Fatalf("etcd leader: %v", err)
		}
		t.Logf("cycle %d: SIGKILL etcd member %d (the leader)", cycle, leader)
		etcd.Kill(leader)
		time.Sleep(cfg.phase)
		rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := etcd.Restart(rctx, leader); err != nil {
			t.Fatalf("restart etcd member %d: %v", leader, err)
		}
		if err := victim.Start(rctx); err != nil {
			t.Fatalf("restart %s: %v", victim.Name, err)
		}
		rcancel()
		t.Logf("cycle %d: both restarted", cycle)
	}
	time.Sleep(cfg.phase)
	cancel()
	wg.Wait()
	end := time.Since(start).Nanoseconds() + 1

	// 1. Nothing but retryable 503s went wrong.
	t.Logf("statuses: %v; %d creates acknowledged", stats.codes, len(stats.created))
	for _, b := range stats.bad {
		t.Errorf("unexpected answer: %s", b)
	}
	// 2. Every acknowledged create is there, through either gateway.
	for _, id := range stats.created {
		for _, gw := range c.Addrs(proctest.TargetGateway) {
			r, err := (&restClient{base: "http://" + gw, http: c.http}).do(context.Background(), http.MethodGet,
				"/v1/workspaces/"+ws.ID+"/automations/"+url.PathEscape(id), ws.OwnerToken, nil)
			if err != nil || r.Status != http.StatusOK {
				t.Errorf("acknowledged create %s lost: %v %v", id, r, err)
			}
		}
	}
	// 3. Every automation's history is linearizable, and after one more
	// rotation exactly one secret it ever had is live.
	for _, a := range autos {
		ops := slices.Clone(a.ops)
		for i := range ops {
			if ops[i].Return < 0 {
				ops[i].Return = end
			}
		}
		first := a.secrets[0]
		model := haModel
		model.Init = func() []any { return []any{first} }
		res := porcupine.CheckOperationsTimeout(model.ToModel(), ops, 60*time.Second)
		if res != porcupine.Ok {
			t.Errorf("automation %s: the history of %d rotations and exchanges is not linearizable (%s)", a.id, len(ops), res)
		}
		r, ok := retry(context.Background(), http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations/"+a.id+"/rotate-secret", map[string]any{}, haKey())
		if !ok || r.Status != http.StatusOK {
			t.Fatalf("final rotation: %v", r)
		}
		final := r.JSON().str("secret")
		live := 0
		for _, s := range append(a.seen(), final) {
			for _, gw := range c.Addrs(proctest.TargetGateway) {
				r, err := (&restClient{base: "http://" + gw, http: c.http}).do(context.Background(), http.MethodPost, "/v1/auth/exchange", s, map[string]any{})
				if err != nil {
					t.Fatal(err)
				}
				if r.Status == http.StatusOK {
					live++
					if s != final {
						t.Errorf("automation %s: a secret replaced by an acknowledged rotation still exchanges via %s", a.id, gw)
					}
				}
			}
		}
		if live != len(c.Addrs(proctest.TargetGateway)) {
			t.Errorf("automation %s: its latest secret exchanged %d times over %d gateways", a.id, live, len(c.Addrs(proctest.TargetGateway)))
		}
		t.Logf("automation %s: %d operations, linearizable: %s", a.id, len(ops), res)
	}
	// 4. A retried rotation returns the first result on every replica.
	n := 0
	for k, secret := range stats.idemKeys {
		if n == 4 {
			break
		}
		n++
		id, key, _ := cutLast(k, "/")
		for _, gw := range c.Addrs(proctest.TargetGateway) {
			r := (&restClient{base: "http://" + gw, http: c.http}).call(t, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations/"+id+"/rotate-secret", ws.OwnerToken, map[string]any{}, "Idempotency-Key", key)
			if r.Status != http.StatusOK || r.JSON().str("secret") != secret {
				t.Errorf("replaying rotation %s via %s: %s; want the first result", key, gw, r)
			}
		}
	}
	// 5. A suspension acknowledged by one replica holds on every replica:
	// clients on both gateways hammer with an access token.
	id, secret := rc.createAutomation(t, ws.ID, ws.OwnerToken, "ha-suspend", "automations:read")
	path := "/v1/workspaces/" + ws.ID + "/automations/" + id
	at := rc.exchange(t, secret)
	h := hammer(t, rc, revocationConfig{workers: 8, maxPerWorker: 2000, warm: 300 * time.Millisecond, after: 300 * time.Millisecond}, path, at, func() time.Time {
		r := rc.call(t, http.MethodPatch, path, ws.OwnerToken, map[string]any{"suspended": true})
		if r.Status != http.StatusOK {
			t.Fatalf("%s: want 200", r)
		}
		return r.Received
	})
	t.Logf("suspend over 2 gateways and 2 replicas of each service: %s", h)
	if n := h.afterCodes[http.StatusForbidden]; n != h.sentAfter {
		t.Errorf("suspend: %d of %d requests sent after the acknowledgement were refused with 403, want all (%v)", n, h.sentAfter, h.afterCodes)
	}

	// 6. etcd lost (no quorum): not ready and clear 503s; back without a
	// restart once etcd returns.
	etcd.Kill(1)
	etcd.Kill(2)
	haWaitReady(t, c, http.StatusServiceUnavailable)
	r := rc.call(t, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken, map[string]any{"name": "during-outage"})
	if r.Status != http.StatusServiceUnavailable {
		t.Errorf("a write while etcd has no quorum: %s, want 503", r)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer rcancel()
	for _, i := range []int{1, 2} {
		if err := etcd.Restart(rctx, i); err != nil {
			t.Fatalf("restart etcd member %d: %v", i, err)
		}
	}
	haWaitReady(t, c, http.StatusOK)
	if r := retryOnce(t, rc, ws.OwnerToken, ws.ID); r.Status != http.StatusOK {
		t.Errorf("a write after etcd returned: %s", r)
	}
}

// haWaitReady waits until every gateway's /readyz answers want.
func haWaitReady(t *testing.T, c *cluster, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, gw := range c.Addrs(proctest.TargetGateway) {
		for {
			r, err := (&restClient{base: "http://" + gw, http: c.http}).do(context.Background(), http.MethodGet, "/readyz", "", nil)
			if err == nil && r.Status == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway %s: /readyz never answered %d (last: %v %v)", gw, want, r, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// retryOnce creates an automation, retrying 503s for a few seconds (the
// services reconnect to etcd in the background).
func retryOnce(t *testing.T, rc *restClient, token, ws string) *reply {
	t.Helper()
	var r *reply
	for range 50 {
		r = rc.call(t, http.MethodPost, "/v1/workspaces/"+ws+"/automations", token, map[string]any{"name": "after-outage-" + haKey()})
		if r.Status != http.StatusServiceUnavailable {
			return r
		}
		time.Sleep(200 * time.Millisecond)
	}
	return r
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}
