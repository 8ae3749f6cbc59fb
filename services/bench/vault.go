package bench

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
)

// egressTarget is a local HTTPS server standing in for a webhook endpoint:
// it answers 200 with a small JSON body and counts the TLS connections
// opened to it, so that the report can say whether a client kept its
// connections alive.
type egressTarget struct {
	srv    *httptest.Server
	CAFile string // PEM of the server's (self-signed) certificate
	URL    string
	conns  atomic.Int64 // connections accepted so far
}

var targetBody = []byte(`{"ok":true}` + "\n")

func startEgressTarget(caFile string) (*egressTarget, error) {
	t := &egressTarget{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(targetBody)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			t.conns.Add(1)
		}
	}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	t.srv, t.URL, t.CAFile = srv, srv.URL, caFile
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, block, 0o600); err != nil {
		srv.Close()
		return nil, err
	}
	return t, nil
}

func (t *egressTarget) Close() { t.srv.Close() }

// client is what the harness sends the direct requests with: trusting only
// the target's certificate, keep-alive, enough idle connections per host
// for every worker.
func (t *egressTarget) client() *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(t.srv.Certificate())
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// benchSecret is the webhook secret the http-request scenario references.
const benchSecret = "bench"

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// runHTTPRequest compares an HTTP Request step (gRPC RunHttpRequest with a
// header "Authorization: Bearer {secret:bench}") with the same request sent
// directly by the harness over keep-alive connections, to the same local
// HTTPS server, at 1 and at the scenario's concurrency. The target is on
// the p50 difference at one client. An empty gRPC call on the vault's port
// at one client is measured alongside, to split the difference into the
// hop and the step's own work.
func runHTTPRequest(ctx context.Context, e *Env) error {
	vc := vaultv1.NewVaultServiceClient(e.VaultConn)
	octx := bearer(ctx, e.OwnerToken)
	value := randomHex(32)
	if _, err := vc.CreateSecret(octx, &vaultv1.CreateSecretRequest{
		WorkspaceId: e.Workspace, Name: benchSecret, Kind: "webhook", Value: value,
		Description: "benchmark webhook secret",
	}); err != nil {
		return fmt.Errorf("create secret: %w", err)
	}
	url := e.Target.URL + "/hook"
	step := &vaultv1.RunHttpRequestRequest{
		WorkspaceId: e.Workspace, Method: http.MethodPost, Url: url, Body: `{"event":"bench"}`,
		Headers: map[string]string{"Authorization": "Bearer {secret:" + benchSecret + "}", "Content-Type": "application/json"},
	}
	// One step first, so that a misconfiguration fails the scenario with
	// the vault's explanation rather than as 10 s of errors.
	if resp, err := vc.RunHttpRequest(octx, step); err != nil {
		return fmt.Errorf("first HTTP Request step: %w", err)
	} else if resp.GetStatusCode() != http.StatusOK {
		return fmt.Errorf("first HTTP Request step: target answered %d", resp.GetStatusCode())
	}
	direct := e.Target.client()
	defer direct.CloseIdleConnections()
	send := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"event":"bench"}`))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+value)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "backlog-vault/1")
		resp, err := direct.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("direct request: %d", resp.StatusCode)
		}
		return nil
	}

	hc := healthpb.NewHealthClient(e.VaultConn)
	e.measure(ctx, "http-request.empty.c1", "http-request", "Health/Check on the vault port c=1", "gRPC", 1, func(ctx context.Context, _, _ int) error {
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	})
	// The same step with a literal header instead of a {secret:…}
	// reference: no decryption, and no secret.use audit event and
	// last-used time committed. The difference to the step above is what
	// the secret costs.
	plain := &vaultv1.RunHttpRequestRequest{
		WorkspaceId: step.WorkspaceId, Method: step.Method, Url: step.Url, Body: step.Body,
		Headers: map[string]string{"Authorization": "Bearer not-a-secret", "Content-Type": "application/json"},
	}
	e.measure(ctx, "http-request.plain.c1", "http-request", "RunHttpRequest, no secret c=1", "gRPC→HTTPS", 1, func(context.Context, int, int) error {
		_, err := vc.RunHttpRequest(octx, plain)
		return err
	})
	for _, c := range []int{1, e.Cfg.Concurrency} {
		n0 := e.Target.conns.Load()
		vst := e.measureCPU(ctx, fmt.Sprintf("http-request.vault.c%d", c), "http-request", fmt.Sprintf("RunHttpRequest c=%d", c), "gRPC→HTTPS", c, true, func(context.Context, int, int) error {
			resp, err := vc.RunHttpRequest(octx, step)
			if err == nil && resp.GetStatusCode() != http.StatusOK {
				err = fmt.Errorf("target answered %d", resp.GetStatusCode())
			}
			return err
		})
		e.noteConns(fmt.Sprintf("http-request.vault.c%d", c), vst, e.Target.conns.Load()-n0)
		n0 = e.Target.conns.Load()
		dst := e.measureCPU(ctx, fmt.Sprintf("http-request.direct.c%d", c), "http-request", fmt.Sprintf("direct request c=%d", c), "HTTPS", c, true, func(ctx context.Context, _, _ int) error {
			return send(ctx)
		})
		e.noteConns(fmt.Sprintf("http-request.direct.c%d", c), dst, e.Target.conns.Load()-n0)
	}
	return nil
}

// noteConns notes, on the result under key, how many TLS connections the
// target accepted during that load (warm-up included): about one per client
// when connections are kept alive, about one per request when they are not.
func (e *Env) noteConns(key string, st Stats, conns int64) {
	for i := range e.Report.Results {
		r := &e.Report.Results[i]
		if r.Key != key || r.Stats == nil || r.Stats.Requests != st.Requests {
			continue
		}
		r.Note = fmt.Sprintf("%d new TLS connections at the target for %d recorded requests (%.2f per request; warm-up included)",
			conns, st.Requests, float64(conns)/float64(max(1, st.Requests)))
		e.Cfg.logf("  %s", r.Note)
	}
}

// seedSecretsAPI creates n webhook secrets (bench-000001 …, 32 random bytes
// hex each) in the large list workspace with 64 concurrent gRPC
// CreateSecret calls: the real path, each value encrypted under a data key
// and the record and its audit event committed.
func seedSecretsAPI(ctx context.Context, e *Env, n int) error {
	lw, ok := e.listWS[e.Cfg.ListLarge]
	if !ok {
		return errors.New("the large workspace is not seeded")
	}
	vc := vaultv1.NewVaultServiceClient(e.VaultConn)
	octx := bearer(ctx, lw.owner)
	t0 := time.Now()
	err := parallel(ctx, n, 64, func(i int) error {
		_, err := vc.CreateSecret(octx, &vaultv1.CreateSecretRequest{
			WorkspaceId: lw.id, Name: fmt.Sprintf("bench-%06d", i+1), Kind: "webhook", Value: randomHex(32),
		})
		return err
	})
	if err != nil {
		return err
	}
	d := time.Since(t0)
	e.secretSeedNote = fmt.Sprintf("%s secrets seeded through the API, 64 concurrent CreateSecret calls, in %.1f s (%.0f/s)",
		countLabel(n), d.Seconds(), float64(n)/d.Seconds())
	e.Cfg.logf("  seeded %s secrets in %.1f s (%.0f/s)", countLabel(n), d.Seconds(), float64(n)/d.Seconds())
	return nil
}
