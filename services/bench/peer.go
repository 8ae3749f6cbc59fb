package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
)

// The peer scenario: Ory Hydra (the OAuth2 server a user would pick for
// machine tokens) next to backlogd, the same three loads over REST on both,
// interleaved round by round: mint a token (our exchange, Hydra's
// client_credentials grant), create a credential holder (our automation,
// Hydra's OAuth2 client) and rotate its secret. Hydra runs on a SQLite file
// with its client-secret hasher at one pbkdf2 iteration, so that the figures
// compare the request paths and the durable writes rather than the hashing.
// It runs only when a Hydra binary is given (-hydra); `make test` never
// builds or runs Hydra.

func init() {
	Scenarios = append(Scenarios, Scenario{
		Name:  "peer",
		About: "Ory Hydra (SQLite, pbkdf2 at 1 iteration) beside backlogd over REST, interleaved: mint, create, rotate at 1 client and at the ratio concurrency",
		Run:   runPeer,
	})
}

// SkipError marks a scenario that did not run for a reason that is not a
// failure (a peer binary that was not given); RunAll lists it as skipped.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return e.Reason }

// errNoHydra is the peer scenario's skip without -hydra.
var errNoHydra = &SkipError{Reason: "no Hydra binary given: pass -hydra /path/to/hydra (TOOLCHAIN.md says how Hydra v2.3.0 builds here)"}

// peerSkip says whether the peer scenario can run with cfg, and why not.
func peerSkip(cfg Config) error {
	if cfg.Hydra == "" {
		return errNoHydra
	}
	fi, err := os.Stat(cfg.Hydra)
	if err != nil {
		return fmt.Errorf("-hydra %s: %w", cfg.Hydra, err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("-hydra %s: not an executable file", cfg.Hydra)
	}
	return nil
}

// hydraEnv is the environment Hydra is configured through: a SQLite file in
// dir, the two ports, a system secret, one pbkdf2 iteration and quiet logs.
func hydraEnv(dir, publicAddr, adminAddr, systemSecret string) []string {
	_, pub, _ := net.SplitHostPort(publicAddr)
	_, adm, _ := net.SplitHostPort(adminAddr)
	return []string{
		"DSN=sqlite://" + filepath.Join(dir, "hydra.sqlite") + "?_fk=true&mode=rwc",
		"SERVE_PUBLIC_HOST=127.0.0.1", "SERVE_PUBLIC_PORT=" + pub,
		"SERVE_ADMIN_HOST=127.0.0.1", "SERVE_ADMIN_PORT=" + adm,
		"URLS_SELF_ISSUER=http://" + publicAddr + "/",
		"SECRETS_SYSTEM=" + systemSecret,
		"OAUTH2_HASHERS_ALGORITHM=pbkdf2", "OAUTH2_HASHERS_PBKDF2_ITERATIONS=1",
		"LOG_LEVEL=error", "SQA_OPT_OUT=true",
	}
}

// hydraClient is the part of Hydra's OAuth2 client JSON the harness reads.
type hydraClient struct {
	ID     string `json:"client_id"`
	Secret string `json:"client_secret"`
}

// parseHydraClient reads a created client (POST /admin/clients): its id
// and its secret, both required.
func parseHydraClient(b []byte) (hydraClient, error) {
	var c hydraClient
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("hydra client: %w", err)
	}
	if c.ID == "" || c.Secret == "" {
		return c, errors.New("hydra client: no client_id or client_secret in the response")
	}
	return c, nil
}

// parseHydraToken reads a token response (POST /oauth2/token) and returns
// the access token, required.
func parseHydraToken(b []byte) (string, error) {
	var t struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return "", fmt.Errorf("hydra token: %w", err)
	}
	if t.AccessToken == "" {
		return "", errors.New("hydra token: no access_token in the response")
	}
	return t.AccessToken, nil
}

// hydra is a running Hydra.
type hydra struct {
	cmd           *exec.Cmd
	public, admin string // base URLs
	http          *http.Client
	done          chan struct{}
	log           *os.File
}

func startHydra(ctx context.Context, bin, dir string) (*hydra, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	addrs, err := proctest.FreeAddrs(2)
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), hydraEnv(dir, addrs[0], addrs[1], randomHex(32))...)
	logf, err := os.Create(filepath.Join(dir, "hydra.log"))
	if err != nil {
		return nil, err
	}
	migrate := exec.CommandContext(ctx, bin, "migrate", "sql", "up", "-e", "--yes")
	migrate.Env, migrate.Stdout, migrate.Stderr = env, logf, logf
	if err := migrate.Run(); err != nil {
		// Before v2.3 the command had no "up".
		old := exec.CommandContext(ctx, bin, "migrate", "sql", "-e", "--yes")
		old.Env, old.Stdout, old.Stderr = env, logf, logf
		if err2 := old.Run(); err2 != nil {
			logf.Close()
			return nil, fmt.Errorf("hydra migrate: %v / %v (see %s)", err, err2, logf.Name())
		}
	}
	h := &hydra{public: "http://" + addrs[0], admin: "http://" + addrs[1], done: make(chan struct{}), log: logf,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}}}
	h.cmd = exec.Command(bin, "serve", "all", "--dev")
	h.cmd.Env, h.cmd.Stdout, h.cmd.Stderr = env, logf, logf
	if err := h.cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	go func() { h.cmd.Wait(); close(h.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := h.http.Get(h.admin + "/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return h, nil
			}
		}
		select {
		case <-h.done:
			return nil, fmt.Errorf("hydra exited before it was ready (see %s)", logf.Name())
		case <-ctx.Done():
			h.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			h.Close()
			return nil, fmt.Errorf("hydra not ready after 30 s (see %s)", logf.Name())
		}
	}
}

func (h *hydra) Pid() int { return h.cmd.Process.Pid }

func (h *hydra) Close() {
	h.cmd.Process.Signal(os.Interrupt)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
	h.log.Close()
}

// do sends one request and returns the body of a response with status want.
func (h *hydra) do(req *http.Request, want int) ([]byte, error) {
	resp, err := h.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return nil, fmt.Errorf("hydra %s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(b[:min(len(b), 300)]))
	}
	return b, nil
}

func (h *hydra) createClient(ctx context.Context, name string) (hydraClient, error) {
	body := jsonBody(map[string]any{"client_name": name, "grant_types": []string{"client_credentials"},
		"token_endpoint_auth_method": "client_secret_basic", "scope": "read"})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.admin+"/admin/clients", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	b, err := h.do(req, http.StatusCreated)
	if err != nil {
		return hydraClient{}, err
	}
	return parseHydraClient(b)
}

// rotate sets a new secret on the client (Hydra has no rotation call: a
// JSON Patch of client_secret is its equivalent).
func (h *hydra) rotate(ctx context.Context, id string) error {
	body := jsonBody([]map[string]any{{"op": "replace", "path": "/client_secret", "value": randomHex(24)}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPatch, h.admin+"/admin/clients/"+url.PathEscape(id), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	_, err := h.do(req, http.StatusOK)
	return err
}

func (h *hydra) mint(ctx context.Context, c hydraClient) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.public+"/oauth2/token",
		strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(c.ID), url.QueryEscape(c.Secret))
	b, err := h.do(req, http.StatusOK)
	if err != nil {
		return err
	}
	_, err = parseHydraToken(b)
	return err
}

func runPeer(ctx context.Context, e *Env) error {
	if err := peerSkip(e.Cfg); err != nil {
		return err
	}
	h, err := startHydra(ctx, e.Cfg.Hydra, filepath.Join(e.Dir, "hydra"))
	if err != nil {
		return err
	}
	defer h.Close()
	minter, err := h.createClient(ctx, "bench-minter")
	if err != nil {
		return err
	}
	concs := []int{1, e.Cfg.Concurrency}
	maxC := e.Cfg.Concurrency
	k := e.rotatePool()
	ours, err := e.createAutomations(ctx, "peer-rotate", maxC*k)
	if err != nil {
		return err
	}
	theirs := make([]string, maxC*k)
	if err := parallel(ctx, len(theirs), 16, func(i int) error {
		c, err := h.createClient(ctx, fmt.Sprintf("peer-rotate-%d", i))
		theirs[i] = c.ID
		return err
	}); err != nil {
		return err
	}
	wsPath := "/v1/workspaces/" + e.Workspace + "/automations"
	exchange := []byte("{}")
	for r := range max(1, e.Cfg.Rounds) {
		for _, c := range concs {
			loads := []struct {
				key, name string
				op        Op
			}{
				{"mint", "mint: POST /v1/auth/exchange", func(ctx context.Context, _, _ int) error {
					_, err := e.rest(e.newRequest(ctx, http.MethodPost, "/v1/auth/exchange", e.Secret, exchange), http.StatusOK, false)
					return err
				}},
				{"hydra.mint", "Hydra mint: POST /oauth2/token", func(ctx context.Context, _, _ int) error { return h.mint(ctx, minter) }},
				{"create", "create: POST …/automations", func(ctx context.Context, w, seq int) error {
					body := jsonBody(map[string]any{"name": fmt.Sprintf("peer-r%d-c%d-w%d-%d", r, c, w, seq), "scopes": []string{"automations:read"}})
					_, err := e.rest(e.newRequest(ctx, http.MethodPost, wsPath, e.OwnerToken, body), http.StatusOK, false)
					return err
				}},
				{"hydra.create", "Hydra create: POST /admin/clients", func(ctx context.Context, w, seq int) error {
					_, err := h.createClient(ctx, fmt.Sprintf("peer-r%d-c%d-w%d-%d", r, c, w, seq))
					return err
				}},
				{"rotate", "rotate: POST …/rotate-secret", func(ctx context.Context, w, seq int) error {
					_, err := e.rest(e.newRequest(ctx, http.MethodPost, wsPath+"/"+ours[w*k+seq%k]+"/rotate-secret", e.OwnerToken, exchange), http.StatusOK, false)
					return err
				}},
				{"hydra.rotate", "Hydra rotate: PATCH /admin/clients/{id}", func(ctx context.Context, w, seq int) error {
					return h.rotate(ctx, theirs[w*k+seq%k])
				}},
			}
			for _, l := range loads {
				pid := e.Server.Pid()
				if strings.HasPrefix(l.key, "hydra.") {
					pid = h.Pid()
				}
				e.measurePid(ctx, pid, fmt.Sprintf("peer.%s.c%d", l.key, c), "peer", fmt.Sprintf("%s c=%d", l.name, c), "REST", c, l.op)
			}
		}
	}
	return nil
}

// peerTargets compares Hydra with backlogd when the peer scenario ran: a
// lone create's and rotation's p50 (the bar: ours ≥ 1.5× faster),
// and, for information, the throughput and CPU ratios of every load.
func (r *Report) peerTargets() []Target {
	var out []Target
	for _, op := range []string{"create", "rotate", "mint"} {
		for _, c := range r.peerConcurrencies() {
			ours, ok1 := r.Get(fmt.Sprintf("peer.%s.c%d", op, c))
			theirs, ok2 := r.Get(fmt.Sprintf("peer.hydra.%s.c%d", op, c))
			if !ok1 || !ok2 || ours.Stats == nil || theirs.Stats == nil || ours.Stats.P50 <= 0 || theirs.Stats.Throughput <= 0 {
				continue
			}
			t := Target{Status: "info", Bar: "–"}
			if c == 1 && op != "mint" {
				t.Name = fmt.Sprintf("%s p50, lone client: Hydra's over ours", op)
				t.Bar = "≥ 1.5×"
				t.Value = theirs.Stats.P50 / ours.Stats.P50
				t.Measured = fmt.Sprintf("%.2f× (%.2f ms vs our %.2f ms)", t.Value, theirs.Stats.P50, ours.Stats.P50)
				t.Status = passMiss(t.Value >= 1.5)
			} else {
				t.Name = fmt.Sprintf("%s at %d clients: our rate over Hydra's (no bar)", op, c)
				t.Value = ours.Stats.Throughput / theirs.Stats.Throughput
				t.Measured = fmt.Sprintf("%.2f× (%.0f/s vs %.0f/s)", t.Value, ours.Stats.Throughput, theirs.Stats.Throughput)
				if ours.Stats.ServerCPU > 0 && theirs.Stats.ServerCPU > 0 {
					t.Measured += fmt.Sprintf("; CPU per request %.0f vs Hydra's %.0f µs → %.2f×", ours.Stats.ServerCPU, theirs.Stats.ServerCPU, ours.Stats.ServerCPU/theirs.Stats.ServerCPU)
				}
			}
			out = append(out, t)
		}
	}
	return out
}

// peerConcurrencies are the client counts the peer scenario measured.
func (r *Report) peerConcurrencies() []int {
	seen := map[int]bool{}
	var out []int
	for _, res := range r.Results {
		if res.Scenario == "peer" && res.Stats != nil && !seen[res.Stats.Concurrency] {
			seen[res.Stats.Concurrency] = true
			out = append(out, res.Stats.Concurrency)
		}
	}
	return out
}
