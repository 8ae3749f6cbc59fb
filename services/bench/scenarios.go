package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// Scenario is one named group of measurements. To add one, append it to
// Scenarios and, if it has a target, add the target to Targets in report.go.
type Scenario struct {
	Name  string
	About string
	// Rounds marks the scenarios whose figures are compared as ratios:
	// with Config.Rounds > 1 they run that many times, interleaved, and
	// each figure is the round with the median throughput, so that a slow
	// drift in the machine's other load touches both sides of a ratio.
	Rounds bool
	Run    func(ctx context.Context, e *Env) error
}

// Scenarios in run order.
var Scenarios = []Scenario{
	{Name: "baseline", About: "grpc.health.v1.Health/Check on the credential port: the empty-call ceiling", Rounds: true, Run: runBaseline},
	{Name: "exchange", About: "automation secret → access token, gRPC CredentialService/Exchange and REST POST /v1/auth/exchange", Rounds: true, Run: runExchange},
	{Name: "read", About: "authenticated read with an access token: gRPC AutomationService/GetAutomation and REST GET /v1/workspaces/{ws}/automations/{id}", Rounds: true, Run: runRead},
	{Name: "disk", About: "the durable-write floor on this disk, now: a kit store commit (bbolt, 2 fdatasyncs) with 1 and 64 writers, and two stores committing at once, no server", Run: runDisk},
	{Name: "create", About: "durable write: gRPC CreateAutomation (issues a secret at the credential service, then records the automation)", Run: runCreate},
	{Name: "rotate", About: "durable write: gRPC RotateAutomationSecret, each worker rotating its own automation", Run: runRotate},
	{Name: "rotate-history", About: "one client rotating an automation with a long rotation history vs a fresh one (no target: should be alike)", Run: runRotateHistory},
	{Name: "list", About: "gRPC ListAutomations first page (pageSize 50), one client, in a workspace of the small and of the large size", Run: runList},
	{Name: "memory", About: "RssAnon of backlogd with the large workspace loaded: 100k automations and (vault built) 100k webhook secrets", Run: runMemory},
	{Name: "startup", About: "process start → GET /readyz 200, on the data of the large workspace", Run: runStartup},
	{Name: "agent-read", About: "authenticated read with a visible agent's API key: gRPC AgentService/GetSelf and REST GET /v1/agents/self", Rounds: true, Run: runAgentRead},
	{Name: "http-request", About: "vault HTTP Request step (gRPC RunHttpRequest, one {secret:name} header) to a local HTTPS server vs the same request sent directly, at 1 and 16 clients", Run: runHTTPRequest},
}

// measure runs one load and adds it to the report under key.
func (e *Env) measure(ctx context.Context, key, scenario, name, transport string, conc int, op Op) Stats {
	return e.measureCPU(ctx, key, scenario, name, transport, conc, false, op)
}

// measurePid is measure with the CPU window on another server process (a
// peer's).
func (e *Env) measurePid(ctx context.Context, pid int, key, scenario, name, transport string, conc int, op Op) Stats {
	return e.measureOn(ctx, pid, key, scenario, name, transport, conc, false, op)
}

// measureCPU is measure; with total, it also reads the harness's own CPU
// time over the window and fills Stats.TotalCPU (backlogd + harness).
func (e *Env) measureCPU(ctx context.Context, key, scenario, name, transport string, conc int, total bool, op Op) Stats {
	return e.measureOn(ctx, e.Server.Pid(), key, scenario, name, transport, conc, total, op)
}

func (e *Env) measureOn(ctx context.Context, pid int, key, scenario, name, transport string, conc int, total bool, op Op) Stats {
	self := os.Getpid()
	var cpu0, cpu1, own0, own1 time.Duration
	var cpuErr error
	st := Run(ctx, Load{Concurrency: conc, Duration: e.Cfg.Duration, Warmup: e.Cfg.Warmup, Op: op, Window: func(start bool) {
		c, err := ProcessCPU(pid)
		o, err2 := ProcessCPU(self)
		if err = errors.Join(err, err2); err != nil {
			cpuErr = err
		}
		if start {
			cpu0, own0 = c, o
		} else {
			cpu1, own1 = c, o
		}
	}})
	// Only under real load: with few clients, a Go server's idle CPUs spin
	// looking for work between requests, which inflates CPU per request.
	if ok := st.Requests - st.Errors; cpuErr == nil && ok > 0 && conc >= 16 {
		st.ServerCPU = float64(cpu1-cpu0) / float64(time.Microsecond) / float64(ok)
		if total {
			st.TotalCPU = float64(cpu1-cpu0+own1-own0) / float64(time.Microsecond) / float64(ok)
		}
	}
	e.Report.add(Result{Key: key, Scenario: scenario, Name: name, Transport: transport, Stats: &st})
	e.Cfg.logf("  %-28s %s", name, st)
	return st
}

func runBaseline(ctx context.Context, e *Env) error {
	hc := healthpb.NewHealthClient(e.CredConn)
	req := &healthpb.HealthCheckRequest{}
	e.measure(ctx, "baseline.grpc", "baseline", "Health/Check (empty call)", "gRPC", e.Cfg.Concurrency, func(ctx context.Context, _, _ int) error {
		_, err := hc.Check(ctx, req)
		return err
	})
	return nil
}

func runExchange(ctx context.Context, e *Env) error {
	sctx := bearer(ctx, e.Secret)
	req := &credentialv1.ExchangeRequest{}
	e.measure(ctx, "exchange.grpc", "exchange", "Exchange", "gRPC", e.Cfg.Concurrency, func(context.Context, int, int) error {
		resp, err := e.Cred.Exchange(sctx, req)
		if err == nil && resp.GetAccessToken() == "" {
			err = errors.New("no access token")
		}
		return err
	})
	body := []byte("{}")
	e.measure(ctx, "exchange.rest", "exchange", "POST /v1/auth/exchange", "REST", e.Cfg.Concurrency, func(ctx context.Context, _, _ int) error {
		_, err := e.rest(e.newRequest(ctx, http.MethodPost, "/v1/auth/exchange", e.Secret, body), http.StatusOK, false)
		return err
	})
	return nil
}

func runRead(ctx context.Context, e *Env) error {
	actx := bearer(ctx, e.AccessToken)
	req := &automationv1.GetAutomationRequest{WorkspaceId: e.Workspace, AutomationId: e.AutomationID}
	e.measure(ctx, "read.grpc", "read", "GetAutomation", "gRPC", e.Cfg.Concurrency, func(context.Context, int, int) error {
		resp, err := e.Auto.GetAutomation(actx, req)
		if err == nil && resp.GetAutomation().GetId() != e.AutomationID {
			err = errors.New("wrong automation")
		}
		return err
	})
	path := "/v1/workspaces/" + e.Workspace + "/automations/" + e.AutomationID
	e.measure(ctx, "read.rest", "read", "GET …/automations/{id}", "REST", e.Cfg.Concurrency, func(ctx context.Context, _, _ int) error {
		_, err := e.rest(e.newRequest(ctx, http.MethodGet, path, e.AccessToken, nil), http.StatusOK, false)
		return err
	})
	return nil
}

func runCreate(ctx context.Context, e *Env) error {
	octx := bearer(ctx, e.OwnerToken)
	for _, c := range e.Cfg.WriteConcurrency {
		e.measure(ctx, fmt.Sprintf("create.c%d", c), "create", fmt.Sprintf("CreateAutomation c=%d", c), "gRPC", c, func(_ context.Context, w, seq int) error {
			_, err := e.Auto.CreateAutomation(octx, &automationv1.CreateAutomationRequest{
				WorkspaceId: e.Workspace, Name: fmt.Sprintf("create-c%d-w%d-%d", c, w, seq),
				Scopes: []string{"automations:read"},
			})
			return err
		})
	}
	return nil
}

// rotatePool is how many automations each rotate worker cycles through, so
// that no automation piles up a long rotation history within one load
// (secrets are rotated rarely; rotate-history measures what history costs).
func (e *Env) rotatePool() int {
	if e.Cfg.Scale == "tiny" {
		return 2
	}
	return 8
}

func runRotate(ctx context.Context, e *Env) error {
	octx := bearer(ctx, e.OwnerToken)
	k := e.rotatePool()
	for _, c := range e.Cfg.WriteConcurrency {
		ids, err := e.createAutomations(ctx, fmt.Sprintf("rotate-c%d", c), c*k)
		if err != nil {
			return err
		}
		e.measure(ctx, fmt.Sprintf("rotate.c%d", c), "rotate", fmt.Sprintf("RotateAutomationSecret c=%d", c), "gRPC", c, func(_ context.Context, w, seq int) error {
			resp, err := e.Auto.RotateAutomationSecret(octx, &automationv1.RotateAutomationSecretRequest{WorkspaceId: e.Workspace, AutomationId: ids[w*k+seq%k]})
			if err == nil && resp.GetSecret() == "" {
				err = errors.New("no secret")
			}
			return err
		})
	}
	return nil
}

// runRotateHistory rotates one automation that has been rotated many times
// before and one that is fresh, one client, in turns: the p50s should be
// alike. (They are not while the credential service's revokeLive reads
// every credential the subject ever had, live or revoked.)
func runRotateHistory(ctx context.Context, e *Env) error {
	octx := bearer(ctx, e.OwnerToken)
	past := 2000
	if e.Cfg.Scale == "tiny" {
		past = 50
	}
	ids, err := e.createAutomations(ctx, "rotate-history", 2)
	if err != nil {
		return err
	}
	rotate := func(id string) error {
		_, err := e.Auto.RotateAutomationSecret(octx, &automationv1.RotateAutomationSecretRequest{WorkspaceId: e.Workspace, AutomationId: id})
		return err
	}
	t0 := time.Now()
	for range past {
		if err := rotate(ids[0]); err != nil {
			return err
		}
	}
	e.Cfg.logf("  rotated one automation %d times in %.1f s", past, time.Since(t0).Seconds())
	n := 200
	if e.Cfg.Scale == "tiny" {
		n = 20
	}
	for _, x := range []struct {
		key, name, id string
	}{{"rotate.fresh", "rotate, fresh automation", ids[1]}, {"rotate.history", fmt.Sprintf("rotate, after %d rotations", past), ids[0]}} {
		var ds []time.Duration
		for range n {
			t := time.Now()
			if err := rotate(x.id); err != nil {
				return err
			}
			ds = append(ds, time.Since(t))
		}
		st := Samples(ds)
		e.Report.add(Result{Key: x.key, Scenario: "rotate-history", Name: x.name, Transport: "gRPC", Stats: &st})
		e.Cfg.logf("  %-28s p50 %.3f ms, p99 %.3f ms", x.name, st.P50, st.P99)
	}
	return nil
}

// createAutomations creates n automations named prefix-i in the main
// workspace, 16 at a time, and returns their ids in order.
func (e *Env) createAutomations(ctx context.Context, prefix string, n int) ([]string, error) {
	octx := bearer(ctx, e.OwnerToken)
	ids := make([]string, n)
	err := parallel(ctx, n, 16, func(i int) error {
		resp, err := e.Auto.CreateAutomation(octx, &automationv1.CreateAutomationRequest{
			WorkspaceId: e.Workspace, Name: fmt.Sprintf("%s-%d", prefix, i), Scopes: []string{"automations:read"},
		})
		if err == nil {
			ids[i] = resp.GetAutomation().GetId()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating automations: %w", err)
	}
	return ids, nil
}

func runList(ctx context.Context, e *Env) error {
	for _, size := range []struct {
		key string
		n   int
	}{{"list.small", e.Cfg.ListSmall}, {"list.large", e.Cfg.ListLarge}} {
		lw, err := e.listWorkspace(ctx, size.n)
		if err != nil {
			return err
		}
		octx := bearer(ctx, lw.owner)
		req := &automationv1.ListAutomationsRequest{WorkspaceId: lw.id, PageSize: 50}
		e.measure(ctx, size.key, "list", fmt.Sprintf("ListAutomations %s, page 50", countLabel(size.n)), "gRPC", 1, func(context.Context, int, int) error {
			resp, err := e.Auto.ListAutomations(octx, req)
			if err == nil && (len(resp.GetAutomations()) != 50 || resp.GetNextPageToken() == "") {
				err = fmt.Errorf("first page: %d automations, next page token %t", len(resp.GetAutomations()), resp.GetNextPageToken() != "")
			}
			return err
		})
	}
	return nil
}

func runMemory(ctx context.Context, e *Env) error {
	if _, err := e.listWorkspace(ctx, e.Cfg.ListLarge); err != nil {
		return err
	}
	note := "after " + countLabel(e.Cfg.ListLarge) + " automations (" + e.largeSeedNote + ")"
	if e.Report.SecretsSeeded == 0 {
		if err := seedSecretsAPI(ctx, e, e.Cfg.ListLarge); err != nil {
			return fmt.Errorf("seeding secrets: %w", err)
		}
		e.Report.SecretsSeeded = e.Cfg.ListLarge
	}
	note += "; " + e.secretSeedNote
	pid := e.Server.Pid()
	anon, err := ProcStatus(pid, "RssAnon")
	if err != nil {
		return err
	}
	file, _ := ProcStatus(pid, "RssFile")
	hwm, _ := ProcStatus(pid, "VmHWM")
	e.Report.add(Result{Key: "memory.rssanon", Scenario: "memory", Name: "RssAnon", Value: mb(anon), Unit: "MB", Note: note})
	e.Report.add(Result{Key: "memory.rssfile", Scenario: "memory", Name: "RssFile (bbolt mmap, binary)", Value: mb(file), Unit: "MB"})
	e.Report.add(Result{Key: "memory.hwm", Scenario: "memory", Name: "VmHWM (peak RSS)", Value: mb(hwm), Unit: "MB"})
	e.Cfg.logf("  RssAnon %.1f MB, RssFile %.1f MB, VmHWM %.1f MB", mb(anon), mb(file), mb(hwm))
	return nil
}

func runStartup(ctx context.Context, e *Env) error {
	if _, err := e.listWorkspace(ctx, e.Cfg.ListLarge); err != nil {
		return err
	}
	var ds []time.Duration
	for range e.Cfg.Restarts {
		d, err := e.Restart(ctx)
		if err != nil {
			return err
		}
		ds = append(ds, d)
	}
	st := Samples(ds)
	e.Report.add(Result{Key: "startup", Scenario: "startup", Name: "start → /readyz 200", Stats: &st,
		Note: fmt.Sprintf("%d restarts on %s automations", len(ds), countLabel(e.Cfg.ListLarge))})
	e.Cfg.logf("  start-up p50 %.1f ms, max %.1f ms (%d restarts)", st.P50, st.Max, len(ds))
	// The memory figure after a restart: what a fresh process on this data holds.
	if anon, err := ProcStatus(e.Server.Pid(), "RssAnon"); err == nil {
		e.Report.add(Result{Key: "memory.rssanon.fresh", Scenario: "startup", Name: "RssAnon after restart", Value: mb(anon), Unit: "MB"})
	}
	return nil
}

// mb is bytes in MB (10^6 bytes, as the target says).
func mb(b int64) float64 { return float64(b) / 1e6 }

// parallel calls fn(i) for i in [0,n) on conc goroutines; the first error
// stops it.
func parallel(ctx context.Context, n, conc int, fn func(i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for range conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}
