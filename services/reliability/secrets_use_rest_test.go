package reliability

// Secrets in use (issue 14) through the real gateway and a real backlogd:
// readable names in URL-encoded paths, connections and actions that name
// secrets, where-used and the 409 before revoke/delete, destination-bound
// webhook secrets, redaction that never corrupts, versions and rollback —
// seed 003's and 004's flows as a person would run them over REST.

import (
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// suTarget is an HTTPS endpoint on loopback recording what reaches it.
type suTarget struct {
	srv    *httptest.Server
	caFile string
	count  atomic.Int64
	mu     sync.Mutex
	auth   string
}

func suNewTarget(t *testing.T) *suTarget {
	t.Helper()
	tg := &suTarget{}
	tg.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.count.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		tg.mu.Lock()
		tg.auth = r.Header.Get("Authorization")
		tg.mu.Unlock()
		if r.URL.Path == "/echo" {
			// A careless API that echoes the credential back.
			w.Header().Set("X-Echo", r.Header.Get("Authorization"))
			_, _ = io.WriteString(w, `{"ok":true,"youSent":"`+r.Header.Get("Authorization")+`"}`)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(tg.srv.Close)
	tg.caFile = suWriteCA(t, tg.srv)
	return tg
}

// suWriteCA writes srv's certificate where -vault-egress-ca-file can read it.
func suWriteCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "su-target-ca.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (tg *suTarget) lastAuth() string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.auth
}

func (tg *suTarget) host() string { u, _ := url.Parse(tg.srv.URL); return u.Host }

// suSecretPath is the REST path of a secret, its name URL-encoded.
func suSecretPath(ws, name string) string {
	return "/v1/workspaces/" + ws + "/secrets/" + url.PathEscape(name)
}

// suExpectError checks status, the JSON error shape and that the message
// names every one of want.
func suExpectError(t *testing.T, r *reply, status int, want ...string) {
	t.Helper()
	checkErrorShape(t, r)
	if r.Status != status {
		t.Fatalf("%s: want %d", r, status)
	}
	msg := r.JSON().str("message")
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Fatalf("%s: message does not name %q", r, w)
		}
	}
}

// suCluster starts backlogd with egress to the loopback target allowed and
// every response captured, so that the test can check no value leaks.
func suCluster(t *testing.T, tg *suTarget, extra ...string) (*cluster, *restClient, *strings.Builder) {
	t.Helper()
	var mu sync.Mutex
	seen := &strings.Builder{}
	c := newCluster(t, layoutAll, append([]string{"-vault-egress-allow-private=true", "-vault-egress-ca-file=" + tg.caFile}, extra...)...)
	c.onResponse = func(r *reply) {
		mu.Lock()
		defer mu.Unlock()
		seen.Write(r.Body)
		for k, vs := range r.Header {
			seen.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
	}
	c.start(t)
	return c, c.rest(), seen
}

// TestSecretsUseSeedFlowsREST: seed 003 and 004 over REST.
func TestSecretsUseSeedFlowsREST(t *testing.T) {
	tg := suNewTarget(t)
	c, rc, seen := suCluster(t, tg)
	ws := rc.createWorkspace(t, c.OperatorToken, "acme")
	base := "/v1/workspaces/" + ws.ID
	_, memberTok := rc.createMember(t, ws, "Mia", "member")

	// Seed 003: "HubSpot API key – production", an integration secret with
	// an expiry as rotation reminder, chosen by name for a connection.
	hubspot := "HubSpot API key – production"
	hsValue := randomValue("pat-na1-")
	expires := time.Now().Add(90 * 24 * time.Hour).UTC().Format(time.RFC3339)
	o := rc.expect(t, http.StatusOK, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{
		"name": hubspot, "kind": "integration", "description": "CRM sync", "value": hsValue, "expiresAt": expires,
	})
	if o.str("secret.name") != hubspot {
		t.Fatalf("created %v", o)
	}
	// The path takes the name URL-encoded, in any case.
	if o := rc.expect(t, http.StatusOK, http.MethodGet, suSecretPath(ws.ID, "hubspot API KEY – production"), memberTok, nil); o.str("secret.name") != hubspot {
		t.Fatalf("get by encoded name: %v", o)
	}
	suExpectError(t, rc.call(t, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{"name": "HUBSPOT api key – production", "kind": "webhook", "value": "x"}), http.StatusConflict)
	suExpectError(t, rc.call(t, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{"name": "a/b", "kind": "webhook", "value": "x"}), http.StatusBadRequest, "name")

	// Seed 004: the integration secret is selected when configuring a connection.
	conn := rc.expect(t, http.StatusOK, http.MethodPost, base+"/connections", ws.OwnerToken, map[string]any{
		"name": "HubSpot", "integration": "hubspot", "secretName": hubspot,
	})
	connID := conn.str("connection.id")
	if connID == "" || conn.str("connection.secretName") != hubspot {
		t.Fatalf("connection = %v", conn)
	}
	suExpectError(t, rc.call(t, http.MethodPost, base+"/connections", memberTok, map[string]any{"name": "x", "integration": "hubspot", "secretName": hubspot}), http.StatusForbidden)
	suExpectError(t, rc.call(t, http.MethodPost, base+"/connections", ws.OwnerToken, map[string]any{"name": "x", "integration": "hubspot", "secretName": "Nope"}), http.StatusBadRequest, "Nope")

	// Seed 003: an action selects webhook secrets by name.
	hook := "Ops webhook – prod"
	v1 := randomValue("whk1-")
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{
		"name": hook, "kind": "webhook", "value": v1, "allowedHosts": []string{tg.host()},
	})
	suExpectError(t, rc.call(t, http.MethodPost, base+"/actions", ws.OwnerToken, map[string]any{
		"name": "bad", "method": "POST", "url": tg.srv.URL + "/hook", "headers": map[string]string{"Authorization": "Bearer {secret:Ghost key}"},
	}), http.StatusBadRequest, "Ghost key")
	suExpectError(t, rc.call(t, http.MethodPost, base+"/actions", ws.OwnerToken, map[string]any{
		"name": "bad", "method": "POST", "url": tg.srv.URL + "/hook", "headers": map[string]string{"Authorization": "Bearer {secret:" + hubspot + "}"},
	}), http.StatusBadRequest, hubspot)
	suExpectError(t, rc.call(t, http.MethodPost, base+"/connections", ws.OwnerToken, map[string]any{"name": "x", "integration": "slack", "secretName": hook}), http.StatusBadRequest, hook)
	act := rc.expect(t, http.StatusOK, http.MethodPost, base+"/actions", ws.OwnerToken, map[string]any{
		"name": "Notify ops", "method": "POST", "url": tg.srv.URL + "/hook", "body": `{"text":"deployed"}`,
		"headers": map[string]string{"Authorization": "Bearer {{secret:" + hook + "}}"},
	})
	actID := act.str("action.id")
	run := base + "/actions/" + actID + "/run"
	if o := rc.expect(t, http.StatusOK, http.MethodPost, run, ws.OwnerToken, map[string]any{}); o.get("statusCode") != float64(202) || tg.lastAuth() != "Bearer "+v1 {
		t.Fatalf("run 1: %v", o)
	}
	// "Rotating a secret automatically updates all actions that depend on it."
	v2 := randomValue("whk2-")
	rc.expect(t, http.StatusOK, http.MethodPatch, suSecretPath(ws.ID, hook), ws.OwnerToken, map[string]any{"value": v2})
	rc.expect(t, http.StatusOK, http.MethodPost, run, ws.OwnerToken, map[string]any{})
	if tg.lastAuth() != "Bearer "+v2 {
		t.Fatal("the action did not use the updated value")
	}
	suExpectError(t, rc.call(t, http.MethodPost, run, memberTok, map[string]any{}), http.StatusForbidden)

	// Where-used, and the confirmation before revoke/delete.
	o = rc.expect(t, http.StatusOK, http.MethodGet, suSecretPath(ws.ID, hook), memberTok, nil)
	if u := o.list("secret.usedBy"); len(u) != 1 || u[0].str("kind") != "action" || u[0].str("id") != actID || u[0].str("name") != "Notify ops" {
		t.Fatalf("usedBy = %v", o.get("secret.usedBy"))
	}
	if v := o.list("secret.versions"); len(v) != 2 || v[0].get("version") == nil {
		t.Fatalf("versions = %v", o.get("secret.versions"))
	}
	if u := rc.expect(t, http.StatusOK, http.MethodGet, suSecretPath(ws.ID, hubspot), memberTok, nil).list("secret.usedBy"); len(u) != 1 || u[0].str("kind") != "connection" {
		t.Fatalf("hubspot usedBy = %v", u)
	}
	suExpectError(t, rc.call(t, http.MethodPost, suSecretPath(ws.ID, hook)+"/revoke", ws.OwnerToken, nil), http.StatusConflict, "Notify ops", actID, "force=true")
	suExpectError(t, rc.call(t, http.MethodDelete, suSecretPath(ws.ID, hubspot), ws.OwnerToken, nil), http.StatusConflict, "HubSpot", connID)

	// Forced: the action then fails clearly, sending nothing.
	rc.expect(t, http.StatusOK, http.MethodPost, suSecretPath(ws.ID, hook)+"/revoke?force=true", ws.OwnerToken, nil)
	sent := tg.count.Load()
	suExpectError(t, rc.call(t, http.MethodPost, run, ws.OwnerToken, map[string]any{}), http.StatusBadRequest, hook, "revoked")
	rc.expect(t, http.StatusOK, http.MethodDelete, suSecretPath(ws.ID, hook)+"?force=true", ws.OwnerToken, nil)
	suExpectError(t, rc.call(t, http.MethodPost, run, ws.OwnerToken, map[string]any{}), http.StatusNotFound, "not found")
	if tg.count.Load() != sent {
		t.Fatal("a step using a revoked or deleted secret was sent")
	}

	// Actions and connections: read, update, delete.
	if l := rc.expect(t, http.StatusOK, http.MethodGet, base+"/actions", memberTok, nil).list("actions"); len(l) != 1 {
		t.Fatalf("actions = %v", l)
	}
	rc.expect(t, http.StatusOK, http.MethodPatch, base+"/connections/"+connID, ws.OwnerToken, map[string]any{"description": "CRM sync (prod)"})
	rc.expect(t, http.StatusOK, http.MethodDelete, base+"/connections/"+connID, ws.OwnerToken, nil)
	rc.expect(t, http.StatusOK, http.MethodDelete, suSecretPath(ws.ID, hubspot), ws.OwnerToken, nil) // no longer in use
	suExpectError(t, rc.call(t, http.MethodGet, base+"/connections/"+connID, ws.OwnerToken, nil), http.StatusNotFound)

	// The audit trail has every change and use.
	trail := string(rc.call(t, http.MethodGet, base+"/audit-events?pageSize=500", ws.OwnerToken, nil).Body)
	for _, a := range []string{"connection.create", "connection.update", "connection.delete", "action.create", "action.run", "secret.use", "secret.revoke", "secret.delete"} {
		if !strings.Contains(trail, `"`+a+`"`) {
			t.Errorf("audit trail has no %s", a)
		}
	}
	for _, v := range []string{hsValue, v1, v2} {
		if strings.Contains(seen.String(), v) || c.LogsContain(v) {
			t.Fatal("a secret value appeared in a response or a log line")
		}
	}
}

// TestSecretsUseBoundHostsRedactionVersionsREST: a step to a host outside
// allowedHosts sends nothing; rebinding needs the value; echoes are
// redacted or withheld, never mangled; versions and rollback.
func TestSecretsUseBoundHostsRedactionVersionsREST(t *testing.T) {
	tg := suNewTarget(t)
	c, rc, seen := suCluster(t, tg)
	ws := rc.createWorkspace(t, c.OperatorToken, "acme")
	base := "/v1/workspaces/" + ws.ID
	bound := randomValue("bound-")
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{
		"name": "Partner key", "kind": "webhook", "value": bound, "allowedHosts": []string{"api.partner.example"},
	})
	step := map[string]any{"method": "POST", "url": tg.srv.URL + "/hook", "headers": map[string]string{"Authorization": "{secret:Partner key}"}}
	suExpectError(t, rc.call(t, http.MethodPost, base+"/http-requests", ws.OwnerToken, step), http.StatusForbidden, "Partner key", "api.partner.example")
	if tg.count.Load() != 0 {
		t.Fatal("a step to a host outside allowedHosts reached it")
	}
	suExpectError(t, rc.call(t, http.MethodPatch, suSecretPath(ws.ID, "Partner key"), ws.OwnerToken, map[string]any{"allowedHosts": []string{tg.host()}}), http.StatusBadRequest, "value")
	rc.expect(t, http.StatusOK, http.MethodPatch, suSecretPath(ws.ID, "Partner key"), ws.OwnerToken, map[string]any{"allowedHosts": []string{tg.host()}, "value": bound})

	// Echoed whole: redacted; the rest of the answer intact.
	step["url"] = tg.srv.URL + "/echo"
	o := rc.expect(t, http.StatusOK, http.MethodPost, base+"/http-requests", ws.OwnerToken, step)
	if o.str("body") != `{"ok":true,"youSent":"[REDACTED:Partner key]"}` || o.str("headers.X-Echo") != "[REDACTED:Partner key]" {
		t.Fatalf("echo = %v", o)
	}
	// A value too short to redact unambiguously: body withheld, not mangled.
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{"name": "Tiny", "kind": "webhook", "value": "ok"})
	step["headers"] = map[string]string{"Authorization": "{secret:Tiny}"}
	o = rc.expect(t, http.StatusOK, http.MethodPost, base+"/http-requests", ws.OwnerToken, step)
	if !o.boolean("bodyWithheld") || o.str("body") != "" || o.get("statusCode") != float64(200) {
		t.Fatalf("short echo = %v", o)
	}

	// Versions: metadata only; rollback makes a new version; 404 for a
	// version that is not kept.
	rc.expect(t, http.StatusOK, http.MethodPatch, suSecretPath(ws.ID, "Partner key"), ws.OwnerToken, map[string]any{"value": randomValue("bound2-")})
	vs := rc.expect(t, http.StatusOK, http.MethodGet, suSecretPath(ws.ID, "Partner key")+"/versions", ws.OwnerToken, nil).list("versions")
	if len(vs) != 3 || vs[0].get("version") != "3" && vs[0].get("version") != float64(3) || !vs[0].boolean("current") || vs[0].str("createdBy") != ws.OwnerID {
		t.Fatalf("versions = %v", vs)
	}
	suExpectError(t, rc.call(t, http.MethodPost, suSecretPath(ws.ID, "Partner key")+"/rollback", ws.OwnerToken, map[string]any{"version": 42}), http.StatusNotFound, "42")
	o = rc.expect(t, http.StatusOK, http.MethodPost, suSecretPath(ws.ID, "Partner key")+"/rollback", ws.OwnerToken, map[string]any{"version": 2})
	if o.get("secret.version") != "4" && o.get("secret.version") != float64(4) {
		t.Fatalf("rollback = %v", o)
	}
	step["url"], step["headers"] = tg.srv.URL+"/hook", map[string]string{"Authorization": "{secret:Partner key}"}
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/http-requests", ws.OwnerToken, step)
	if tg.lastAuth() != bound {
		t.Fatal("rollback did not restore the value")
	}
	if strings.Contains(seen.String(), bound) || c.LogsContain(bound) {
		t.Fatal("a secret value appeared in a response or a log line")
	}
}
