package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

// fakeAPI is a test double of the REST gateway: it records every request
// and answers from handlers registered per route pattern.
type fakeAPI struct {
	mu   sync.Mutex
	reqs []recorded
	mux  *http.ServeMux
}

type recorded struct {
	Method string
	Path   string
	Query  string
	Auth   string
	Body   []byte
}

// bodyMap decodes the request body as a JSON object.
func (r recorded) bodyMap(t *testing.T) map[string]any {
	t.Helper()
	m := map[string]any{}
	if len(r.Body) == 0 {
		return m
	}
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("request body of %s %s is not a JSON object: %v", r.Method, r.Path, err)
	}
	return m
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b))
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Auth: r.Header.Get("Authorization"), Body: b})
	f.mu.Unlock()
	f.mux.ServeHTTP(w, r)
}

func (f *fakeAPI) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func (f *fakeAPI) last(t *testing.T) recorded {
	t.Helper()
	rs := f.requests()
	if len(rs) == 0 {
		t.Fatal("no request reached the API")
	}
	return rs[len(rs)-1]
}

func (f *fakeAPI) handle(pattern string, h http.HandlerFunc) { f.mux.HandleFunc(pattern, h) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, map[string]any{"code": code, "message": msg, "details": []any{}})
}

// harness runs the command tree in-process against a fakeAPI with its own
// config directory and clock.
type harness struct {
	t      *testing.T
	api    *fakeAPI
	srv    *httptest.Server
	cfgDir string
	now    time.Time

	// The credentials the fake server knows.
	secret, accessToken, personal, operator string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		t:           t,
		api:         &fakeAPI{mux: http.NewServeMux()},
		cfgDir:      filepath.Join(t.TempDir(), "backlog"),
		now:         time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		secret:      credfmt.New(credfmt.Automation),
		accessToken: credfmt.New(credfmt.AccessToken),
		personal:    credfmt.New(credfmt.Personal),
		operator:    credfmt.New(credfmt.Operator),
	}
	h.routes()
	h.srv = httptest.NewServer(h.api)
	t.Cleanup(h.srv.Close)
	return h
}

func (h *harness) routes() {
	h.api.handle("POST /v1/auth/exchange", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+h.secret {
			writeErr(w, 401, 16, "invalid credential")
			return
		}
		var body struct {
			TTLSeconds int      `json:"ttlSeconds"`
			Scopes     []string `json:"scopes"`
		}
		_ = json.NewDecoder(r.Body).Decode(&body)
		ttl := 3600
		if body.TTLSeconds > 0 {
			ttl = body.TTLSeconds
		}
		scopes := body.Scopes
		if scopes == nil {
			scopes = []string{"automations:read", "automations:write"}
		}
		writeJSON(w, 200, map[string]any{
			"accessToken":  h.accessToken,
			"tokenType":    "Bearer",
			"expiresAt":    h.now.Add(time.Duration(ttl) * time.Second).Format(time.RFC3339Nano),
			"expiresIn":    ttl,
			"automationId": "auto_1",
			"workspaceId":  "ws_1",
			"scopes":       scopes,
			"teamIds":      []string{"team_1"},
		})
	})
	h.api.handle("GET /v1/auth/whoami", func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Authorization") {
		case "Bearer " + h.accessToken:
			writeJSON(w, 200, map[string]any{"kind": "access_token", "workspaceId": "ws_1", "subjectId": "auto_1",
				"scopes": []string{"automations:read"}, "expiresAt": h.now.Add(30 * time.Minute).Format(time.RFC3339Nano)})
		case "Bearer " + h.personal:
			writeJSON(w, 200, map[string]any{"kind": "member", "workspaceId": "ws_9", "subjectId": "mem_1", "name": "Ada", "role": "owner"})
		default:
			writeErr(w, 401, 16, "invalid credential")
		}
	})
	h.api.handle("POST /v1/workspaces", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+h.operator {
			writeErr(w, 401, 16, "invalid credential")
			return
		}
		var body struct{ Name string }
		_ = json.NewDecoder(r.Body).Decode(&body)
		writeJSON(w, 200, map[string]any{
			"workspace": map[string]any{"id": "ws_new", "name": body.Name, "createdAt": "2030-01-02T03:04:05.123Z"},
			"owner":     map[string]any{"id": "mem_1", "workspaceId": "ws_new", "name": "Owner", "role": "owner"},
			"token":     h.personal,
		})
	})
	h.api.handle("GET /v1/workspaces/{ws}/automations", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{
			"automations": []any{
				map[string]any{"id": "auto_1", "workspaceId": "ws_1", "name": "deploy-bot", "scopes": []string{"automations:read", "issues:write"},
					"teamIds": []string{"team_1"}, "suspended": false, "updatedAt": "2030-01-01T00:00:00.5Z"},
				map[string]any{"id": "auto_2", "workspaceId": "ws_1", "name": "nightly", "suspended": true, "updatedAt": "2030-01-01T01:00:00Z"},
			},
			"nextPageToken": "page2",
		})
	})
	h.api.handle("POST /v1/workspaces/{ws}/automations", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		writeJSON(w, 200, map[string]any{
			"automation": map[string]any{"id": "auto_3", "workspaceId": r.PathValue("ws"), "name": body["name"],
				"credential": map[string]any{"id": "cred_1", "label": body["credentialLabel"], "createdAt": "2030-01-02T03:04:05Z"}},
			"secret": "blg_auto_NEWSECRETfromcreate000000",
		})
	})
	h.api.handle("GET /v1/workspaces/{ws}/automations/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "auto_1" {
			writeErr(w, 404, 5, "automation not found")
			return
		}
		writeJSON(w, 200, map[string]any{"automation": map[string]any{"id": "auto_1", "name": "deploy-bot"}})
	})
	h.api.handle("PATCH /v1/workspaces/{ws}/automations/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"automation": map[string]any{"id": r.PathValue("id"), "name": "deploy-bot", "suspended": true}})
	})
	h.api.handle("POST /v1/workspaces/{ws}/automations/{id}/rotate-secret", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{
			"secret":     "blg_auto_ROTATEDsecret00000000000",
			"credential": map[string]any{"id": "cred_2", "label": "ci", "createdAt": "2030-01-02T03:04:05Z"},
		})
	})
	h.api.handle("POST /v1/workspaces/{ws}/secrets", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		if body["kind"] == "bogus" {
			writeErr(w, 400, 3, "kind must be integration or webhook")
			return
		}
		writeJSON(w, 200, map[string]any{"secret": map[string]any{"name": body["name"], "kind": body["kind"], "state": "active", "version": "1"}})
	})
	h.api.handle("PATCH /v1/workspaces/{ws}/secrets/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"secret": map[string]any{"name": r.PathValue("name"), "state": "active", "version": "2"}})
	})
}

type result struct {
	stdout, stderr string
	code           int
}

// runOpts tweaks one in-process run.
type runOpts struct {
	stdin    string
	terminal bool   // stdin is a terminal
	typed    string // what the user types at a hidden prompt
	env      map[string]string
}

func (h *harness) run(args ...string) result { return h.runWith(runOpts{}, args...) }

func (h *harness) runWith(o runOpts, args ...string) result {
	h.t.Helper()
	var stdout, stderr bytes.Buffer
	env := &Env{
		Stdin:  strings.NewReader(o.stdin),
		Stdout: &stdout,
		Stderr: &stderr,
		Getenv: func(k string) string {
			if v, ok := o.env[k]; ok {
				return v
			}
			switch k {
			case "BACKLOG_CONFIG_DIR":
				return h.cfgDir
			case "BACKLOG_URL":
				return h.srv.URL
			}
			return ""
		},
		StdinIsTerminal: func() bool { return o.terminal },
		ReadSecret: func(prompt string) (string, error) {
			if !o.terminal {
				h.t.Errorf("prompted (%q) although stdin is not a terminal", prompt)
			}
			return o.typed, nil
		},
		HTTPClient: h.srv.Client(),
		Now:        func() time.Time { return h.now },
		Keyring:    testKeyring,
	}
	code := Main(context.Background(), args, env)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

func (h *harness) mustRun(args ...string) result {
	h.t.Helper()
	r := h.run(args...)
	if r.code != 0 {
		h.t.Fatalf("backlog %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func (h *harness) profile(name string) *Profile {
	h.t.Helper()
	p, err := Store{Dir: h.cfgDir}.Load(name)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *harness) saveProfile(name string, p *Profile) {
	h.t.Helper()
	if err := (Store{Dir: h.cfgDir}).Save(name, p); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) profileText(name string) string {
	h.t.Helper()
	b, err := os.ReadFile(Store{Dir: h.cfgDir}.Path(name))
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

// assertNoToken fails if tok, or any long part of it, shows in s.
func assertNoToken(t *testing.T, where, s, tok string) {
	t.Helper()
	if strings.Contains(s, tok) {
		t.Errorf("%s shows the whole credential %s…", where, tok[:12])
	}
	if len(tok) > 24 && strings.Contains(s, tok[len(tok)-16:]) {
		t.Errorf("%s shows the tail of credential %s…", where, tok[:12])
	}
}
