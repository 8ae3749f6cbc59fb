package app

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	start := func() (Config, *App) { return startAll(t, dir, "-audit-retention=2s") }
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
