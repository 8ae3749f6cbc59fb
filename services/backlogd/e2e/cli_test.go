package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/backlog/controlplane/services/kit/proctest"
)

// cliRun is one ./backlog.sh invocation.
type cliRun struct {
	stdout, stderr string
	err            error
}

// backlogSh runs ./backlog.sh from the repository root, as a person would,
// against the cluster's gateway with its own config dir.
func backlogSh(t *testing.T, c *cluster, configDir string, args ...string) cliRun {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(here), "..", "..", "..")
	cmd := exec.Command("bash", "./backlog.sh")
	cmd.Args = append(cmd.Args, args...)
	cmd.Dir = root
	cmd.Env = append(proctest.CleanEnv(), "BACKLOG_URL="+c.URL(""), "BACKLOG_CONFIG_DIR="+configDir)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	c.creds.scan(out.Bytes()) // everything it printed once must never leak elsewhere
	return cliRun{out.String(), errb.String(), err}
}

func mustCLI(t *testing.T, r cliRun, what string) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: %v\nstderr: %s", what, r.err, redact(r.stderr))
	}
}

// TestCLISeedWorkflows runs the two automation seed workflows word for word
// through ./backlog.sh against a real backlogd:
//
//	Exchange an Automation Secret: auth set-token blg_auto_…, auth exchange
//	--save, read the token metadata and expiry, run resource commands that
//	use the access token, never the long-lived secret.
//
//	Rotate an Automation Secret: the new raw secret comes back once, and from
//	that moment the old secret is dead.
func TestCLISeedWorkflows(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is needed to run ./backlog.sh")
	}
	c := startCluster(t, layoutAll)
	cfg := t.TempDir()
	opFile := filepath.Join(c.ProcFor(proctest.TargetCredential).DataDir, "operator-token")

	mustCLI(t, backlogSh(t, c, cfg, "workspaces", "create", "Acme", "--operator-token-file", opFile, "--save"), "workspaces create")
	r := backlogSh(t, c, cfg, "automations", "create", "--name", "ci", "--scope", "automations:read", "--label", "first", "-o", "json")
	mustCLI(t, r, "automations create")
	var created struct {
		Automation struct{ ID string }
		Secret     string
	}
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil || kindOf(created.Secret) != "auto" {
		t.Fatalf("automations create -o json: %v", err)
	}
	id, oldSecret := created.Automation.ID, created.Secret

	// Exchange an Automation Secret.
	r = backlogSh(t, c, cfg, "auth", "set-token", oldSecret)
	mustCLI(t, r, "auth set-token")
	if !strings.Contains(r.stdout+r.stderr, "automation secret") {
		t.Fatalf("set-token does not say which kind it stored: %q", r.stdout+r.stderr)
	}
	r = backlogSh(t, c, cfg, "auth", "exchange", "--save")
	mustCLI(t, r, "auth exchange --save")
	if !strings.Contains(r.stdout, "Saved access token") || !strings.Contains(r.stdout, "expires") {
		t.Fatalf("exchange --save output lacks the metadata: %q", redact(r.stdout))
	}
	if credentialRE.MatchString(r.stdout) {
		t.Fatal("exchange --save printed a credential")
	}
	r = backlogSh(t, c, cfg, "auth", "status", "--check")
	mustCLI(t, r, "auth status --check")
	if !strings.Contains(r.stdout, "access") || strings.Contains(r.stdout, oldSecret) {
		t.Fatalf("auth status: %q", redact(r.stdout))
	}
	r = backlogSh(t, c, cfg, "automations", "list")
	mustCLI(t, r, "automations list with the access token")
	if !strings.Contains(r.stdout, id) {
		t.Fatalf("automations list does not show %s: %q", id, r.stdout)
	}
	// The profile's saved token must be an access token.
	profile, err := os.ReadFile(filepath.Join(cfg, "default.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(cfg, "default.json")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("profile mode %v", fi.Mode().Perm())
	}
	if !bytes.Contains(profile, []byte("blg_at_")) {
		t.Fatal("no access token saved in the profile")
	}
	// Resource commands refuse the long-lived secret.
	mustCLI(t, backlogSh(t, c, cfg, "auth", "use", "secret"), "auth use secret")
	r = backlogSh(t, c, cfg, "automations", "list")
	if r.err == nil || !strings.Contains(r.stderr, "auth exchange") {
		t.Fatalf("automations list with use=secret: err=%v stderr=%q", r.err, redact(r.stderr))
	}
	// set-token says which kind it saw when the wrong one is given.
	r = backlogSh(t, c, cfg, "auth", "set-token", "--kind", "auto", c.OperatorToken)
	if r.err == nil || !strings.Contains(r.stderr, "operator") {
		t.Fatalf("set-token --kind auto with an operator token: err=%v stderr=%q", r.err, redact(r.stderr))
	}

	// Rotate an Automation Secret.
	mustCLI(t, backlogSh(t, c, cfg, "auth", "use", "personal"), "auth use personal")
	r = backlogSh(t, c, cfg, "automations", "rotate-secret", id, "--label", "second", "-o", "json", "--yes")
	mustCLI(t, r, "automations rotate-secret")
	var rotated struct {
		Secret     string
		Credential struct{ ID, Label, CreatedAt string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rotated); err != nil || kindOf(rotated.Secret) != "auto" ||
		rotated.Credential.Label != "second" || rotated.Credential.ID == "" || rotated.Credential.CreatedAt == "" {
		t.Fatalf("rotate-secret -o json: %v (label %q)", err, rotated.Credential.Label)
	}
	// From that moment the old secret is dead, and so is the token from it.
	mustCLI(t, backlogSh(t, c, cfg, "auth", "use", "access"), "auth use access")
	if r = backlogSh(t, c, cfg, "automations", "list"); r.err == nil {
		t.Fatal("the access token exchanged from the old secret still works after rotation")
	}
	mustCLI(t, backlogSh(t, c, cfg, "auth", "set-token", oldSecret), "set-token old")
	if r = backlogSh(t, c, cfg, "auth", "exchange", "--save"); r.err == nil || !strings.Contains(r.stderr, "401") {
		t.Fatalf("exchange of the old secret: err=%v stderr=%q", r.err, redact(r.stderr))
	}
	mustCLI(t, backlogSh(t, c, cfg, "auth", "set-token", rotated.Secret), "set-token new")
	mustCLI(t, backlogSh(t, c, cfg, "auth", "exchange", "--save"), "exchange of the new secret")
	mustCLI(t, backlogSh(t, c, cfg, "automations", "get", id), "automations get with the new token")
}
