package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/proctest"
)

// The etcd scenario: the HA mode (-store=etcd) beside the raw etcd Txn rate
// of the same run. A 3-member etcd cluster (tools/bin/etcd, real processes
// on loopback) carries backlogd as 1 and as 2 replicas of every service
// (each replica its own process, a gateway per replica, clients spread over
// the gateways); exchange, authenticated read, create and rotate run over
// REST at each write concurrency. raw Txn is a Get-guarded Put of one key
// per worker, the shape of our smallest durable write.

func init() {
	Scenarios = append(Scenarios, Scenario{
		Name:  "etcd",
		About: "HA mode: REST exchange, read, create, rotate with 1 and 2 replicas of every service on a 3-member etcd, next to the raw etcd Txn rate",
		Run:   runEtcd,
	})
}

// etcdRR spreads requests over the gateways of a replicated cluster.
type etcdRR struct {
	hosts []string
	next  atomic.Uint64
	base  http.RoundTripper
}

func (r *etcdRR) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	u := *req.URL
	u.Host = r.hosts[r.next.Add(1)%uint64(len(r.hosts))]
	req.URL, req.Host = &u, u.Host
	return r.base.RoundTrip(req)
}

func runEtcd(ctx context.Context, e *Env) error {
	root, err := proctest.RepoRoot()
	if err != nil {
		return err
	}
	bin, err := proctest.EtcdBinary(ctx, root)
	if err != nil {
		return err
	}
	ec, err := proctest.StartEtcdCluster(ctx, proctest.EtcdConfig{Binary: bin, Dir: e.Dir + "/etcd", Members: 3})
	if err != nil {
		return err
	}
	defer ec.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: ec.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()

	raw := map[int]Stats{}
	for _, c := range e.Cfg.WriteConcurrency {
		raw[c] = e.record(ctx, fmt.Sprintf("etcd.txn.c%d", c), "etcd", fmt.Sprintf("raw etcd Txn (Get-guarded Put) c=%d", c), "etcd", c, func(ctx context.Context, w, seq int) error {
			k := fmt.Sprintf("/bench-raw/%d", w)
			_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), ">", -1)).Then(clientv3.OpPut(k, "v")).Commit()
			return err
		})
	}
	for _, n := range []int{1, 2} {
		if err := e.etcdReplicas(ctx, ec, n, raw); err != nil {
			return fmt.Errorf("%d replicas: %w", n, err)
		}
	}
	return nil
}

// record runs one load without a server CPU window and adds it to the report.
func (e *Env) record(ctx context.Context, key, scenario, name, transport string, conc int, op Op) Stats {
	st := Run(ctx, Load{Concurrency: conc, Duration: e.Cfg.Duration, Warmup: e.Cfg.Warmup, Op: op})
	e.Report.add(Result{Key: key, Scenario: scenario, Name: name, Transport: transport, Stats: &st})
	e.Cfg.logf("  %-40s %s", name, st)
	return st
}

func (e *Env) etcdReplicas(ctx context.Context, ec *proctest.EtcdCluster, n int, raw map[int]Stats) error {
	c, err := proctest.NewCluster(proctest.Config{
		Binary: e.Bin, Dir: fmt.Sprintf("%s/ha-%d", e.Dir, n), Layout: proctest.Replicas(n), LogLevel: "warn",
		Flags: []string{"-store=etcd", "-etcd-endpoints=" + ec.EndpointsFlag(), fmt.Sprintf("-etcd-prefix=/bench-%d", n),
			"-vault-kek-file=" + e.Dir + "/vault.kek"},
		ReadyTimeout: 60 * time.Second, StopTimeout: 15 * time.Second,
	})
	if err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	defer c.Stop()
	op, err := c.ReadOperatorToken()
	if err != nil {
		return err
	}
	gws := c.Addrs(proctest.TargetGateway)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &etcdRR{hosts: gws, base: &http.Transport{MaxIdleConnsPerHost: 256, MaxIdleConns: 512}}}
	base := "http://" + gws[0]
	call := func(ctx context.Context, method, path, tok string, body any, out any) error {
		var rd *strings.Reader
		if body != nil {
			rd = strings.NewReader(string(jsonBody(body)))
		} else {
			rd = strings.NewReader("")
		}
		req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s %s: %d", method, path, resp.StatusCode)
		}
		if out != nil {
			return json.NewDecoder(resp.Body).Decode(out)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	var ws struct {
		Workspace struct{ ID string } `json:"workspace"`
		Token     string              `json:"token"`
	}
	if err := call(ctx, http.MethodPost, "/v1/workspaces", op, map[string]any{"name": "bench"}, &ws); err != nil {
		return err
	}
	wsPath := "/v1/workspaces/" + ws.Workspace.ID
	type created struct {
		Automation struct{ ID string } `json:"automation"`
		Secret     string              `json:"secret"`
	}
	var a created
	if err := call(ctx, http.MethodPost, wsPath+"/automations", ws.Token, map[string]any{"name": "exchanged", "scopes": []string{"automations:read"}}, &a); err != nil {
		return err
	}
	var tok struct {
		AccessToken string `json:"accessToken"`
	}
	if err := call(ctx, http.MethodPost, "/v1/auth/exchange", a.Secret, map[string]any{}, &tok); err != nil {
		return err
	}
	label := fmt.Sprintf("etcd, %d replica(s)", n)
	for _, conc := range e.Cfg.WriteConcurrency {
		key := func(what string) string { return fmt.Sprintf("etcd.r%d.%s.c%d", n, what, conc) }
		ratio := func(st Stats) string {
			if r := raw[conc]; r.Throughput > 0 {
				return fmt.Sprintf("%.2f× the raw etcd Txn rate at c=%d", st.Throughput/r.Throughput, conc)
			}
			return ""
		}
		for _, m := range []struct {
			what string
			op   Op
		}{
			{"exchange", func(ctx context.Context, _, _ int) error {
				return call(ctx, http.MethodPost, "/v1/auth/exchange", a.Secret, map[string]any{}, nil)
			}},
			{"read", func(ctx context.Context, _, _ int) error {
				return call(ctx, http.MethodGet, wsPath+"/automations/"+a.Automation.ID, tok.AccessToken, nil, nil)
			}},
			{"create", func(ctx context.Context, w, seq int) error {
				return call(ctx, http.MethodPost, wsPath+"/automations", ws.Token, map[string]any{"name": fmt.Sprintf("c%d-w%d-%d-%d", conc, w, seq, rand.Uint32())}, nil)
			}},
		} {
			st := e.record(ctx, key(m.what), "etcd", fmt.Sprintf("%s: REST %s c=%d", label, m.what, conc), "REST", conc, m.op)
			e.Report.Results[len(e.Report.Results)-1].Note = ratio(st)
		}
		// Rotations: each worker its own automation.
		ids := make([]string, conc)
		for w := range ids {
			var r created
			if err := call(ctx, http.MethodPost, wsPath+"/automations", ws.Token, map[string]any{"name": fmt.Sprintf("rot-c%d-%d", conc, w)}, &r); err != nil {
				return err
			}
			ids[w] = r.Automation.ID
		}
		st := e.record(ctx, key("rotate"), "etcd", fmt.Sprintf("%s: REST rotate c=%d", label, conc), "REST", conc, func(ctx context.Context, w, _ int) error {
			return call(ctx, http.MethodPost, wsPath+"/automations/"+ids[w]+"/rotate-secret", ws.Token, map[string]any{}, nil)
		})
		e.Report.Results[len(e.Report.Results)-1].Note = ratio(st)
	}
	return nil
}
