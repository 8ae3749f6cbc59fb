package sdk

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// testCredential makes a well-formed credential of kind, as the credential
// service does (256 random bits, base62, CRC32 checksum).
func testCredential(kind CredentialKind) string {
	b := make([]byte, 33)
	b[0] = 1
	_, _ = rand.Read(b[1:])
	head := credPrefix + string(kind) + "_" + new(big.Int).SetBytes(b).Text(62)
	return head + checksum(head)
}

func TestParseCredential(t *testing.T) {
	for _, k := range knownKinds {
		if got, err := ParseCredential(testCredential(k)); err != nil || got != k {
			t.Errorf("%s: got %q, %v", k, got, err)
		}
	}
	good := testCredential(KindAccessToken)
	flipped := []byte(good)
	if i := len(credPrefix) + 5; flipped[i] == 'A' {
		flipped[i] = 'B'
	} else {
		flipped[i] = 'A'
	}
	for _, c := range []struct {
		in   string
		want error
	}{
		{"", ErrNoCredential},
		{"Bearer x", ErrCredentialFormat},
		{"blg_at", ErrCredentialFormat},
		{"blg_zz_" + good[7:], ErrCredentialKind},
		{string(flipped), ErrCredentialChecksum},
		{good[:len(good)-1], ErrCredentialChecksum},
		{good + "!", ErrCredentialFormat},
		{"blg_at_" + strings.Repeat("a", 600), ErrCredentialFormat},
	} {
		if _, err := ParseCredential(c.in); !errors.Is(err, c.want) {
			t.Errorf("ParseCredential(%.20q…) = %v, want %v", c.in, err, c.want)
		}
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

func newDeadVerifier(t *testing.T) *Verifier {
	t.Helper()
	v, err := NewVerifier([]string{deadAddr(t)}, WithServiceToken(testCredential(KindService)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

type errBody struct {
	Code    int              `json:"code"`
	Message string           `json:"message"`
	Details []map[string]any `json:"details"`
}

func serveOnce(t *testing.T, h http.Handler, auth string) (*httptest.ResponseRecorder, errBody) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/v1/x", nil)
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var b errBody
	if w.Code != http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
			t.Fatalf("error body is not JSON: %q", w.Body.String())
		}
	}
	return w, b
}

// The refusals that need no credential service: they are answered before
// any call, with the control plane's own messages and the contract's codes.
func TestMiddlewareRefusesWithoutAsking(t *testing.T) {
	v := newDeadVerifier(t)
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("handler reached") })
	h := v.Middleware(next)
	auto, rot, svc := testCredential(KindAutomation), testCredential(KindRotationSecret), testCredential(KindService)
	for _, c := range []struct {
		name, auth, msg string
	}{
		{"none", "", MsgMissing},
		{"not bearer", "Basic dXNlcjpwdw==", MsgMissing},
		{"automation secret", "Bearer " + auto, MsgExchangeFirst},
		{"automation secret, lower-case scheme", "bearer " + auto, MsgExchangeFirst},
		{"rotation secret", "Bearer " + rot, MsgRotationSecret},
		{"service credential", "Bearer " + svc, MsgInvalid},
		{"webhook signing key", "Bearer " + testCredential(KindWebhookSigning), MsgInvalid},
		{"mistyped", "Bearer " + auto[:len(auto)-1] + "x", ErrCredentialChecksum.Error()},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, b := serveOnce(t, h, c.auth)
			if w.Code != http.StatusUnauthorized || b.Code != int(codes.Unauthenticated) || b.Message != c.msg {
				t.Fatalf("got %d %+v, want 401 %q", w.Code, b, c.msg)
			}
			if w.Header().Get("WWW-Authenticate") != `Bearer realm="backlog"` {
				t.Error("401 without WWW-Authenticate")
			}
			if len(b.Details) != 1 || b.Details[0]["reason"] != ReasonUnauthenticated || b.Details[0]["domain"] != Domain {
				t.Errorf("details %v, want ErrorInfo UNAUTHENTICATED/backlog", b.Details)
			}
			for _, secret := range []string{auto, rot, svc} {
				if strings.Contains(w.Body.String(), secret) {
					t.Error("the answer holds the credential")
				}
			}
		})
	}
	if n := v.Stats().Authenticated; n != 0 {
		t.Errorf("%d calls to the credential service, want none", n)
	}
}

// A well-formed credential the credential service must judge, with no
// replica reachable: 503 with a message that names no address.
func TestUnreachableCredentialServiceIs503(t *testing.T) {
	v := newDeadVerifier(t)
	h := v.Middleware(http.NotFoundHandler())
	w, b := serveOnce(t, h, "Bearer "+testCredential(KindAccessToken))
	if w.Code != http.StatusServiceUnavailable || b.Message != MsgUnavailable || b.Details[0]["reason"] != ReasonVerifyUnavailable {
		t.Fatalf("got %d %+v", w.Code, b)
	}
	if strings.Contains(w.Body.String(), "127.0.0.1") {
		t.Error("the answer names the credential service's address")
	}
	if v.Caching() {
		t.Error("caching with no live revocation watch")
	}
}

func TestInterceptorsRefuseWithoutAsking(t *testing.T) {
	v := newDeadVerifier(t)
	auto := testCredential(KindAutomation)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+auto))
	_, err := v.UnaryServerInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/issues.v1.Issues/Create"},
		func(context.Context, any) (any, error) { t.Error("handler reached"); return nil, nil })
	if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != MsgExchangeFirst || Reason(err) != ReasonUnauthenticated {
		t.Errorf("unary: %v", err)
	}
	// Health and reflection pass without a credential.
	called := false
	_, err = v.UnaryServerInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"},
		func(context.Context, any) (any, error) { called = true; return nil, nil })
	if err != nil || !called {
		t.Errorf("health: %v, reached %v", err, called)
	}
	err = v.StreamServerInterceptor()(nil, &fakeStream{ctx: context.Background()}, &grpc.StreamServerInfo{FullMethod: "/issues.v1.Issues/Watch"},
		func(any, grpc.ServerStream) error { t.Error("handler reached"); return nil })
	if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != MsgMissing {
		t.Errorf("stream: %v", err)
	}
}

// fakeStream is only a context holder: the interceptor refuses before it
// touches the stream.
type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f *fakeStream) Context() context.Context { return f.ctx }

func TestNewVerifierChecksItsConfiguration(t *testing.T) {
	pat := testCredential(KindPersonal)
	file := filepath.Join(t.TempDir(), "svc")
	if err := os.WriteFile(file, []byte(pat+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	svc := WithServiceToken(testCredential(KindService))
	for _, c := range []struct {
		name  string
		addrs []string
		opts  []VerifierOption
		want  string
	}{
		{"no address", []string{" , "}, []VerifierOption{svc}, "no credential service address"},
		{"no service token", []string{"127.0.0.1:1"}, nil, "WithServiceToken"},
		{"a personal token", []string{"127.0.0.1:1"}, []VerifierOption{WithServiceToken(pat)}, "not a service credential"},
		{"a file with a personal token", []string{"127.0.0.1:1"}, []VerifierOption{WithServiceTokenFile(file)}, file + " is not a service credential"},
		{"a missing file", []string{"127.0.0.1:1"}, []VerifierOption{WithServiceTokenFile(file + ".none")}, "no such file"},
		{"plaintext to another host", []string{"127.0.0.1:1,cred.example:9101"}, []VerifierOption{svc}, "cred.example:9101 is not a loopback address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := NewVerifier(c.addrs, c.opts...)
			if err == nil {
				v.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), pat) {
				t.Errorf("error %q: want it to say %q and hold no credential", err, c.want)
			}
		})
	}
	v, err := NewVerifier([]string{"cred.example:9101"}, svc, WithInsecure())
	if err != nil {
		t.Fatalf("WithInsecure: %v", err)
	}
	v.Close()
	if got := SplitAddrs("a:1, b:2", "", "b:2,c:3"); strings.Join(got, " ") != "a:1 b:2 c:3" {
		t.Errorf("SplitAddrs = %v", got)
	}
}

func TestRequire(t *testing.T) {
	auto := &Caller{Kind: CallerAutomation, WorkspaceID: "ws1", Scopes: []string{"issues:write"}, TeamIDs: []string{"red"}}
	free := &Caller{Kind: CallerAutomation, WorkspaceID: "ws1", Scopes: []string{"issues:write"}}
	person := &Caller{Kind: CallerMember, WorkspaceID: "ws1", Role: "owner", Scopes: []string{"automations:read"}}
	op := &Caller{Kind: CallerOperator}
	for _, c := range []struct {
		name            string
		caller          *Caller
		ws, scope, team string
		code            codes.Code
		reason          string
	}{
		{"allowed", auto, "ws1", "issues:write", "red", codes.OK, ""},
		{"no caller", nil, "ws1", "", "", codes.Unauthenticated, ReasonUnauthenticated},
		{"operator", op, "ws1", "", "", codes.PermissionDenied, ReasonPermissionDenied},
		{"other workspace", auto, "ws2", "issues:write", "red", codes.NotFound, ReasonNotFound},
		{"missing scope", auto, "ws1", "issues:delete", "red", codes.PermissionDenied, ReasonPermissionDenied},
		{"other team", auto, "ws1", "issues:write", "blue", codes.PermissionDenied, ReasonPermissionDenied},
		{"no team boundary", free, "ws1", "issues:write", "blue", codes.OK, ""},
		{"a person has no team boundary", person, "ws1", "", "blue", codes.OK, ""},
		{"a person holds only role scopes", person, "ws1", "issues:write", "", codes.PermissionDenied, ReasonPermissionDenied},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			if c.caller != nil {
				ctx = WithCaller(ctx, c.caller)
			}
			got, err := Require(ctx, c.ws, c.scope, c.team)
			if status.Code(err) != c.code || Reason(err) != c.reason {
				t.Fatalf("got %v (reason %q), want %s %s", err, Reason(err), c.code, c.reason)
			}
			if err == nil && got != c.caller {
				t.Error("Require did not return the caller")
			}
		})
	}
	if _, err := RequireTeam(WithCaller(context.Background(), auto), "blue"); !strings.Contains(status.Convert(err).Message(), "bounded to teams (red)") {
		t.Errorf("team refusal says %v", err)
	}
}

func TestWriteErrorHidesPlainErrors(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, errors.New("open /var/lib/secret.db: permission denied"))
	if w.Code != http.StatusInternalServerError || strings.Contains(w.Body.String(), "secret.db") {
		t.Fatalf("got %d %s", w.Code, w.Body)
	}
	for c, want := range map[codes.Code]int{codes.InvalidArgument: 400, codes.Unauthenticated: 401, codes.PermissionDenied: 403,
		codes.NotFound: 404, codes.AlreadyExists: 409, codes.ResourceExhausted: 429, codes.Unavailable: 503, codes.Internal: 500} {
		if got := HTTPStatus(c); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", c, got, want)
		}
	}
}

func TestNewTokenSourceChecksItsSecret(t *testing.T) {
	ex := HTTPExchanger{BaseURL: "https://backlog.example"}
	auto := testCredential(KindAutomation)
	at, pat := testCredential(KindAccessToken), testCredential(KindPersonal)
	for _, c := range []struct {
		name   string
		secret string
		ex     Exchanger
		opts   []TokenOption
		want   string
	}{
		{"access token", at, ex, nil, "already an access token"},
		{"personal token", pat, ex, nil, `not a credential of kind "pat"`},
		{"mistyped", auto[:len(auto)-2], ex, nil, "checksum"},
		{"no exchanger", auto, nil, nil, "needs an Exchanger"},
		{"fractional ttl", auto, ex, []TokenOption{WithTTL(1500 * time.Millisecond)}, "whole number of seconds"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewTokenSource(c.secret, c.ex, c.opts...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			for _, s := range []string{auto, at, pat} {
				if strings.Contains(err.Error(), s) {
					t.Error("the error holds the credential")
				}
			}
		})
	}
}

// Credentials never go over plain http to a host that is not loopback;
// the request is not even sent.
func TestTransportRefusesPlainHTTP(t *testing.T) {
	ts, err := NewTokenSource(testCredential(KindAutomation), HTTPExchanger{BaseURL: "http://backlog.example"})
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: ts.Transport(nil)}
	_, err = c.Get("http://issues.example/v1/x")
	if err == nil || !strings.Contains(err.Error(), "refusing to send a Backlog credential over plain http") {
		t.Fatalf("got %v", err)
	}
	// The exchange itself is refused the same way, before any request.
	_, err = ts.Token(context.Background())
	if status.Code(err) != codes.Unauthenticated || !errors.Is(err, ErrExchangeRefused) {
		t.Fatalf("Token: %v", err)
	}
	if u, _ := url.Parse("http://[::1]:8080/x"); checkScheme(u, false) != nil {
		t.Error("loopback refused")
	}
}

func TestHTTPErrorStatus(t *testing.T) {
	body := `{"code":7,"message":"this automation is suspended; an owner or admin can resume it","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"PERMISSION_DENIED","domain":"backlog"}]}`
	err := httpErrorStatus(403, []byte(body))
	if status.Code(err) != codes.PermissionDenied || Reason(err) != "PERMISSION_DENIED" || !strings.Contains(err.Error(), "suspended") {
		t.Errorf("got %v", err)
	}
	if err := httpErrorStatus(502, []byte("<html>bad gateway</html>")); status.Code(err) != codes.Unavailable {
		t.Errorf("502 page: %v", err)
	}
	if err := httpErrorStatus(401, nil); status.Code(err) != codes.Unauthenticated {
		t.Errorf("bare 401: %v", err)
	}
}

// The module imports the generated API (gen/) and nothing else of the
// control plane: no service's package, not kit.
func TestImportsNothingUnderServices(t *testing.T) {
	const self = "github.com/backlog/controlplane/services/sdk"
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		n++
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if strings.HasPrefix(p, "github.com/backlog/controlplane/") && !strings.HasPrefix(p, "github.com/backlog/controlplane/gen/") &&
				p != self && !strings.HasPrefix(p, self+"/") {
				t.Errorf("%s imports %s: the SDK may import only gen/ of the control plane", path, p)
			}
		}
		return nil
	})
	if err != nil || n < 5 {
		t.Fatalf("walked %d files: %v", n, err)
	}
}

type countingExchanger struct {
	ex Exchanger
	n  int
}

func (c *countingExchanger) Exchange(ctx context.Context, secret string, req ExchangeRequest) (*Token, error) {
	c.n++
	return c.ex.Exchange(ctx, secret, req)
}

// An unreachable exchange endpoint: one attempt, then callers get the
// error until the backoff has passed, and the next attempt waits longer.
func TestTokenSourceBacksOffWhenUnreachable(t *testing.T) {
	ex := &countingExchanger{ex: HTTPExchanger{BaseURL: "http://" + deadAddr(t)}}
	ts, err := NewTokenSource(testCredential(KindAutomation), ex)
	if err != nil {
		t.Fatal(err)
	}
	var first *ExchangeError
	for i := range 20 {
		_, err := ts.Token(context.Background())
		var ee *ExchangeError
		if !errors.As(err, &ee) || !errors.Is(err, ErrExchangeUnavailable) || status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d: %v", i, err)
		}
		if i == 0 {
			first = ee
		}
		if strings.Contains(err.Error(), "blg_") {
			t.Fatal("the error holds the secret")
		}
	}
	if ex.n != 1 {
		t.Fatalf("%d exchanges within the backoff, want 1", ex.n)
	}
	if d := time.Until(first.RetryAt); d < 500*time.Millisecond || d > 1300*time.Millisecond {
		t.Errorf("first retry in %v, want about 1 s", d)
	}
	time.Sleep(time.Until(first.RetryAt) + 10*time.Millisecond)
	_, err = ts.Token(context.Background())
	var second *ExchangeError
	if !errors.As(err, &second) || ex.n != 2 {
		t.Fatalf("after the backoff: %v, %d exchanges", err, ex.n)
	}
	if d := time.Until(second.RetryAt); d < 1500*time.Millisecond {
		t.Errorf("second retry in %v, want the backoff doubled", d)
	}
}
