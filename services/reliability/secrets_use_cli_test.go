package reliability

// Seed 003's and 004's secrets-in-use flows through the CLI (the binary
// ./backlog.sh builds) against a real backlogd.

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
)

var (
	suCLIOnce sync.Once
	suCLIPath string
	suCLIErr  error
)

// suCLI builds the CLI once per test binary, as ./backlog.sh does.
func suCLI(t *testing.T) string {
	t.Helper()
	suCLIOnce.Do(func() {
		root, err := proctest.RepoRoot()
		if err != nil {
			suCLIErr = err
			return
		}
		dir, err := exec.Command("mktemp", "-d").Output()
		if err != nil {
			suCLIErr = err
			return
		}
		suCLIPath = filepath.Join(strings.TrimSpace(string(dir)), "backlog")
		cmd := exec.CommandContext(context.Background(), "go", "build", "-o", suCLIPath, "./cmd/backlog")
		cmd.Dir = filepath.Join(root, "services", "cli")
		if out, err := cmd.CombinedOutput(); err != nil {
			suCLIErr = err
			t.Logf("%s", out)
		}
	})
	if suCLIErr != nil {
		t.Fatalf("building the CLI: %v", suCLIErr)
	}
	return suCLIPath
}

type suRun struct {
	stdout, stderr string
	code           int
}

// suBacklog runs the CLI with stdin against the cluster's gateway.
func suBacklog(t *testing.T, c *cluster, cfg, stdin string, args ...string) suRun {
	t.Helper()
	cmd := exec.Command(suCLI(t), args...)
	cmd.Env = append(proctest.CleanEnv(), "BACKLOG_URL="+c.URL(""), "BACKLOG_CONFIG_DIR="+cfg)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := suRun{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running the CLI: %v", err)
	}
	return r
}

func suMust(t *testing.T, r suRun, what string) suRun {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, r.code, redact(r.stdout), redact(r.stderr))
	}
	return r
}

func TestSecretsUseSeedFlowsCLI(t *testing.T) {
	tg := suNewTarget(t)
	c, _, _ := suCluster(t, tg, "-vault-event-poll=100ms")
	cfg := t.TempDir()
	opFile := filepath.Join(c.ProcFor(proctest.TargetCredential).DataDir, "operator-token")
	suMust(t, suBacklog(t, c, cfg, "", "workspaces", "create", "Acme", "--operator-token-file", opFile, "--save"), "workspaces create")

	// Subscribe to secret.created before anything happens.
	rcv := suNewReceiver(t)
	r := suMust(t, suBacklog(t, c, cfg, "", "event-subscriptions", "create", rcv.srv.URL, "--event", "secret.created", "-o", "json"), "event-subscriptions create")
	var sub struct {
		Subscription  struct{ ID string }
		SigningSecret string
	}
	if err := json.Unmarshal([]byte(r.stdout), &sub); err != nil || !strings.HasPrefix(sub.SigningSecret, "blg_whsec_") {
		t.Fatalf("event-subscriptions create: %v", err)
	}

	hubspot, hook := "HubSpot API key – production", "Ops webhook – prod"
	hsValue, v1, v2 := randomValue("pat-na1-"), randomValue("whk1-"), randomValue("whk2-")
	suMust(t, suBacklog(t, c, cfg, hsValue, "secrets", "create", hubspot, "--kind", "integration", "--expires-at", "2160h"), "secrets create integration")
	suMust(t, suBacklog(t, c, cfg, v1, "secrets", "create", hook, "--kind", "webhook", "--allowed-host", tg.host()), "secrets create webhook")
	suWaitFor(t, "two secret.created deliveries", 10*time.Second, func() bool { return rcv.suCount("secret.created", "") == 2 })
	for _, d := range rcv.deliveries() {
		if !verifyBacklogSignature(sub.SigningSecret, d.Signature, d.Body, time.Now()) {
			t.Fatal("a delivery failed verification")
		}
	}
	suWaitFor(t, "the delivery log", 5*time.Second, func() bool {
		r := suBacklog(t, c, cfg, "", "event-subscriptions", "deliveries", sub.Subscription.ID)
		return r.code == 0 && strings.Count(r.stdout, "delivered") == 2
	})

	// Seed 004: a connection chooses the integration secret by name.
	r = suMust(t, suBacklog(t, c, cfg, "", "connections", "create", "HubSpot", "--integration", "hubspot", "--secret", hubspot, "-o", "json"), "connections create")
	var conn struct {
		Connection struct{ ID, SecretName string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &conn); err != nil || conn.Connection.SecretName != hubspot {
		t.Fatalf("connections create: %v %q", err, r.stdout)
	}
	if r := suBacklog(t, c, cfg, "", "connections", "create", "Bad", "--integration", "slack", "--secret", hook); r.code == 0 || !strings.Contains(r.stderr, hook) {
		t.Fatalf("a connection to a webhook secret: exit %d %q", r.code, r.stderr)
	}
	if r := suMust(t, suBacklog(t, c, cfg, "", "connections", "list"), "connections list"); !strings.Contains(r.stdout, hubspot) {
		t.Fatalf("connections list: %q", r.stdout)
	}

	// Seed 003: an action selects webhook secrets by name; runs use the
	// current value.
	r = suMust(t, suBacklog(t, c, cfg, "", "actions", "create", "Notify ops", "--url", tg.srv.URL+"/hook",
		"-H", "Authorization: Bearer {secret:"+hook+"}", "-d", `{"text":"deployed"}`, "-o", "json"), "actions create")
	var act struct{ Action struct{ ID string } }
	if err := json.Unmarshal([]byte(r.stdout), &act); err != nil || act.Action.ID == "" {
		t.Fatalf("actions create: %v %q", err, r.stdout)
	}
	if r := suBacklog(t, c, cfg, "", "actions", "create", "Bad", "--url", tg.srv.URL, "-H", "X-Key: {secret:Ghost key}"); r.code == 0 || !strings.Contains(r.stderr, "Ghost key") {
		t.Fatalf("an action naming an unknown secret: exit %d %q", r.code, r.stderr)
	}
	suMust(t, suBacklog(t, c, cfg, "", "actions", "run", act.Action.ID, "--fail"), "actions run")
	if tg.lastAuth() != "Bearer "+v1 {
		t.Fatal("actions run did not send the value")
	}
	suMust(t, suBacklog(t, c, cfg, v2, "secrets", "update", hook), "secrets update")
	suMust(t, suBacklog(t, c, cfg, "", "actions", "run", act.Action.ID), "actions run after update")
	if tg.lastAuth() != "Bearer "+v2 {
		t.Fatal("the action did not use the updated value")
	}

	// Versions and rollback.
	if r := suMust(t, suBacklog(t, c, cfg, "", "secrets", "versions", hook), "secrets versions"); !strings.Contains(r.stdout, "2") || !strings.Contains(r.stdout, "yes") {
		t.Fatalf("versions: %q", r.stdout)
	}
	if r := suBacklog(t, c, cfg, "", "secrets", "rollback", hook, "--version", "9", "--yes"); r.code != 4 {
		t.Fatalf("rollback to a missing version: exit %d %q", r.code, r.stderr)
	}
	suMust(t, suBacklog(t, c, cfg, "", "secrets", "rollback", hook, "--version", "1", "--yes"), "secrets rollback")
	suMust(t, suBacklog(t, c, cfg, "", "actions", "run", act.Action.ID), "actions run after rollback")
	if tg.lastAuth() != "Bearer "+v1 {
		t.Fatal("rollback did not restore the value")
	}

	// Bound to another host, the action sends nothing.
	suMust(t, suBacklog(t, c, cfg, v1, "secrets", "update", hook, "--allowed-host", "hooks.elsewhere.example"), "secrets update --allowed-host")
	before := tg.count.Load()
	if r := suBacklog(t, c, cfg, "", "actions", "run", act.Action.ID); r.code == 0 || !strings.Contains(r.stderr, "hooks.elsewhere.example") {
		t.Fatalf("run to a host outside allowedHosts: exit %d %q", r.code, r.stderr)
	}
	if tg.count.Load() != before {
		t.Fatal("a step to a host outside allowedHosts was sent")
	}
	suMust(t, suBacklog(t, c, cfg, v1, "secrets", "update", hook, "--allowed-host", tg.host()), "secrets update --allowed-host back")

	// "Confirm that no active agents or actions still depend on it": the
	// CLI names the dependents and refuses without --force.
	r = suBacklog(t, c, cfg, "", "secrets", "delete", hook, "--yes")
	if r.code != 5 || !strings.Contains(r.stderr, "Notify ops") || !strings.Contains(r.stderr, act.Action.ID) || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("delete in use: exit %d %q", r.code, r.stderr)
	}
	suMust(t, suBacklog(t, c, cfg, "", "secrets", "revoke", hook, "--yes", "--force"), "secrets revoke --force")
	sent := tg.count.Load()
	if r := suBacklog(t, c, cfg, "", "actions", "run", act.Action.ID); r.code == 0 || !strings.Contains(r.stderr, hook) || !strings.Contains(r.stderr, "revoked") {
		t.Fatalf("run after revoke: exit %d %q", r.code, r.stderr)
	}
	suMust(t, suBacklog(t, c, cfg, "", "secrets", "delete", hook, "--yes", "--force"), "secrets delete --force")
	if r := suBacklog(t, c, cfg, "", "actions", "run", act.Action.ID); r.code != 4 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("run after delete: exit %d %q", r.code, r.stderr)
	}
	if tg.count.Load() != sent {
		t.Fatal("a run with a revoked or deleted secret sent something")
	}
	suMust(t, suBacklog(t, c, cfg, "", "actions", "delete", act.Action.ID, "--yes"), "actions delete")
	suMust(t, suBacklog(t, c, cfg, "", "connections", "delete", conn.Connection.ID, "--yes"), "connections delete")
	suMust(t, suBacklog(t, c, cfg, "", "secrets", "delete", hubspot, "--yes"), "secrets delete (no longer used)")
	for _, v := range []string{hsValue, v1, v2} {
		if c.LogsContain(v) {
			t.Fatal("a secret value appeared in a log line")
		}
	}
}
