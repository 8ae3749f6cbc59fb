package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/proctest"
)

// Env is a running backlogd with its clients and the data seeded for the
// scenarios: a workspace, its owner's token, an automation with its secret
// and an access token exchanged from it.
type Env struct {
	Cfg Config
	// Cluster is backlogd in the all layout; Server is its one process.
	Cluster *proctest.Cluster
	Server  *proctest.Proc
	Dir     string // temp dir: binary, data dir, log
	Bin     string // the backlogd binary

	CredConn, AutoConn, AgentConn, VaultConn *grpc.ClientConn
	Cred                                     credentialv1.CredentialServiceClient
	Auto                                     automationv1.AutomationServiceClient
	HTTP                                     *http.Client
	BaseURL                                  string

	OperatorToken string
	Workspace     string // the main workspace
	OwnerToken    string // its owner's personal access token
	AutomationID  string // an automation with scopes automations:read
	Secret        string // its automation secret (for exchange)
	AccessToken   string // exchanged from Secret (for authenticated reads)

	Report *Report

	listWS        map[int]listWS // automation count → seeded workspace
	largeSeedNote string         // how the large workspace was seeded

	// Target is the local HTTPS server HTTP Request steps are sent to (the
	// vault trusts its certificate through -vault-egress-ca-file).
	Target *egressTarget
	// agentKey is a visible agent's API key (agent-read), made on first use.
	agentKey string
	// secretSeedNote says how the memory scenario's secrets were seeded.
	secretSeedNote string
}

// bearer returns ctx carrying `authorization: Bearer tok`. Built once per
// scenario, so the per-call cost is the call's, not the harness's.
func bearer(ctx context.Context, tok string) context.Context {
	return metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", "Bearer "+tok))
}

func dialGRPC(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// Setup builds (or takes) backlogd, starts it on a fresh temp data dir and
// seeds the main workspace.
func Setup(ctx context.Context, cfg Config) (*Env, error) {
	dir, err := os.MkdirTemp(cfg.TempDir, "backlog-bench-")
	if err != nil {
		return nil, err
	}
	e := &Env{Cfg: cfg, Dir: dir, Report: &Report{}}
	bin := cfg.Backlogd
	if bin == "" {
		cfg.logf("building backlogd …")
		root, err := proctest.RepoRoot()
		if err != nil {
			return e, fmt.Errorf("%v; pass -backlogd", err)
		}
		// Exactly what `make build` builds, without -race.
		if bin, err = proctest.Build(ctx, root, dir); err != nil {
			return e, err
		}
	}
	e.Bin = bin
	// The vault's key-encryption key (as `make run` makes one), so that the
	// vault is unsealed; kept outside the data dir.
	kek := filepath.Join(dir, "vault.kek")
	if err := writeKEK(kek); err != nil {
		return e, err
	}
	// The http-request scenario's target: started before backlogd, which
	// reads the CA file at start-up.
	if e.Target, err = startEgressTarget(filepath.Join(dir, "egress-ca.pem")); err != nil {
		return e, err
	}
	e.Cluster, err = proctest.NewCluster(proctest.Config{
		Binary: bin, Dir: dir, Layout: proctest.All(), LogLevel: "warn",
		// The step scenarios run at the scenario's concurrency in one
		// workspace: lift the per-workspace step cap above it.
		Flags: []string{"-vault-kek-file=" + kek, "-vault-egress-allow-private", "-vault-egress-ca-file=" + e.Target.CAFile,
			"-vault-max-steps-per-workspace=1024"},
		ReadyTimeout: 30 * time.Second, StopTimeout: 15 * time.Second,
		// Polled often: the start-up figure is the first poll that finds
		// the process ready.
		PollInterval: 2 * time.Millisecond,
	})
	if err != nil {
		return e, err
	}
	e.Server = e.Cluster.Procs()[0]
	d, err := e.start(ctx)
	if err != nil {
		return e, err
	}
	cfg.logf("backlogd ready in %s (pid %d, data %s)", d.Round(time.Millisecond), e.Server.Pid(), e.Server.DataDir)
	if err := e.seed(ctx); err != nil {
		return e, fmt.Errorf("seeding: %w", err)
	}
	return e, nil
}

// start starts backlogd (on fresh ports if one was taken meanwhile) and
// connects the clients. It returns the time from process start to ready.
func (e *Env) start(ctx context.Context) (time.Duration, error) {
	if err := e.Cluster.Start(ctx); err != nil {
		var se *proctest.StartError
		if errors.As(err, &se) {
			return 0, fmt.Errorf("backlogd: %w\n%s", err, se.Tail(20))
		}
		return 0, err
	}
	return e.Server.ReadyIn(), e.connect()
}

// connect (re)creates the clients for the server's current addresses.
func (e *Env) connect() error {
	e.closeConns()
	var err error
	for _, c := range []struct {
		conn   **grpc.ClientConn
		target string
	}{{&e.CredConn, proctest.TargetCredential}, {&e.AutoConn, proctest.TargetAutomation}, {&e.AgentConn, proctest.TargetAgent}, {&e.VaultConn, proctest.TargetVault}} {
		if *c.conn, err = dialGRPC(e.Cluster.Addr(c.target)); err != nil {
			return err
		}
	}
	e.Cred = credentialv1.NewCredentialServiceClient(e.CredConn)
	e.Auto = automationv1.NewAutomationServiceClient(e.AutoConn)
	e.BaseURL = e.Cluster.URL("")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 1024
	tr.MaxIdleConnsPerHost = 1024
	tr.MaxConnsPerHost = 0
	e.HTTP = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return nil
}

func (e *Env) closeConns() {
	for _, c := range []*grpc.ClientConn{e.CredConn, e.AutoConn, e.AgentConn, e.VaultConn} {
		if c != nil {
			c.Close()
		}
	}
	if e.HTTP != nil {
		e.HTTP.CloseIdleConnections()
	}
}

// Close stops backlogd and removes the temp dir (unless -keep).
func (e *Env) Close() {
	e.closeConns()
	if e.Cluster != nil {
		if err := e.Cluster.Stop(); err != nil {
			e.Cfg.logf("stopping backlogd: %v", err)
		}
	}
	if e.Target != nil {
		e.Target.Close()
	}
	if e.Dir != "" && !e.Cfg.Keep {
		os.RemoveAll(e.Dir)
	} else if e.Dir != "" {
		e.Cfg.logf("kept %s", e.Dir)
	}
}

// Restart stops backlogd and starts it again on the same data dir and
// addresses, returning the time from process start to ready (GET /readyz
// 200 and every service's gRPC health SERVING).
func (e *Env) Restart(ctx context.Context) (time.Duration, error) {
	e.closeConns()
	if err := e.Cluster.Stop(); err != nil {
		return 0, err
	}
	return e.start(ctx)
}

// seed: operator token → workspace (+ owner token) → an automation → an
// access token exchanged from its secret.
func (e *Env) seed(ctx context.Context) error {
	var err error
	if e.OperatorToken, err = e.Cluster.ReadOperatorToken(); err != nil {
		return err
	}
	e.Workspace, e.OwnerToken, err = e.createWorkspace(ctx, "bench")
	if err != nil {
		return err
	}
	created, err := e.Auto.CreateAutomation(bearer(ctx, e.OwnerToken), &automationv1.CreateAutomationRequest{
		WorkspaceId: e.Workspace, Name: "bench-reader", Scopes: []string{"automations:read"},
	})
	if err != nil {
		return fmt.Errorf("create automation: %w", err)
	}
	e.AutomationID, e.Secret = created.GetAutomation().GetId(), created.GetSecret()
	ex, err := e.Cred.Exchange(bearer(ctx, e.Secret), &credentialv1.ExchangeRequest{})
	if err != nil {
		return fmt.Errorf("exchange: %w", err)
	}
	e.AccessToken = ex.GetAccessToken()
	return nil
}

// createWorkspace creates a workspace with the operator token and returns
// its id and its owner's token.
func (e *Env) createWorkspace(ctx context.Context, name string) (string, string, error) {
	resp, err := e.Cred.CreateWorkspace(bearer(ctx, e.OperatorToken), &credentialv1.CreateWorkspaceRequest{Name: name})
	if err != nil {
		return "", "", fmt.Errorf("create workspace: %w", err)
	}
	return resp.GetWorkspace().GetId(), resp.GetToken(), nil
}

// rest sends one REST request and fails unless it answers want; the body is
// read (and returned when out is true).
func (e *Env) rest(req *http.Request, want int, out bool) ([]byte, error) {
	resp, err := e.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body []byte
	if out || resp.StatusCode != want {
		body, err = io.ReadAll(resp.Body)
	} else {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		if len(body) > 300 {
			body = body[:300]
		}
		return nil, fmt.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(body))
	}
	return body, nil
}

// newRequest builds a REST request with a bearer and an optional JSON body.
func (e *Env) newRequest(ctx context.Context, method, path, tok string, body []byte) *http.Request {
	var r io.Reader = http.NoBody
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.BaseURL+path, r)
	if err != nil {
		panic(err) // only a malformed URL, which the harness builds itself
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
