package e2e

import (
	"bytes"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestVaultThroughGateway runs HTTP Request steps through the real gateway
// and backlogd process against a real HTTPS server on loopback: the value
// arrives, plain HTTP is refused with nothing sent, a new value is used on
// the next run, revoke stops use, members never see values, and the value
// is nowhere else (logs, responses, audit, store files: checked by the
// cluster's leak check, which knows every value created here).
func TestVaultThroughGateway(t *testing.T) {
	var hits atomic.Int64
	var mu sync.Mutex
	var lastAuth string
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mu.Lock()
		lastAuth = r.Header.Get("Authorization")
		mu.Unlock()
		io.WriteString(w, "echo: "+r.Header.Get("Authorization"))
	}))
	defer target.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: target.Certificate().Raw}), 0o600)
	kek := filepath.Join(dir, "vault.kek")
	if out, err := exec.Command(binary, "vault", "gen-kek", "-out", kek).CombinedOutput(); err != nil {
		t.Fatalf("gen-kek: %v %s", err, out)
	}
	c := startCluster(t, layoutAll, "-vault-kek-file="+kek, "-vault-egress-ca-file="+caFile, "-vault-egress-allow-private")
	ws := c.create(t, "/v1/workspaces", c.OperatorToken, map[string]any{"name": "Acme"})
	owner := ws.get("token").(string)
	wsID := ws.get("workspace.id").(string)
	member := c.create(t, "/v1/workspaces/"+wsID+"/members", owner, map[string]any{"name": "M", "role": "member"}).get("token").(string)
	base := "/v1/workspaces/" + wsID

	value1, value2 := "sk_live_first_"+strings.Repeat("a", 20), "sk_live_second_"+strings.Repeat("b", 20)
	c.creds.add(value1)
	c.creds.add(value2)
	c.expect(t, 200, "POST", base+"/secrets", owner, map[string]any{"name": "stripe", "kind": "webhook", "value": value1})
	step := map[string]any{"method": "GET", "url": target.URL + "/charge", "headers": map[string]string{"Authorization": "Bearer {secret:stripe}"}}

	run := c.expect(t, 200, "POST", base+"/http-requests", owner, step)
	mu.Lock()
	got := lastAuth
	mu.Unlock()
	if got != "Bearer "+value1 {
		t.Fatalf("the target did not receive the substituted value")
	}
	if body, _ := run.get("body").(string); strings.Contains(body, value1) || !strings.Contains(body, "REDACTED") {
		t.Fatalf("the echoed value was not redacted: %q", redact(body))
	}

	before := hits.Load()
	plain := map[string]any{"method": "GET", "url": strings.Replace(target.URL, "https://", "http://", 1), "headers": step["headers"]}
	c.expectError(t, 400, 3, "POST", base+"/http-requests", owner, plain)
	c.expectError(t, 403, 7, "POST", base+"/http-requests", member, step)
	c.expectError(t, 403, 7, "POST", base+"/secrets", member, map[string]any{"name": "x", "kind": "webhook", "value": "v"})
	if m := c.expect(t, 200, "GET", base+"/secrets/stripe", member, nil); m.get("value") != nil {
		t.Fatal("a member saw a value")
	}
	if hits.Load() != before {
		t.Fatal("a refused step reached the target")
	}

	c.expect(t, 200, "PATCH", base+"/secrets/stripe", owner, map[string]any{"value": value2})
	c.expect(t, 200, "POST", base+"/http-requests", owner, step)
	mu.Lock()
	got = lastAuth
	mu.Unlock()
	if got != "Bearer "+value2 {
		t.Fatal("the next run after an update did not use the new value")
	}
	c.expect(t, 200, "POST", base+"/secrets/stripe/revoke", owner, map[string]any{})
	before = hits.Load()
	if r := c.call(t, "POST", base+"/http-requests", owner, step); r.Status/100 != 4 || !bytes.Contains(r.Body, []byte("stripe")) {
		t.Fatalf("a step with a revoked secret: %d %s", r.Status, r.Body)
	}
	if hits.Load() != before {
		t.Fatal("a step with a revoked secret reached the target")
	}
	audit := c.expect(t, 200, "GET", base+"/audit-events?action=secret.use", owner, nil)
	if evs, _ := audit.get("auditEvents").([]any); len(evs) < 2 {
		t.Fatalf("secret uses are not in the audit trail: %v", audit)
	}
}
