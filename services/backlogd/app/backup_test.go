package app

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func startAll(t *testing.T, dir string, extra ...string) (Config, *App) {
	t.Helper()
	cfg, err := ParseFlags("t", append([]string{
		"-data-dir", dir, "-http-addr", freeAddr(t),
		"-vault-kek-file", testKEK(t), // a sealed vault is not ready
		"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}, extra...), func(string) string { return "" })
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

func call(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func TestBackupWhileServingThenRestore(t *testing.T) {
	dir := t.TempDir()
	cfg, a := startAll(t, dir)
	base := "http://" + cfg.HTTPAddr
	op, _ := os.ReadFile(filepath.Join(dir, "operator-token"))
	code, ws := call(t, "POST", base+"/v1/workspaces", strings.TrimSpace(string(op)), `{"name":"Acme"}`)
	if code != 200 {
		t.Fatalf("create workspace: %d %v", code, ws)
	}
	owner := ws["token"].(string)
	wsID := ws["workspace"].(map[string]any)["id"].(string)
	code, before := call(t, "POST", base+"/v1/workspaces/"+wsID+"/automations", owner, `{"name":"before"}`)
	if code != 200 {
		t.Fatalf("create: %d %v", code, before)
	}
	beforeID := before["automation"].(map[string]any)["id"].(string)

	out := filepath.Join(t.TempDir(), "backup")
	m, err := Backup(context.Background(), cfg, out)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	if m.Stores["credential.db"] == 0 || m.Stores["automation.db"] == 0 || m.Stores["agent.db"] == 0 || m.Stores["vault.db"] == 0 {
		t.Fatalf("manifest: %+v", m)
	}
	code, after := call(t, "POST", base+"/v1/workspaces/"+wsID+"/automations", owner, `{"name":"after"}`)
	if code != 200 {
		t.Fatalf("create after backup: %d", code)
	}
	afterID := after["automation"].(map[string]any)["id"].(string)

	if _, err := Restore(out, dir); err == nil || !strings.Contains(err.Error(), "stop backlogd") {
		t.Fatalf("restore into a running data dir: %v", err)
	}
	a.Stop()
	if _, err := Restore(out, dir); err != nil {
		t.Fatalf("restore: %v", err)
	}
	cfg2, a2 := startAll(t, dir)
	defer a2.Stop()
	base = "http://" + cfg2.HTTPAddr
	if code, _ := call(t, "GET", base+"/v1/workspaces/"+wsID+"/automations/"+beforeID, owner, ""); code != 200 {
		t.Fatalf("backed-up automation after restore: %d", code)
	}
	if code, _ := call(t, "GET", base+"/v1/workspaces/"+wsID+"/automations/"+afterID, owner, ""); code != 404 {
		t.Fatalf("automation created after the backup survived the restore: %d", code)
	}
}
