package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
)

// The CLI's exit codes (services/cli/internal/cli/exitcode.go, README.md).
const (
	cliCompleteExitError       = 1
	cliCompleteExitUsage       = 2
	cliCompleteExitAuth        = 3
	cliCompleteExitNotFound    = 4
	cliCompleteExitConflict    = 5
	cliCompleteExitRateLimited = 6
)

// cliCompleteRun is one finished ./backlog.sh run.
type cliCompleteRun struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r cliCompleteRun) String() string {
	return fmt.Sprintf("./backlog.sh %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, redact(r.stdout), redact(r.stderr))
}

// cliCompleteCLI runs ./backlog.sh from the repository root against a
// cluster, with its own config directory.
type cliCompleteCLI struct {
	t    *testing.T
	c    *cluster
	cfg  string
	root string
	url  string   // BACKLOG_URL (default: the cluster's gateway)
	env  []string // more environment
}

func cliCompleteNew(t *testing.T, c *cluster) *cliCompleteCLI {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is needed to run ./backlog.sh")
	}
	_, here, _, _ := runtime.Caller(0)
	return &cliCompleteCLI{t: t, c: c, cfg: t.TempDir(), root: filepath.Join(filepath.Dir(here), "..", "..", ".."), url: c.URL("")}
}

func (x *cliCompleteCLI) command(args ...string) *exec.Cmd {
	cmd := exec.Command("bash", append([]string{"./backlog.sh"}, args...)...)
	cmd.Dir = x.root
	cmd.Env = append(proctest.CleanEnv(), "BACKLOG_URL="+x.url, "BACKLOG_CONFIG_DIR="+x.cfg)
	cmd.Env = append(cmd.Env, x.env...)
	return cmd
}

// runIn runs the CLI with stdin.
func (x *cliCompleteCLI) runIn(stdin string, args ...string) cliCompleteRun {
	x.t.Helper()
	cmd := x.command(args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		x.t.Fatalf("./backlog.sh %s: %v", strings.Join(args, " "), err)
	}
	x.c.creds.scan(out.Bytes()) // what it printed once must never leak elsewhere
	return cliCompleteRun{args: args, stdout: out.String(), stderr: errb.String(), code: code}
}

func (x *cliCompleteCLI) run(args ...string) cliCompleteRun {
	x.t.Helper()
	return x.runIn("", args...)
}

// ok runs the CLI and fails the test unless it exits 0.
func (x *cliCompleteCLI) ok(args ...string) cliCompleteRun {
	x.t.Helper()
	r := x.run(args...)
	if r.code != 0 {
		x.t.Fatalf("%s", r)
	}
	return r
}

// exits runs the CLI and fails the test unless it exits code.
func (x *cliCompleteCLI) exits(code int, args ...string) cliCompleteRun {
	x.t.Helper()
	r := x.run(args...)
	if r.code != code {
		x.t.Fatalf("want exit %d: %s", code, r)
	}
	return r
}

func (x *cliCompleteCLI) json(args ...string) obj {
	x.t.Helper()
	r := x.ok(append(args, "-o", "json")...)
	var o obj
	if err := json.Unmarshal([]byte(r.stdout), &o); err != nil {
		x.t.Fatalf("%s: not a JSON object: %v", r, err)
	}
	return o
}

// profile reads a profile file as it is on disk.
func (x *cliCompleteCLI) profile(name string) (obj, string) {
	x.t.Helper()
	b, err := os.ReadFile(filepath.Join(x.cfg, name+".json"))
	if err != nil {
		x.t.Fatal(err)
	}
	var o obj
	if err := json.Unmarshal(b, &o); err != nil {
		x.t.Fatalf("profile %s: %v", name, err)
	}
	return o, string(b)
}

// TestCLICompleteCommands drives every command issue 17 added to the CLI
// through ./backlog.sh against one real backlogd: exit codes, confirmations,
// --all, audit list (and --follow), http-request run, auth status, auth
// logout, profiles, completion and the 403 hint.
func TestCLICompleteCommands(t *testing.T) {
	// A real HTTPS target for the HTTP Request step, trusted by the vault.
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
		}
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Echo", r.Header.Get("Authorization"))
		fmt.Fprintf(w, "got %s %s auth=%s", r.Method, b, r.Header.Get("Authorization"))
	}))
	defer target.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	writeCertPEM(t, caFile, target.Certificate().Raw)
	kek := filepath.Join(dir, "vault.kek")
	if out, err := exec.Command(binary, "vault", "gen-kek", "-out", kek).CombinedOutput(); err != nil {
		t.Fatalf("gen-kek: %v %s", err, out)
	}
	c := startCluster(t, layoutAll, "-vault-kek-file="+kek, "-vault-egress-ca-file="+caFile, "-vault-egress-allow-private")
	x := cliCompleteNew(t, c)
	opFile := filepath.Join(c.ProcFor(proctest.TargetCredential).DataDir, "operator-token")
	x.ok("workspaces", "create", "Acme", "--operator-token-file", opFile, "--save")
	prof, _ := x.profile("default")
	wsID := prof.str("workspaceId")
	owner := prof.str("personalToken")

	t.Run("exit codes", func(t *testing.T) {
		x.t = t
		x.exits(cliCompleteExitUsage, "automations", "list", "--bogus")
		x.exits(cliCompleteExitUsage, "automations", "get")
		x.exits(cliCompleteExitUsage, "automations", "lst")
		x.exits(cliCompleteExitNotFound, "automations", "get", "auto_doesnotexist")
		x.ok("automations", "create", "dup")
		r := x.exits(cliCompleteExitConflict, "automations", "create", "dup")
		if !strings.Contains(r.stderr, "409") {
			t.Fatalf("duplicate name: %s", r)
		}
		// A credential that stopped working (its member was removed): 401.
		memberID, memberTok := c.createMember(t, workspace{ID: wsID, OwnerToken: owner}, "Leaver", "member")
		c.expect(t, 200, "DELETE", "/v1/workspaces/"+wsID+"/members/"+memberID, owner, nil)
		gone := cliCompleteNew(t, c)
		gone.ok("auth", "set-token", memberTok)
		if r := gone.exits(cliCompleteExitAuth, "automations", "list", "-w", wsID); !strings.Contains(r.stderr, "401") {
			t.Fatalf("dead personal token: %s", r)
		}
		// No credential at all: 3 as well, before anything is sent.
		empty := cliCompleteNew(t, c)
		empty.exits(cliCompleteExitAuth, "automations", "list", "-w", wsID)
	})

	t.Run("confirmation", func(t *testing.T) {
		x.t = t
		x.runIn("v1", "secrets", "create", "keep-me", "--kind", "integration")
		r := x.exits(cliCompleteExitUsage, "secrets", "delete", "keep-me")
		if !strings.Contains(r.stderr, "--yes") || !strings.Contains(r.stderr, "./backlog.sh") {
			t.Fatalf("refusal without a terminal: %s", r)
		}
		c.expect(t, 200, "GET", "/v1/workspaces/"+wsID+"/secrets/keep-me", owner, nil) // nothing was sent
		x.exits(cliCompleteExitUsage, "secrets", "revoke", "keep-me")
		x.exits(cliCompleteExitUsage, "automations", "rotate-secret", "auto_x")
		x.exits(cliCompleteExitUsage, "agents", "revoke", "agt_x")
		x.exits(cliCompleteExitUsage, "members", "delete", "mem_x")

		// On a real terminal (a pty from script(1)) it asks; "n" keeps it, "y" deletes.
		if _, err := exec.LookPath("script"); err == nil {
			if out := cliCompleteOnTerminal(t, x, "n\n", "secrets", "delete", "keep-me"); !strings.Contains(out, "Delete secret keep-me?") || !strings.Contains(out, "cancelled") {
				t.Fatalf("terminal, answer n: %q", out)
			}
			c.expect(t, 200, "GET", "/v1/workspaces/"+wsID+"/secrets/keep-me", owner, nil)
			if out := cliCompleteOnTerminal(t, x, "y\n", "secrets", "delete", "keep-me"); !strings.Contains(out, "Deleted secret keep-me.") {
				t.Fatalf("terminal, answer y: %q", out)
			}
			c.expectError(t, 404, 5, "GET", "/v1/workspaces/"+wsID+"/secrets/keep-me", owner, nil)
		} else {
			x.ok("secrets", "delete", "keep-me", "--yes")
		}
		x.exits(cliCompleteExitNotFound, "secrets", "delete", "keep-me", "--yes")
	})

	t.Run("all pages", func(t *testing.T) {
		x.t = t
		for i := 0; i < 4; i++ {
			x.ok("automations", "create", fmt.Sprintf("paged-%d", i))
		}
		want := len(c.expect(t, 200, "GET", "/v1/workspaces/"+wsID+"/automations?pageSize=100", owner, nil).list("automations"))
		one := x.json("automations", "list", "--page-size", "2")
		if len(one.list("automations")) != 2 || one.str("nextPageToken") == "" {
			t.Fatalf("one page of 2: %v", one)
		}
		all := x.json("automations", "list", "--page-size", "2", "--all")
		if got := len(all.list("automations")); got != want || all.str("nextPageToken") != "" {
			t.Fatalf("--all --page-size 2: %d automations (want %d), next %q", got, want, all.str("nextPageToken"))
		}
		ids := map[string]bool{}
		for _, a := range all.list("automations") {
			ids[a.str("id")] = true
		}
		if len(ids) != want {
			t.Fatalf("--all repeated automations: %d distinct of %d", len(ids), want)
		}
		if r := x.ok("automations", "list", "--page-size", "2", "--all"); strings.Contains(r.stdout, "More results") {
			t.Fatalf("--all table still offers another page: %s", r)
		}
	})

	t.Run("audit list", func(t *testing.T) {
		x.t = t
		created := x.json("automations", "create", "audited")
		id := created.str("automation.id")
		x.ok("automations", "delete", id, "--yes")

		evs := x.json("audit", "list", "--target", id, "--all").list("auditEvents")
		var actions []string
		for _, e := range evs {
			if e.str("targetId") != id {
				t.Fatalf("--target %s returned an event about %s", id, e.str("targetId"))
			}
			actions = append(actions, e.str("action"))
		}
		if strings.Join(actions, ",") != "automation.create,automation.delete" {
			t.Fatalf("--target %s: actions %v", id, actions)
		}
		for _, e := range x.json("audit", "list", "--action", "automation.delete", "--all").list("auditEvents") {
			if e.str("action") != "automation.delete" {
				t.Fatalf("--action automation.delete returned %s", e.str("action"))
			}
		}
		if n := len(x.json("audit", "list", "--target", id, "--until", "1h").list("auditEvents")); n != 0 {
			t.Fatalf("--until 1h (an hour ago) returned %d events of now", n)
		}
		if n := len(x.json("audit", "list", "--target", id, "--since", "1h").list("auditEvents")); n != 2 {
			t.Fatalf("--since 1h returned %d events, want 2", n)
		}
		if r := x.ok("audit", "list", "--target", id); !strings.Contains(r.stdout, "automation.delete") || !strings.Contains(r.stdout, "ACTION") {
			t.Fatalf("table: %s", r)
		}
		x.exits(cliCompleteExitUsage, "audit", "list", "--since", "yesterday")
		// A member may not read the trail: 403, exit 3.
		_, memberTok := c.createMember(t, workspace{ID: wsID, OwnerToken: owner}, "Grace", "member")
		m := cliCompleteNew(t, c)
		m.ok("auth", "set-token", memberTok)
		m.exits(cliCompleteExitAuth, "audit", "list", "-w", wsID)
	})

	t.Run("audit follow", func(t *testing.T) {
		x.t = t
		cliCompleteFollow(t, x, c, wsID, owner)
	})

	t.Run("http-request run", func(t *testing.T) {
		x.t = t
		value := "hook_value_" + strings.Repeat("z", 24)
		c.creds.add(value)
		x.runIn(value, "secrets", "create", "hook", "--kind", "webhook")
		r := x.ok("http-request", "run", "POST", target.URL+"/in", "-H", "Authorization: Bearer {secret:hook}", "-d", "payload", "--include")
		if !strings.HasPrefix(r.stdout, "got POST payload auth=Bearer [REDACTED:hook]") || strings.Contains(r.stdout+r.stderr, value) {
			t.Fatalf("body: %s", r)
		}
		if !strings.Contains(r.stderr, "HTTP 200") || !strings.Contains(r.stderr, "Secrets used: hook") || !strings.Contains(r.stderr, "X-Echo: Bearer [REDACTED:hook]") {
			t.Fatalf("status, headers and secrets used: %s", r)
		}
		o := x.json("http-request", "run", target.URL+"/json", "-H", "Authorization: {secret:hook}")
		if o.num("statusCode") != 200 || !strings.Contains(o.str("body"), "got GET") {
			t.Fatalf("-o json: %v", o)
		}
		// The step ran; the target failed: 0, or 1 with --fail.
		x.ok("http-request", "run", target.URL+"/fail")
		if r := x.exits(cliCompleteExitError, "http-request", "run", target.URL+"/fail", "--fail"); !strings.Contains(r.stderr, "HTTP 500") {
			t.Fatalf("--fail: %s", r)
		}
		// A secret over plain HTTP is refused (400): nothing is sent.
		x.exits(cliCompleteExitError, "http-request", "run", strings.Replace(target.URL, "https:", "http:", 1), "-H", "Authorization: {secret:hook}")
		x.exits(cliCompleteExitNotFound, "http-request", "run", target.URL, "-H", "Authorization: {secret:nope}")
		x.exits(cliCompleteExitUsage, "http-request", "run")
	})

	t.Run("auth status", func(t *testing.T) {
		x.t = t
		created := x.json("automations", "create", "status-bot", "--scope", "automations:read")
		auto := cliCompleteNew(t, c)
		auto.ok("auth", "set-token", created.str("secret"))
		auto.ok("auth", "exchange", "--save")
		auto.ok("auth", "status")
		auto.ok("auth", "status", "--check")
		// Dead: the secret was rotated, so its access token stopped working.
		x.ok("automations", "rotate-secret", created.str("automation.id"), "--yes")
		auto.ok("auth", "status") // the CLI cannot know without asking
		if r := auto.exits(cliCompleteExitAuth, "auth", "status", "--check"); !strings.Contains(r.stderr, "401") {
			t.Fatalf("dead token: %s", r)
		}
		// Expired: a 1 s token, a second later.
		rot := x.json("automations", "rotate-secret", created.str("automation.id"), "--yes")
		auto.ok("auth", "set-token", rot.str("secret"))
		auto.ok("auth", "exchange", "--save", "--ttl", "1s")
		time.Sleep(1100 * time.Millisecond)
		if r := auto.exits(cliCompleteExitAuth, "auth", "status"); !strings.Contains(r.stdout, "EXPIRED") || !strings.Contains(r.stderr, "./backlog.sh auth exchange --save") {
			t.Fatalf("expired token: %s", r)
		}
		auto.exits(cliCompleteExitAuth, "automations", "list")
		// Nothing stored: 3.
		cliCompleteNew(t, c).exits(cliCompleteExitAuth, "auth", "status")
	})

	t.Run("403 hint keeps the profile", func(t *testing.T) {
		x.t = t
		created := x.json("automations", "create", "reader", "--scope", "automations:read")
		x.ok("--profile", "ci", "auth", "set-token", owner)
		x.ok("--profile", "ci", "auth", "set-token", created.str("secret"))
		x.ok("--profile", "ci", "auth", "exchange", "--save")
		r := x.exits(cliCompleteExitAuth, "--profile", "ci", "automations", "create", "nope")
		if !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, "`./backlog.sh --profile ci auth use personal`") {
			t.Fatalf("403 with a personal token in the profile: %s", r)
		}
		x.ok("--profile", "ci", "auth", "use", "personal")
		x.ok("--profile", "ci", "automations", "create", "now-allowed")
		// A 401 hint keeps it too.
		x.ok("--profile", "ci", "auth", "use", "access")
		x.ok("automations", "rotate-secret", created.str("automation.id"), "--yes")
		if r := x.exits(cliCompleteExitAuth, "--profile", "ci", "automations", "list"); !strings.Contains(r.stderr, "`./backlog.sh --profile ci auth exchange --save`") {
			t.Fatalf("401 hint: %s", r)
		}
		x.ok("--profile", "ci", "auth", "use", "personal")
	})

	t.Run("profiles and logout", func(t *testing.T) {
		x.t = t
		x.ok("--profile", "spare", "auth", "set-token", owner)
		list := x.json("profiles", "list")
		var names []string
		for _, p := range list.list("profiles") {
			names = append(names, p.str("name"))
			if p.str("name") == "default" && !p.boolean("active") {
				t.Fatalf("default is not active: %v", p)
			}
		}
		if !containsAll(names, "ci", "default", "spare") {
			t.Fatalf("profiles list: %v", names)
		}
		if r := x.ok("profiles", "list"); credentialRE.MatchString(r.stdout) {
			t.Fatal("profiles list printed a credential")
		}
		x.ok("profiles", "use", "ci")
		if st := x.json("auth", "status"); st.str("profile") != "ci" {
			t.Fatalf("after profiles use ci, auth status shows %q", st.str("profile"))
		}
		x.exits(cliCompleteExitNotFound, "profiles", "use", "ghost")
		x.ok("profiles", "use", "default")

		x.exits(cliCompleteExitUsage, "profiles", "delete", "spare")
		x.ok("profiles", "delete", "spare", "--yes")
		if _, err := os.Stat(filepath.Join(x.cfg, "spare.json")); !os.IsNotExist(err) {
			t.Fatalf("profiles delete left the file: %v", err)
		}
		x.exits(cliCompleteExitNotFound, "profiles", "delete", "spare", "--yes")

		if r := x.ok("--profile", "ci", "auth", "logout"); !strings.Contains(r.stdout, "personal access token") {
			t.Fatalf("logout: %s", r)
		}
		if _, text := x.profile("ci"); credentialRE.MatchString(text) {
			t.Fatal("the profile still holds a credential after logout")
		}
		x.exits(cliCompleteExitAuth, "--profile", "ci", "auth", "status")
		x.exits(cliCompleteExitAuth, "--profile", "ci", "automations", "list")
		c.expect(t, 200, "GET", "/v1/workspaces/"+wsID+"/automations", owner, nil) // logout is local
	})

	t.Run("completion", func(t *testing.T) {
		x.t = t
		for shell, want := range map[string]string{"bash": "complete -o default -F __start_backlog ./backlog.sh", "zsh": "#compdef backlog", "fish": "complete -c backlog"} {
			if r := x.ok("completion", shell); !strings.Contains(r.stdout, want) {
				t.Fatalf("completion %s lacks %q", shell, want)
			}
		}
		// What the scripts ask for: the completions of a partial command line.
		if r := x.ok("__complete", "aud"); !strings.Contains(r.stdout, "audit") {
			t.Fatalf("__complete aud: %s", r)
		}
		if r := x.ok("__complete", "profiles", "use", ""); !strings.Contains(r.stdout, "default") || !strings.Contains(r.stdout, "ci") {
			t.Fatalf("profile names are not completed: %s", r)
		}
		if _, err := exec.LookPath("bash"); err == nil {
			// bash itself loads the script and completes through the wrapper.
			// The script uses bash-completion's _get_comp_words_by_ref; where
			// that package is missing, a minimal equivalent stands in.
			script := `if [ -r /usr/share/bash-completion/bash_completion ]; then . /usr/share/bash-completion/bash_completion; else
_get_comp_words_by_ref() { cur=${COMP_WORDS[COMP_CWORD]}; prev=${COMP_WORDS[COMP_CWORD-1]}; words=("${COMP_WORDS[@]}"); cword=$COMP_CWORD; }; fi
source <(./backlog.sh completion bash) && COMP_WORDS=(./backlog.sh agents sel) COMP_CWORD=2 COMP_LINE="./backlog.sh agents sel" COMP_POINT=${#COMP_LINE} && __start_backlog && echo "${COMPREPLY[@]}"`
			cmd := exec.Command("bash", "-c", script)
			cmd.Dir = x.root
			cmd.Env = append(proctest.CleanEnv(), "BACKLOG_URL="+x.url, "BACKLOG_CONFIG_DIR="+x.cfg)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "self") {
				t.Fatalf("bash completion of `agents sel`: %v %q", err, out)
			}
		}
	})
}

func containsAll(have []string, want ...string) bool {
	set := map[string]bool{}
	for _, h := range have {
		set[h] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}

// cliCompleteOnTerminal runs the CLI on a pseudo-terminal (script(1)) and
// types input; it returns everything the terminal showed.
func cliCompleteOnTerminal(t *testing.T, x *cliCompleteCLI, input string, args ...string) string {
	t.Helper()
	line := "bash ./backlog.sh"
	for _, a := range args {
		line += " " + a
	}
	cmd := exec.Command("script", "-qec", line, "/dev/null")
	cmd.Dir = x.root
	cmd.Env = append(proctest.CleanEnv(), "BACKLOG_URL="+x.url, "BACKLOG_CONFIG_DIR="+x.cfg)
	pr, pw := io.Pipe()
	cmd.Stdin = pr
	out := &cliCompleteBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Type the answer once the question is on the screen.
	go func() {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) && !strings.Contains(out.String(), "[y/N]") {
			time.Sleep(20 * time.Millisecond)
		}
		io.WriteString(pw, input)
		pw.Close() // script(1) ends when its input does
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the CLI on a terminal did not finish: %q", out.String())
	}
	return out.String()
}

// cliCompleteBuffer is a bytes.Buffer safe to read while a process writes.
type cliCompleteBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *cliCompleteBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *cliCompleteBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cliCompleteFollow runs `audit list --follow -o json` as a process, makes a
// change, and waits for its event to be printed; an interrupt ends it with 0.
func cliCompleteFollow(t *testing.T, x *cliCompleteCLI, c *cluster, wsID, owner string) {
	c.createAutomation(t, wsID, owner, map[string]any{"name": "before-follow"})
	cmd := x.command("audit", "list", "--follow", "--interval", "200ms", "--action", "automation.create", "-o", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &cliCompleteBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The events so far come first: wait for the first, then make a new one.
	seen := map[string]bool{}
	waitFor := func(pred func(obj) bool) obj {
		deadline := time.After(15 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("audit list --follow ended: %s", redact(stderr.String()))
				}
				var e obj
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("--follow -o json printed a line that is not a JSON event: %q", l)
				}
				if e.str("action") != "automation.create" {
					t.Fatalf("--action automation.create printed %s", e.str("action"))
				}
				if seen[e.str("id")] {
					t.Fatalf("event %s printed twice", e.str("id"))
				}
				seen[e.str("id")] = true
				if pred(e) {
					return e
				}
			case <-deadline:
				t.Fatalf("no matching event within 15s; stderr: %s", redact(stderr.String()))
			}
		}
	}
	waitFor(func(obj) bool { return true })
	for i := 0; i < 2; i++ {
		a, _ := c.createAutomation(t, wsID, owner, map[string]any{"name": fmt.Sprintf("followed-%d", i)})
		id := a.str("id")
		waitFor(func(e obj) bool { return e.str("targetId") == id })
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("audit list --follow after an interrupt: %v (want exit 0); stderr: %s", err, redact(stderr.String()))
	}
}

// cliCompleteLossyProxy forwards to the gateway, but for self-rotations it
// loses the reply: it forwards the request, reads the whole answer (the
// rotation happened) and then drops the connection. It records the
// Idempotency-Key of each rotation attempt.
type cliCompleteLossyProxy struct {
	backend *url.URL
	rp      *httputil.ReverseProxy

	mu   sync.Mutex
	drop int // replies still to lose; -1: all
	keys []string
}

func cliCompleteNewLossyProxy(t *testing.T, gateway string) (*cliCompleteLossyProxy, string) {
	u, err := url.Parse(gateway)
	if err != nil {
		t.Fatal(err)
	}
	p := &cliCompleteLossyProxy{backend: u, rp: httputil.NewSingleHostReverseProxy(u)}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv.URL
}

func (p *cliCompleteLossyProxy) setDrop(n int) {
	p.mu.Lock()
	p.drop = n
	p.mu.Unlock()
}

func (p *cliCompleteLossyProxy) attempts() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.keys...)
}

func (p *cliCompleteLossyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/agents/self/rotate-key" {
		p.rp.ServeHTTP(w, r)
		return
	}
	p.mu.Lock()
	p.keys = append(p.keys, r.Header.Get("Idempotency-Key"))
	lose := p.drop != 0
	if p.drop > 0 {
		p.drop--
	}
	p.mu.Unlock()
	if !lose {
		p.rp.ServeHTTP(w, r)
		return
	}
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host, out.Host, out.RequestURI = p.backend.Scheme, p.backend.Host, p.backend.Host, ""
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		conn.Close() // the reply is lost
	}
}

// TestCLICompleteAgentSelfRotation runs seed 002 through ./backlog.sh: an
// agent rotates its own pair with what its profile holds, and the new pair
// is saved there. A reply lost on the way is recovered by retrying with the
// same Idempotency-Key, within one run and across runs; the fourth rotation
// within 15 minutes exits 6 (rate limited).
func TestCLICompleteAgentSelfRotation(t *testing.T) {
	c := startCluster(t, layoutAll)
	x := cliCompleteNew(t, c)
	ws := c.createWorkspace(t, "Acme")
	base := "/v1/workspaces/" + ws.ID
	inst := c.create(t, base+"/installations", ws.OwnerToken, map[string]any{"name": "GitHub"}).str("installation.id")
	created := c.create(t, base+"/installations/"+inst+"/agents", ws.OwnerToken, map[string]any{"name": "Triage bot", "role": "member"})
	agentID, key, rot := created.str("agent.id"), created.str("apiKey"), created.str("rotationSecret")

	// The agent's profile: its API key and rotation secret.
	x.ok("--profile", "bot", "auth", "set-token", key)
	if r := x.ok("--profile", "bot", "auth", "set-token", rot); !strings.Contains(r.stdout, "rotation secret") {
		t.Fatalf("set-token of a rotation secret: %s", r)
	}
	if st := x.json("--profile", "bot", "auth", "status"); st.str("use") != "agent" {
		t.Fatalf("storing the rotation secret changed what the profile sends: %v", st)
	}
	x.exits(cliCompleteExitUsage, "--profile", "bot", "agents", "self", "rotate-key") // no terminal, no --yes

	// 1. From the profile.
	r := x.ok("--profile", "bot", "agents", "self", "rotate-key", "--yes")
	if credentialRE.MatchString(r.stdout + r.stderr) {
		t.Fatal("rotate-key printed a credential without --print")
	}
	p, _ := x.profile("bot")
	key1, rot1 := p.str("agentKey"), p.str("rotationSecret")
	if key1 == key || rot1 == rot || kindOf(key1) != "agk" || kindOf(rot1) != "rot" || p.str("pendingRotation") != "" {
		t.Fatalf("the new pair is not saved in the profile")
	}
	c.creds.add(key1)
	c.creds.add(rot1)
	c.expectError(t, 401, 16, "GET", "/v1/agents/self", key, nil)
	if self := x.json("--profile", "bot", "agents", "self", "get"); self.str("agent.id") != agentID {
		t.Fatalf("agents self get with the saved key: %v", self)
	}

	// 2. The reply is lost once: the retry, with the same key, gets the pair.
	proxy, proxyURL := cliCompleteNewLossyProxy(t, c.URL(""))
	proxy.setDrop(1)
	r = x.ok("--profile", "bot", "--url", proxyURL, "agents", "self", "rotate-key", "--yes")
	keys := proxy.attempts()
	if len(keys) != 2 || keys[0] == "" || keys[0] != keys[1] {
		t.Fatalf("attempts through a lossy link sent Idempotency-Keys %q, want the same one twice", keys)
	}
	p, _ = x.profile("bot")
	key2, rot2 := p.str("agentKey"), p.str("rotationSecret")
	c.creds.add(key2)
	c.creds.add(rot2)
	if key2 == key1 || kindOf(key2) != "agk" {
		t.Fatal("after a lost reply, the profile does not hold the new key")
	}
	c.expect(t, 200, "GET", "/v1/agents/self", key2, nil)
	c.expectError(t, 401, 16, "GET", "/v1/agents/self", key1, nil)

	// 3. Every reply of a run is lost: the run fails, keeps the key, and the
	// next run gets the pair the server made.
	proxy.setDrop(-1)
	r = x.exits(cliCompleteExitError, "--profile", "bot", "--url", proxyURL, "agents", "self", "rotate-key", "--yes")
	if !strings.Contains(r.stderr, "Idempotency-Key") || !strings.Contains(r.stderr, "./backlog.sh --profile bot") {
		t.Fatalf("a run whose replies were all lost: %s", r)
	}
	p, _ = x.profile("bot")
	pending := p.str("pendingRotation")
	if pending == "" || p.str("agentKey") != key2 {
		t.Fatal("the profile did not keep the pending Idempotency-Key and the pair it was sent with")
	}
	c.expectError(t, 401, 16, "GET", "/v1/agents/self", key2, nil) // the server did rotate
	r = x.ok("--profile", "bot", "agents", "self", "rotate-key", "--yes", "--print")
	p, _ = x.profile("bot")
	key3 := p.str("agentKey")
	c.creds.add(key3)
	c.creds.add(p.str("rotationSecret"))
	if key3 == key2 || p.str("pendingRotation") != "" || !strings.Contains(r.stdout, key3) {
		t.Fatal("the next run did not recover the rotated pair")
	}
	c.expect(t, 200, "GET", "/v1/agents/self", key3, nil)
	audit := c.expect(t, 200, "GET", base+"/audit-events?targetId="+agentID+"&pageSize=100", ws.OwnerToken, nil)
	counts := map[string]int{}
	for _, e := range audit.list("auditEvents") {
		counts[e.str("action")+"/"+e.str("outcome")]++
	}
	if counts["agent.rotate_key_self/success"] != 3 || counts["agent.rotate_key_self_replay/success"] < 2 {
		t.Fatalf("audit of the rotations: %v (want 3 rotations and the replays)", counts)
	}

	// 4. The fourth rotation from this address within 15 minutes: 429, exit 6.
	if r := x.exits(cliCompleteExitRateLimited, "--profile", "bot", "agents", "self", "rotate-key", "--yes"); !strings.Contains(r.stderr, "429") {
		t.Fatalf("rate limited: %s", r)
	}
	if p, _ := x.profile("bot"); p.str("agentKey") != key3 {
		t.Fatal("a refused rotation changed the saved key")
	}

	// --stdin: the pair from stdin into another profile (an owner rotation
	// first, as the self budget of this address is spent; --stdin itself is
	// checked by the 429 it gets, which needs both credentials to be valid).
	admin := c.expect(t, 200, "POST", base+"/agents/"+agentID+"/rotate-key", ws.OwnerToken, map[string]any{})
	newKey, newRot := admin.str("apiKey"), admin.str("rotationSecret")
	r = x.runIn(newRot+"\n"+newKey+"\n", "--profile", "bot2", "agents", "self", "rotate-key", "--stdin", "--yes")
	if r.code != cliCompleteExitRateLimited {
		t.Fatalf("--stdin: %s", r)
	}
	if p, _ := x.profile("bot2"); p.str("agentKey") != newKey || p.str("rotationSecret") != newRot {
		t.Fatal("--stdin did not keep the pair it read in the profile")
	}
	x.exits(cliCompleteExitUsage, "--profile", "bot3", "agents", "self", "rotate-key", "--stdin", "--yes") // empty stdin
}

// TestCLICompleteKeyring keeps a profile's credentials in a real OS keyring
// (GNOME Keyring's Secret Service on a private D-Bus session) and works
// through them against a real backlogd. It runs where gnome-keyring-daemon
// and dbus-run-session are installed (Debian: gnome-keyring, dbus-daemon);
// elsewhere the CLI keeps the 0600 file, and the keyring wiring is covered
// by the cli module's own tests.
func TestCLICompleteKeyring(t *testing.T) {
	for _, tool := range []string{"dbus-run-session", "gnome-keyring-daemon"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: an OS keyring cannot run here (apt-get install gnome-keyring)", tool)
		}
	}
	c := startCluster(t, layoutAll)
	x := cliCompleteNew(t, c)
	home := t.TempDir()
	opFile := filepath.Join(c.ProcFor(proctest.TargetCredential).DataDir, "operator-token")
	script := `set -e
printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null
export BACKLOG_CREDENTIAL_STORE=keyring
./backlog.sh workspaces create Keyed --operator-token-file "$OP" --save >/dev/null
./backlog.sh automations create in-keyring -o json > "$HOME/created.json"
./backlog.sh automations list
unset BACKLOG_CREDENTIAL_STORE
./backlog.sh automations list >/dev/null   # the profile remembers where its credentials are
./backlog.sh auth status -o json > "$HOME/status.json"
./backlog.sh auth logout
if ./backlog.sh automations list 2>/dev/null; then echo "still logged in"; exit 1; fi
`
	cmd := exec.Command("dbus-run-session", "--", "bash", "-c", script)
	cmd.Dir = x.root
	cmd.Env = append(proctest.CleanEnv(), "BACKLOG_URL="+x.url, "BACKLOG_CONFIG_DIR="+x.cfg, "HOME="+home,
		"XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_RUNTIME_DIR="+home, "OP="+opFile)
	out, err := cmd.CombinedOutput()
	if b, rerr := os.ReadFile(filepath.Join(home, "created.json")); rerr == nil {
		c.creds.scan(b)
	}
	if err != nil {
		t.Fatalf("keyring session: %v\n%s", err, redact(string(out)))
	}
	if !strings.Contains(string(out), "in-keyring") {
		t.Fatalf("automations list with keyring credentials: %s", redact(string(out)))
	}
	var st obj
	b, _ := os.ReadFile(filepath.Join(home, "status.json"))
	if err := json.Unmarshal(b, &st); err != nil || len(st.list("credentials")) == 0 {
		t.Fatalf("auth status with keyring credentials: %v %s", err, redact(string(b)))
	}
	if _, text := x.profile("default"); credentialRE.MatchString(text) || !strings.Contains(text, `"credentialStore": "keyring"`) {
		t.Fatalf("the profile file holds credentials although they are in the keyring: %s", redact(text))
	}
	// The keyring's own files hold no credential in plaintext either.
	filepath.WalkDir(home, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(path, "keyrings") {
			if b, _ := os.ReadFile(path); credentialRE.Match(b) {
				t.Errorf("%s holds a credential in plaintext", path)
			}
		}
		return nil
	})
}

func writeCertPEM(t *testing.T, path string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
