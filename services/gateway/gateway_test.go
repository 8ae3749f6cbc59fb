package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/clientip"
)

// fakeCredential is a gRPC-level test double of the credential service:
// it records what reached it and fails on demand, chosen by the bearer token.
type fakeCredential struct {
	credentialv1.UnimplementedCredentialServiceServer
	auditv1.UnimplementedAuditServiceServer

	mu       sync.Mutex
	md       metadata.MD
	exchange *credentialv1.ExchangeRequest
	// delay holds Exchange up this long.
	delay time.Duration
}

func (f *fakeCredential) record(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.md = md.Copy()
	f.mu.Unlock()
	if v := md.Get("authorization"); len(v) > 0 {
		return strings.TrimPrefix(v[0], "Bearer ")
	}
	return ""
}

func (f *fakeCredential) lastMD() metadata.MD {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.md
}

var codeToken = regexp.MustCompile(`^code-(\d+)$`)

func (f *fakeCredential) WhoAmI(ctx context.Context, _ *credentialv1.WhoAmIRequest) (*credentialv1.WhoAmIResponse, error) {
	tok := f.record(ctx)
	switch {
	case tok == "ok":
		return &credentialv1.WhoAmIResponse{Kind: "member", WorkspaceId: "ws_1", SubjectId: "mem_1", TeamIds: []string{"t1"}}, nil
	case codeToken.MatchString(tok):
		var c int
		fmt.Sscan(codeToken.FindStringSubmatch(tok)[1], &c)
		return nil, status.Error(codes.Code(c), "failure from the service")
	case tok == "detail":
		st, _ := status.New(codes.InvalidArgument, "name: required").WithDetails(
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "name", Description: "required"}}})
		return nil, st.Err()
	case tok == "ratelimit-retryinfo":
		st, _ := status.New(codes.ResourceExhausted, "slow down").WithDetails(
			&errdetails.RetryInfo{RetryDelay: durationpb.New(7200 * time.Millisecond)})
		return nil, st.Err()
	case tok == "ratelimit-header":
		_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", "12"))
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	case tok == "ratelimit-trailer":
		_ = grpc.SetTrailer(ctx, metadata.Pairs("retry-after", "13"))
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	case tok == "ratelimit":
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	}
	return nil, status.Error(codes.Unauthenticated, "unknown credential")
}

func (f *fakeCredential) Exchange(ctx context.Context, req *credentialv1.ExchangeRequest) (*credentialv1.ExchangeResponse, error) {
	f.record(ctx)
	f.mu.Lock()
	f.exchange = req
	delay := f.delay
	f.mu.Unlock()
	time.Sleep(delay)
	return &credentialv1.ExchangeResponse{
		AccessToken: "blg_at_test", TokenType: "Bearer", ExpiresIn: req.GetTtlSeconds(),
		AutomationId: "auto_1", WorkspaceId: "ws_1", Scopes: req.GetScopes(),
	}, nil
}

func (f *fakeCredential) ListAuditEvents(ctx context.Context, _ *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	f.record(ctx)
	return &auditv1.ListAuditEventsResponse{NextPageToken: "next"}, nil
}

type backendServer struct {
	addr   string
	health *health.Server
	srv    *grpc.Server
}

// startBackend serves a real gRPC server with the health service on
// 127.0.0.1:0, plus whatever register adds.
func startBackend(t *testing.T, register func(*grpc.Server)) *backendServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	if register != nil {
		register(s)
	}
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return &backendServer{addr: lis.Addr().String(), health: hs, srv: s}
}

type env struct {
	cred       *fakeCredential
	backends   map[string]*backendServer
	url        string
	logs       *observer.ObservedLogs
	httpClient *http.Client
}

func newEnv(t *testing.T, trusted []netip.Prefix) *env {
	t.Helper()
	e := &env{cred: &fakeCredential{}, backends: map[string]*backendServer{}, httpClient: &http.Client{Timeout: 10 * time.Second}}
	e.backends["credential"] = startBackend(t, func(s *grpc.Server) {
		credentialv1.RegisterCredentialServiceServer(s, e.cred)
		auditv1.RegisterAuditServiceServer(s, e.cred)
	})
	for _, n := range []string{"automation", "agent", "vault"} {
		e.backends[n] = startBackend(t, nil)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	e.logs = logs
	g, err := New(Config{
		CredentialAddr: e.backends["credential"].addr,
		AutomationAddr: e.backends["automation"].addr,
		AgentAddr:      e.backends["agent"].addr,
		VaultAddr:      e.backends["vault"].addr,
		TrustedProxies: trusted,
		Logger:         zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	hs := httptest.NewServer(g.Handler())
	t.Cleanup(hs.Close)
	e.url = hs.URL
	return e
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not a JSON object: %v", r.body, err)
	}
	return m
}

func (e *env) do(t *testing.T, method, path string, body io.Reader, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := e.httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// checkError asserts the contract's error shape.
func checkError(t *testing.T, r response, wantStatus int, wantCode codes.Code) map[string]any {
	t.Helper()
	if r.status != wantStatus {
		t.Fatalf("status %d, want %d (body %s)", r.status, wantStatus, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	m := r.json(t)
	if c, _ := m["code"].(float64); codes.Code(c) != wantCode {
		t.Errorf("code %v, want %d (%s)", m["code"], wantCode, r.body)
	}
	if _, ok := m["message"].(string); !ok {
		t.Errorf("no message in %s", r.body)
	}
	if _, ok := m["details"].([]any); !ok {
		t.Errorf("details is not an array in %s", r.body)
	}
	return m
}

func TestStatusMapping(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		code   codes.Code
		status int
	}{
		{codes.InvalidArgument, 400},
		{codes.FailedPrecondition, 400},
		{codes.OutOfRange, 400},
		{codes.Unauthenticated, 401},
		{codes.PermissionDenied, 403},
		{codes.NotFound, 404},
		{codes.AlreadyExists, 409},
		{codes.Aborted, 409},
		{codes.ResourceExhausted, 429},
		{codes.Unavailable, 503},
		{codes.Internal, 500},
		{codes.Unknown, 500},
	}
	for _, c := range cases {
		t.Run(c.code.String(), func(t *testing.T) {
			r := e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", fmt.Sprintf("Bearer code-%d", c.code))
			m := checkError(t, r, c.status, c.code)
			switch c.code {
			case codes.Internal, codes.Unknown:
				if m["message"] != "internal error" {
					t.Errorf("message %q, want the generic one", m["message"])
				}
			case codes.Unavailable:
			default:
				if m["message"] != "failure from the service" {
					t.Errorf("message %q, want the service's", m["message"])
				}
			}
			if c.code == codes.Unauthenticated && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}

	t.Run("details", func(t *testing.T) {
		m := checkError(t, e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer detail"), 400, codes.InvalidArgument)
		d := m["details"].([]any)
		if len(d) != 1 || !strings.HasSuffix(d[0].(map[string]any)["@type"].(string), "google.rpc.BadRequest") {
			t.Errorf("details %v, want one BadRequest", d)
		}
	})
}

func TestRetryAfter(t *testing.T) {
	e := newEnv(t, nil)
	for tok, want := range map[string]string{
		"ratelimit-retryinfo": "8",
		"ratelimit-header":    "12",
		"ratelimit-trailer":   "13",
		"ratelimit":           "60",
	} {
		t.Run(tok, func(t *testing.T) {
			r := e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer "+tok)
			checkError(t, r, 429, codes.ResourceExhausted)
			if got := r.header.Get("Retry-After"); got != want {
				t.Errorf("Retry-After %q, want %q", got, want)
			}
		})
	}
}

func TestBadBodies(t *testing.T) {
	e := newEnv(t, nil)
	for name, body := range map[string]string{
		"truncated":     `{"ttlSeconds":`,
		"not json":      `hello`,
		"unknown field": `{"ttlSeconds":60,"bogus":true}`,
		"wrong type":    `{"ttlSeconds":"soon"}`,
	} {
		t.Run(name, func(t *testing.T) {
			r := e.do(t, "POST", "/v1/auth/exchange", strings.NewReader(body), "Content-Type", "application/json")
			m := checkError(t, r, 400, codes.InvalidArgument)
			if msg := m["message"].(string); !strings.HasPrefix(msg, "invalid JSON body") {
				t.Errorf("message %q", msg)
			}
			if name == "unknown field" && !strings.Contains(m["message"].(string), "bogus") {
				t.Errorf("message %q does not name the unknown field", m["message"])
			}
		})
	}

	t.Run("too large", func(t *testing.T) {
		big := `{"scopes":["` + strings.Repeat("a", DefaultMaxBodyBytes+10) + `"]}`
		checkError(t, e.do(t, "POST", "/v1/auth/exchange", strings.NewReader(big)), 413, codes.InvalidArgument)
	})
	t.Run("too large, chunked", func(t *testing.T) {
		// No Content-Length: the limit is found while decoding.
		big := io.MultiReader(strings.NewReader(`{"scopes":["`), strings.NewReader(strings.Repeat("a", DefaultMaxBodyBytes+10)), strings.NewReader(`"]}`))
		checkError(t, e.do(t, "POST", "/v1/auth/exchange", big), 413, codes.InvalidArgument)
	})
}

func TestExchangeForwardsOnlyWhatItShould(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "POST", "/v1/auth/exchange", strings.NewReader(`{"ttlSeconds":600,"scopes":["automations:read"]}`),
		"Authorization", "Bearer blg_auto_secret",
		"Content-Type", "application/json",
		"Idempotency-Key", "idem-123",
		"X-Request-Id", "req-abc.1_2",
		"X-Custom-Thing", "do-not-forward",
		"Grpc-Metadata-Smuggled", "no",
		"X-Backlog-Client-Ip", "6.6.6.6",
		"Cookie", "session=1",
	)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	m := r.json(t)
	for k, want := range map[string]any{"accessToken": "blg_at_test", "tokenType": "Bearer", "expiresIn": float64(600), "automationId": "auto_1", "workspaceId": "ws_1"} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v (body %s)", k, m[k], want, r.body)
		}
	}
	if got := r.header.Get("X-Request-Id"); got != "req-abc.1_2" {
		t.Errorf("X-Request-Id %q", got)
	}

	md := e.cred.lastMD()
	want := map[string]string{
		"authorization":      "Bearer blg_auto_secret",
		"idempotency-key":    "idem-123",
		"x-request-id":       "req-abc.1_2",
		clientip.MetadataKey: "127.0.0.1",
	}
	for k, v := range want {
		if got := md.Get(k); len(got) != 1 || got[0] != v {
			t.Errorf("metadata %s = %q, want [%q]", k, got, v)
		}
	}
	// Nothing else from the HTTP request reaches the service (gRPC's own
	// pseudo-headers and transport keys aside).
	transport := map[string]bool{":authority": true, "content-type": true, "user-agent": true, "grpc-accept-encoding": true, "grpc-timeout": true}
	for k := range md {
		if _, ok := want[k]; !ok && !transport[k] {
			t.Errorf("unexpected metadata %s = %q", k, md.Get(k))
		}
	}
	e.cred.mu.Lock()
	if e.cred.exchange.GetTtlSeconds() != 600 || len(e.cred.exchange.GetScopes()) != 1 {
		t.Errorf("request reached the service as %v", e.cred.exchange)
	}
	e.cred.mu.Unlock()
}

func TestRequestID(t *testing.T) {
	e := newEnv(t, nil)
	hexID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, in := range []string{"", "bad id!", strings.Repeat("a", 65), "semi;colon"} {
		r := e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer ok", "X-Request-Id", in)
		if r.status != 200 {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		got := r.header.Get("X-Request-Id")
		if !hexID.MatchString(got) {
			t.Errorf("incoming %q: response id %q, want a generated hex id", in, got)
		}
		if md := e.cred.lastMD().Get("x-request-id"); len(md) != 1 || md[0] != got {
			t.Errorf("service saw request id %q, response said %q", md, got)
		}
	}
	ok := strings.Repeat("A", 64)
	r := e.do(t, "GET", "/v1/nope", nil, "X-Request-Id", ok)
	if r.header.Get("X-Request-Id") != ok {
		t.Errorf("valid id not echoed on an error response: %q", r.header.Get("X-Request-Id"))
	}
}

func TestClientIP(t *testing.T) {
	t.Run("trusted peer", func(t *testing.T) {
		e := newEnv(t, clientip.Loopback)
		e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer ok", "X-Forwarded-For", "6.6.6.6, 198.51.100.7")
		if got := e.cred.lastMD().Get(clientip.MetadataKey); len(got) != 1 || got[0] != "198.51.100.7" {
			t.Errorf("client ip %q, want [198.51.100.7]", got)
		}
		if got := e.cred.lastMD().Get("x-forwarded-for"); len(got) != 0 {
			t.Errorf("x-forwarded-for forwarded: %q", got)
		}
	})
	t.Run("untrusted peer", func(t *testing.T) {
		e := newEnv(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
		e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer ok", "X-Forwarded-For", "198.51.100.7")
		if got := e.cred.lastMD().Get(clientip.MetadataKey); len(got) != 1 || got[0] != "127.0.0.1" {
			t.Errorf("client ip %q, want [127.0.0.1]", got)
		}
	})
}

func TestRouting(t *testing.T) {
	e := newEnv(t, nil)
	checkError(t, e.do(t, "GET", "/v1/nope", nil), 404, codes.NotFound)
	checkError(t, e.do(t, "GET", "/nope", nil), 404, codes.NotFound) // "/" is the console's (console tests)
	r := e.do(t, "DELETE", "/v1/auth/exchange", nil)
	checkError(t, r, 405, codes.Unimplemented)
	checkError(t, e.do(t, "POST", "/healthz", nil), 405, codes.Unimplemented)

	// The audit trail is served by the credential address.
	r = e.do(t, "GET", "/v1/workspaces/ws_1/audit-events", nil, "Authorization", "Bearer ok")
	if r.status != 200 || r.json(t)["nextPageToken"] != "next" {
		t.Errorf("audit-events: %d %s", r.status, r.body)
	}
	// Every other service's routes are registered (the test backends do not
	// implement them, hence Unimplemented rather than a routing 404).
	for _, p := range []string{"/v1/workspaces/ws_1/automations", "/v1/workspaces/ws_1/agents", "/v1/workspaces/ws_1/secrets", "/v1/agents/self"} {
		checkError(t, e.do(t, "GET", p, nil, "Authorization", "Bearer ok"), 501, codes.Unimplemented)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "GET", "/healthz", nil)
	if r.status != 200 || r.json(t)["status"] != "ok" {
		t.Fatalf("/healthz: %d %s", r.status, r.body)
	}

	r = e.do(t, "GET", "/readyz", nil)
	if r.status != 200 {
		t.Fatalf("/readyz with every service up: %d %s", r.status, r.body)
	}

	e.backends["vault"].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	r = e.do(t, "GET", "/readyz", nil)
	if r.status != 503 {
		t.Fatalf("/readyz with vault NOT_SERVING: %d %s", r.status, r.body)
	}
	if nr := fmt.Sprint(r.json(t)["notReady"]); nr != "[vault]" {
		t.Errorf("notReady %s, want [vault]", nr)
	}

	e.backends["vault"].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	e.backends["automation"].srv.Stop()
	r = e.do(t, "GET", "/readyz", nil)
	if r.status != 503 {
		t.Fatalf("/readyz with automation down: %d %s", r.status, r.body)
	}
	if nr := fmt.Sprint(r.json(t)["notReady"]); nr != "[automation]" {
		t.Errorf("notReady %s, want [automation]", nr)
	}
	// /healthz does not depend on the services.
	if r := e.do(t, "GET", "/healthz", nil); r.status != 200 {
		t.Errorf("/healthz with a service down: %d", r.status)
	}
	// A route of the stopped service: 503, without the dial error.
	m := checkError(t, e.do(t, "GET", "/v1/workspaces/ws_1/automations", nil, "Authorization", "Bearer ok"), 503, codes.Unavailable)
	if msg := m["message"].(string); strings.Contains(msg, "127.0.0.1") {
		t.Errorf("message reveals the backend address: %q", msg)
	}
}

func TestReadyzWithServiceNeverUp(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close()
	up := startBackend(t, nil)
	g, err := New(Config{CredentialAddr: up.addr, AutomationAddr: up.addr, AgentAddr: up.addr, VaultAddr: dead})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	rec := httptest.NewRecorder()
	start := time.Now()
	g.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"notReady":["vault"]`) {
		t.Errorf("/readyz: %d %s", rec.Code, rec.Body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("/readyz took %v", d)
	}
}

func TestOpenAPI(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "GET", "/openapi.json", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("/openapi.json: %d %q", r.status, r.header.Get("Content-Type"))
	}
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc.Paths["/v1/auth/exchange"]; !ok {
		t.Error(`no "/v1/auth/exchange" in the OpenAPI paths`)
	}
}

func TestLogging(t *testing.T) {
	e := newEnv(t, nil)
	const secret = "blg_pat_supersecret"
	e.do(t, "POST", "/v1/auth/exchange?access_token="+secret, strings.NewReader(`{"scopes":["`+secret+`"]}`),
		"Authorization", "Bearer "+secret, "X-Request-Id", "log-test")
	e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer code-13")

	var found bool
	for _, entry := range e.logs.All() {
		var buf bytes.Buffer
		fmt.Fprint(&buf, entry.Message, entry.ContextMap())
		if strings.Contains(buf.String(), secret) {
			t.Errorf("log line holds the credential: %s", buf.String())
		}
		if entry.Message == "http request" && entry.ContextMap()["request-id"] == "log-test" {
			found = true
			cm := entry.ContextMap()
			if cm["route"] != "/v1/auth/exchange" || cm["method"] != "POST" || cm["status"] != int64(200) || entry.Level != zapcore.InfoLevel {
				t.Errorf("request log line %v at %v", cm, entry.Level)
			}
			if _, ok := cm["duration"]; !ok {
				t.Error("no duration in the request log line")
			}
		}
	}
	if !found {
		t.Error("no request log line")
	}
}

func TestNewRequiresAddresses(t *testing.T) {
	if _, err := New(Config{CredentialAddr: "127.0.0.1:1"}); err == nil {
		t.Error("New accepted a config without every service address")
	}
}
