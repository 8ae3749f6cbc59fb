package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/spf13/cobra"
)

// The end-to-end tests of these commands run ./backlog.sh against a real
// backlogd (services/backlogd/e2e/cli_complete_test.go); these cover what a
// real server cannot be made to do on demand (a transport failure on every
// attempt, a 503) and the local pieces (exit codes, the keyring seam).

func TestExitCodeOfStatus(t *testing.T) {
	cases := map[int]int{400: ExitError, 401: ExitAuth, 403: ExitAuth, 404: ExitNotFound, 409: ExitConflict,
		412: ExitConflict, 422: ExitConflict, 429: ExitRateLimited, 500: ExitError, 503: ExitError}
	for status, want := range cases {
		if got := ExitCode(fmt.Errorf("wrapped: %w", &APIError{Status: status})); got != want {
			t.Errorf("HTTP %d: exit %d, want %d", status, got, want)
		}
	}
	if got := ExitCode(usageErrorf("x")); got != ExitUsage {
		t.Errorf("usage error: %d", got)
	}
	if got := ExitCode(errors.New("disk full")); got != ExitError {
		t.Errorf("other error: %d", got)
	}
	if ExitCode(nil) != ExitOK {
		t.Error("nil error is not exit 0")
	}
}

func TestEveryCommandsArgErrorIsUsage(t *testing.T) {
	// markUsageErrors wraps every Args validator, including commands added
	// with registerCommand.
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Args != nil && !c.HasSubCommands() {
			if err := c.Args(c, []string{"a", "b", "c", "d", "e"}); err != nil {
				n++
				if ExitCode(err) != ExitUsage {
					t.Errorf("%s: too many arguments exits %d", c.CommandPath(), ExitCode(err))
				}
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewCommand(&Env{}))
	if n < 20 {
		t.Errorf("only %d commands refuse five arguments", n)
	}
}

func TestConfirmation(t *testing.T) {
	h := newHarness(t)
	var deletes int
	h.api.handle("DELETE /v1/workspaces/{ws}/secrets/{name}", func(w http.ResponseWriter, r *http.Request) {
		deletes++
		writeJSON(w, 200, map[string]any{})
	})
	h.saveProfile("default", &Profile{PersonalToken: h.personal, Use: UsePersonal, WorkspaceID: "ws_1"})

	r := h.run("secrets", "delete", "db")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "stdin is not a terminal: pass --yes") || deletes != 0 {
		t.Fatalf("no terminal, no --yes: exit %d, %q, %d deletes", r.code, r.stderr, deletes)
	}
	r = h.runWith(runOpts{terminal: true, stdin: "n\n"}, "secrets", "delete", "db")
	if r.code != ExitError || !strings.Contains(r.stderr, "Delete secret db?") || !strings.Contains(r.stderr, "[y/N]: ") || !strings.Contains(r.stderr, "cancelled") || deletes != 0 {
		t.Fatalf("answered n: exit %d, %q, %d deletes", r.code, r.stderr, deletes)
	}
	r = h.runWith(runOpts{terminal: true, stdin: "\n"}, "secrets", "delete", "db")
	if r.code != ExitError || deletes != 0 {
		t.Fatalf("answered nothing: exit %d, %d deletes", r.code, deletes)
	}
	h.runWith(runOpts{terminal: true, stdin: "yes\n"}, "secrets", "delete", "db")
	if deletes != 1 {
		t.Fatalf("answered yes: %d deletes", deletes)
	}
	h.mustRun("secrets", "delete", "db", "-y")
	if deletes != 2 {
		t.Fatalf("-y: %d deletes", deletes)
	}
}

func TestListAllFollowsEveryPage(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	var tokens []string
	h.api.handle("GET /v1/workspaces/{ws}/members", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		tokens = append(tokens, r.URL.Query().Get("pageToken"))
		mu.Unlock()
		page, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Query().Get("pageToken"), "p"))
		next := ""
		if page < 2 {
			next = "p" + strconv.Itoa(page+1)
		}
		writeJSON(w, 200, map[string]any{"members": []any{map[string]any{"id": "mem_" + strconv.Itoa(page), "name": "M"}}, "nextPageToken": next})
	})
	h.saveProfile("default", &Profile{PersonalToken: h.personal, Use: UsePersonal, WorkspaceID: "ws_1"})
	r := h.mustRun("members", "list", "--all", "-o", "json")
	var got struct {
		Members       []member `json:"members"`
		NextPageToken *string  `json:"nextPageToken"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Members) != 3 || got.Members[2].ID != "mem_2" || got.NextPageToken != nil {
		t.Fatalf("--all: %s", r.stdout)
	}
	if strings.Join(tokens, ",") != ",p1,p2" {
		t.Fatalf("page tokens sent: %q", tokens)
	}
	// A server that repeats a token does not keep the command forever.
	h2 := newHarness(t)
	h2.api.handle("GET /v1/workspaces/{ws}/installations", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"installations": []any{}, "nextPageToken": "same"})
	})
	h2.saveProfile("default", &Profile{PersonalToken: h2.personal, Use: UsePersonal, WorkspaceID: "ws_1"})
	if r := h2.run("installations", "list", "--all"); r.code != ExitError || !strings.Contains(r.stderr, "same nextPageToken twice") {
		t.Fatalf("looping server: exit %d, %q", r.code, r.stderr)
	}
}

func TestSelfRotateRetriesWithTheSameKey(t *testing.T) {
	old := selfRotateBackoff
	selfRotateBackoff = []time.Duration{0, 0, 0}
	t.Cleanup(func() { selfRotateBackoff = old })

	h := newHarness(t)
	key, rot := credfmt.New(credfmt.AgentKey), credfmt.New(credfmt.RotationSecret)
	newKey, newRot := credfmt.New(credfmt.AgentKey), credfmt.New(credfmt.RotationSecret)
	var mu sync.Mutex
	var keys []string
	fail := 2 // answers that never arrive (503 from a proxy)
	h.api.handle("POST /v1/agents/self/rotate-key", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		if fail > 0 {
			fail--
			writeErr(w, 503, 14, "upstream unavailable")
			return
		}
		writeJSON(w, 200, map[string]any{"message": "rotated", "apiKey": newKey, "rotationSecret": newRot, "agentId": "agt_1", "agentName": "bot"})
	})
	h.saveProfile("bot", &Profile{AgentKey: key, RotationSecret: rot})
	r := h.mustRun("--profile", "bot", "agents", "self", "rotate-key", "--yes")
	if len(keys) != 3 || keys[0] == "" || keys[0] != keys[1] || keys[1] != keys[2] {
		t.Fatalf("Idempotency-Keys of the attempts: %q", keys)
	}
	p := h.profile("bot")
	if p.AgentKey != newKey || p.RotationSecret != newRot || p.PendingRotation != "" {
		t.Fatal("the new pair is not saved")
	}
	assertNoToken(t, "output", r.stdout+r.stderr, newKey)
	assertNoToken(t, "output", r.stdout+r.stderr, rot)

	// Every attempt fails: the key stays in the profile for the next run.
	fail = 100
	keys = nil
	r = h.run("--profile", "bot", "agents", "self", "rotate-key", "--yes")
	if r.code != ExitError || len(keys) != len(selfRotateBackoff)+1 || !strings.Contains(r.stderr, "./backlog.sh --profile bot agents self rotate-key") {
		t.Fatalf("all attempts fail: exit %d, %d attempts, %q", r.code, len(keys), r.stderr)
	}
	if p := h.profile("bot"); p.PendingRotation != keys[0] || p.AgentKey != newKey {
		t.Fatal("the pending Idempotency-Key is not kept")
	}
	fail = 0
	first := keys[0]
	keys = nil
	h.mustRun("--profile", "bot", "agents", "self", "rotate-key", "--yes")
	if keys[0] != first {
		t.Fatal("the next run did not reuse the pending Idempotency-Key")
	}
	// A definite refusal (401: the pair is not current) forgets the key.
	h.saveProfile("stale", &Profile{AgentKey: key, RotationSecret: rot, PendingRotation: "cli-old"})
	h2 := newHarness(t)
	h2.api.handle("POST /v1/agents/self/rotate-key", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, 401, 16, "invalid API key")
	})
	h2.cfgDir = h.cfgDir
	r = h2.run("--profile", "stale", "agents", "self", "rotate-key", "--yes")
	if r.code != ExitAuth || !strings.Contains(r.stderr, "agents rotate-key AGENT_ID") {
		t.Fatalf("401: exit %d, %q", r.code, r.stderr)
	}
	if p := h.profile("stale"); p.PendingRotation != "" {
		t.Fatal("a refused rotation kept its Idempotency-Key")
	}
}

// testKeyring is the Keyring of harness runs (nil: none).
var testKeyring Keyring

// memKeyring is an in-memory stand-in for the OS keyring (the real one is
// exercised by TestCLICompleteKeyring in the e2e package where GNOME Keyring
// can run).
type memKeyring struct {
	mu    sync.Mutex
	items map[string]string
	fail  error
}

func (k *memKeyring) Get(service, user string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return "", k.fail
	}
	v, ok := k.items[service+"|"+user]
	if !ok {
		return "", errKeyringItemNotFound
	}
	return v, nil
}

func (k *memKeyring) Set(service, user, secret string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return k.fail
	}
	k.items[service+"|"+user] = secret
	return nil
}

func (k *memKeyring) Delete(service, user string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return k.fail
	}
	if _, ok := k.items[service+"|"+user]; !ok {
		return errKeyringItemNotFound
	}
	delete(k.items, service+"|"+user)
	return nil
}

func TestKeyringStore(t *testing.T) {
	kr := &memKeyring{items: map[string]string{}}
	st := Store{Dir: t.TempDir(), Keyring: kr, Mode: storeKeyring}
	pat := credfmt.New(credfmt.Personal)
	if err := st.Save("p", &Profile{PersonalToken: pat, Use: UsePersonal, WorkspaceID: "ws_1"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(st.Path("p"))
	if strings.Contains(string(b), "blg_") || !strings.Contains(string(b), `"credentialStore": "keyring"`) || !strings.Contains(string(b), "ws_1") {
		t.Fatalf("profile file with keyring credentials: %s", b)
	}
	if len(kr.items) != 1 {
		t.Fatalf("keyring items: %d", len(kr.items))
	}
	// Read back without asking for the keyring: the file says where they are.
	p, err := Store{Dir: st.Dir, Keyring: kr}.Load("p")
	if err != nil || p.PersonalToken != pat {
		t.Fatalf("load: %v", err)
	}
	// Without a keyring, a keyring profile says so (and never falls back).
	if _, err := (Store{Dir: st.Dir}).Load("p"); err == nil || !strings.Contains(err.Error(), "keyring") {
		t.Fatalf("load without a keyring: %v", err)
	}
	// Moved back to the file: the keyring item goes.
	if err := (Store{Dir: st.Dir, Keyring: kr, Mode: storeFile}).Save("p", p); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(st.Path("p"))
	if !strings.Contains(string(b), pat) || strings.Contains(string(b), "credentialStore") || len(kr.items) != 0 {
		t.Fatalf("back to the file: %s, %d items", b, len(kr.items))
	}
	// A keyring that fails: a clear error, nothing written in the clear.
	kr.fail = errors.New("org.freedesktop.secrets was not provided by any .service files")
	err = st.Save("q", &Profile{PersonalToken: pat})
	if err == nil || !strings.Contains(err.Error(), "OS keyring is not available") || strings.Contains(err.Error(), pat) {
		t.Fatalf("failing keyring: %v", err)
	}
	if _, err := os.Stat(st.Path("q")); !os.IsNotExist(err) {
		t.Fatal("a profile file was written although the keyring failed")
	}
}

func TestKeyringThroughCommands(t *testing.T) {
	h := newHarness(t)
	kr := &memKeyring{items: map[string]string{}}
	withKeyring := func(o runOpts, args ...string) result {
		o.env = map[string]string{"BACKLOG_CREDENTIAL_STORE": "keyring", "BACKLOG_CONFIG_DIR": h.cfgDir, "BACKLOG_URL": h.srv.URL}
		return h.runWithKeyring(kr, o, args...)
	}
	if r := withKeyring(runOpts{}, "auth", "set-token", h.secret); r.code != 0 {
		t.Fatalf("set-token: %d %s", r.code, r.stderr)
	}
	if r := h.runWithKeyring(kr, runOpts{}, "auth", "exchange", "--save"); r.code != 0 {
		t.Fatalf("exchange with the secret from the keyring: %d %s", r.code, r.stderr)
	}
	text := h.profileText("default")
	if strings.Contains(text, "blg_") {
		t.Fatalf("credentials in the file: %s", text)
	}
	if r := h.runWithKeyring(kr, runOpts{}, "automations", "list"); r.code != 0 || !strings.Contains(r.stdout, "deploy-bot") {
		t.Fatalf("list with the keyring's access token: %d %s", r.code, r.stderr)
	}
	if r := h.runWithKeyring(kr, runOpts{}, "profiles", "list"); !strings.Contains(r.stdout, "keyring") {
		t.Fatalf("profiles list: %s", r.stdout)
	}
	if r := h.runWithKeyring(kr, runOpts{}, "profiles", "delete", "default", "--yes"); r.code != 0 || len(kr.items) != 0 {
		t.Fatalf("profiles delete: %d, %d keyring items left", r.code, len(kr.items))
	}
	if r := h.runWith(runOpts{env: map[string]string{"BACKLOG_CREDENTIAL_STORE": "vault", "BACKLOG_CONFIG_DIR": h.cfgDir}}, "auth", "status"); r.code != ExitUsage {
		t.Fatalf("BACKLOG_CREDENTIAL_STORE=vault: exit %d", r.code)
	}
}

func TestProfilesUseAndList(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{PersonalToken: h.personal})
	h.saveProfile("ci", &Profile{Secret: h.secret, Use: UseAccess})
	h.mustRun("profiles", "use", "ci")
	r := h.mustRun("profiles", "list")
	if !strings.Contains(r.stdout, "*  ci") || credfmtRE(r.stdout) {
		t.Fatalf("list after use ci: %q", r.stdout)
	}
	if r := h.mustRun("auth", "exchange", "--save"); !strings.Contains(r.stdout, "profile ci") {
		t.Fatalf("the active profile is not used: %q", r.stdout)
	}
	// $BACKLOG_PROFILE and --profile win over it.
	r = h.runWith(runOpts{env: map[string]string{"BACKLOG_PROFILE": "default", "BACKLOG_CONFIG_DIR": h.cfgDir, "BACKLOG_URL": h.srv.URL}}, "auth", "status", "-o", "json")
	if !strings.Contains(r.stdout, `"profile": "default"`) {
		t.Fatalf("BACKLOG_PROFILE: %q", r.stdout)
	}
	// Deleting the active profile makes "default" active again.
	h.mustRun("profiles", "delete", "ci", "--yes")
	if r := h.run("auth", "status", "-o", "json"); !strings.Contains(r.stdout, `"profile": "default"`) {
		t.Fatalf("after deleting the active profile: %q", r.stdout)
	}
}

func credfmtRE(s string) bool { return credentialRE.MatchString(s) }

// runWithKeyring is runWith with an OS keyring in the Env.
func (h *harness) runWithKeyring(kr Keyring, o runOpts, args ...string) result {
	h.t.Helper()
	prev := testKeyring
	testKeyring = kr
	defer func() { testKeyring = prev }()
	return h.runWith(o, args...)
}
