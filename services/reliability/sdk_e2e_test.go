package reliability

// The Go SDK (services/sdk) against real backlogd processes: its example
// issues service behind the SDK's Verifier, callers holding access tokens
// kept fresh by its TokenSource. A revoking call (suspend, rotate, delete)
// must be refused on the very next request after it returns, through the
// SDK's cache and acknowledged revocation watch, in both process layouts.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/sdk"
	"github.com/backlog/controlplane/services/sdk/example/issues"
)

// sdkLogger is a debug-level logger whose entries the test can scan.
func sdkLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// sdkNoCredentialLogged fails if any log entry holds a credential string.
func sdkNoCredentialLogged(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		if credentialRE.MatchString(line) {
			t.Errorf("a log line holds a credential: %s", redact(line))
		}
	}
}

func sdkVerifier(t *testing.T, c *cluster, lg *zap.Logger, addrs ...string) *sdk.Verifier {
	t.Helper()
	v, err := sdk.NewVerifier(addrs, sdk.WithServiceTokenFile(c.ServiceTokenPath()), sdk.WithLogger(lg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// sdkWaitCaching waits until the Verifier's revocation watches are live
// (want true) or down (want false).
func sdkWaitCaching(t *testing.T, v *sdk.Verifier, want bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for v.Caching() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Caching() stayed %v: %+v", !want, v.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sdkCreateAutomation creates an automation with scopes and a team
// boundary and returns its id and secret.
func sdkCreateAutomation(t *testing.T, rc *restClient, ws workspace, name string, scopes, teams []string) (string, string) {
	t.Helper()
	o := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken,
		map[string]any{"name": name, "scopes": scopes, "teamIds": teams})
	id, secret := o.str("automation.id"), o.str("secret")
	if id == "" || kindOf(secret) != credfmt.Automation {
		t.Fatalf("create automation: incomplete response %s", redact(fmt.Sprint(o)))
	}
	return id, secret
}

// sdkCountingExchanger counts the exchanges a TokenSource makes through a
// real exchanger.
type sdkCountingExchanger struct {
	ex sdk.Exchanger
	n  atomic.Int64
}

func (c *sdkCountingExchanger) Exchange(ctx context.Context, secret string, req sdk.ExchangeRequest) (*sdk.Token, error) {
	c.n.Add(1)
	return c.ex.Exchange(ctx, secret, req)
}

// sdkSend sends one request with client, with token as its Bearer
// credential when not empty, and returns the reply.
func sdkSend(t *testing.T, client *http.Client, method, url, token string, body any) *reply {
	t.Helper()
	rd, err := encodeBody(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, redact(err.Error()))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return &reply{Method: method, Path: url, Status: resp.StatusCode, Header: resp.Header, Body: b}
}

func sdkReason(r *reply) string {
	for _, d := range r.JSON().list("details") {
		if s := d.str("reason"); s != "" {
			return s
		}
	}
	return ""
}

func TestSDKExampleIssuesEndToEnd(t *testing.T) {
	for _, layout := range []string{layoutAll, layoutSplit} {
		t.Run(layout, func(t *testing.T) { sdkExampleIssues(t, layout) })
	}
}

func sdkExampleIssues(t *testing.T, layout string) {
	c := startCluster(t, layout)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "sdk-issues")
	other := rc.createWorkspace(t, c.OperatorToken, "sdk-elsewhere")
	autoID, secret := sdkCreateAutomation(t, rc, ws, "issues-bot", []string{"issues:write", "issues:read"}, []string{"red"})

	lg, logs := sdkLogger()
	v := sdkVerifier(t, c, lg, c.Addr("credential"))
	api := httptest.NewServer(issues.Handler(v))
	defer api.Close()
	issuesURL := func(wsID, team string) string {
		return api.URL + "/v1/workspaces/" + wsID + "/teams/" + team + "/issues"
	}

	ex := &sdkCountingExchanger{ex: sdk.HTTPExchanger{BaseURL: c.URL("")}}
	ts, err := sdk.NewTokenSource(secret, ex, sdk.WithTokenLogger(lg))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: ts.Transport(nil), Timeout: 15 * time.Second}
	plain := &http.Client{Timeout: 15 * time.Second}
	post := func(wsID, team string) *reply {
		return sdkSend(t, client, http.MethodPost, issuesURL(wsID, team), "", map[string]any{"title": "flaky test"})
	}
	sdkWaitCaching(t, v, true)

	// Token minted, call allowed; the caller is the automation.
	r := post(ws.ID, "red")
	if r.Status != http.StatusCreated || r.JSON().str("authorId") != autoID {
		t.Fatalf("create: %s", r)
	}
	if r := sdkSend(t, client, http.MethodGet, issuesURL(ws.ID, "red"), "", nil); r.Status != http.StatusOK || len(r.JSON().list("issues")) != 1 {
		t.Fatalf("list: %s", r)
	}
	if r := sdkSend(t, client, http.MethodPost, issuesURL(ws.ID, "red"), "", map[string]any{"title": ""}); r.Status != http.StatusBadRequest {
		t.Errorf("empty title: %s", r)
	}
	// Outside the team boundary: 403; another workspace: 404.
	if r := post(ws.ID, "blue"); r.Status != http.StatusForbidden || sdkReason(r) != sdk.ReasonPermissionDenied {
		t.Errorf("other team: %s", r)
	}
	if r := post(other.ID, "red"); r.Status != http.StatusNotFound || sdkReason(r) != sdk.ReasonNotFound {
		t.Errorf("other workspace: %s", r)
	}
	// The raw automation secret is refused with the gateway's own advice.
	r = sdkSend(t, plain, http.MethodPost, issuesURL(ws.ID, "red"), secret, map[string]any{"title": "x"})
	if r.Status != http.StatusUnauthorized || r.JSON().str("message") != auth.MsgExchangeFirst || r.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("raw secret: %s", r)
	}
	gw := rc.call(t, http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations", secret, nil)
	if gw.Status != r.Status || gw.JSON().str("message") != r.JSON().str("message") {
		t.Errorf("the SDK says %s, the gateway %s", r, gw)
	}
	if r := sdkSend(t, plain, http.MethodPost, issuesURL(ws.ID, "red"), "", nil); r.Status != http.StatusUnauthorized || sdkReason(r) != sdk.ReasonUnauthenticated {
		t.Errorf("no credential: %s", r)
	}
	// The cache serves repeated calls.
	hits := v.Stats().CacheHits
	post(ws.ID, "red")
	post(ws.ID, "red")
	if v.Stats().CacheHits <= hits {
		t.Fatalf("no cache hit: %+v", v.Stats())
	}
	if n := ex.n.Load(); n != 1 {
		t.Errorf("%d exchanges for one token's worth of calls, want 1", n)
	}

	autoPath := "/v1/workspaces/" + ws.ID + "/automations/" + autoID
	revoke := func(what string, method, path string, body any) obj {
		t.Helper()
		inv := v.Stats().Invalidations
		o := rc.expect(t, http.StatusOK, method, path, ws.OwnerToken, body)
		if v.Stats().Invalidations <= inv {
			t.Errorf("%s returned before the SDK's watch applied it", what)
		}
		return o
	}

	// Suspended: the next call is refused.
	revoke("suspend", http.MethodPatch, autoPath, map[string]any{"suspended": true})
	if r := post(ws.ID, "red"); r.Status != http.StatusForbidden || !strings.Contains(r.JSON().str("message"), "suspended") {
		t.Fatalf("after suspension: %s", r)
	}
	// An exchange now says so, once: no retry until the hold-off passes.
	ex2 := &sdkCountingExchanger{ex: sdk.HTTPExchanger{BaseURL: c.URL("")}}
	ts2, err := sdk.NewTokenSource(secret, ex2, sdk.WithSuspendedHoldoff(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		_, err := ts2.Token(context.Background())
		var ee *sdk.ExchangeError
		if !errors.Is(err, sdk.ErrAutomationSuspended) || !errors.As(err, &ee) || ee.RetryAt.IsZero() {
			t.Fatalf("exchange while suspended: %v", err)
		}
	}
	if n := ex2.n.Load(); n != 1 {
		t.Errorf("%d exchanges while suspended, want 1", n)
	}

	// Resumed: the same token works again.
	revoke("resume", http.MethodPatch, autoPath, map[string]any{"suspended": false})
	if r := post(ws.ID, "red"); r.Status != http.StatusCreated {
		t.Fatalf("after resume: %s", r)
	}

	// Rotated: the token of the old secret is refused on the next call,
	// and the old secret gives a clear, final error.
	o := revoke("rotate", http.MethodPost, autoPath+"/rotate-secret", map[string]any{})
	newSecret := o.str("secret")
	if r := post(ws.ID, "red"); r.Status != http.StatusUnauthorized {
		t.Fatalf("after rotation: %s", r)
	}
	ex3 := &sdkCountingExchanger{ex: sdk.HTTPExchanger{BaseURL: c.URL("")}}
	ts3, err := sdk.NewTokenSource(secret, ex3)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		_, err := ts3.Token(context.Background())
		var ee *sdk.ExchangeError
		if !errors.Is(err, sdk.ErrSecretRefused) || !errors.As(err, &ee) || !ee.RetryAt.IsZero() || strings.Contains(err.Error(), secret) {
			t.Fatalf("exchange of the rotated secret: %v", redact(fmt.Sprint(err)))
		}
	}
	if n := ex3.n.Load(); n != 1 {
		t.Errorf("%d exchanges of a rotated secret, want 1", n)
	}
	ts4, err := sdk.NewTokenSource(newSecret, sdk.HTTPExchanger{BaseURL: c.URL("")})
	if err != nil {
		t.Fatal(err)
	}
	client4 := &http.Client{Transport: ts4.Transport(nil), Timeout: 15 * time.Second}
	if r := sdkSend(t, client4, http.MethodPost, issuesURL(ws.ID, "red"), "", map[string]any{"title": "x"}); r.Status != http.StatusCreated {
		t.Fatalf("with the new secret: %s", r)
	}

	// Deleted: refused on the next call.
	revoke("delete", http.MethodDelete, autoPath, nil)
	if r := sdkSend(t, client4, http.MethodPost, issuesURL(ws.ID, "red"), "", map[string]any{"title": "x"}); r.Status != http.StatusUnauthorized {
		t.Fatalf("after delete: %s", r)
	}
	sdkNoCredentialLogged(t, logs)
}

// ---- a gRPC resource service ---------------------------------------------------

// sdkResource serves /sdktest.Resource/Check (unary) and Watch (server
// stream), each answering the caller's subject id, behind the SDK's
// interceptors.
func sdkResource(t *testing.T, v *sdk.Verifier) *grpc.ClientConn {
	t.Helper()
	answer := func(ctx context.Context) (*wrapperspb.StringValue, error) {
		c, err := sdk.RequireScope(ctx, "automations:read")
		if err != nil {
			return nil, err
		}
		return wrapperspb.String(string(c.Kind) + ":" + c.SubjectID), nil
	}
	desc := grpc.ServiceDesc{
		ServiceName: "sdktest.Resource",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Check", Handler: func(srv any, ctx context.Context, dec func(any) error, in grpc.UnaryServerInterceptor) (any, error) {
			req := &emptypb.Empty{}
			if err := dec(req); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) { return answer(ctx) }
			return in(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/sdktest.Resource/Check"}, h)
		}}},
		Streams: []grpc.StreamDesc{{StreamName: "Watch", ServerStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
			if err := ss.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			out, err := answer(ss.Context())
			if err != nil {
				return err
			}
			return ss.SendMsg(out)
		}}},
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(v.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(v.StreamServerInterceptor()))
	srv.RegisterService(&desc, struct{}{})
	lis := listenLoopback(t)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func sdkCheck(ctx context.Context, conn *grpc.ClientConn, opts ...grpc.CallOption) (string, error) {
	out := &wrapperspb.StringValue{}
	err := conn.Invoke(ctx, "/sdktest.Resource/Check", &emptypb.Empty{}, out, opts...)
	return out.GetValue(), err
}

func sdkWatch(ctx context.Context, conn *grpc.ClientConn) (string, error) {
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/sdktest.Resource/Watch")
	if err != nil {
		return "", err
	}
	if err := s.SendMsg(&emptypb.Empty{}); err != nil {
		return "", err
	}
	if err := s.CloseSend(); err != nil {
		return "", err
	}
	out := &wrapperspb.StringValue{}
	err = s.RecvMsg(out)
	return out.GetValue(), err
}

// gRPC interceptors with a person's token and an agent's key, and an
// automation calling through the TokenSource as PerRPCCredentials.
func TestSDKGRPCInterceptors(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "sdk-grpc")
	memberID, pat := rc.createMember(t, ws, "Ada", "admin")
	autoID, secret := sdkCreateAutomation(t, rc, ws, "reader", []string{"automations:read"}, nil)
	lg, logs := sdkLogger()
	v := sdkVerifier(t, c, lg, c.Addr("credential"))
	conn := sdkResource(t, v)
	sdkWaitCaching(t, v, true)

	bearer := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}
	if got, err := sdkCheck(bearer(pat), conn); err != nil || got != "member:"+memberID {
		t.Fatalf("unary as a member: %q, %v", got, err)
	}
	if got, err := sdkWatch(bearer(pat), conn); err != nil || got != "member:"+memberID {
		t.Fatalf("stream as a member: %q, %v", got, err)
	}
	if _, err := sdkCheck(bearer(secret), conn); status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != auth.MsgExchangeFirst {
		t.Errorf("raw secret: %v", err)
	}
	if _, err := sdkCheck(bearer(c.OperatorToken), conn); status.Code(err) != codes.PermissionDenied {
		t.Errorf("operator token: %v", err)
	}

	// The automation through a TokenSource exchanging over gRPC.
	ts, err := sdk.NewTokenSource(secret, sdk.GRPCExchanger{Conn: c.Conn(c.Addr("credential"))}, sdk.WithInsecureTransport(), sdk.WithTTL(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := sdkCheck(context.Background(), conn, grpc.PerRPCCredentials(ts)); err != nil || got != "automation:"+autoID {
		t.Fatalf("automation via PerRPCCredentials: %q, %v", got, err)
	}
	// Without WithInsecureTransport the token is not sent in plaintext.
	strict, _ := sdk.NewTokenSource(secret, sdk.GRPCExchanger{Conn: c.Conn(c.Addr("credential"))})
	if _, err := sdkCheck(context.Background(), conn, grpc.PerRPCCredentials(strict)); err == nil {
		t.Error("an access token went over a plaintext connection")
	}

	// The member removed: refused on the next call after the removal returns.
	if _, err := sdkCheck(bearer(pat), conn); err != nil {
		t.Fatal(err)
	}
	rc.expect(t, http.StatusOK, http.MethodDelete, "/v1/workspaces/"+ws.ID+"/members/"+memberID, ws.OwnerToken, nil)
	if _, err := sdkCheck(bearer(pat), conn); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("after removal: %v", err)
	}
	sdkNoCredentialLogged(t, logs)

	// A Verifier holding a wrong service credential blames itself, not the
	// caller: 503 (never 401) and an error in its log.
	badLog, badLogs := sdkLogger()
	bad, err := sdk.NewVerifier([]string{c.Addr("credential")}, sdk.WithServiceToken(credfmt.New(credfmt.Service)), sdk.WithLogger(badLog))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	_, err = bad.Verify(context.Background(), ws.OwnerToken)
	if status.Code(err) != codes.Unavailable || sdk.Reason(err) != sdk.ReasonVerifierMisconfig {
		t.Fatalf("wrong service credential: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for badLogs.FilterMessageSnippet("refused the revocation watch").Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if badLogs.FilterMessageSnippet("refused the revocation watch").Len() == 0 || bad.Caching() {
		t.Errorf("a refused watch: logged %d, caching %v", badLogs.FilterMessageSnippet("refused the revocation watch").Len(), bad.Caching())
	}
	sdkNoCredentialLogged(t, badLogs)
}

// ---- several credential replicas ------------------------------------------------

// sdkRelay is a TCP relay on loopback in front of a credential process: a
// second replica address that can be cut off and restored.
type sdkRelay struct {
	addr, target string
	mu           sync.Mutex
	lis          net.Listener
	conns        []net.Conn
}

func sdkStartRelay(t *testing.T, target string) *sdkRelay {
	t.Helper()
	r := &sdkRelay{target: target}
	lis := listenLoopback(t)
	r.addr = lis.Addr().String()
	r.serve(lis)
	t.Cleanup(r.cut)
	return r
}

func (r *sdkRelay) serve(lis net.Listener) {
	r.mu.Lock()
	r.lis = lis
	r.mu.Unlock()
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", r.target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
}

// cut closes the listener and every relayed connection.
func (r *sdkRelay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lis != nil {
		r.lis.Close()
		r.lis = nil
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// restore listens on the same address again.
func (r *sdkRelay) restore(t *testing.T) {
	t.Helper()
	var lis net.Listener
	var err error
	for range 50 {
		if lis, err = net.Listen("tcp", r.addr); err == nil {
			r.serve(lis)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("relay cannot listen on %s again: %v", r.addr, err)
}

// Two replica addresses: calls are spread over both; with one cut off,
// calls fail over to the other and nothing is cached (a revocation made
// through the lost replica could not reach us); restored, caching resumes.
// A replica that never answers keeps caching off for good.
func TestSDKVerifierReplicas(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "sdk-replicas")
	var pats, ids []string
	for i := range 6 {
		id, pat := rc.createMember(t, ws, fmt.Sprintf("m%d", i), "member")
		ids, pats = append(ids, id), append(pats, pat)
	}
	relay := sdkStartRelay(t, c.Addr("credential"))
	lg, logs := sdkLogger()
	v := sdkVerifier(t, c, lg, relay.addr+","+c.Addr("credential"))
	sdkWaitCaching(t, v, true)
	verify := func(pat string) error { _, err := v.Verify(context.Background(), pat); return err }
	for _, p := range pats[:4] {
		if err := verify(p); err != nil {
			t.Fatal(err)
		}
	}
	st := v.Stats()
	if len(st.Replicas) != 2 || st.Replicas[0].Authenticated == 0 || st.Replicas[1].Authenticated == 0 {
		t.Errorf("calls not spread over both replicas: %+v", st)
	}

	relay.cut()
	sdkWaitCaching(t, v, false)
	before := v.Stats().Replicas
	for range 3 {
		if err := verify(pats[4]); err != nil {
			t.Fatalf("no failover with one replica cut off: %v", err)
		}
	}
	after := v.Stats()
	if after.Replicas[1].Authenticated-before[1].Authenticated != 3 || after.CacheHits != st.CacheHits {
		t.Errorf("with one replica down, want every call answered by the other, none from the cache: %+v → %+v", before, after)
	}
	rc.expect(t, http.StatusOK, http.MethodDelete, "/v1/workspaces/"+ws.ID+"/members/"+ids[4], ws.OwnerToken, nil)
	if err := verify(pats[4]); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("removed member, one replica down: %v", err)
	}

	relay.restore(t)
	sdkWaitCaching(t, v, true)
	if err := verify(pats[5]); err != nil {
		t.Fatal(err)
	}
	rc.expect(t, http.StatusOK, http.MethodDelete, "/v1/workspaces/"+ws.ID+"/members/"+ids[5], ws.OwnerToken, nil)
	if err := verify(pats[5]); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("removed member after the replica came back: %v", err)
	}

	// A replica address where nothing answers: every call is answered by
	// the other, and nothing is ever cached.
	dead := listenLoopback(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	v2 := sdkVerifier(t, c, lg, deadAddr, c.Addr("credential"))
	for range 4 {
		if err := verify(pats[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := v2.Verify(context.Background(), pats[0]); err != nil {
			t.Fatalf("with a dead replica: %v", err)
		}
	}
	if v2.Caching() || v2.Stats().CacheHits != 0 {
		t.Errorf("cached with a replica never watched: %+v", v2.Stats())
	}
	sdkNoCredentialLogged(t, logs)
}

// ---- the token source ----------------------------------------------------------

func TestSDKTokenSource(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "sdk-tokens")
	autoID, secret := sdkCreateAutomation(t, rc, ws, "bot", []string{"issues:write", "issues:read"}, []string{"red"})
	exchanger := sdk.HTTPExchanger{BaseURL: c.URL("")}

	t.Run("single flight", func(t *testing.T) {
		ex := &sdkCountingExchanger{ex: exchanger}
		ts, err := sdk.NewTokenSource(secret, ex)
		if err != nil {
			t.Fatal(err)
		}
		toks := make([]string, 32)
		var wg sync.WaitGroup
		for i := range toks {
			wg.Go(func() {
				tok, err := ts.Token(context.Background())
				if err != nil {
					t.Error(err)
					return
				}
				toks[i] = tok.AccessToken
			})
		}
		wg.Wait()
		for _, tok := range toks {
			if tok != toks[0] || kindOf(tok) != credfmt.AccessToken {
				t.Fatal("goroutines got different or malformed tokens")
			}
		}
		if n := ex.n.Load(); n != 1 {
			t.Errorf("%d exchanges for 32 concurrent callers, want 1", n)
		}
		// An API refusing a token only seconds old does not drive
		// another exchange.
		ts.Expire(toks[0])
		if tok, err := ts.Token(context.Background()); err != nil || tok.AccessToken != toks[0] || ex.n.Load() != 1 {
			t.Errorf("Expire of a fresh token: %v, %d exchanges", err, ex.n.Load())
		}
	})

	t.Run("re-exchange before expiry", func(t *testing.T) {
		ex := &sdkCountingExchanger{ex: exchanger}
		// A 4 s token is served for 3 s (its first second may be gone when
		// it arrives) and re-exchanged after 70–80% of those.
		ts, err := sdk.NewTokenSource(secret, ex, sdk.WithTTL(4*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		first, err := ts.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if first.ExpiresIn != 4*time.Second || first.AutomationID != autoID {
			t.Fatalf("token %+v", first)
		}
		// Until 70% of its life, the same token.
		if tok, _ := ts.Token(context.Background()); tok.AccessToken != first.AccessToken || ex.n.Load() != 1 {
			t.Fatal("re-exchanged too early")
		}
		// Past 80% of it, still the same token while a re-exchange runs,
		// then a new one, before the first expires.
		time.Sleep(time.Until(start.Add(2450 * time.Millisecond)))
		var next *sdk.Token
		for time.Since(start) < 3*time.Second {
			tok, err := ts.Token(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if tok.AccessToken != first.AccessToken {
				next = tok
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if next == nil || !next.ExpiresAt.After(first.ExpiresAt) {
			t.Fatalf("no fresh token before the first expired (exchanges: %d)", ex.n.Load())
		}
		if n := ex.n.Load(); n != 2 {
			t.Errorf("%d exchanges, want 2", n)
		}
	})

	t.Run("narrowed scopes", func(t *testing.T) {
		ts, err := sdk.NewTokenSource(secret, exchanger, sdk.WithScopes("issues:read"), sdk.WithTTL(120*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := ts.Token(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(tok.Scopes, ",") != "issues:read" || strings.Join(tok.TeamIDs, ",") != "red" || time.Until(tok.ExpiresAt) > 121*time.Second {
			t.Fatalf("token %+v", tok)
		}
		v := sdkVerifier(t, c, zap.NewNop(), c.Addr("credential"))
		caller, err := v.Verify(context.Background(), tok.AccessToken)
		if err != nil {
			t.Fatal(err)
		}
		if caller.Kind != sdk.CallerAutomation || caller.SubjectID != autoID || caller.WorkspaceID != ws.ID ||
			strings.Join(caller.Scopes, ",") != "issues:read" || caller.ExpiresAt.IsZero() {
			t.Fatalf("caller %+v", caller)
		}
		if _, err := sdk.RequireScope(sdk.WithCaller(context.Background(), caller), "issues:write"); status.Code(err) != codes.PermissionDenied {
			t.Errorf("narrowed token holds issues:write: %v", err)
		}
	})

	t.Run("a scope the automation lacks", func(t *testing.T) {
		ex := &sdkCountingExchanger{ex: exchanger}
		ts, _ := sdk.NewTokenSource(secret, ex, sdk.WithScopes("issues:delete"))
		for range 3 {
			if _, err := ts.Token(context.Background()); !errors.Is(err, sdk.ErrExchangeRefused) {
				t.Fatalf("got %v", err)
			}
		}
		if n := ex.n.Load(); n != 1 {
			t.Errorf("%d exchanges of a refused request, want 1", n)
		}
	})

	t.Run("whoami over gRPC with the token", func(t *testing.T) {
		ts, err := sdk.NewTokenSource(secret, sdk.GRPCExchanger{Conn: c.Conn(c.Addr("credential"))}, sdk.WithInsecureTransport())
		if err != nil {
			t.Fatal(err)
		}
		resp, err := credentialv1.NewCredentialServiceClient(c.Conn(c.Addr("credential"))).WhoAmI(context.Background(), &credentialv1.WhoAmIRequest{}, grpc.PerRPCCredentials(ts))
		if err != nil || resp.GetSubjectId() != autoID {
			t.Fatalf("whoami: %v %v", resp, err)
		}
	})
}

// The SDK copies what it may not import from kit: the credential format
// and the refusal messages. They must agree.
func TestSDKAgreesWithKit(t *testing.T) {
	for _, k := range credfmt.Kinds {
		for range 50 {
			s := credfmt.New(k)
			got, err := sdk.ParseCredential(s)
			if err != nil || string(got) != string(k) {
				t.Fatalf("sdk.ParseCredential(a %s) = %q, %v", k, got, err)
			}
			for _, m := range []string{s[:len(s)-1], s[:len(s)-1] + "0", s[:len(s)-1] + "1", strings.Replace(s, "_", "-", 1), s + "a", s[:10]} {
				_, kerr := credfmt.Parse(m)
				_, serr := sdk.ParseCredential(m)
				if (kerr == nil) != (serr == nil) || kerr != nil && kerr.Error() != serr.Error() {
					t.Fatalf("kit says %v, the SDK %v", kerr, serr)
				}
			}
		}
	}
	for name, pair := range map[string][2]string{
		"missing": {sdk.MsgMissing, auth.MsgMissing}, "exchange first": {sdk.MsgExchangeFirst, auth.MsgExchangeFirst},
		"rotation secret": {sdk.MsgRotationSecret, auth.MsgRotationSecret}, "invalid": {sdk.MsgInvalid, auth.MsgInvalid},
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s: the SDK says %q, the services %q", name, pair[0], pair[1])
		}
	}
	if sdk.CacheTTL > auth.CacheTTL {
		t.Errorf("the SDK caches %v, longer than the credential service waits for acknowledgements (%v)", sdk.CacheTTL, auth.CacheTTL)
	}
}
