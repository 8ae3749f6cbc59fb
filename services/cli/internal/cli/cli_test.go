package cli

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/spf13/cobra"
)

func TestSetTokenStoresByKind(t *testing.T) {
	cases := []struct {
		kind    credfmt.Kind
		field   func(*Profile) string
		wantUse string
		wantOut string
	}{
		{credfmt.Automation, func(p *Profile) string { return p.Secret }, UseAccess, "Stored an automation secret in profile default. Next: ./backlog.sh auth exchange --save"},
		{credfmt.Personal, func(p *Profile) string { return p.PersonalToken }, UsePersonal, "Stored a personal access token in profile default"},
		{credfmt.AccessToken, func(p *Profile) string { return p.AccessToken }, UseAccess, "Stored an access token in profile default"},
		{credfmt.AgentKey, func(p *Profile) string { return p.AgentKey }, UseAgent, "Stored an agent API key in profile default"},
		{credfmt.Operator, func(p *Profile) string { return p.OperatorToken }, UseOperator, "Stored an operator token in profile default"},
	}
	for _, tc := range cases {
		t.Run(string(tc.kind), func(t *testing.T) {
			h := newHarness(t)
			tok := credfmt.New(tc.kind)
			r := h.mustRun("auth", "set-token", tok)
			if !strings.Contains(r.stdout, tc.wantOut) {
				t.Errorf("stdout = %q, want it to contain %q", r.stdout, tc.wantOut)
			}
			assertNoToken(t, "output", r.stdout+r.stderr, tok)
			p := h.profile("default")
			if got := tc.field(p); got != tok {
				t.Errorf("stored %q in the wrong place", tc.kind)
			}
			if p.Use != tc.wantUse {
				t.Errorf("use = %q, want %q", p.Use, tc.wantUse)
			}
			if len(h.api.requests()) != 0 {
				t.Error("set-token talked to the API")
			}
		})
	}
}

func TestSetTokenRejectsBadCredentials(t *testing.T) {
	good := credfmt.New(credfmt.Automation)
	last := good[len(good)-1]
	swap := byte('A')
	if last == 'A' {
		swap = 'B'
	}
	badChecksum := good[:len(good)-1] + string(swap)

	cases := []struct {
		name, tok, want string
	}{
		{"checksum", badChecksum, "checksum does not match"},
		{"format", "ghp_notabacklogtoken", "not a Backlog credential"},
		{"kind", "blg_zzz_abcdefghijk", "unknown kind"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			r := h.run("auth", "set-token", tc.tok)
			if r.code != 1 {
				t.Fatalf("exit %d, want 1", r.code)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr = %q, want it to contain %q", r.stderr, tc.want)
			}
			if strings.Contains(r.stdout+r.stderr, tc.tok) {
				t.Errorf("the rejected token was echoed back: %q", r.stderr)
			}
			if _, err := os.Stat(Store{Dir: h.cfgDir}.Path("default")); !os.IsNotExist(err) {
				t.Errorf("a profile was written for a rejected token (stat: %v)", err)
			}
		})
	}
}

func TestSetTokenRefusesKindsTheCLIDoesNotUse(t *testing.T) {
	// Any kind credfmt knows but the CLI has no slot for (e.g. the services'
	// own credentials) is refused by name.
	for _, k := range credfmt.Kinds {
		if _, ok := slotByKind(k); ok || k == credfmt.RotationSecret {
			continue
		}
		h := newHarness(t)
		tok := credfmt.New(k)
		r := h.run("auth", "set-token", tok)
		if r.code != 1 || !strings.Contains(r.stderr, "which the CLI does not use") {
			t.Errorf("%s: exit %d, %q", k, r.code, r.stderr)
		}
		assertNoToken(t, "stderr", r.stderr, tok)
	}
}

func TestSetTokenInputs(t *testing.T) {
	tok := credfmt.New(credfmt.Personal)
	t.Run("piped with dash", func(t *testing.T) {
		h := newHarness(t)
		r := h.runWith(runOpts{stdin: tok + "\n"}, "auth", "set-token", "-")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if h.profile("default").PersonalToken != tok {
			t.Error("token from stdin not stored")
		}
	})
	t.Run("piped without argument", func(t *testing.T) {
		h := newHarness(t)
		r := h.runWith(runOpts{stdin: "  " + tok + "\r\nrest\n"}, "--profile", "other", "auth", "set-token")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if h.profile("other").PersonalToken != tok {
			t.Error("token from stdin not stored in profile other")
		}
	})
	t.Run("hidden prompt on a terminal", func(t *testing.T) {
		h := newHarness(t)
		r := h.runWith(runOpts{terminal: true, typed: tok}, "auth", "set-token")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if h.profile("default").PersonalToken != tok {
			t.Error("token from prompt not stored")
		}
	})
	t.Run("empty stdin", func(t *testing.T) {
		h := newHarness(t)
		r := h.run("auth", "set-token")
		if r.code != 1 || !strings.Contains(r.stderr, "no credential given") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("kind mismatch names both kinds", func(t *testing.T) {
		h := newHarness(t)
		r := h.run("auth", "set-token", "--kind", "auto", tok)
		want := "expected an automation secret (blg_auto_…), but this is a personal access token (blg_pat_…)"
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
		}
		assertNoToken(t, "stderr", r.stderr, tok)
	})
}

func TestExchangeSaveStoresTokenPrivately(t *testing.T) {
	h := newHarness(t)
	// A config dir and profile that exist with loose modes get tightened.
	if err := os.MkdirAll(h.cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(Store{Dir: h.cfgDir}.Path("default"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(h.cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.mustRun("auth", "set-token", h.secret)

	r := h.mustRun("auth", "exchange", "--save", "--ttl", "15m", "--scope", "automations:read")
	req := h.api.last(t)
	if req.Method != "POST" || req.Path != "/v1/auth/exchange" {
		t.Fatalf("sent %s %s", req.Method, req.Path)
	}
	if req.Auth != "Bearer "+h.secret {
		t.Error("exchange did not send the automation secret as Bearer")
	}
	if got, want := req.bodyMap(t), map[string]any{"ttlSeconds": float64(900), "scopes": []any{"automations:read"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("body = %v, want %v", got, want)
	}
	wantExp := fmtTime(h.now.Add(15 * time.Minute))
	if !strings.Contains(r.stdout, "Saved access token to profile default (expires at "+wantExp+")") {
		t.Errorf("stdout = %q", r.stdout)
	}
	for _, want := range []string{"Bearer", "auto_1", "ws_1", "automations:read", "team_1", "900s"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("metadata %q missing from %q", want, r.stdout)
		}
	}
	assertNoToken(t, "exchange --save output", r.stdout+r.stderr, h.accessToken)
	assertNoToken(t, "exchange --save output", r.stdout+r.stderr, h.secret)

	p := h.profile("default")
	if p.AccessToken != h.accessToken || p.Use != UseAccess || p.WorkspaceID != "ws_1" || p.AutomationID != "auto_1" {
		t.Errorf("profile after exchange = %+v", p)
	}
	if p.AccessTokenExpiresAt == nil || !p.AccessTokenExpiresAt.Equal(h.now.Add(15*time.Minute)) {
		t.Errorf("expiry = %v", p.AccessTokenExpiresAt)
	}

	fi, err := os.Stat(Store{Dir: h.cfgDir}.Path("default"))
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("profile file mode = %o, want 600", m)
		}
		di, err := os.Stat(h.cfgDir)
		if err != nil {
			t.Fatal(err)
		}
		if m := di.Mode().Perm(); m != 0o700 {
			t.Errorf("config dir mode = %o, want 700", m)
		}
	}
	// The secret is in the file exactly once: as the stored credential.
	text := h.profileText("default")
	if n := strings.Count(text, h.secret); n != 1 {
		t.Errorf("automation secret appears %d times in the profile file", n)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(text), &raw); err != nil || raw["secret"] != h.secret {
		t.Errorf("profile file does not hold the secret under \"secret\" (err %v)", err)
	}
	// No temp files left behind.
	entries, _ := os.ReadDir(h.cfgDir)
	for _, e := range entries {
		if e.Name() != "default.json" {
			t.Errorf("stray file in config dir: %s", e.Name())
		}
	}
}

func TestExchangeWithoutSavePrintsOnlyTheToken(t *testing.T) {
	h := newHarness(t)
	h.mustRun("auth", "set-token", h.secret)
	r := h.mustRun("auth", "exchange")
	if r.stdout != h.accessToken+"\n" {
		t.Errorf("stdout = %q, want the access token alone", r.stdout)
	}
	if !strings.Contains(r.stderr, "auto_1") || !strings.Contains(r.stderr, "ws_1") {
		t.Errorf("metadata missing from stderr %q", r.stderr)
	}
	if got := h.api.last(t).bodyMap(t); len(got) != 0 {
		t.Errorf("body = %v, want {} (absent fields omitted)", got)
	}
	if h.profile("default").AccessToken != "" {
		t.Error("exchange without --save changed the profile")
	}
	assertNoToken(t, "stderr", r.stderr, h.secret)

	// -o json: the raw answer.
	r = h.mustRun("-o", "json", "auth", "exchange")
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m["accessToken"] != h.accessToken {
		t.Errorf("json output %q (%v)", r.stdout, err)
	}
	// -o json --save: the answer without the token.
	r = h.mustRun("-o", "json", "auth", "exchange", "--save")
	assertNoToken(t, "json --save output", r.stdout, h.accessToken)
	if !strings.Contains(r.stdout, `"workspaceId": "ws_1"`) {
		t.Errorf("json --save output %q", r.stdout)
	}
}

func TestExchangeNeedsASecret(t *testing.T) {
	h := newHarness(t)
	h.mustRun("auth", "set-token", h.personal)
	r := h.run("auth", "exchange", "--save")
	want := "no automation secret in profile default: run ./backlog.sh auth set-token blg_auto_…"
	if r.code != ExitAuth || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if len(h.api.requests()) != 0 {
		t.Error("a request was sent")
	}
}

func TestResourceCommandsRefuseAutomationSecret(t *testing.T) {
	h := newHarness(t)
	h.mustRun("auth", "set-token", h.secret)
	h.mustRun("auth", "use", "secret")

	cmds := [][]string{
		{"automations", "list", "-w", "ws_1"},
		{"automations", "create", "x", "-w", "ws_1"},
		{"secrets", "list"}, // no workspace known yet: still refused first
		{"agents", "revoke", "agt_1", "-w", "ws_1", "--yes"},
		{"auth", "status", "--check"},
	}
	for _, args := range cmds {
		r := h.run(args...)
		if r.code != ExitAuth {
			t.Errorf("%v: exit %d, want %d", args, r.code, ExitAuth)
		}
		if !strings.Contains(r.stderr, "refusing to send a long-lived automation secret to ") ||
			!strings.Contains(r.stderr, "run `./backlog.sh auth exchange --save` first") {
			t.Errorf("%v: stderr = %q", args, r.stderr)
		}
		assertNoToken(t, "stderr", r.stdout+r.stderr, h.secret)
	}
	r := h.run("automations", "list", "-w", "ws_1")
	if want := "refusing to send a long-lived automation secret to GET /v1/workspaces/ws_1/automations: run `./backlog.sh auth exchange --save` first"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr = %q, want %q", r.stderr, want)
	}
	// A secret sent anyway fails with a refusal from the server too, but it
	// must never get there.
	if n := len(h.api.requests()); n != 0 {
		t.Errorf("%d requests reached the API, want none", n)
	}
	// A secrets create must not even prompt for the value.
	r = h.runWith(runOpts{terminal: true, typed: "never-asked"}, "secrets", "create", "db", "-w", "ws_1")
	if r.code != ExitAuth || !strings.Contains(r.stderr, "refusing") {
		t.Errorf("secrets create with use=secret: exit %d, %q", r.code, r.stderr)
	}
}

func TestExpiredAccessTokenIsReported(t *testing.T) {
	h := newHarness(t)
	exp := h.now.Add(-time.Minute)
	h.saveProfile("default", &Profile{Use: UseAccess, AccessToken: h.accessToken, AccessTokenExpiresAt: &exp, WorkspaceID: "ws_1", Secret: h.secret})

	r := h.run("automations", "list")
	want := "the saved access token expired at " + fmtTime(exp) + ": run `./backlog.sh auth exchange --save` to get a new one"
	if r.code != ExitAuth || !strings.Contains(r.stderr, want) {
		t.Errorf("exit %d, stderr %q, want %q", r.code, r.stderr, want)
	}
	if n := len(h.api.requests()); n != 0 {
		t.Errorf("%d requests sent with an expired token", n)
	}
	// auth status says so too, exits 3, and the renewal works.
	r = h.run("auth", "status")
	if r.code != ExitAuth || !strings.Contains(r.stdout, "EXPIRED at "+fmtTime(exp)) {
		t.Errorf("status: exit %d, %q", r.code, r.stdout)
	}
	h.mustRun("auth", "exchange", "--save")
	h.mustRun("automations", "list")
}

func TestAutomationsCreate(t *testing.T) {
	h := newHarness(t)
	h.mustRun("auth", "set-token", h.secret)
	h.mustRun("auth", "exchange", "--save")

	r := h.mustRun("automations", "create", "deploy-bot", "--description", "CI deploys",
		"--team", "team_1,team_2", "--scope", "automations:read", "--scope", "issues:write", "--label", "ci")
	req := h.api.last(t)
	if req.Method != "POST" || req.Path != "/v1/workspaces/ws_1/automations" {
		t.Fatalf("sent %s %s", req.Method, req.Path)
	}
	if req.Auth != "Bearer "+h.accessToken {
		t.Error("create did not send the access token")
	}
	want := map[string]any{
		"name": "deploy-bot", "description": "CI deploys", "credentialLabel": "ci",
		"teamIds": []any{"team_1", "team_2"}, "scopes": []any{"automations:read", "issues:write"},
	}
	if got := req.bodyMap(t); !reflect.DeepEqual(got, want) {
		t.Errorf("body = %v\nwant %v", got, want)
	}
	if !strings.Contains(r.stdout, "blg_auto_NEWSECRETfromcreate000000") {
		t.Errorf("the new secret is not on stdout: %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "it will not be shown again") {
		t.Errorf("no save-it-now warning: %q", r.stderr)
	}
	if !strings.Contains(r.stdout, "auto_3") {
		t.Errorf("automation id missing: %q", r.stdout)
	}

	// Only the name: every absent field is omitted.
	h.mustRun("automations", "create", "minimal")
	if got := h.api.last(t).bodyMap(t); !reflect.DeepEqual(got, map[string]any{"name": "minimal"}) {
		t.Errorf("minimal body = %v", got)
	}
	// --name works as well as NAME.
	h.mustRun("automations", "create", "--name", "ci", "--scope", "automations:read")
	if got := h.api.last(t).bodyMap(t); !reflect.DeepEqual(got, map[string]any{"name": "ci", "scopes": []any{"automations:read"}}) {
		t.Errorf("--name body = %v", got)
	}
	n := len(h.api.requests())
	for _, args := range [][]string{
		{"automations", "create"},
		{"automations", "create", "a", "--name", "b"},
		{"automations", "create", "a", "b"},
	} {
		if r := h.run(args...); r.code != ExitUsage || !strings.Contains(r.stderr, "NAME") {
			t.Errorf("%v: exit %d, %q", args, r.code, r.stderr)
		}
	}
	if len(h.api.requests()) != n {
		t.Error("a create with a bad name sent a request")
	}
}

func TestAutomationsUpdateSendsOnlyChangedFlags(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal, WorkspaceID: "ws_1"})

	cases := []struct {
		args []string
		want map[string]any
	}{
		{[]string{"--suspended"}, map[string]any{"suspended": true}},
		{[]string{"--suspended=false"}, map[string]any{"suspended": false}},
		{[]string{"--name", "bot2", "--team", ""}, map[string]any{"name": "bot2", "teamIds": []any{}}},
		{[]string{"--description", "", "--scope", "a:read,b:write"}, map[string]any{"description": "", "scopes": []any{"a:read", "b:write"}}},
	}
	for _, tc := range cases {
		h.mustRun(append([]string{"automations", "update", "auto_1"}, tc.args...)...)
		req := h.api.last(t)
		if req.Method != "PATCH" || req.Path != "/v1/workspaces/ws_1/automations/auto_1" {
			t.Fatalf("sent %s %s", req.Method, req.Path)
		}
		if req.Auth != "Bearer "+h.personal {
			t.Error("update did not send the personal token")
		}
		if got := req.bodyMap(t); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v: body = %v, want %v", tc.args, got, tc.want)
		}
	}
	n := len(h.api.requests())
	r := h.run("automations", "update", "auto_1")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "nothing to update") {
		t.Errorf("update without flags: exit %d, %q", r.code, r.stderr)
	}
	if len(h.api.requests()) != n {
		t.Error("update without flags sent a request")
	}
}

func TestAutomationsRotateSecret(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal, WorkspaceID: "ws_1"})

	r := h.mustRun("automations", "rotate-secret", "auto_1", "--label", "ci", "--yes")
	req := h.api.last(t)
	if req.Method != "POST" || req.Path != "/v1/workspaces/ws_1/automations/auto_1/rotate-secret" {
		t.Fatalf("sent %s %s", req.Method, req.Path)
	}
	if got := req.bodyMap(t); !reflect.DeepEqual(got, map[string]any{"credentialLabel": "ci"}) {
		t.Errorf("body = %v", got)
	}
	if !strings.Contains(r.stdout, "blg_auto_ROTATEDsecret00000000000") || !strings.Contains(r.stdout, "cred_2") {
		t.Errorf("stdout = %q", r.stdout)
	}
	if !strings.Contains(r.stderr, "it will not be shown again") {
		t.Errorf("stderr = %q", r.stderr)
	}

	h.mustRun("automations", "rotate-secret", "auto_1", "-w", "ws_other", "-y")
	req = h.api.last(t)
	if req.Path != "/v1/workspaces/ws_other/automations/auto_1/rotate-secret" || len(req.bodyMap(t)) != 0 {
		t.Errorf("sent %s with body %s", req.Path, req.Body)
	}
}

func TestAutomationsListTableAndJSON(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal, WorkspaceID: "ws_1"})

	r := h.mustRun("automations", "list", "--page-size", "2", "--page-token", "p1")
	req := h.api.last(t)
	if req.Method != "GET" || req.Path != "/v1/workspaces/ws_1/automations" || req.Query != "pageSize=2&pageToken=p1" {
		t.Errorf("sent %s %s?%s", req.Method, req.Path, req.Query)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) < 3 {
		t.Fatalf("table = %q", r.stdout)
	}
	if f := strings.Fields(lines[0]); !reflect.DeepEqual(f, []string{"ID", "NAME", "SCOPES", "TEAMS", "SUSPENDED", "UPDATED"}) {
		t.Errorf("header = %q", lines[0])
	}
	if f := strings.Fields(lines[1]); !reflect.DeepEqual(f, []string{"auto_1", "deploy-bot", "automations:read,issues:write", "team_1", "no", "2030-01-01T00:00:00Z"}) {
		t.Errorf("row 1 = %q", lines[1])
	}
	if f := strings.Fields(lines[2]); !reflect.DeepEqual(f, []string{"auto_2", "nightly", "-", "-", "yes", "2030-01-01T01:00:00Z"}) {
		t.Errorf("row 2 = %q", lines[2])
	}
	if !strings.Contains(r.stdout, "--page-token page2") {
		t.Errorf("next page token not shown: %q", r.stdout)
	}

	r = h.mustRun("automations", "list", "-o", "json")
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("-o json output is not JSON: %v\n%s", err, r.stdout)
	}
	if got["nextPageToken"] != "page2" || len(got["automations"].([]any)) != 2 {
		t.Errorf("json = %v", got)
	}
	if !strings.Contains(r.stdout, "\n  \"automations\": [") {
		t.Errorf("json not pretty-printed: %q", r.stdout)
	}
}

func TestAPIErrorsAreReported(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal, WorkspaceID: "ws_1"})
	r := h.run("automations", "get", "nope")
	if r.code != ExitNotFound || !strings.Contains(r.stderr, "Error: automation not found (HTTP 404)") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}

	// 401 with an access token suggests a new exchange.
	h.api.handle("GET /v1/workspaces/{ws}/agents", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, 401, 16, "access token revoked")
	})
	future := h.now.Add(time.Hour)
	h.saveProfile("default", &Profile{Use: UseAccess, AccessToken: h.accessToken, AccessTokenExpiresAt: &future, WorkspaceID: "ws_1"})
	r = h.run("agents", "list")
	if r.code != ExitAuth || !strings.Contains(r.stderr, "Error: access token revoked (HTTP 401)") || !strings.Contains(r.stderr, "`./backlog.sh auth exchange --save`") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	assertNoToken(t, "stderr", r.stderr, h.accessToken)
}

func TestNetworkErrorNamesURL(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal, WorkspaceID: "ws_1"})
	dead := httptestDeadURL(t)
	r := h.run("--url", dead, "automations", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot reach the Backlog API at "+dead) || !strings.Contains(r.stderr, "make run") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	assertNoToken(t, "stderr", r.stderr, h.personal)
}

func TestAuthStatusNeverPrintsAWholeToken(t *testing.T) {
	h := newHarness(t)
	exp := h.now.Add(10 * time.Minute)
	agentKey := credfmt.New(credfmt.AgentKey)
	p := &Profile{
		Use: UseAccess, Secret: h.secret, AccessToken: h.accessToken, AccessTokenExpiresAt: &exp,
		PersonalToken: h.personal, AgentKey: agentKey, OperatorToken: h.operator,
		AutomationID: "auto_1", Scopes: []string{"automations:read"},
	}
	h.saveProfile("default", p)
	toks := []string{h.secret, h.accessToken, h.personal, agentKey, h.operator}

	r := h.mustRun("auth", "status", "--check")
	j := h.mustRun("auth", "status", "-o", "json")
	for _, out := range []string{r.stdout + r.stderr, j.stdout + j.stderr} {
		for _, tok := range toks {
			assertNoToken(t, "auth status", out, tok)
			if !strings.Contains(out, tok[:12]+"…") {
				t.Errorf("status does not list %s…", tok[:12])
			}
		}
	}
	for _, want := range []string{"access token (blg_at_…), use=access", "auto_1", fmtTime(h.now.Add(30*time.Minute)) + " (in 30m0s)", "access_token", "Server (GET /v1/auth/whoami)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status missing %q:\n%s", want, r.stdout)
		}
	}
	if req := h.api.last(t); req.Path != "/v1/auth/whoami" || req.Auth != "Bearer "+h.accessToken {
		t.Errorf("--check sent %s with the wrong credential", req.Path)
	}
	// --check learned the workspace and the server's expiry.
	got := h.profile("default")
	if got.WorkspaceID != "ws_1" || !got.AccessTokenExpiresAt.Equal(h.now.Add(30*time.Minute)) {
		t.Errorf("profile after --check: ws %q, exp %v", got.WorkspaceID, got.AccessTokenExpiresAt)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(j.stdout), &rep); err != nil || len(rep.Credentials) != 5 || rep.Use != UseAccess {
		t.Errorf("json status = %+v (%v)", rep, err)
	}
}

func TestAuthUse(t *testing.T) {
	h := newHarness(t)
	h.mustRun("auth", "set-token", h.personal)
	r := h.run("auth", "use", "agent")
	if r.code != ExitAuth || !strings.Contains(r.stderr, "holds no agent API key") {
		t.Errorf("use agent without one: exit %d, %q", r.code, r.stderr)
	}
	h.mustRun("auth", "set-token", h.secret) // use becomes access
	if p := h.profile("default"); p.Use != UseAccess {
		t.Errorf("use = %q after storing a secret", p.Use)
	}
	h.mustRun("auth", "use", "personal")
	if p := h.profile("default"); p.Use != UsePersonal {
		t.Errorf("use = %q", p.Use)
	}
	r = h.mustRun("auth", "use", "secret")
	if !strings.Contains(r.stdout, "refuse to send it") {
		t.Errorf("use secret: %q", r.stdout)
	}
	r = h.run("auth", "use", "bogus")
	if r.code != ExitUsage {
		t.Errorf("use bogus: exit %d", r.code)
	}
}

func TestSecretValueComesFromStdinAndIsNeverShown(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal, WorkspaceID: "ws_1"})
	const value = "s3cr3t-VALUE-do-not-print"

	r := h.runWith(runOpts{stdin: value + "\n"}, "secrets", "create", "db-pass", "--kind", "integration", "--expires-at", "2031-01-01T00:00:00Z")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := map[string]any{"name": "db-pass", "kind": "integration", "value": value, "expiresAt": "2031-01-01T00:00:00Z"}
	if got := h.api.last(t).bodyMap(t); !reflect.DeepEqual(got, want) {
		t.Errorf("body = %v, want %v", got, want)
	}
	if strings.Contains(r.stdout+r.stderr, value) {
		t.Error("secret value printed")
	}

	// At a terminal: a hidden prompt.
	h.runWith(runOpts{terminal: true, typed: value}, "secrets", "create", "db2", "--kind", "integration")
	if got := h.api.last(t).bodyMap(t)["value"]; got != value {
		t.Errorf("prompted value = %v", got)
	}

	// An API error never echoes the value.
	r = h.runWith(runOpts{stdin: value}, "secrets", "create", "db3", "--kind", "bogus")
	if r.code != 1 || !strings.Contains(r.stderr, "(HTTP 400)") || strings.Contains(r.stdout+r.stderr, value) {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}

	// There is no --value flag.
	r = h.run("secrets", "create", "db4", "--value", value)
	if r.code != ExitUsage || strings.Contains(r.stdout+r.stderr, value) {
		t.Errorf("--value: exit %d, output %q", r.code, r.stdout+r.stderr)
	}

	// Update: no other flag means "rotate the value".
	h.runWith(runOpts{stdin: "new-value"}, "secrets", "update", "db-pass")
	if got := h.api.last(t).bodyMap(t); !reflect.DeepEqual(got, map[string]any{"value": "new-value"}) {
		t.Errorf("update body = %v", got)
	}
	// Update of the description alone does not read stdin.
	h.runWith(runOpts{stdin: "ignored"}, "secrets", "update", "db-pass", "--description", "primary DB")
	if got := h.api.last(t).bodyMap(t); !reflect.DeepEqual(got, map[string]any{"description": "primary DB"}) {
		t.Errorf("update body = %v", got)
	}
	// An empty value is refused before anything is sent.
	n := len(h.api.requests())
	r = h.run("secrets", "create", "empty", "--kind", "integration")
	if r.code != 1 || !strings.Contains(r.stderr, "empty secret value") || len(h.api.requests()) != n {
		t.Errorf("empty value: exit %d, %q", r.code, r.stderr)
	}
}

func TestWorkspacesCreateSave(t *testing.T) {
	h := newHarness(t)
	tokFile := filepath.Join(t.TempDir(), "operator-token")
	if err := os.WriteFile(tokFile, []byte(h.operator+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := h.mustRun("workspaces", "create", "Acme", "--operator-token-file", tokFile, "--save")
	req := h.api.last(t)
	if req.Method != "POST" || req.Path != "/v1/workspaces" || req.Auth != "Bearer "+h.operator {
		t.Errorf("sent %s %s", req.Method, req.Path)
	}
	if got := req.bodyMap(t); !reflect.DeepEqual(got, map[string]any{"name": "Acme"}) {
		t.Errorf("body = %v", got)
	}
	assertNoToken(t, "output", r.stdout+r.stderr, h.personal)
	assertNoToken(t, "output", r.stdout+r.stderr, h.operator)
	p := h.profile("default")
	if p.PersonalToken != h.personal || p.Use != UsePersonal || p.WorkspaceID != "ws_new" || p.OperatorToken != "" {
		t.Errorf("profile = %+v", p)
	}
	if !strings.Contains(r.stdout, "Saved the owner's personal access token to profile default") {
		t.Errorf("stdout = %q", r.stdout)
	}

	// Without --save the owner token is shown once.
	r = h.mustRun("--profile", "p2", "workspaces", "create", "Beta", "--operator-token-file", tokFile)
	if !strings.Contains(r.stdout, h.personal) || !strings.Contains(r.stderr, "it will not be shown again") {
		t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
	}

	// A file holding another kind is named as such.
	if err := os.WriteFile(tokFile, []byte(h.personal), 0o600); err != nil {
		t.Fatal(err)
	}
	r = h.run("workspaces", "create", "Gamma", "--operator-token-file", tokFile)
	if r.code != 1 || !strings.Contains(r.stderr, "holds a personal access token (blg_pat_…), not an operator token") {
		t.Errorf("exit %d, %q", r.code, r.stderr)
	}
}

func TestErrorOutputRedactsCredentials(t *testing.T) {
	h := newHarness(t)
	tok := credfmt.New(credfmt.Personal)
	r := h.run(tok) // an unknown command, which cobra quotes
	if r.code != ExitUsage {
		t.Fatalf("exit %d", r.code)
	}
	assertNoToken(t, "stderr", r.stderr, tok)
	if !strings.Contains(r.stderr, tok[:12]+"…") {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestUnknownSubcommandFails(t *testing.T) {
	h := newHarness(t)
	r := h.run("automations", "lst")
	if r.code != ExitUsage || !strings.Contains(r.stderr, `unknown command "lst" for "backlog automations"`) || !strings.Contains(r.stderr, "did you mean") || !strings.Contains(r.stderr, " list?") {
		t.Errorf("exit %d, %q", r.code, r.stderr)
	}
	if r := h.run("auth"); r.code != 0 || !strings.Contains(r.stdout, "set-token") {
		t.Errorf("auth alone: exit %d, %q", r.code, r.stdout)
	}
}

func TestEveryCommandHasAnExample(t *testing.T) {
	root := NewCommand(&Env{})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)

	h := newHarness(t)
	r := h.mustRun("automations", "create", "--help")
	if !strings.Contains(r.stdout, "Examples:") {
		t.Errorf("--help = %q", r.stdout)
	}
}

func TestWorkspaceIsRequired(t *testing.T) {
	h := newHarness(t)
	h.saveProfile("default", &Profile{Use: UsePersonal, PersonalToken: h.personal})
	r := h.run("automations", "list")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "no workspace") {
		t.Errorf("exit %d, %q", r.code, r.stderr)
	}
	// whoami teaches it.
	h.mustRun("auth", "status", "--check")
	h.mustRun("automations", "list")
	if req := h.api.last(t); req.Path != "/v1/workspaces/ws_9/automations" {
		t.Errorf("sent %s", req.Path)
	}
}

// TestBacklogShHelp runs the wrapper the way the README does, from the
// repository root: it builds bin/backlog if needed and runs it.
func TestBacklogShHelp(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go not on PATH")
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(wd, "..", "..", "..", "..") // services/cli/internal/cli → root
	if _, err := os.Stat(filepath.Join(root, "backlog.sh")); err != nil {
		t.Skipf("no backlog.sh at the repository root: %v", err)
	}
	cmd := exec.Command(bash, "./backlog.sh", "--help")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "BACKLOG_CONFIG_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("./backlog.sh --help: %v\n%s", err, out)
	}
	for _, want := range []string{"Usage:", "backlog [command]", "automations", "auth"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("./backlog.sh --help output lacks %q:\n%s", want, out)
		}
	}
}

// httptestDeadURL is the URL of a loopback port nothing listens on.
func httptestDeadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}
