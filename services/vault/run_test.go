package vault_test

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/ratelimit"
	"github.com/backlog/controlplane/services/vault"
)

func TestRunSubstitutesSecrets(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	key, tok := newValue("key_"), newValue("tok_")
	h.create(t, ws, owner, "api-key", "webhook", key)
	h.create(t, ws, owner, "Bearer.Token", "webhook", tok)

	resp, err := h.run(ws, owner, "/hook", map[string]string{
		"X-Api-Key":     "{secret:api-key}",
		"authorization": "Bearer {{secret:bearer.token}}",
		"X-Literal":     `\{secret:api-key} and \{{secret:x}}`,
		"X-Plain":       "no references here {not:one}",
		"X-Both":        `\\{secret:api-key}|{secret:api-key}`,
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatusCode() != 201 || resp.GetBody() != "ok POST" || resp.GetHeaders()["X-Target"] != "yes" {
		t.Fatalf("response = %v", resp)
	}
	if !equal(resp.GetSecretsUsed(), []string{"Bearer.Token", "api-key"}) { // headers in name order
		t.Fatalf("secretsUsed = %v", resp.GetSecretsUsed())
	}
	for name, want := range map[string]string{
		"X-Api-Key":     key,
		"Authorization": "Bearer " + tok,
		"X-Literal":     "{secret:api-key} and {{secret:x}}",
		"X-Plain":       "no references here {not:one}",
		"X-Both":        `\` + key + "|" + key,
		"User-Agent":    "backlog-vault/1",
	} {
		if got := h.tls.lastHeader(name); got != want {
			t.Errorf("target received %s = %q, want %q", name, got, want)
		}
	}
	h.tls.mu.Lock()
	body := h.tls.body
	h.tls.mu.Unlock()
	if body != `{"hello":"world"}` {
		t.Errorf("target received body %q", body)
	}

	// Each use is audited and stamps last-used.
	if got := h.auditActions(t, ws, owner, "api-key"); !equal(got, []string{"secret.create:success", "secret.use:success"}) {
		t.Fatalf("audit = %v", got)
	}
	if s := h.get(t, ws, owner, "api-key"); s.GetLastUsedAt() == nil {
		t.Fatal("last used not set")
	}

	// A step without references may use plain HTTP; the SSRF guard still applies.
	resp, err = h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "get", Url: h.plain.srv.URL + "/x", Headers: map[string]string{"X-Note": "hi"}})
	if err != nil || resp.GetStatusCode() != 201 || h.plain.requests() != 1 || len(resp.GetSecretsUsed()) != 0 {
		t.Fatalf("plain step = %v %v", resp, err)
	}
	// HEAD has no body.
	resp, err = h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "HEAD", Url: h.tls.srv.URL, Headers: map[string]string{"X-Api-Key": "{secret:api-key}"}})
	if err != nil || resp.GetStatusCode() != 201 || resp.GetBody() != "" {
		t.Fatalf("HEAD = %v %v", resp, err)
	}
}

func TestRunRefusesBadStepsAndSendsNothing(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "api", "webhook", newValue("v"))
	u := h.tls.srv.URL
	for _, tc := range []struct {
		name string
		req  *vaultv1.RunHttpRequestRequest
	}{
		{"plain http with a reference", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: h.plain.srv.URL, Headers: map[string]string{"X-Api-Key": "{secret:api}"}}},
		{"plain http with a double reference", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: h.plain.srv.URL, Headers: map[string]string{"Authorization": "Bearer {{secret:api}}"}}},
		{"unterminated reference", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:api"}}},
		{"unterminated opener", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:"}}},
		{"double opened, single closed", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Headers: map[string]string{"X-Api-Key": "{{secret:api}"}}},
		{"bad name characters", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:my{key}"}}},
		{"empty name", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:}"}}},
		{"name too long", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:" + strings.Repeat("a", 129) + "}"}}},
		{"reference in the URL", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u + "/?key={secret:api}"}},
		{"reference in the URL path", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u + "/{{secret:api}}"}},
		{"malformed reference in the URL", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u + "/{secret:"}},
		{"reference in the body", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Body: `{"key":"{secret:api}"}`}},
		{"bad method", &vaultv1.RunHttpRequestRequest{Method: "CONNECT", Url: u}},
		{"no URL", &vaultv1.RunHttpRequestRequest{Method: "GET"}},
		{"relative URL", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: "/path"}},
		{"ftp URL", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: "ftp://example.com/"}},
		{"URL with credentials", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: "https://user:pw@example.com/"}},
		{"URL too long", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u + "/" + strings.Repeat("a", 2048)}},
		{"bad header name", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u, Headers: map[string]string{"Bad Header": "x"}}},
		{"header value with a line break", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u, Headers: map[string]string{"X-A": "a\r\nX-Injected: 1"}}},
		{"vault-managed header", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u, Headers: map[string]string{"Host": "evil.example"}}},
		{"same header twice", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u, Headers: map[string]string{"x-a": "1", "X-A": "2"}}},
		{"too many headers", &vaultv1.RunHttpRequestRequest{Method: "GET", Url: u, Headers: manyHeaders(51)}},
		{"body over 1 MiB", &vaultv1.RunHttpRequestRequest{Method: "POST", Url: u, Body: strings.Repeat("b", 1<<20+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.WorkspaceId = ws
			_, err := h.client.RunHttpRequest(as(bg(), owner), tc.req)
			wantCode(t, err, codes.InvalidArgument, "")
		})
	}
	if n, m := h.tls.requests(), h.plain.requests(); n+m != 0 {
		t.Fatalf("refused steps sent %d requests", n+m)
	}
	// The escape makes the URL and body literal text.
	_, err := h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "POST", Url: u, Body: `note: \{secret:api}`})
	if err != nil {
		t.Fatal(err)
	}
	h.tls.mu.Lock()
	body := h.tls.body
	h.tls.mu.Unlock()
	if body != "note: {secret:api}" {
		t.Fatalf("body sent = %q", body)
	}
}

func manyHeaders(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m["X-H"+strings.Repeat("a", i)] = "v"
	}
	return m
}

func TestUpdatePropagatesToTheNextRun(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	v1, v2 := newValue("one_"), newValue("two_")
	h.create(t, ws, owner, "api", "webhook", v1)
	headers := map[string]string{"X-Api-Key": "{secret:api}"}
	if _, err := h.run(ws, owner, "/", headers); err != nil || h.tls.lastHeader("X-Api-Key") != v1 {
		t.Fatalf("first run: %v", err)
	}
	if _, err := h.update(ws, owner, "api", &vaultv1.Secret{Value: v2}, "value"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.run(ws, owner, "/", headers); err != nil || h.tls.lastHeader("X-Api-Key") != v2 {
		t.Fatalf("run after update sent the old value (err %v)", err)
	}
}

func TestRevokeDeleteExpiryStopUse(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "revoked", "webhook", newValue("r"))
	h.create(t, ws, owner, "deleted", "webhook", newValue("d"))
	h.create(t, ws, owner, "integration", "integration", newValue("i"))
	h.create(t, ws, owner, "good", "webhook", newValue("g"))
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "expiring", Kind: "webhook", Value: newValue("e"), ExpiresAt: ts(h.clock.Now().Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"revoked", "deleted", "expiring", "good"} {
		if _, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:" + name + "}"}); err != nil {
			t.Fatalf("%s before: %v", name, err)
		}
	}
	if _, err := h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "revoked"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "deleted"}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Hour)
	sent := h.tls.requests()
	for _, tc := range []struct {
		name, reason string
		code         codes.Code
	}{
		{"revoked", "SECRET_REVOKED", codes.FailedPrecondition},
		{"deleted", "SECRET_NOT_FOUND", codes.NotFound},
		{"expiring", "SECRET_EXPIRED", codes.FailedPrecondition},
		{"never-existed", "SECRET_NOT_FOUND", codes.NotFound},
		{"integration", "SECRET_WRONG_KIND", codes.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A good secret in the same step does not make it go out.
			_, err := h.run(ws, owner, "/", map[string]string{"X-Good": "{secret:good}", "X-Api-Key": "{secret:" + tc.name + "}"})
			wantCode(t, err, tc.code, tc.reason)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, `"`+tc.name+`"`) {
				t.Fatalf("message does not name the secret: %q", msg)
			}
		})
	}
	if n := h.tls.requests() - sent; n != 0 {
		t.Fatalf("%d requests sent with unusable secrets", n)
	}
	if got := h.auditActions(t, ws, owner, "revoked"); got[len(got)-1] != "secret.use:failure" {
		t.Fatalf("revoked use audit = %v", got)
	}

	// Updating the value reactivates a revoked secret; extending the
	// expiry revives an expired one.
	s, err := h.update(ws, owner, "revoked", &vaultv1.Secret{Value: newValue("r2")}, "value")
	if err != nil || s.GetState() != "active" || s.GetRevokedAt() != nil {
		t.Fatalf("reactivate = %v %v", s, err)
	}
	// A new value alone under a past expiry would still fail: refused, with
	// the reason.
	_, err = h.update(ws, owner, "expiring", &vaultv1.Secret{Value: newValue("e2")}, "value")
	wantCode(t, err, codes.InvalidArgument, "")
	if _, err := h.update(ws, owner, "expiring", &vaultv1.Secret{ExpiresAt: ts(h.clock.Now().Add(time.Hour))}, "expiresAt"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"revoked", "expiring"} {
		if _, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:" + name + "}"}); err != nil {
			t.Fatalf("%s after update: %v", name, err)
		}
	}
}

func TestEgressGuard(t *testing.T) {
	h := newHarness(t, func(c *vault.Config) { c.EgressAllowPrivate = false })
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "api", "webhook", newValue("v"))
	port := h.tls.srv.URL[strings.LastIndexByte(h.tls.srv.URL, ':'):]
	for _, u := range []string{
		h.tls.srv.URL,                  // literal 127.0.0.1: refused before dialling
		"https://localhost" + port,     // a name resolving to loopback: refused at dial time
		"https://[::1]" + port,         // IPv6 loopback
		"https://[::ffff:127.0.0.1]/",  // IPv4-mapped loopback
		"https://10.1.2.3/",            // private
		"https://169.254.169.254/meta", // link-local (cloud metadata)
		"https://0.0.0.0" + port,       // unspecified
		// The same loopback target written as inet_aton and WHATWG URL
		// parsers read addresses, judged as the address they are.
		"https://2130706433" + port,           // one decimal number
		"https://0x7f000001" + port,           // hex
		"https://0177.0.0.1" + port,           // octal
		"https://127.1" + port,                // shortened
		"https://127.0.0.1." + port,           // trailing dot
		"https://０x7f.1" + port,               // fullwidth digit, mapped by IDNA as net/http does
		"https://[::127.0.0.1]" + port,        // IPv4-compatible (::/96)
		"https://[64:ff9b::127.0.0.1]" + port, // NAT64 embedding loopback
		"https://[2002:7f00:1::1]" + port,     // 6to4 embedding loopback
		"https://[fe80::1%25lo]" + port,       // zone id
		"https://[::1%25lo]" + port,           // zone id on loopback
		"https://192.0.2.1/",                  // documentation ranges
		"https://198.51.100.1/",
		"https://203.0.113.1/",
		"https://[2001:db8::1]/",
		"https://198.18.0.1/", // benchmarking
		"https://[2001:2::1]/",
		"https://[2001::1]/", // Teredo
	} {
		t.Run(u, func(t *testing.T) {
			_, err := h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "GET", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:api}"}})
			wantCode(t, err, codes.PermissionDenied, "EGRESS_DENIED")
		})
	}
	_, err := h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "GET", Url: h.plain.srv.URL})
	wantCode(t, err, codes.PermissionDenied, "EGRESS_DENIED")
	// Ambiguous hosts, and userinfo that would hide the real host, are
	// invalid URLs.
	for _, u := range []string{
		"https://public.example@127.0.0.1" + port, // userinfo: the host is 127.0.0.1
		"https://user:pw@example.com/",
		"https://134744072/", // 8.8.8.8, written as one number
		"https://8.8.8.8./",
		"https://example.123/",
	} {
		_, err := h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "GET", Url: u, Headers: map[string]string{"X-Api-Key": "{secret:api}"}})
		wantCode(t, err, codes.InvalidArgument, "")
	}
	if n := h.tls.requests() + h.plain.requests(); n != 0 {
		t.Fatalf("the guard let %d requests through", n)
	}
	if got := h.auditActions(t, ws, owner, "api"); got[len(got)-1] != "secret.use:failure" {
		t.Fatalf("audit = %v", got)
	}
}

func TestResponseHandling(t *testing.T) {
	h := newHarness(t, func(c *vault.Config) { c.EgressMaxResponseBytes = 1 << 20; c.EgressTimeout = 500 * time.Millisecond })
	ws, owner := h.env.NewWorkspace(t, "acme")
	key, tok := newValue("key_"), newValue("tok_")
	h.create(t, ws, owner, "api", "webhook", key)
	h.create(t, ws, owner, "tok", "webhook", tok)

	// The target echoes the credentials: the caller never sees them.
	resp, err := h.run(ws, owner, "/echo", map[string]string{"X-Api-Key": "{secret:api}", "Authorization": "Bearer {secret:tok}"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(resp.GetBody(), key) || strings.Contains(resp.GetBody(), tok) || strings.Contains(resp.GetHeaders()["X-Echo"], key) {
		t.Fatalf("an echoed value reached the caller: %v", resp)
	}
	if want := `{"received":"[REDACTED:api]","auth":"Bearer [REDACTED:tok]"}`; resp.GetBody() != want {
		t.Fatalf("body = %s, want %s", resp.GetBody(), want)
	}
	if resp.GetHeaders()["X-Echo"] != "you sent [REDACTED:api]" {
		t.Fatalf("X-Echo = %q", resp.GetHeaders()["X-Echo"])
	}
	if h.tls.lastHeader("X-Api-Key") != key {
		t.Fatal("the target did not get the value")
	}

	// Redirects are returned, not followed.
	resp, err = h.run(ws, owner, "/redirect", map[string]string{"X-Api-Key": "{secret:api}"})
	if err != nil || resp.GetStatusCode() != 302 || resp.GetHeaders()["Location"] != "https://example.com/elsewhere" {
		t.Fatalf("redirect = %v %v", resp, err)
	}
	// Big bodies are capped and flagged.
	resp, err = h.run(ws, owner, "/big", nil)
	if err != nil || !resp.GetBodyTruncated() || len(resp.GetBody()) != 1<<20 {
		t.Fatalf("big: truncated=%v len=%d err=%v", resp.GetBodyTruncated(), len(resp.GetBody()), err)
	}
	// Binary bodies come back base64-encoded.
	resp, err = h.run(ws, owner, "/binary", nil)
	if err != nil || resp.GetBodyEncoding() != "base64" || resp.GetBody() != base64.StdEncoding.EncodeToString([]byte{0xff, 0xfe, 0, 1}) {
		t.Fatalf("binary = %v %v", resp, err)
	}
	// A slow target times out.
	start := time.Now()
	_, err = h.run(ws, owner, "/slow", map[string]string{"X-Api-Key": "{secret:api}"})
	wantCode(t, err, codes.DeadlineExceeded, "HTTP_REQUEST_TIMEOUT")
	if time.Since(start) > 3*time.Second {
		t.Fatal("the timeout did not apply")
	}
	// An untrusted certificate is an error, with nothing of the value in it.
	h.restart(func(c *vault.Config) { c.EgressCAFile = "" })
	_, err = h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:api}"})
	wantCode(t, err, codes.Unavailable, "HTTP_REQUEST_FAILED")
	if !strings.Contains(status.Convert(err).Message(), "certificate") {
		t.Fatalf("message = %q", status.Convert(err).Message())
	}
}

func TestSecretValueThatCannotBeAHeader(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "pem", "webhook", "-----BEGIN KEY-----\nabc\n-----END KEY-----")
	_, err := h.run(ws, owner, "/", map[string]string{"X-Key": "{secret:pem}"})
	wantCode(t, err, codes.FailedPrecondition, "SECRET_VALUE_UNUSABLE")
	if h.tls.requests() != 0 {
		t.Fatal("sent")
	}
}

// TestStepWithManySecrets runs a step that references more secrets than one
// store update may record: every use is still audited and stamps last-used,
// and so is every refusal.
func TestStepWithManySecrets(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	const n = 130 // an event and a record each: more than 2x the 120 writes of one update
	var tmpl, want strings.Builder
	for i := range n {
		name := fmt.Sprintf("s%03d", i)
		v := newValue("v_")
		h.create(t, ws, owner, name, "webhook", v)
		tmpl.WriteString("{secret:" + name + "}")
		want.WriteString(v)
	}
	resp, err := h.run(ws, owner, "/", map[string]string{"X-Keys": tmpl.String()})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetSecretsUsed()) != n || h.tls.lastHeader("X-Keys") != want.String() {
		t.Fatalf("used %d secrets", len(resp.GetSecretsUsed()))
	}
	count := func(outcome string) int {
		c := 0
		for _, ev := range h.auditEvents(t, ws, owner) {
			if ev.GetAction() == "secret.use" && ev.GetOutcome() == outcome {
				c++
			}
		}
		return c
	}
	if got := count("success"); got != n {
		t.Fatalf("%d use events, want %d", got, n)
	}
	list, err := h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, PageSize: 1000})
	if err != nil || len(list.GetSecrets()) != n {
		t.Fatalf("list: %d %v", len(list.GetSecrets()), err)
	}
	for _, s := range list.GetSecrets() {
		if s.GetLastUsedAt() == nil {
			t.Fatalf("%s: last used not set", s.GetName())
		}
	}
	// Refused before anything is decrypted (sealed): one failure each.
	h.restart(func(c *vault.Config) { c.KEKFile = "" })
	_, err = h.run(ws, owner, "/", map[string]string{"X-Keys": tmpl.String()})
	wantCode(t, err, codes.Unavailable, "VAULT_SEALED")
	if got := count("failure"); got != n {
		t.Fatalf("%d failure events, want %d", got, n)
	}
}

// TestStepsPerWorkspaceCap: at most EgressMaxStepsPerWorkspace steps run at
// once in a workspace; one more is refused with ResourceExhausted and a
// RetryInfo before anything is sent or decrypted, other workspaces are not
// affected, and slots come back when steps end, however they end.
func TestStepsPerWorkspaceCap(t *testing.T) {
	const limit = 2
	h := newHarness(t, func(c *vault.Config) { c.EgressMaxStepsPerWorkspace = limit; c.EgressTimeout = 10 * time.Second })
	ws, owner := h.env.NewWorkspace(t, "busy")
	other, otherOwner := h.env.NewWorkspace(t, "other")
	h.create(t, ws, owner, "api", "webhook", newValue("v"))
	h.create(t, other, otherOwner, "api", "webhook", newValue("w"))
	key := map[string]string{"X-Api-Key": "{secret:api}"}

	errc := make(chan error, limit)
	for range limit {
		go func() {
			resp, err := h.run(ws, owner, "/hold", key)
			if err == nil && resp.GetBody() != "released" {
				err = fmt.Errorf("held step answered %v", resp)
			}
			errc <- err
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.tls.held.Load() < limit {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d steps reached the target", h.tls.held.Load(), limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
	sentBefore := h.tls.requests()
	usesBefore := len(h.auditActions(t, ws, owner, "api"))

	_, err := h.run(ws, owner, "/", key)
	wantCode(t, err, codes.ResourceExhausted, "TOO_MANY_HTTP_REQUESTS")
	if d, ok := ratelimit.RetryDelay(err); !ok || d <= 0 {
		t.Fatalf("no RetryInfo delay in %v", err)
	}
	if !strings.Contains(status.Convert(err).Message(), "nothing was sent") {
		t.Fatalf("message %q", status.Convert(err).Message())
	}
	if n := h.tls.requests(); n != sentBefore {
		t.Fatalf("the refused step reached the target (%d requests, want %d)", n, sentBefore)
	}
	if n := len(h.auditActions(t, ws, owner, "api")); n != usesBefore {
		t.Fatalf("the refused step used the secret: %d audit events, want %d", n, usesBefore)
	}

	// Another workspace is not affected.
	if _, err := h.run(other, otherOwner, "/", key); err != nil {
		t.Fatalf("another workspace's step: %v", err)
	}

	h.tls.unhold()
	for range limit {
		if err := <-errc; err != nil {
			t.Fatalf("held step: %v", err)
		}
	}
	// Slots come back, also from steps that fail after taking one.
	for range limit + 1 {
		_, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:missing}"})
		wantCode(t, err, codes.NotFound, "")
	}
	if _, err := h.run(ws, owner, "/", key); err != nil {
		t.Fatalf("after the held steps ended: %v", err)
	}
}
