package app

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// TestLocalHopCarriesGatewayCalls: with every target in one process, the
// gateway reaches the services in memory, the services still authenticate
// the call (401 for a garbage secret), and their TCP ports still serve.
func TestLocalHopCarriesGatewayCalls(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseFlags("t", []string{
		"-data-dir", dir, "-http-addr", freeAddr(t), "-vault-kek-file", testKEK(t),
		"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	if a.local == nil {
		t.Fatal("no in-memory hop with every target in one process")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + cfg.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	req, _ := http.NewRequest("POST", "http://"+cfg.HTTPAddr+"/v1/auth/exchange", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer blg_auto_nope")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("exchange with garbage: %v %v", resp, err)
	}
	resp.Body.Close()
	if n := a.local.memDials.Load(); n < 4 {
		t.Fatalf("%d in-memory connections, want one per service at least", n)
	}
	// The services' own ports serve too (other processes, the CLI over gRPC).
	conn, err := (&localHop{}).dial(t.Context(), cfg.CredentialAddr)
	if err != nil {
		t.Fatalf("TCP to the credential port: %v", err)
	}
	conn.Close()
}

// TestLocalHopOnlyWithGatewayAndServices: a gateway alone, or services
// without a gateway, keep TCP.
func TestLocalHopOnlyWithGatewayAndServices(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseFlags("t", []string{
		"-data-dir", dir, "-target", "credential", "-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t),
		"-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	if a.local != nil {
		t.Fatal("an in-memory hop without a gateway in the process")
	}
}
