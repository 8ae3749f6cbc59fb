package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/proctest"
)

// ecoProc is one backlogd process started by hand, for what proctest's
// readiness wait cannot start (a sealed vault is never ready; a TLS
// listener is not plain HTTP).
type ecoProc struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	log bytes.Buffer
}

func (p *ecoProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *ecoProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func ecoStart(t *testing.T, args ...string) *ecoProc {
	t.Helper()
	if binary == "" {
		t.Skip("end-to-end tests need the backlogd binary (not built in -short mode)")
	}
	p := &ecoProc{}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = proctest.CleanEnv()
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(stopTimeout):
			p.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("backlogd log:\n%s", p.logs())
		}
	})
	return p
}

// ecoWait polls get until it answers 200.
func ecoWait(t *testing.T, p *ecoProc, get func() (*http.Response, error)) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err := get()
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not answering after %s: %v\n%s", readyTimeout, err, p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEcoSealedVaultIsNotReady: backlogd started without a key-encryption
// key is alive but not ready: /readyz 503 naming the sealed vault, the
// vault's gRPC health NOT_SERVING, value operations 503 VAULT_SEALED while
// metadata still reads; and the access log has one info line per request,
// with the route template and no token.
func TestEcoSealedVaultIsNotReady(t *testing.T) {
	addrs, err := proctest.FreeAddrs(5)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := ecoStart(t, "-data-dir", dir, "-log-level", "info", "-http-addr", addrs[0], "-credential-addr", addrs[1],
		"-automation-addr", addrs[2], "-agent-addr", addrs[3], "-vault-addr", addrs[4])
	base := "http://" + addrs[0]
	ecoWait(t, p, func() (*http.Response, error) { return http.Get(base + "/healthz") })

	// /readyz: 503, the vault named, and why.
	var ready struct {
		NotReady []string          `json:"notReady"`
		Reasons  map[string]string `json:"reasons"`
	}
	var resp *http.Response
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err = http.Get(base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		ready.NotReady, ready.Reasons = nil, nil
		json.NewDecoder(resp.Body).Decode(&ready)
		resp.Body.Close()
		// The other services settle first; the vault stays not ready.
		if len(ready.NotReady) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || len(ready.NotReady) != 1 || ready.NotReady[0] != "vault" ||
		!strings.HasPrefix(ready.Reasons["vault"], "sealed:") {
		t.Fatalf("/readyz with a sealed vault: %d %+v", resp.StatusCode, ready)
	}

	// The vault's own gRPC health.
	conn, err := grpc.NewClient(addrs[4], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("vault gRPC health: %v %v; want NOT_SERVING", hr.GetStatus(), err)
	}

	// A value operation: 503 VAULT_SEALED; metadata still answers.
	opTok, err := os.ReadFile(filepath.Join(dir, "operator-token"))
	if err != nil {
		t.Fatal(err)
	}
	op := strings.TrimSpace(string(opTok))
	doJSON := func(method, path, token string, body any) (int, map[string]any) {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	code, ws := doJSON("POST", "/v1/workspaces", op, map[string]any{"name": "sealed"})
	if code != 200 {
		t.Fatalf("create workspace: %d %v", code, ws)
	}
	owner, _ := ws["token"].(string)
	wsID, _ := ws["workspace"].(map[string]any)["id"].(string)
	code, body := doJSON("POST", "/v1/workspaces/"+wsID+"/secrets", owner,
		map[string]any{"name": "api", "kind": "webhook", "value": "eco-sealed-value-0123"})
	if code != http.StatusServiceUnavailable || !strings.Contains(ecoJSON(body), `"reason":"VAULT_SEALED"`) {
		t.Fatalf("create a secret in a sealed vault: %d %v; want 503 VAULT_SEALED", code, body)
	}
	if code, body := doJSON("GET", "/v1/workspaces/"+wsID+"/secrets", owner, nil); code != 200 {
		t.Fatalf("list secrets (metadata) in a sealed vault: %d %v", code, body)
	}

	// The access log: info lines with the route template, no token.
	logs := p.logs()
	for _, tok := range []string{op, owner, "eco-sealed-value-0123"} {
		if strings.Contains(logs, tok) {
			t.Errorf("the log holds a credential or secret value")
		}
	}
	var lines int
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, `"msg":"http request"`) {
			continue
		}
		lines++
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("access log line %q: %v", l, err)
		}
		if e["level"] != "info" || e["route"] == nil || e["method"] == nil || e["status"] == nil || e["duration"] == nil || e["request-id"] == nil {
			t.Errorf("access log line lacks a field: %s", l)
		}
		if strings.Contains(l, wsID) {
			t.Errorf("access log line holds the path rather than the route: %s", l)
		}
	}
	if !strings.Contains(logs, `"route":"/v1/workspaces/{workspaceId}/secrets","status":503`) {
		t.Errorf("no access log line for the refused secret create")
	}
	if lines < 4 {
		t.Errorf("%d access log lines, want one per request", lines)
	}
}

func ecoJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// ecoCert writes a CA (once: caCert nil) and a leaf for 127.0.0.1 named cn.
func ecoCert(t *testing.T, dir, cn string, ca **x509.Certificate, caKey **ecdsa.PrivateKey) (caFile, cert, key string) {
	t.Helper()
	caFile, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if *ca == nil {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "eco e2e CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
			KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		*ca, _ = x509.ParseCertificate(der)
		*caKey = k
		os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, *ca, &k.PublicKey, *caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	// Written whole, then renamed: the process may read them at any time.
	for path, b := range map[string][]byte{
		cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}),
	} {
		os.WriteFile(path+".tmp", b, 0o600)
		os.Rename(path+".tmp", path)
	}
	return caFile, cert, key
}

// TestEcoTLSListenerAndSIGHUP: a gateway process serving HTTPS answers curl
// --cacert (and a Go client trusting only the test CA) with HSTS, and serves
// a renewed certificate after SIGHUP without restarting.
func TestEcoTLSListenerAndSIGHUP(t *testing.T) {
	addrs, err := proctest.FreeAddrs(5)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var ca *x509.Certificate
	var caKey *ecdsa.PrivateKey
	caFile, cert, key := ecoCert(t, dir, "before-sighup", &ca, &caKey)
	p := ecoStart(t, "-target", "gateway", "-data-dir", dir, "-http-addr", addrs[0], "-credential-addr", addrs[1],
		"-automation-addr", addrs[2], "-agent-addr", addrs[3], "-vault-addr", addrs[4],
		"-http-tls-cert-file", cert, "-http-tls-key-file", key)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	url := "https://" + addrs[0] + "/healthz"
	ecoWait(t, p, func() (*http.Response, error) { return client.Get(url) })
	servedCN := func() string {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Strict-Transport-Security") == "" {
			t.Error("no Strict-Transport-Security header over TLS")
		}
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if cn := servedCN(); cn != "before-sighup" {
		t.Fatalf("served %q", cn)
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "-sS", "--cacert", caFile, url).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"ok"`) {
			t.Errorf("curl --cacert %s: %v %s", url, err, out)
		}
		if out, err := exec.Command(curl, "-sS", "--tlsv1.1", "--tls-max", "1.1", "--cacert", caFile, url).CombinedOutput(); err == nil {
			t.Errorf("curl with TLS 1.1 was served: %s", out)
		}
	}

	ecoCert(t, dir, "after-sighup", &ca, &caKey)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for servedCN() != "after-sighup" {
		if time.Now().After(deadline) {
			t.Fatalf("still the old certificate 10 s after SIGHUP\n%s", p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(p.logs(), "reloaded on SIGHUP") {
		t.Error("no log line for the reload")
	}
}

// TestEcoOperatorCommands: --help, every subcommand's --help, version and
// service-token create through the binary.
func TestEcoOperatorCommands(t *testing.T) {
	if binary == "" {
		t.Skip("end-to-end tests need the backlogd binary (not built in -short mode)")
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(binary, args...)
		cmd.Env = proctest.CleanEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("--help")
	if err != nil || !strings.Contains(out, "BACKLOG_DATA_DIR") || !strings.Contains(out, "service-token create") {
		t.Fatalf("backlogd --help: %v\n%s", err, out)
	}
	for _, sub := range [][]string{{"backup"}, {"restore"}, {"vault", "gen-kek"}, {"vault", "rotate-kek"}, {"service-token", "create"}, {"forwarding-token"}, {"audit", "verify"}, {"version"}} {
		out, err := run(append(sub, "--help")...)
		if err != nil || !strings.HasPrefix(out, "Usage: backlogd "+strings.Join(sub, " ")) {
			t.Errorf("backlogd %s --help: %v\n%s", strings.Join(sub, " "), err, out)
		}
	}
	if out, err := run("version"); err != nil || !strings.HasPrefix(out, "backlogd ") || !strings.Contains(out, "go1.") {
		t.Errorf("backlogd version: %v %q", err, out)
	}
	file := filepath.Join(t.TempDir(), "service-token")
	out, err = run("service-token", "create", "-out", file)
	b, rerr := os.ReadFile(file)
	if err != nil || rerr != nil || credfmt.KindOf(strings.TrimSpace(string(b))) != credfmt.Service {
		t.Fatalf("service-token create: %v %v %s", err, rerr, out)
	}
	if strings.Contains(out, strings.TrimSpace(string(b))) {
		t.Error("service-token create printed the credential")
	}
}
