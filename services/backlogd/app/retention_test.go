package app

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// -audit-retention defaults to 90 days with etcd and to keeping events for
// good with bbolt.
func TestAuditRetentionDefaults(t *testing.T) {
	none := func(string) string { return "" }
	c, err := ParseFlags("t", []string{"-store=etcd", "-etcd-endpoints=127.0.0.1:2379"}, none)
	if err != nil || c.AuditRetention != DefaultEtcdAuditRetention {
		t.Fatalf("etcd: %v %v", c.AuditRetention, err)
	}
	if c, err = ParseFlags("t", nil, none); err != nil || c.AuditRetention != 0 {
		t.Fatalf("bbolt: %v %v", c.AuditRetention, err)
	}
	if c, err = ParseFlags("t", []string{"-store=etcd", "-etcd-endpoints=x:1", "-audit-retention=0"}, none); err != nil || c.AuditRetention != 0 {
		t.Fatalf("etcd, kept for good: %v %v", c.AuditRetention, err)
	}
}

// Events older than -audit-retention are pruned by the leading replica, and
// the trail still verifies.
func TestAuditRetentionPrunes(t *testing.T) {
	dir := t.TempDir()
	args := []string{
		"-data-dir", dir, "-http-addr", freeAddr(t), "-vault-kek-file", testKEK(t), "-audit-retention=2s",
		"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}
	start := func() (Config, *App) {
		cfg, err := ParseFlags("t", args, func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		a, err := Start(cfg, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get("http://" + cfg.HTTPAddr + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return cfg, a
				}
			}
			if time.Now().After(deadline) {
				a.Stop()
				t.Fatalf("not ready: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	cfg, a := start()
	op, _ := os.ReadFile(filepath.Join(dir, "operator-token"))
	code, out := call(t, http.MethodPost, "http://"+cfg.HTTPAddr+"/v1/workspaces", strings.TrimSpace(string(op)), `{"name":"old"}`)
	if code != 200 {
		t.Fatalf("create workspace: %d %v", code, out)
	}
	ws := out["workspace"].(map[string]any)["id"].(string)
	owner := out["token"].(string)
	events := func() int {
		code, out := call(t, http.MethodGet, "http://"+cfg.HTTPAddr+"/v1/workspaces/"+ws+"/audit-events", owner, "")
		if code != 200 {
			t.Fatalf("audit: %d %v", code, out)
		}
		evs, _ := out["auditEvents"].([]any)
		return len(evs)
	}
	if events() == 0 {
		t.Fatal("no audit event for the workspace's creation")
	}
	time.Sleep(2500 * time.Millisecond)
	a.Stop()
	// The restart's lead prunes at once.
	cfg, a = start()
	deadline := time.Now().Add(10 * time.Second)
	for events() > 1 { // the listing itself is audited (audit.read) from now on
		if time.Now().After(deadline) {
			t.Fatalf("%d old audit events are still there past -audit-retention", events())
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.Stop()
	var buf bytes.Buffer
	if err := AuditCommand("verify", []string{"-data-dir", dir}, &buf); err != nil {
		t.Fatalf("audit verify after pruning: %v\n%s", err, buf.String())
	}
	t.Logf("verify: %s", buf.String())
}
