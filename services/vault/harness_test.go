package vault_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/vault"
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

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// target is a real HTTP(S) server on loopback that records what it receives.
type target struct {
	srv   *httptest.Server
	count atomic.Int64
	mu    sync.Mutex
	last  http.Header
	body  string
	// held counts requests to /hold that arrived; they wait until
	// unhold (or until the client gives up).
	held        atomic.Int64
	release     chan struct{}
	releaseOnce sync.Once
}

// unhold lets every held request, and every later one, answer.
func (tg *target) unhold() { tg.releaseOnce.Do(func() { close(tg.release) }) }

func (tg *target) handler(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	tg.mu.Lock()
	tg.last, tg.body = r.Header.Clone(), string(b)
	tg.mu.Unlock()
	tg.count.Add(1)
	switch r.URL.Path {
	case "/echo":
		// A careless API that echoes the credential back, in a header and
		// in the body, raw and inside JSON.
		v := r.Header.Get("X-Api-Key")
		w.Header().Set("X-Echo", "you sent "+v)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"received":"`+v+`","auth":"`+r.Header.Get("Authorization")+`"}`)
	case "/redirect":
		http.Redirect(w, r, "https://example.com/elsewhere", http.StatusFound)
	case "/big":
		w.Write(bytes.Repeat([]byte("x"), 3<<20))
	case "/binary":
		w.Write([]byte{0xff, 0xfe, 0x00, 0x01})
	case "/hold":
		tg.held.Add(1)
		select {
		case <-r.Context().Done():
		case <-tg.release:
			io.WriteString(w, "released")
		}
	case "/slow":
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	default:
		w.Header().Set("X-Target", "yes")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "ok "+r.Method)
	}
}

func (tg *target) lastHeader(name string) string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.last.Get(name)
}

func (tg *target) requests() int64 { return tg.count.Load() }

// proc is one running vault: service, gRPC server, clients.
type proc struct {
	svc    *vault.Service
	client vaultv1.VaultServiceClient
	// internal presents the service credential, as a sibling service;
	// stranger is the same API on the user's connection, without it.
	internal vaultv1.VaultInternalServiceClient
	stranger vaultv1.VaultInternalServiceClient
	audit    auditv1.AuditServiceClient
	// conn is the user's connection, sibling the service's.
	conn, sibling *grpc.ClientConn
	stop          func()
}

// harness is a real credential service and a real vault, each on its own
// loopback gRPC listener, plus real HTTPS and HTTP targets on loopback.
type harness struct {
	t       *testing.T
	env     *credentialtest.Env
	lg      *zap.Logger
	logs    *syncBuffer
	clock   *clock
	cfg     vault.Config
	kekFile string
	tls     *target
	plain   *target
	*proc

	respMu    sync.Mutex
	responses bytes.Buffer // every vault response (protojson) and error message, but Resolve's
}

func newHarness(t *testing.T, mutate ...func(*vault.Config)) *harness {
	t.Helper()
	logs := &syncBuffer{}
	lg := zap.New(zapcore.NewTee(
		zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core(),
		zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), logs, zap.DebugLevel),
	))
	h := &harness{t: t, lg: lg, logs: logs, clock: &clock{t: time.Now()}}
	h.env = credentialtest.StartWith(t, credentialtest.Options{Logger: lg})

	h.tls = &target{release: make(chan struct{})}
	h.tls.srv = httptest.NewTLSServer(http.HandlerFunc(h.tls.handler))
	t.Cleanup(h.tls.srv.Close)
	t.Cleanup(h.tls.unhold) // runs first
	h.plain = &target{release: make(chan struct{})}
	h.plain.srv = httptest.NewServer(http.HandlerFunc(h.plain.handler))
	t.Cleanup(h.plain.srv.Close)
	t.Cleanup(h.plain.unhold)

	dir := t.TempDir()
	caFile := filepath.Join(dir, "egress-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: h.tls.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	h.kekFile = filepath.Join(dir, "keys", "vault.kek")
	if err := vault.GenerateKEKFile(h.kekFile); err != nil {
		t.Fatal(err)
	}
	h.cfg = vault.Config{
		DataDir: filepath.Join(dir, "data"), Logger: lg, KEKFile: h.kekFile,
		EgressCAFile: caFile, EgressAllowPrivate: true, EgressTimeout: 2 * time.Second,
		ServiceToken: h.env.ServiceToken, Now: h.clock.Now,
	}
	for _, m := range mutate {
		m(&h.cfg)
	}
	h.proc = h.start(h.cfg)
	return h
}

// start runs a vault with cfg on a fresh loopback listener.
func (h *harness) start(cfg vault.Config) *proc {
	t := h.t
	t.Helper()
	svc, err := vault.New(cfg)
	if err != nil {
		t.Fatalf("vault.New: %v", err)
	}
	credConn, err := grpc.NewClient(h.env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	remote := auth.NewRemote(credentialv1.NewCredentialInternalServiceClient(credConn), h.lg)
	go remote.Watch(ctx)
	// Mounted as backlogd mounts it, requiring the vault's own service
	// credential; the listener is ours so that restart can end the server.
	srv := mount.New(svc, mount.Options{Name: "vault", Logger: h.lg, Auth: remote, ServiceToken: cfg.ServiceToken})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	// A user's connection (bearer tokens only) and a sibling service's
	// (presenting the service credential, as backlogd's siblings do).
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(h.capture))
	if err != nil {
		t.Fatal(err)
	}
	sibling, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(h.capture), grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			conn.Close()
			sibling.Close()
			srv.Stop(time.Second)
			cancel()
			if err := svc.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			credConn.Close()
		})
	}
	t.Cleanup(stop)
	return &proc{
		svc: svc, stop: stop, conn: conn, sibling: sibling,
		client:   vaultv1.NewVaultServiceClient(conn),
		internal: vaultv1.NewVaultInternalServiceClient(sibling),
		stranger: vaultv1.NewVaultInternalServiceClient(conn),
		audit:    auditv1.NewAuditServiceClient(conn),
	}
}

// restart stops the vault and starts it again on the same data dir, with
// the harness config changed by mutate.
func (h *harness) restart(mutate func(*vault.Config)) {
	h.t.Helper()
	h.proc.stop()
	cfg := h.cfg
	if mutate != nil {
		mutate(&cfg)
	}
	h.proc = h.start(cfg)
}

// capture records every response and error message the vault sends,
// except Resolve's and ResolveConnection's (whose whole point is to return
// a value).
func (h *harness) capture(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if (method == vaultv1.VaultInternalService_Resolve_FullMethodName || method == vaultv1.VaultInternalService_ResolveConnection_FullMethodName) && err == nil {
		return err
	}
	h.respMu.Lock()
	defer h.respMu.Unlock()
	if err != nil {
		h.responses.WriteString(status.Convert(err).Message() + "\n")
	} else if m, ok := reply.(proto.Message); ok {
		b, _ := protojson.Marshal(m)
		h.responses.Write(b)
		h.responses.WriteByte('\n')
	}
	return err
}

func (h *harness) responsesSeen() string {
	h.respMu.Lock()
	defer h.respMu.Unlock()
	return h.responses.String()
}

var as = credentialtest.As

func bg() context.Context { return context.Background() }

func withService(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, vault.ServiceTokenMetadataKey, token)
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

// newValue returns a distinctive random secret value.
func newValue(prefix string) string {
	b := make([]byte, 16)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func (h *harness) create(t *testing.T, ws, token, name, kind, value string) *vaultv1.Secret {
	t.Helper()
	resp, err := h.client.CreateSecret(as(bg(), token), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: name, Kind: kind, Value: value, Description: "test secret " + name})
	if err != nil {
		t.Fatalf("create %q: %v", name, err)
	}
	return resp.GetSecret()
}

func (h *harness) get(t *testing.T, ws, token, name string) *vaultv1.Secret {
	t.Helper()
	resp, err := h.client.GetSecret(as(bg(), token), &vaultv1.GetSecretRequest{WorkspaceId: ws, Name: name})
	if err != nil {
		t.Fatalf("get %q: %v", name, err)
	}
	return resp.GetSecret()
}

func (h *harness) update(ws, token, name string, in *vaultv1.Secret, paths ...string) (*vaultv1.Secret, error) {
	resp, err := h.client.UpdateSecret(as(bg(), token), &vaultv1.UpdateSecretRequest{WorkspaceId: ws, Name: name, Secret: in, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
	return resp.GetSecret(), err
}

// run sends an HTTP Request step to path on the TLS target with headers.
func (h *harness) run(ws, token, path string, headers map[string]string) (*vaultv1.RunHttpRequestResponse, error) {
	return h.client.RunHttpRequest(as(bg(), token), &vaultv1.RunHttpRequestRequest{
		WorkspaceId: ws, Method: "POST", Url: h.tls.srv.URL + path, Headers: headers, Body: `{"hello":"world"}`,
	})
}

func (h *harness) auditEvents(t *testing.T, ws, token string) []*auditv1.AuditEvent {
	t.Helper()
	resp, err := h.audit.ListAuditEvents(as(bg(), token), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatalf("audit list: %v", err)
	}
	return resp.GetAuditEvents()
}

// auditActions lists action:outcome of target's events, oldest first.
func (h *harness) auditActions(t *testing.T, ws, token, target string) []string {
	t.Helper()
	var out []string
	for _, ev := range h.auditEvents(t, ws, token) {
		if ev.GetTargetId() == target {
			out = append(out, ev.GetAction()+":"+ev.GetOutcome())
		}
	}
	return out
}

// accessToken issues an automation with scopes in ws and returns an access
// token for it.
func (h *harness) accessToken(t *testing.T, ws string, scopes ...string) string {
	t.Helper()
	issued, err := h.env.Internal.IssueCredential(bg(), &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: ids.New("auto"), WorkspaceId: ws, Name: "bot-" + strings.Join(scopes, "-"), Scopes: scopes},
		Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
	})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := h.env.Public.Exchange(as(bg(), issued.GetCredential()), &credentialv1.ExchangeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return ex.GetAccessToken()
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func names(secrets []*vaultv1.Secret) []string {
	var out []string
	for _, s := range secrets {
		out = append(out, s.GetName())
	}
	return out
}

func equal(a, b []string) bool { return slices.Equal(a, b) }

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
