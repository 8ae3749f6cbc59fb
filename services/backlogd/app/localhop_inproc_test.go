package app

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/gateway"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/server"
)

// rpcLogged waits for the kit server's log line of a call to method (a
// suffix) carrying requestID, and returns its fields.
func rpcLogged(t *testing.T, logs *observer.ObservedLogs, method, requestID string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, e := range logs.FilterMessage("rpc").All() {
			f := e.ContextMap()
			if m, _ := f["method"].(string); strings.HasSuffix(m, method) && f["request-id"] == requestID {
				return f
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rpc log line for %s with request id %s", method, requestID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestInProcessCarriesCalls: with every target in one process, the
// gateway's calls and the services' calls to each other are function
// calls that still pass every service's interceptors: the service token is
// required, the forwarded client IP and the request id reach the service
// (from the gateway, and from a service authenticating its caller with the
// credential service), deadlines and cancellation reach the handler.
func TestInProcessCarriesCalls(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseFlags("t", []string{
		"-data-dir", dir, "-http-addr", freeAddr(t), "-vault-kek-file", testKEK(t), "-trusted-proxies", "127.0.0.0/8",
		"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := Start(cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	if a.inproc == nil {
		t.Fatal("no in-process channel with every target in one process")
	}
	waitReady(t, cfg)

	rest := func(method, path, bearer, requestID string) int {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+cfg.HTTPAddr+path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("X-Request-Id", requestID)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	before := a.inproc.calls.Load()
	if code := rest("POST", "/v1/auth/exchange", "blg_auto_nope", "inproc-exchange"); code != 401 {
		t.Fatalf("exchange with garbage: %d, want 401", code)
	}
	if n := a.inproc.calls.Load(); n <= before {
		t.Fatalf("the gateway's call was not carried in process (%d calls before, %d after)", before, n)
	}
	f := rpcLogged(t, logs, "/Exchange", "inproc-exchange")
	if f["client-ip"] != "203.0.113.7" || f["service"] != "credential" || f["code"] != "Unauthenticated" {
		t.Fatalf("the credential service saw %v", f)
	}

	// The automation service asks the credential service, in process, and
	// forwards the client's address and request id.
	before = a.inproc.calls.Load()
	if code := rest("GET", "/v1/workspaces/ws_nope/automations", credfmt.New(credfmt.AccessToken), "inproc-list"); code != 401 {
		t.Fatalf("listing automations with garbage: %d, want 401", code)
	}
	if n := a.inproc.calls.Load(); n < before+2 {
		t.Fatalf("%d in-process calls for a REST call that authenticates with a sibling, want 2", n-before)
	}
	f = rpcLogged(t, logs, "CredentialInternalService/Authenticate", "inproc-list")
	if f["client-ip"] != "203.0.113.7" {
		t.Fatalf("the credential service saw %v", f)
	}
	rpcLogged(t, logs, "AutomationService/ListAutomations", "inproc-list")

	// The service credential is still required on internal methods.
	internal := func(creds *auth.ServiceCredentials) credentialv1.CredentialInternalServiceClient {
		var c credentials.PerRPCCredentials
		if creds != nil {
			c = *creds
		}
		return credentialv1.NewCredentialInternalServiceClient(a.inproc.conn(cfg.CredentialAddr, nil, c))
	}
	ctx := t.Context()
	before = a.inproc.calls.Load()
	for name, creds := range map[string]*auth.ServiceCredentials{"none": nil, "wrong": {Token: a.svcToken + "x"}} {
		if _, err := internal(creds).Authenticate(ctx, &credentialv1.AuthenticateRequest{Credential: "blg_auto_nope"}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("internal call with %s service credential: %v, want Unauthenticated", name, err)
		}
	}
	good := internal(&auth.ServiceCredentials{Token: a.svcToken})
	if _, err := good.Authenticate(ctx, &credentialv1.AuthenticateRequest{Credential: "blg_auto_nope"}); status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), "service credential") {
		t.Errorf("internal call with the service credential: %v", err)
	}
	if n := a.inproc.calls.Load(); n < before+3 { // the services' own calls may add to the count
		t.Errorf("%d in-process calls, want 3", n-before)
	}

	// Deadlines and cancellation reach the handler: the revocation watch
	// (a stream that only ends with its caller) ends on both.
	for _, end := range []string{"deadline", "cancel"} {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		if end == "cancel" {
			ctx, cancel = context.WithCancel(t.Context())
			time.AfterFunc(300*time.Millisecond, cancel)
		}
		rid := "inproc-watch-" + end
		stream, err := good.WatchRevocations(metadata.AppendToOutgoingContext(ctx, server.RequestIDKey, rid))
		if err != nil {
			t.Fatal(err)
		}
		if ev, err := stream.Recv(); err != nil || ev.GetSequence() != 0 {
			t.Fatalf("watch: %v %v, want the opening event", ev, err)
		}
		want := map[string]codes.Code{"deadline": codes.DeadlineExceeded, "cancel": codes.Canceled}[end]
		if _, err := stream.Recv(); status.Code(err) != want {
			t.Fatalf("watch after the %s: %v, want %v", end, err, want)
		}
		cancel()
		rpcLogged(t, logs, "/WatchRevocations", rid) // the handler returned
	}
	past, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := good.Authenticate(past, &credentialv1.AuthenticateRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call past its deadline: %v", err)
	}

	// Text gRPC cannot encode is refused as gRPC refuses it.
	_, err = good.Authenticate(ctx, &credentialv1.AuthenticateRequest{Credential: "blg_\xff"})
	if st := status.Convert(err); st.Code() != codes.Internal || !strings.HasPrefix(st.Message(), "grpc: error while marshaling") || !strings.Contains(st.Message(), "invalid UTF-8") {
		t.Fatalf("a request that is not UTF-8: %v", err)
	}
	// What is not served in process (health) goes over the connection;
	// /readyz answered above. Without a connection: Unimplemented.
	if err := a.inproc.conn(cfg.CredentialAddr, nil, nil).Invoke(ctx, "/grpc.health.v1.Health/Check", &credentialv1.AuthenticateRequest{}, &credentialv1.AuthenticateResponse{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("health in process: %v, want Unimplemented", err)
	}
}

// whoAmI answers WhoAmI as the bearer token asks, and records what reached it.
type whoAmI struct {
	credentialv1.UnimplementedCredentialServiceServer
	mu                  sync.Mutex
	clientIP, requestID string
	forwarder           bool
}

func (w *whoAmI) WhoAmI(ctx context.Context, _ *credentialv1.WhoAmIRequest) (*credentialv1.WhoAmIResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	w.mu.Lock()
	w.clientIP, w.requestID, w.forwarder = server.ClientIP(ctx), server.RequestID(ctx), len(md.Get(auth.ForwarderKey)) == 1
	w.mu.Unlock()
	switch strings.TrimPrefix(strings.Join(md.Get("authorization"), ""), "Bearer ") {
	case "ratelimit-header":
		_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", "12"))
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	case "ratelimit-trailer":
		_ = grpc.SetTrailer(ctx, metadata.Pairs("retry-after", "13"))
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	case "plain-error":
		return nil, errors.New("not a status")
	}
	return &credentialv1.WhoAmIResponse{Kind: "member", SubjectId: "mem_1"}, nil
}

// TestInProcessGatewayHeadersAndClientIP: through a gateway whose calls to
// a service (on the kit's server, with its interceptors) are function
// calls, a handler's response header and trailer reach the REST response
// as they do over gRPC (Retry-After), the service sees the forwarded client
// IP only with the forwarding credential (else the loopback peer), and the
// request id.
func TestInProcessGatewayHeadersAndClientIP(t *testing.T) {
	const token = "blg_svc_test-service-token-0123456789abcdef"
	core, logs := observer.New(zapcore.DebugLevel)
	srv := server.New(server.Config{Name: "credential", Logger: zap.New(core), ServiceToken: token})
	fake := &whoAmI{}
	p := newInProcess()
	stop := p.serve(srv, func(r grpc.ServiceRegistrar) { credentialv1.RegisterCredentialServiceServer(r, fake) }, "credential.test:1")
	defer stop(time.Second)

	for _, fwd := range []string{auth.ForwardingToken(token), ""} {
		gw, err := gateway.New(gateway.Config{
			CredentialAddr: "credential.test:1", AutomationAddr: "127.0.0.1:1", AgentAddr: "127.0.0.1:1", VaultAddr: "127.0.0.1:1",
			TrustedProxies: clientip.Loopback, ForwardingToken: fwd,
			Channels: map[string]grpc.ClientConnInterface{"credential": p.conn("credential.test:1", nil, nil)},
		})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(gw.Handler())
		get := func(bearer, requestID string) *http.Response {
			req, _ := http.NewRequest("GET", hs.URL+"/v1/auth/whoami", nil)
			req.Header.Set("Authorization", "Bearer "+bearer)
			req.Header.Set("X-Request-Id", requestID)
			req.Header.Set("X-Forwarded-For", "203.0.113.9")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp
		}
		if resp := get("ok", "inproc-whoami"); resp.StatusCode != 200 {
			t.Fatalf("whoami: %d", resp.StatusCode)
		}
		fake.mu.Lock()
		wantIP := map[bool]string{true: "203.0.113.9", false: "127.0.0.1"}[fwd != ""]
		if fake.clientIP != wantIP || fake.requestID != "inproc-whoami" || fake.forwarder != (fwd != "") {
			t.Errorf("forwarding credential %v: the service saw client %q, request %q, forwarder %v; want %q", fwd != "", fake.clientIP, fake.requestID, fake.forwarder, wantIP)
		}
		fake.mu.Unlock()
		if fwd == "" {
			hs.Close()
			gw.Close()
			continue
		}
		for bearer, want := range map[string]string{"ratelimit-header": "12", "ratelimit-trailer": "13"} {
			if resp := get(bearer, "inproc-"+bearer); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != want {
				t.Errorf("%s: %d Retry-After %q, want 429 %q", bearer, resp.StatusCode, resp.Header.Get("Retry-After"), want)
			}
			if f := rpcLogged(t, logs, "/WhoAmI", "inproc-"+bearer); f["code"] != "ResourceExhausted" || f["client-ip"] != "203.0.113.9" {
				t.Errorf("%s: logged %v", bearer, f)
			}
		}
		// A handler's plain error is Internal after the kit's error table,
		// as over gRPC.
		if resp := get("plain-error", "inproc-plain"); resp.StatusCode != 500 {
			t.Errorf("plain error: %d, want 500", resp.StatusCode)
		}
		hs.Close()
		gw.Close()
	}
	if p.calls.Load() != 5 {
		t.Errorf("%d in-process calls, want 5", p.calls.Load())
	}
	// A stopped service refuses calls as a stopping server does.
	stop(time.Second)
	_, err := credentialv1.NewCredentialServiceClient(p.conn("credential.test:1", nil, nil)).WhoAmI(t.Context(), &credentialv1.WhoAmIRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("after stop: %v, want Unavailable", err)
	}
}

// TestInProcessOnlyWithoutTLSAndSeveralParts: with TLS to the services
// (mTLS stays the whole way), a gateway alone, or a service alone, every
// call goes over a connection as before.
func TestInProcessOnlyWithoutTLSAndSeveralParts(t *testing.T) {
	ca, cert, key := writePKI(t, t.TempDir())
	for name, args := range map[string][]string{
		"tls":           {"-tls-ca-file", ca, "-tls-cert-file", cert, "-tls-key-file", key},
		"gateway alone": {"-target", "gateway"},
		"service alone": {"-target", "credential"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := ParseFlags("t", append([]string{
				"-data-dir", t.TempDir(), "-http-addr", freeAddr(t), "-vault-kek-file", testKEK(t),
				"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
			}, args...), func(string) string { return "" })
			if err != nil {
				t.Fatal(err)
			}
			a, err := Start(cfg, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			defer a.Stop()
			if a.inproc != nil || a.gatewayChannels() != nil {
				t.Fatal("calls in process")
			}
		})
	}
}

// BenchmarkGatewayHop is a REST call (GET /v1/auth/whoami, through the
// gateway's handler) to a service on the kit's server, over the in-memory
// listener (gRPC) and in process.
func BenchmarkGatewayHop(b *testing.B) {
	const token = "blg_svc_test-service-token-0123456789abcdef"
	const addr = "127.0.0.1:2" // never dialled: the in-memory listener answers for it
	srv := server.New(server.Config{Name: "credential", Logger: zap.NewNop(), ServiceToken: token})
	register := func(r grpc.ServiceRegistrar) { credentialv1.RegisterCredentialServiceServer(r, &whoAmI{}) }
	register(srv.GRPC)
	hop := newLocalHop()
	go srv.Serve(hop.listen(addr))
	defer srv.Stop(time.Second)
	p := newInProcess()
	defer p.serve(srv, register, addr)(time.Second)
	for _, via := range []string{"grpc", "inproc"} {
		b.Run(via, func(b *testing.B) {
			cfg := gateway.Config{CredentialAddr: addr, AutomationAddr: "127.0.0.1:1", AgentAddr: "127.0.0.1:1", VaultAddr: "127.0.0.1:1",
				ForwardingToken: auth.ForwardingToken(token), Dialer: hop.dialer()}
			if via == "inproc" {
				cfg.Channels = map[string]grpc.ClientConnInterface{"credential": p.conn(addr, nil, nil)}
			}
			gw, err := gateway.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer gw.Close()
			h := gw.Handler()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest("GET", "/v1/auth/whoami", nil)
					req.Header.Set("Authorization", "Bearer ok")
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code != 200 {
						b.Fatalf("%d %s", rec.Code, rec.Body)
					}
				}
			})
		})
	}
}

// exchanger keeps the last request it was given and answers with a
// response sharing its scopes.
type exchanger struct {
	credentialv1.UnimplementedCredentialServiceServer
	last *credentialv1.ExchangeRequest
	resp *credentialv1.ExchangeResponse
}

func (x *exchanger) Exchange(_ context.Context, req *credentialv1.ExchangeRequest) (*credentialv1.ExchangeResponse, error) {
	req.Scopes[0] = "changed-by-the-handler"
	x.last = req
	x.resp = &credentialv1.ExchangeResponse{Scopes: req.Scopes}
	return x.resp, nil
}

// TestInProcessCopiesMessages: caller and handler never share a message.
func TestInProcessCopiesMessages(t *testing.T) {
	srv := server.New(server.Config{Name: "credential", Logger: zap.NewNop()})
	x := &exchanger{}
	p := newInProcess()
	defer p.serve(srv, func(r grpc.ServiceRegistrar) { credentialv1.RegisterCredentialServiceServer(r, x) }, "127.0.0.1:3")(time.Second)
	req := &credentialv1.ExchangeRequest{Scopes: []string{"automations:read"}}
	resp, err := credentialv1.NewCredentialServiceClient(p.conn("127.0.0.1:3", nil, nil)).Exchange(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if req.Scopes[0] != "automations:read" || x.last == req {
		t.Fatalf("the handler changed the caller's request: %v", req)
	}
	if resp == x.resp || resp.Scopes[0] != "changed-by-the-handler" {
		t.Fatalf("response %v", resp)
	}
	resp.Scopes[0] = "changed-by-the-caller"
	if x.resp.Scopes[0] != "changed-by-the-handler" {
		t.Fatal("the caller's response is the handler's")
	}
}
