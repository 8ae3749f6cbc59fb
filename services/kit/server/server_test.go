package server_test

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/server"
)

type buf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buf) Write(p []byte) (int, error) { b.mu.Lock(); defer b.mu.Unlock(); return b.b.Write(p) }
func (b *buf) Sync() error                 { return nil }
func (b *buf) String() string              { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

// fakeAuth accepts one token. It stands in for the credential service, which
// lives in another module and has its own end-to-end tests.
type fakeAuth struct{ token string }

func (f fakeAuth) Authenticate(_ context.Context, raw string) (*auth.Principal, error) {
	if raw != f.token {
		return nil, errs.Unauthenticated(auth.MsgInvalid)
	}
	return &auth.Principal{SubjectId: "mem_1", WorkspaceId: "ws_1", Role: "owner", Scopes: auth.AdminScopes}, nil
}

// panicky is a health service whose Check panics with request data.
type panicky struct {
	healthpb.UnimplementedHealthServer
}

func (panicky) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	panic("boom with " + auth.Bearer(ctx))
}

// echo answers WhoAmI with the principal and Authenticate with nothing: just
// enough API for the interceptors in front of it to be exercised.
type echo struct {
	credentialv1.UnimplementedCredentialServiceServer
	credentialv1.UnimplementedCredentialInternalServiceServer
}

func (echo) WhoAmI(ctx context.Context, _ *credentialv1.WhoAmIRequest) (*credentialv1.WhoAmIResponse, error) {
	return &credentialv1.WhoAmIResponse{SubjectId: auth.FromContext(ctx).GetSubjectId()}, nil
}

func (echo) Authenticate(context.Context, *credentialv1.AuthenticateRequest) (*credentialv1.AuthenticateResponse, error) {
	return &credentialv1.AuthenticateResponse{}, nil
}

func start(t *testing.T, cfg server.Config, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	srv := server.New(cfg)
	if register != nil {
		register(srv.GRPC)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Stop(time.Second) })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestPanicIsInternalAndLogsNoRequestData(t *testing.T) {
	logs := &buf{}
	lg := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), logs, zapcore.DebugLevel))
	tok := credfmt.New(credfmt.Personal)
	// Health is registered by the kit; use a second server name for the panicky one.
	srv := server.New(server.Config{Name: "test", Logger: lg, Auth: fakeAuth{tok}, NoAuth: func(string) bool { return false }})
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	sd := healthpb.Health_ServiceDesc
	sd.ServiceName = "test.Panicky"
	srv.GRPC.RegisterService(&sd, panicky{})
	go srv.Serve(lis)
	defer srv.Stop(time.Second)
	conn, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer conn.Close()

	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok, server.RequestIDKey, "req-123")
	err := conn.Invoke(ctx, "/test.Panicky/Check", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if status.Code(err) != codes.Internal || strings.Contains(status.Convert(err).Message(), "boom") {
		t.Fatalf("panic surfaced as %v", err)
	}
	if strings.Contains(logs.String(), tok) {
		t.Fatal("the bearer token reached the logs through a panic")
	}
	if !strings.Contains(logs.String(), "req-123") || !strings.Contains(logs.String(), "panic in handler") {
		t.Fatalf("the panic was not logged with its request id:\n%s", logs.String())
	}
}

func TestAuthAndInternalChecks(t *testing.T) {
	tok := credfmt.New(credfmt.Personal)
	svcTok := credfmt.New(credfmt.Service)
	conn := start(t, server.Config{
		Name: "test", Auth: fakeAuth{tok},
		NoAuth:       func(m string) bool { return strings.HasPrefix(m, "/backlog.credential.v1.CredentialInternalService/") },
		Internal:     func(m string) bool { return strings.HasPrefix(m, "/backlog.credential.v1.CredentialInternalService/") },
		ServiceToken: svcTok,
	}, func(g *grpc.Server) {
		credentialv1.RegisterCredentialServiceServer(g, echo{})
		credentialv1.RegisterCredentialInternalServiceServer(g, echo{})
	})
	bg := context.Background()
	health := healthpb.NewHealthClient(conn)
	if _, err := health.Check(bg, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health needs no credential: %v", err)
	}
	internal := credentialv1.NewCredentialInternalServiceClient(conn)
	for name, ctx := range map[string]context.Context{
		"no service token":    bg,
		"wrong service token": metadata.AppendToOutgoingContext(bg, auth.ServiceTokenKey, credfmt.New(credfmt.Service)),
		"a user's token":      metadata.AppendToOutgoingContext(bg, "authorization", "Bearer "+tok),
	} {
		if _, err := internal.Authenticate(ctx, &credentialv1.AuthenticateRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("internal call with %s: %v, want Unauthenticated", name, err)
		}
	}
	if _, err := internal.Authenticate(metadata.AppendToOutgoingContext(bg, auth.ServiceTokenKey, svcTok), &credentialv1.AuthenticateRequest{}); err != nil {
		t.Fatalf("internal call with the service token: %v", err)
	}
	if who, err := credentialv1.NewCredentialServiceClient(conn).WhoAmI(metadata.AppendToOutgoingContext(bg, "authorization", "Bearer "+tok), &credentialv1.WhoAmIRequest{}); err != nil || who.SubjectId != "mem_1" {
		t.Fatalf("valid token: %v %v", who, err)
	}
	cases := []struct {
		name  string
		token string
		want  string
	}{
		{"missing", "", auth.MsgMissing},
		{"automation secret", credfmt.New(credfmt.Automation), "exchange"},
		{"rotation secret", credfmt.New(credfmt.RotationSecret), "rotation secret"},
		{"bad checksum", badChecksum(tok), "checksum"},
		{"unknown", credfmt.New(credfmt.Personal), auth.MsgInvalid},
	}
	public := credentialv1.NewCredentialServiceClient(conn)
	for _, c := range cases {
		ctx := bg
		if c.token != "" {
			ctx = metadata.AppendToOutgoingContext(bg, "authorization", "Bearer "+c.token)
		}
		_, err := public.WhoAmI(ctx, &credentialv1.WhoAmIRequest{})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), c.want) {
			t.Errorf("%s: %v, want Unauthenticated mentioning %q", c.name, err, c.want)
		}
		if c.token != "" && strings.Contains(status.Convert(err).Message(), c.token) {
			t.Errorf("%s: the error echoes the credential", c.name)
		}
	}
}

// badChecksum changes the last character of a credential to a different one.
func badChecksum(s string) string {
	if s[len(s)-1] == 'z' {
		return s[:len(s)-1] + "y"
	}
	return s[:len(s)-1] + "z"
}
