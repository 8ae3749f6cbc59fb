package vault_test

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
)

// Readable names: the seed's own example works, verbatim, in creates,
// lookups (any case) and references of either form.
func TestSecretsUseReadableNames(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	const hubspot = "HubSpot API key – production"
	const hook = "Slack hook (ops) – prod"
	h.create(t, ws, owner, hubspot, "integration", newValue("hs_"))
	val := newValue("hook_")
	h.create(t, ws, owner, hook, "webhook", val)

	if got := h.get(t, ws, owner, "hubspot api KEY – PRODUCTION"); got.GetName() != hubspot {
		t.Fatalf("case-insensitive get = %q", got.GetName())
	}
	_, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "HUBSPOT api key – production", Kind: "webhook", Value: "x"})
	wantCode(t, err, codes.AlreadyExists, "SECRET_NAME_TAKEN")
	// "ſ" (long s) folds with "s": the same name.
	_, err = h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "Hubſpot API key – production", Kind: "webhook", Value: "x"})
	wantCode(t, err, codes.AlreadyExists, "SECRET_NAME_TAKEN")

	for _, ref := range []string{"{secret:" + hook + "}", "{{secret:slack HOOK (ops) – prod}}"} {
		resp, err := h.run(ws, owner, "/hook", map[string]string{"X-Api-Key": ref})
		if err != nil || resp.GetStatusCode() != 201 {
			t.Fatalf("%s: %v %v", ref, resp, err)
		}
		if got := h.tls.lastHeader("X-Api-Key"); got != val {
			t.Fatalf("%s: target got %q", ref, got)
		}
	}
}

func (h *harness) newAction(t *testing.T, ws, token, name, path string, headers map[string]string) *vaultv1.Action {
	t.Helper()
	resp, err := h.client.CreateAction(as(bg(), token), &vaultv1.CreateActionRequest{
		WorkspaceId: ws, Name: name, Method: "POST", Url: h.tls.srv.URL + path, Headers: headers, Body: `{"n":1}`,
	})
	if err != nil {
		t.Fatalf("create action %q: %v", name, err)
	}
	return resp.GetAction()
}

func (h *harness) runAction(ws, token, id string) (*vaultv1.RunActionResponse, error) {
	return h.client.RunAction(as(bg(), token), &vaultv1.RunActionRequest{WorkspaceId: ws, ActionId: id})
}

func usedByOf(s *vaultv1.Secret) []string {
	var out []string
	for _, u := range s.GetUsedBy() {
		out = append(out, u.GetKind()+":"+u.GetName())
	}
	return out
}

func TestSecretsUseConnectionsActionsWhereUsed(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, "member")
	hs := newValue("hs_")
	h.create(t, ws, owner, "HubSpot API key – production", "integration", hs)
	v1 := newValue("hook1_")
	h.create(t, ws, owner, "Notify token", "webhook", v1)

	// Connections need an integration secret, named.
	conn, err := h.client.CreateConnection(as(bg(), owner), &vaultv1.CreateConnectionRequest{
		WorkspaceId: ws, Name: "HubSpot (prod)", Integration: "HubSpot", SecretName: "hubspot api key – production",
	})
	if err != nil {
		t.Fatal(err)
	}
	c := conn.GetConnection()
	if c.GetSecretName() != "HubSpot API key – production" || c.GetIntegration() != "hubspot" || c.GetId() == "" {
		t.Fatalf("connection = %v", c)
	}
	for name, secret := range map[string]string{"webhook secret": "Notify token", "unknown": "No such key"} {
		_, err := h.client.CreateConnection(as(bg(), owner), &vaultv1.CreateConnectionRequest{WorkspaceId: ws, Name: "x", Integration: "hubspot", SecretName: secret})
		wantCode(t, err, codes.InvalidArgument, "")
		if !strings.Contains(status.Convert(err).Message(), secret) {
			t.Fatalf("%s: message does not name the secret: %v", name, err)
		}
	}
	_, err = h.client.CreateConnection(as(bg(), member), &vaultv1.CreateConnectionRequest{WorkspaceId: ws, Name: "x", Integration: "hubspot", SecretName: "HubSpot API key – production"})
	wantCode(t, err, codes.PermissionDenied, "")
	if l, err := h.client.ListConnections(as(bg(), member), &vaultv1.ListConnectionsRequest{WorkspaceId: ws}); err != nil || len(l.GetConnections()) != 1 {
		t.Fatalf("member list = %v %v", l, err)
	}

	// Actions reference webhook secrets only, and only existing ones.
	for name, ref := range map[string]string{"unknown": "Ghost token", "integration": "HubSpot API key – production"} {
		_, err := h.client.CreateAction(as(bg(), owner), &vaultv1.CreateActionRequest{WorkspaceId: ws, Name: "bad", Method: "POST", Url: h.tls.srv.URL + "/hook",
			Headers: map[string]string{"Authorization": "Bearer {secret:" + ref + "}"}})
		wantCode(t, err, codes.InvalidArgument, "SECRET_REFERENCE_INVALID")
		if !strings.Contains(status.Convert(err).Message(), ref) {
			t.Fatalf("%s: message does not name the secret: %v", name, err)
		}
	}
	act := h.newAction(t, ws, owner, "Notify ops", "/hook", map[string]string{"Authorization": "Bearer {{secret:notify TOKEN}}"})
	if !equal(act.GetSecretNames(), []string{"Notify token"}) {
		t.Fatalf("secretNames = %v", act.GetSecretNames())
	}

	// usedBy names both dependents.
	if got := usedByOf(h.get(t, ws, owner, "Notify token")); !equal(got, []string{"action:Notify ops"}) {
		t.Fatalf("usedBy = %v", got)
	}
	if got := usedByOf(h.get(t, ws, member, "HubSpot API key – production")); !equal(got, []string{"connection:HubSpot (prod)"}) {
		t.Fatalf("usedBy = %v", got)
	}

	// Runs use the current value: an update reaches the next run.
	if _, err := h.runAction(ws, owner, act.GetId()); err != nil || h.tls.lastHeader("Authorization") != "Bearer "+v1 {
		t.Fatalf("run 1: %v %q", err, h.tls.lastHeader("Authorization"))
	}
	v2 := newValue("hook2_")
	if _, err := h.update(ws, owner, "Notify token", &vaultv1.Secret{Value: v2}, "value"); err != nil {
		t.Fatal(err)
	}
	if r, err := h.runAction(ws, owner, act.GetId()); err != nil || r.GetStatusCode() != 201 || h.tls.lastHeader("Authorization") != "Bearer "+v2 {
		t.Fatalf("run 2: %v %v", r, err)
	}
	_, err = h.runAction(ws, member, act.GetId())
	wantCode(t, err, codes.PermissionDenied, "")

	// Revoke and delete in use: 409 naming the dependents, unless forced.
	_, err = h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "Notify token"})
	wantCode(t, err, codes.Aborted, "SECRET_IN_USE")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "Notify ops") || !strings.Contains(msg, act.GetId()) || !strings.Contains(msg, "force=true") {
		t.Fatalf("in-use message = %q", msg)
	}
	_, err = h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "HubSpot API key – production"})
	wantCode(t, err, codes.Aborted, "SECRET_IN_USE")
	if h.get(t, ws, owner, "Notify token").GetState() != "active" {
		t.Fatal("refused revoke changed the secret")
	}
	if _, err := h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "Notify token", Force: true}); err != nil {
		t.Fatal(err)
	}
	sent := h.tls.requests()
	_, err = h.runAction(ws, owner, act.GetId())
	wantCode(t, err, codes.FailedPrecondition, "SECRET_REVOKED")
	if !strings.Contains(status.Convert(err).Message(), "Notify token") || h.tls.requests() != sent {
		t.Fatalf("after revoke: %v, sent %d more", err, h.tls.requests()-sent)
	}
	if _, err := h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "Notify token", Force: true}); err != nil {
		t.Fatal(err)
	}
	_, err = h.runAction(ws, owner, act.GetId())
	wantCode(t, err, codes.NotFound, "SECRET_NOT_FOUND")
	if !strings.Contains(strings.ToLower(status.Convert(err).Message()), "notify token") || h.tls.requests() != sent {
		t.Fatalf("after delete: %v", err)
	}
	// A new secret of the name makes the action work again.
	v3 := newValue("hook3_")
	h.create(t, ws, owner, "Notify token", "webhook", v3)
	if _, err := h.runAction(ws, owner, act.GetId()); err != nil || h.tls.lastHeader("Authorization") != "Bearer "+v3 {
		t.Fatalf("run after re-create: %v", err)
	}
	// Deleting the action frees the secret.
	if _, err := h.client.DeleteAction(as(bg(), owner), &vaultv1.DeleteActionRequest{WorkspaceId: ws, ActionId: act.GetId()}); err != nil {
		t.Fatal(err)
	}
	if got := usedByOf(h.get(t, ws, owner, "Notify token")); len(got) != 0 {
		t.Fatalf("usedBy after delete = %v", got)
	}
	if _, err := h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "Notify token"}); err != nil {
		t.Fatal(err)
	}

	// Internal API: a connection's credential, service credential only, audited.
	_, err = h.stranger.ResolveConnection(bg(), &vaultv1.ResolveConnectionRequest{WorkspaceId: ws, ConnectionId: c.GetId()})
	if status.Code(err) != codes.Unauthenticated && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("without service credential: %v", err)
	}
	res, err := h.internal.ResolveConnection(bg(), &vaultv1.ResolveConnectionRequest{WorkspaceId: ws, ConnectionId: c.GetId(), Caller: "integrations"})
	if err != nil || res.GetValue() != hs || res.GetConnection().GetId() != c.GetId() {
		t.Fatalf("resolve connection: %v", err)
	}
	found := false
	for _, ev := range h.auditEvents(t, ws, owner) {
		if ev.GetAction() == "secret.use" && ev.GetTargetId() == "HubSpot API key – production" && ev.GetActorId() == "integrations" &&
			strings.Contains(ev.GetDetail(), "connection="+c.GetId()) {
			found = true
		}
	}
	if !found {
		t.Fatal("connection resolve not audited")
	}
	// Connection updates move the usage.
	h.create(t, ws, owner, "HubSpot API key – staging", "integration", newValue("hs2_"))
	if _, err := h.client.UpdateConnection(as(bg(), owner), &vaultv1.UpdateConnectionRequest{WorkspaceId: ws, ConnectionId: c.GetId(),
		Connection: &vaultv1.Connection{SecretName: "HubSpot API key – staging"}, UpdateMask: mask("secretName")}); err != nil {
		t.Fatal(err)
	}
	if got := usedByOf(h.get(t, ws, owner, "HubSpot API key – production")); len(got) != 0 {
		t.Fatalf("old secret still used by %v", got)
	}
	if got := usedByOf(h.get(t, ws, owner, "HubSpot API key – staging")); len(got) != 1 {
		t.Fatalf("new secret used by %v", got)
	}
	// Every change is in the audit trail.
	acts := map[string]bool{}
	for _, ev := range h.auditEvents(t, ws, owner) {
		acts[ev.GetAction()] = true
	}
	for _, a := range []string{"connection.create", "connection.update", "action.create", "action.run", "action.delete", "secret.revoke", "secret.delete"} {
		if !acts[a] {
			t.Errorf("no %s audit event", a)
		}
	}
	// No value in any response or log.
	for _, v := range []string{hs, v1, v2, v3} {
		if strings.Contains(h.responsesSeen(), v) || strings.Contains(h.logs.String(), v) {
			t.Fatal("a value leaked into a response or log")
		}
	}
}

func TestSecretsUseAllowedHosts(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	u, _ := url.Parse(h.tls.srv.URL)
	bound, other := newValue("bound_"), newValue("other_")
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "bound", Kind: "webhook", Value: bound,
		AllowedHosts: []string{"API.Example.com", u.Host}}); err != nil {
		t.Fatal(err)
	}
	if got := h.get(t, ws, owner, "bound").GetAllowedHosts(); !equal(got, []string{u.Host, "api.example.com"}) {
		t.Fatalf("allowedHosts = %v", got)
	}
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "elsewhere", Kind: "webhook", Value: other,
		AllowedHosts: []string{"api.example.com"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.run(ws, owner, "/hook", map[string]string{"X-Api-Key": "{secret:bound}"}); err != nil {
		t.Fatal(err)
	}
	// A step to a host outside the list sends nothing.
	sent := h.tls.requests()
	_, err := h.run(ws, owner, "/hook", map[string]string{"X-Api-Key": "{secret:elsewhere}"})
	wantCode(t, err, codes.PermissionDenied, "SECRET_HOST_NOT_ALLOWED")
	if h.tls.requests() != sent {
		t.Fatal("a step to a host outside allowedHosts was sent")
	}
	// Nor may an action be saved that would.
	_, err = h.client.CreateAction(as(bg(), owner), &vaultv1.CreateActionRequest{WorkspaceId: ws, Name: "x", Method: "GET", Url: h.tls.srv.URL, Headers: map[string]string{"X-K": "{secret:elsewhere}"}})
	wantCode(t, err, codes.InvalidArgument, "SECRET_REFERENCE_INVALID")

	// Rebinding takes the value.
	_, err = h.update(ws, owner, "elsewhere", &vaultv1.Secret{AllowedHosts: []string{u.Host}}, "allowedHosts")
	wantCode(t, err, codes.InvalidArgument, "")
	if !strings.Contains(status.Convert(err).Message(), "value") {
		t.Fatalf("message = %v", err)
	}
	if _, err := h.update(ws, owner, "elsewhere", &vaultv1.Secret{AllowedHosts: []string{u.Host}, Value: other}, "allowedHosts", "value"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.run(ws, owner, "/hook", map[string]string{"X-Api-Key": "{secret:elsewhere}"}); err != nil {
		t.Fatal(err)
	}
	// Bad input.
	for _, hosts := range [][]string{{"https://x.example"}, {"x.example/path"}, {"*.example.com"}, {"x.example:99999"}, {""}} {
		_, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "bad", Kind: "webhook", Value: "vvvvvvvvvv", AllowedHosts: hosts})
		wantCode(t, err, codes.InvalidArgument, "")
	}
	_, err = h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "bad", Kind: "integration", Value: "vvvvvvvvvv", AllowedHosts: []string{"x.example"}})
	wantCode(t, err, codes.InvalidArgument, "")
	// Audit records the binding.
	found := false
	for _, ev := range h.auditEvents(t, ws, owner) {
		if ev.GetTargetId() == "elsewhere" && ev.GetAction() == "secret.update" && strings.Contains(ev.GetDetail(), "allowed-hosts="+u.Host) {
			found = true
		}
	}
	if !found {
		t.Fatal("allowedHosts change not audited")
	}
}

// echoServer answers every request by echoing X-Api-Key in the way the
// path says.
func echoServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		v := r.Header.Get("X-Api-Key")
		w.Header().Set("Server", "very-verbose-server")
		w.Header().Set("X-Version", "v1.2")
		switch r.URL.Path {
		case "/hex":
			io.WriteString(w, `{"key_hex":"`+hex.EncodeToString([]byte(v))+`"}`)
		case "/gzip-undeclared":
			var b bytes.Buffer
			z := gzip.NewWriter(&b)
			io.WriteString(z, "sneaky "+v)
			z.Close()
			w.Write(b.Bytes())
		case "/plain":
			io.WriteString(w, `{"ok":true,"note":"nothing echoed"}`)
		default:
			w.Header().Set("X-Echo", v)
			io.WriteString(w, `{"ok":true,"echo":"`+v+`"}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestSecretsUseRedactionNeverCorrupts(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	srv, _ := echoServer(t)
	h.create(t, ws, owner, "short hook", "webhook", "v")
	long := newValue("long_")
	h.create(t, ws, owner, "long hook", "webhook", long)
	run := func(name, path string) *vaultv1.RunHttpRequestResponse {
		t.Helper()
		resp, err := h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "GET", Url: srv.URL + path,
			Headers: map[string]string{"X-Api-Key": "{secret:" + name + "}"}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// A short value is never "redacted" into unrelated text: the body that
	// holds it is withheld, header names are intact, headers holding it are
	// withheld whole.
	r := run("short hook", "/echo")
	if !r.GetBodyWithheld() || r.GetBody() != "" || r.GetStatusCode() != 200 {
		t.Fatalf("short echo: %v", r)
	}
	if r.GetHeaders()["Server"] != "[WITHHELD]" || r.GetHeaders()["X-Echo"] != "[WITHHELD]" {
		t.Fatalf("headers = %v", r.GetHeaders())
	}
	for k := range r.GetHeaders() {
		if strings.Contains(k, "REDACTED") {
			t.Fatalf("header name rewritten: %q", k)
		}
	}
	// A body without the short value comes back untouched.
	r = run("short hook", "/plain")
	if r.GetBodyWithheld() || r.GetBody() != `{"ok":true,"note":"nothing echoed"}` {
		t.Fatalf("plain: %v", r)
	}
	// A long value is replaced where it appears whole, hex included.
	r = run("long hook", "/echo")
	if r.GetBody() != `{"ok":true,"echo":"[REDACTED:long hook]"}` || r.GetHeaders()["X-Echo"] != "[REDACTED:long hook]" || r.GetHeaders()["Server"] != "very-verbose-server" {
		t.Fatalf("long echo: %v", r)
	}
	r = run("long hook", "/hex")
	if r.GetBody() != `{"key_hex":"[REDACTED:long hook]"}` {
		t.Fatalf("hex echo: %v", r)
	}
	// Compressed without saying so: withheld.
	r = run("long hook", "/gzip-undeclared")
	if !r.GetBodyWithheld() || r.GetBody() != "" {
		t.Fatalf("undeclared gzip: %v", r)
	}
	if strings.Contains(h.responsesSeen(), long) {
		t.Fatal("value leaked")
	}
}

func TestSecretsUseVersions(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, "member")
	u, _ := url.Parse(h.tls.srv.URL)
	vals := []string{newValue("v1_")}
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "rotating", Kind: "webhook", Value: vals[0], AllowedHosts: []string{u.Host}}); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 3; i++ {
		v := newValue(fmt.Sprintf("v%d_", i))
		vals = append(vals, v)
		paths := []string{"value"}
		in := &vaultv1.Secret{Value: v}
		if i == 3 { // version 3 may go anywhere
			in.AllowedHosts, paths = nil, append(paths, "allowedHosts")
		}
		if _, err := h.update(ws, owner, "rotating", in, paths...); err != nil {
			t.Fatal(err)
		}
	}
	lv, err := h.client.ListSecretVersions(as(bg(), member), &vaultv1.ListSecretVersionsRequest{WorkspaceId: ws, Name: "rotating"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range lv.GetVersions() {
		got = append(got, fmt.Sprintf("%d:%v:%v", v.GetVersion(), v.GetCurrent(), v.GetCreatedBy() != ""))
	}
	if !equal(got, []string{"3:true:true", "2:false:true", "1:false:true"}) {
		t.Fatalf("versions = %v", got)
	}
	if len(h.get(t, ws, owner, "rotating").GetVersions()) != 3 {
		t.Fatal("GetSecret has no versions")
	}
	// Rollback: a new version with the old value and the old binding.
	rb, err := h.client.RollbackSecret(as(bg(), owner), &vaultv1.RollbackSecretRequest{WorkspaceId: ws, Name: "rotating", Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rb.GetSecret().GetVersion() != 4 || !equal(rb.GetSecret().GetAllowedHosts(), []string{u.Host}) {
		t.Fatalf("rolled back = %v", rb.GetSecret())
	}
	if _, err := h.run(ws, owner, "/hook", map[string]string{"X-Api-Key": "{secret:rotating}"}); err != nil || h.tls.lastHeader("X-Api-Key") != vals[0] {
		t.Fatalf("run after rollback: %v", err)
	}
	_, err = h.client.RollbackSecret(as(bg(), owner), &vaultv1.RollbackSecretRequest{WorkspaceId: ws, Name: "rotating", Version: 99})
	wantCode(t, err, codes.NotFound, "SECRET_VERSION_NOT_FOUND")
	_, err = h.client.RollbackSecret(as(bg(), member), &vaultv1.RollbackSecretRequest{WorkspaceId: ws, Name: "rotating", Version: 2})
	wantCode(t, err, codes.PermissionDenied, "")
	// Only the last 10 are kept.
	for i := 0; i < 8; i++ {
		if _, err := h.update(ws, owner, "rotating", &vaultv1.Secret{Value: newValue("more_")}, "value"); err != nil {
			t.Fatal(err)
		}
	}
	lv, _ = h.client.ListSecretVersions(as(bg(), owner), &vaultv1.ListSecretVersionsRequest{WorkspaceId: ws, Name: "rotating"})
	if n := len(lv.GetVersions()); n != 10 || lv.GetVersions()[0].GetVersion() != 12 || lv.GetVersions()[9].GetVersion() != 3 {
		t.Fatalf("kept %d versions: %v", n, lv.GetVersions())
	}
	_, err = h.client.RollbackSecret(as(bg(), owner), &vaultv1.RollbackSecretRequest{WorkspaceId: ws, Name: "rotating", Version: 2})
	wantCode(t, err, codes.NotFound, "SECRET_VERSION_NOT_FOUND")
	if _, err := h.client.RollbackSecret(as(bg(), owner), &vaultv1.RollbackSecretRequest{WorkspaceId: ws, Name: "rotating", Version: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.run(ws, owner, "/hook", map[string]string{"X-Api-Key": "{secret:rotating}"}); err != nil || h.tls.lastHeader("X-Api-Key") != vals[2] {
		t.Fatalf("run after rollback to 3: %v", err)
	}
	if got := h.auditActions(t, ws, owner, "rotating"); !strings.Contains(strings.Join(got, " "), "secret.rollback:success") {
		t.Fatalf("audit = %v", got)
	}
	// Deleting the secret drops its versions: a new one starts afresh.
	if _, err := h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "rotating"}); err != nil {
		t.Fatal(err)
	}
	h.create(t, ws, owner, "rotating", "webhook", newValue("new_"))
	lv, _ = h.client.ListSecretVersions(as(bg(), owner), &vaultv1.ListSecretVersionsRequest{WorkspaceId: ws, Name: "rotating"})
	if len(lv.GetVersions()) != 1 {
		t.Fatalf("versions after re-create = %v", lv.GetVersions())
	}
	for _, v := range vals {
		if strings.Contains(h.responsesSeen(), v) || strings.Contains(h.logs.String(), v) {
			t.Fatal("a value leaked")
		}
	}
}
