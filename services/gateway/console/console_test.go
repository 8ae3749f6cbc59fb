package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
)

// newTestConsole builds a console whose API and credential service are never
// reached: these tests cover what it decides on its own.
func newTestConsole(t *testing.T, secret string, now func() time.Time) *Console {
	t.Helper()
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := New(Config{API: http.NotFoundHandler(), SignIns: consolev1.NewConsoleServiceClient(conn), Secret: secret, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSessionCookie: a session opens on any console with the same secret,
// not with another, not tampered with, not after it expires; the cookie
// never holds the token in the clear.
func TestSessionCookie(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	a := newTestConsole(t, "shared-forwarding-token", clock)
	b := newTestConsole(t, "shared-forwarding-token", clock)
	other := newTestConsole(t, "another-token", clock)

	const token = "blg_pat_examplepersonaltoken0123456789"
	rec := httptest.NewRecorder()
	s := a.startSession(rec, httptest.NewRequest(http.MethodPost, "/console/session", nil), token)
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("%d cookies", len(cookies))
	}
	ck := cookies[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || ck.Path != Prefix || ck.MaxAge != int(DefaultSessionTTL/time.Second) {
		t.Errorf("cookie %+v", ck)
	}
	if strings.Contains(ck.Value, "examplepersonaltoken") {
		t.Errorf("the cookie holds the token in the clear")
	}
	req := func(value string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/console/session", nil)
		r.AddCookie(&http.Cookie{Name: CookieName, Value: value})
		return r
	}
	if got := b.sessionFrom(req(ck.Value)); got == nil || got.Token != token || b.csrfToken(got) != a.csrfToken(s) {
		t.Errorf("another replica with the same secret: %+v", got)
	}
	if other.sessionFrom(req(ck.Value)) != nil {
		t.Errorf("a console with another secret opened the session")
	}
	tampered := []byte(ck.Value)
	tampered[len(tampered)/2] ^= 1
	if a.sessionFrom(req(string(tampered))) != nil || a.sessionFrom(req("")) != nil || a.sessionFrom(req(strings.Repeat("A", 3000))) != nil {
		t.Errorf("a tampered, empty or oversized cookie opened")
	}
	now = now.Add(DefaultSessionTTL)
	if a.sessionFrom(req(ck.Value)) != nil {
		t.Errorf("an expired session opened")
	}

	// Under TLS the cookie is Secure.
	rec = httptest.NewRecorder()
	tlsReq := httptest.NewRequest(http.MethodPost, "https://console.example/console/session", nil)
	a.startSession(rec, tlsReq, token)
	if !rec.Result().Cookies()[0].Secure {
		t.Errorf("the cookie is not Secure under TLS")
	}
}

// TestRoutesAndHeaders: what the console owns, the redirect, and the
// headers every answer carries.
func TestRoutesAndHeaders(t *testing.T) {
	c := newTestConsole(t, "", nil)
	for p, want := range map[string]bool{"/": true, "/console": true, "/console/": true, "/console/api/v1/x": true, "/v1/auth/whoami": false, "/consoles": false, "/healthz": false} {
		if Owns(p) != want {
			t.Errorf("Owns(%q) = %v", p, !want)
		}
	}
	cases := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/", http.StatusFound},
		{http.MethodGet, "/console", http.StatusFound},
		{http.MethodGet, "/console/", http.StatusOK},
		{http.MethodGet, "/console/sign-in", http.StatusOK},
		{http.MethodGet, "/console/assets/app.js", http.StatusOK},
		{http.MethodGet, "/console/assets/index.html", http.StatusNotFound},
		{http.MethodGet, "/console/nope", http.StatusNotFound},
		{http.MethodPost, "/console/", http.StatusMethodNotAllowed},
		{http.MethodGet, "/console/session", http.StatusUnauthorized},
		{http.MethodGet, "/console/api/v1/auth/whoami", http.StatusUnauthorized},
		{http.MethodPost, "/console/session", http.StatusForbidden},        // no Origin: not from the console's page
		{http.MethodPost, "/console/session/redeem", http.StatusForbidden}, // idem
		{http.MethodPost, "/console/sign-in-links", http.StatusUnauthorized},
	}
	for _, tc := range cases {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}
		h := rec.Header()
		if h.Get("Content-Security-Policy") != ContentSecurityPolicy || h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s %s: security headers %v", tc.method, tc.path, h)
		}
		if tc.status == http.StatusUnauthorized && h.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", tc.method, tc.path)
		}
	}
	// A token that is not a personal access token is refused before any call.
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/console/session", strings.NewReader(`{"token":"blg_auto_x"}`))
	r.Header.Set("Origin", "http://example.com")
	r.Host = "example.com"
	r.Header.Set("Content-Type", "application/json")
	c.ServeHTTP(rec, r)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "personal access token") {
		t.Errorf("an automation secret pasted: %d %s", rec.Code, rec.Body)
	}
}
