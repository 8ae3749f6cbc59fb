package agent_test

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/mount"
)

// syncBuffer collects every log line, at debug level, for "never logged" checks.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Sync() error { return nil }

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// secrets remembers every raw credential the test saw, wherever it came
// from, so that the test can prove none of them rests anywhere.
type secrets struct {
	mu  sync.Mutex
	all []string
}

func (s *secrets) add(v ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range v {
		if x != "" {
			s.all = append(s.all, x)
		}
	}
}

func (s *secrets) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

// clock is the agent service's clock: real time plus what a test skips.
type clock struct {
	mu   sync.Mutex
	skip time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.skip)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.skip += d
	c.mu.Unlock()
}

// harness is a real credential service and a real agent service, each on
// its own loopback gRPC listener, talking over gRPC. The credential
// service merges the agent service's audit events into its trail.
type harness struct {
	env     *credentialtest.Env
	svc     *agent.Service
	client  agentv1.AgentServiceClient
	audit   auditv1.AuditServiceClient
	logs    *syncBuffer
	seen    *secrets
	clock   *clock
	rotated atomic.Int64 // successful RotateCredentials calls by the agent service
	dataDir string
	addr    string // the agent server's
	stop    func() // stops the agent server and closes its store (idempotent)
}

func newHarness(t *testing.T, opts ...func(*agent.Config)) *harness {
	t.Helper()
	logs := &syncBuffer{}
	enc := zap.NewProductionEncoderConfig()
	lg := zap.New(zapcore.NewTee(
		zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Core(),
		zapcore.NewCore(zapcore.NewJSONEncoder(enc), logs, zap.DebugLevel),
	))
	h := &harness{logs: logs, seen: &secrets{}, clock: &clock{}}

	// The agent service's listener first, so that the credential service
	// can be told where to find its audit events.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// One service credential for both, as backlogd's siblings share one;
	// the credential service dials its audit peer with it, as backlogd does.
	svcToken := harnessServiceToken
	peerConn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: svcToken}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peerConn.Close() })
	h.env = credentialtest.StartWith(t, credentialtest.Options{Logger: lg, ServiceToken: svcToken, Config: func(c *credential.Config) {
		c.AuditPeers = map[string]auditv1.AuditServiceClient{"agent": auditv1.NewAuditServiceClient(peerConn)}
	}})

	// The agent service's own connection to the credential service,
	// recording every raw credential it receives (so that the test knows
	// even credentials the service never returned to anyone).
	capture := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		switch r := reply.(type) {
		case *credentialv1.IssueCredentialResponse:
			for _, c := range r.GetCredentials() {
				h.seen.add(c.GetCredential())
			}
		case *credentialv1.RotateCredentialsResponse:
			for _, c := range r.GetCredentials() {
				h.seen.add(c.GetCredential())
			}
			if err == nil {
				h.rotated.Add(1)
			}
		}
		return err
	}
	credConn, err := grpc.NewClient(h.env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(capture),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	internal := credentialv1.NewCredentialInternalServiceClient(credConn)

	h.dataDir = t.TempDir()
	cfg := agent.Config{DataDir: h.dataDir, Logger: lg, Credential: internal, Now: h.clock.Now}
	for _, o := range opts {
		o(&cfg)
	}
	h.svc, err = agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	remote := auth.NewRemote(internal, lg)
	go remote.Watch(ctx)
	// Mounted as backlogd mounts it; the listener is ours (the credential
	// service needed its address first) and stop ends the server before
	// the test does.
	srv := mount.New(h.svc, mount.Options{Name: "agent", Logger: lg, Auth: remote, ServiceToken: svcToken})
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			conn.Close()
			srv.Stop(time.Second)
			cancel()
			if err := h.svc.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			credConn.Close()
		})
	}
	t.Cleanup(h.stop)
	h.addr = lis.Addr().String()
	h.client = agentv1.NewAgentServiceClient(conn)
	h.audit = auditv1.NewAuditServiceClient(conn)
	return h
}

var as = credentialtest.As

// dial connects to the agent server with opts (closed in t.Cleanup).
func (h *harness) dial(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(h.addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func bg() context.Context { return context.Background() }

// harnessServiceToken is every harness's service credential (one per test
// binary, so that fromIP can present it).
var harnessServiceToken = credfmt.New(credfmt.Service)

// fromIP makes a call look as if the gateway forwarded it for client ip: the
// gateway presents the service credential, without which a service ignores
// the claim.
func fromIP(ctx context.Context, ip string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, clientip.MetadataKey, ip, auth.ServiceTokenKey, harnessServiceToken)
}

// withIdem adds an Idempotency-Key, as the gateway forwards it.
func withIdem(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, agent.IdempotencyKeyMetadata, key)
}

// wantCode fails unless err has the code (and, when set, the reason).
func wantCode(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v (%v), want %v", status.Code(err), err, code)
	}
	if reason != "" && errs.Reason(err) != reason {
		t.Fatalf("got reason %q (%v), want %q", errs.Reason(err), err, reason)
	}
}

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

func (h *harness) installation(t *testing.T, ws, token, name string) string {
	t.Helper()
	resp, err := h.client.CreateInstallation(as(bg(), token), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: name, AppId: "app_" + strings.ReplaceAll(name, " ", "-")})
	if err != nil {
		t.Fatalf("create installation %q: %v", name, err)
	}
	return resp.GetInstallation().GetId()
}

func (h *harness) createAgent(t *testing.T, ws, token, inst string, req *agentv1.CreateAgentRequest) *agentv1.CreateAgentResponse {
	t.Helper()
	req.WorkspaceId, req.InstallationId = ws, inst
	resp, err := h.client.CreateAgent(as(bg(), token), req)
	if err != nil {
		t.Fatalf("create agent %q: %v", req.Name, err)
	}
	h.seen.add(resp.GetApiKey(), resp.GetRotationSecret())
	return resp
}

// selfRotate calls POST /v1/agents/self/rotate-key as the agent would.
func (h *harness) selfRotate(ctx context.Context, apiKey, secret string) (*agentv1.RotateSelfKeyResponse, error) {
	resp, err := h.client.RotateSelfKey(as(ctx, apiKey), &agentv1.RotateSelfKeyRequest{RotationSecret: secret})
	h.seen.add(resp.GetApiKey(), resp.GetRotationSecret())
	return resp, err
}

func (h *harness) mustSelfRotate(t *testing.T, ctx context.Context, apiKey, secret string) *agentv1.RotateSelfKeyResponse {
	t.Helper()
	resp, err := h.selfRotate(ctx, apiKey, secret)
	if err != nil {
		t.Fatalf("self-rotate: %v", err)
	}
	return resp
}

func (h *harness) adminRotate(t *testing.T, ws, token, id string) *agentv1.RotateAgentKeyResponse {
	t.Helper()
	resp, err := h.client.RotateAgentKey(as(bg(), token), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id})
	if err != nil {
		t.Fatalf("admin rotate: %v", err)
	}
	h.seen.add(resp.GetApiKey(), resp.GetRotationSecret())
	return resp
}

// self reads the agent's own record with its key.
func (h *harness) self(key string) (*agentv1.Agent, error) {
	resp, err := h.client.GetSelf(as(bg(), key), &agentv1.GetSelfRequest{})
	return resp.GetAgent(), err
}

func (h *harness) get(t *testing.T, ws, token, id string) *agentv1.Agent {
	t.Helper()
	resp, err := h.client.GetAgent(as(bg(), token), &agentv1.GetAgentRequest{WorkspaceId: ws, AgentId: id})
	if err != nil {
		t.Fatalf("get agent: %v", err)
	}
	return resp.GetAgent()
}

// auditActions lists action:outcome of the agent service's own events for
// target, oldest first.
func (h *harness) auditActions(t *testing.T, ws, token, target string) []string {
	t.Helper()
	resp, err := h.audit.ListAuditEvents(as(bg(), token), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, TargetId: target, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatalf("audit list: %v", err)
	}
	var out []string
	for _, ev := range resp.GetAuditEvents() {
		out = append(out, ev.GetAction()+":"+ev.GetOutcome())
	}
	return out
}

// auditFailures lists the agent service's own failure events for target,
// oldest first.
func (h *harness) auditFailures(t *testing.T, ws, token, target string) []*auditv1.AuditEvent {
	t.Helper()
	resp, err := h.audit.ListAuditEvents(as(bg(), token), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, TargetId: target, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatalf("audit list: %v", err)
	}
	var out []*auditv1.AuditEvent
	for _, ev := range resp.GetAuditEvents() {
		if ev.GetOutcome() == "failure" {
			out = append(out, ev)
		}
	}
	return out
}
