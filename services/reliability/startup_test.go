package reliability

// Start-up against a data dir that lost or damaged a file: every case must
// stop start-up with one line that names the file and what to do, and must
// revoke nothing (proved by putting the files back and using every
// credential issued before).

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// issued is what a cluster handed out before its files were tampered with.
type issued struct {
	ws             workspace
	autoSecret     string
	agentKey       string
	secretName     string
	automationPath string
}

func issue(t *testing.T, c *cluster) issued {
	t.Helper()
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "startup")
	_, secret := rc.createAutomation(t, ws.ID, ws.OwnerToken, "nightly-sync")
	inst := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/installations", ws.OwnerToken, map[string]any{"name": "app"})
	ag := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/installations/"+inst.str("installation.id")+"/agents", ws.OwnerToken,
		map[string]any{"name": "triage", "role": "member"})
	rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/secrets", ws.OwnerToken,
		map[string]any{"name": "hook", "kind": "webhook", "value": "hook-value-0123456789"})
	return issued{ws: ws, autoSecret: secret, agentKey: ag.str("apiKey"), secretName: "hook"}
}

// stillWorks checks that every credential issued before still works and the
// secret is still there: nothing was revoked or lost.
func stillWorks(t *testing.T, c *cluster, is issued) {
	t.Helper()
	rc := c.rest()
	rc.exchange(t, is.autoSecret)
	rc.expect(t, http.StatusOK, http.MethodGet, "/v1/agents/self", is.agentKey, nil)
	rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+is.ws.ID+"/secrets/"+is.secretName, is.ws.OwnerToken, nil)
}

// snapshotDir copies every regular file of dir (a stopped cluster's data).
func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		files[path] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func restoreDir(t *testing.T, files map[string][]byte) {
	t.Helper()
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// refused starts the cluster, which must fail, and returns what the
// process that refused printed.
func refused(t *testing.T, c *cluster) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.StartOnce(ctx)
	c.Stop()
	var se *proctest.StartError
	if !errors.As(err, &se) {
		t.Fatalf("start-up did not refuse: %v", err)
	}
	if !se.Exited {
		t.Fatalf("the process did not exit; it should refuse at once: %v\n%s", se.Err, se.Tail(20))
	}
	return se.Log
}

func TestStartRefusesLostOrDamagedStores(t *testing.T) {
	c := startCluster(t, "all")
	is := issue(t, c)
	c.stop(t)
	pristine := snapshotDir(t, c.Dir())
	dir := c.ProcFor("credential").DataDir
	path := func(name string) string { return filepath.Join(dir, name) }
	remove := func(names ...string) func() {
		return func() {
			for _, n := range names {
				if err := os.Remove(path(n)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	truncate := func(name string, size func(int64) int64) func() {
		return func() {
			st, err := os.Stat(path(name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path(name), size(st.Size())); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		damage func()
		says   []string // the refusal names the file and what to do
	}{
		{"automation.db removed", remove("automation.db"), []string{path("automation.db"), "missing", "restore"}},
		{"automation.db and its marker removed", remove("automation.db", "automation.db.id"), []string{path("automation.db"), "live automation credentials", "-init-store=automation"}},
		{"agent.db and its marker removed", remove("agent.db", "agent.db.id"), []string{path("agent.db"), "live agent credentials", "restore"}},
		{"vault.db removed", remove("vault.db"), []string{path("vault.db"), "missing", "restore"}},
		{"credential.db emptied", truncate("credential.db", func(int64) int64 { return 0 }), []string{path("credential.db"), "empty", "restore"}},
		{"credential.db and its marker removed", remove("credential.db", "credential.db.id"), []string{path("credential.db"), "credential.key", "restore"}},
		{"credential.key removed", remove("credential.key"), []string{path("credential.key"), "missing"}},
		{"vault.db truncated", truncate("vault.db", func(n int64) int64 { return n / 2 }), []string{path("vault.db"), "truncated", "restore"}},
		{"agent.db cut to one page", truncate("agent.db", func(int64) int64 { return 4096 }), []string{path("agent.db"), "restore"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restoreDir(t, pristine)
			tc.damage()
			log := refused(t, c)
			for _, w := range tc.says {
				if !strings.Contains(log, w) {
					t.Errorf("the refusal does not say %q:\n%s", w, lastLines(log, 8))
				}
			}
			if strings.Contains(log, "panic") || strings.Contains(log, "SIGBUS") || strings.Contains(log, "goroutine ") {
				t.Errorf("start-up crashed instead of refusing:\n%s", lastLines(log, 20))
			}
			if strings.Contains(log, "revoked an unrecorded subject") {
				t.Error("a refused start-up revoked credentials")
			}
			// Nothing was revoked: with the files back, everything works.
			restoreDir(t, pristine)
			c.start(t)
			stillWorks(t, c, is)
			c.stop(t)
		})
	}
}

// A deliberate fresh start (-init-store) after losing a store with no backup
// starts, and its sweep revokes what the lost store's records stood for.
func TestInitStoreStartsEmptyOnPurpose(t *testing.T) {
	c := startCluster(t, "split")
	is := issue(t, c)
	c.stop(t)
	auto := c.ProcFor("automation")
	dbPath := filepath.Join(auto.DataDir, "automation.db")
	for _, p := range []string{dbPath, boltstore.MarkerPath(dbPath)} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	// Without the flag the split automation process refuses on its own.
	log := refused(t, c)
	if !strings.Contains(log, dbPath) || !strings.Contains(log, "-init-store=automation") {
		t.Fatalf("refusal:\n%s", lastLines(log, 8))
	}
	ctx := context.Background()
	for _, p := range c.Procs() {
		var err error
		if p == auto {
			err = p.Start(ctx, "-init-store=automation")
		} else {
			err = p.Start(ctx)
		}
		if err != nil {
			t.Fatalf("start %s: %v", p.Name, err)
		}
	}
	rc := c.rest()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := rc.call(t, http.MethodPost, "/v1/auth/exchange", is.autoSecret, map[string]any{})
		if r.Status == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lost automation's secret still answers %d after a deliberate fresh start", r.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The other stores were untouched.
	rc.expect(t, http.StatusOK, http.MethodGet, "/v1/agents/self", is.agentKey, nil)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return redact(strings.Join(lines, "\n"))
}
