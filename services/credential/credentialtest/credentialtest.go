// Package credentialtest starts a real credential service on a loopback port
// for other services' tests.
package credentialtest

import (
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/mount"
)

// Env is a running credential service.
type Env struct {
	Addr          string
	Conn          *grpc.ClientConn
	Internal      credentialv1.CredentialInternalServiceClient
	Public        credentialv1.CredentialServiceClient
	OperatorToken string
	// ServiceToken is the service credential internal RPCs require.
	ServiceToken string
	Service      *credential.Service
	DataDir      string

	stopOnce sync.Once
	stop     func()
}

// Options tune Start.
type Options struct {
	Logger *zap.Logger
	// DataDir is the data dir to start in (default: a new tb.TempDir()), to
	// start again where an earlier Env stopped.
	DataDir string
	// ServiceToken is the service credential the server requires on
	// internal RPCs (default: a new one). Siblings started before the
	// credential service (its audit peers) need it first.
	ServiceToken string
	Config       func(*credential.Config)
}

// Start runs a credential service in tb.TempDir() on 127.0.0.1:0.
func Start(tb testing.TB) *Env { return StartWith(tb, Options{}) }

// StartWith is Start with options.
func StartWith(tb testing.TB, o Options) *Env {
	tb.Helper()
	lg := o.Logger
	if lg == nil {
		lg = zaptest.NewLogger(tb)
	}
	dir := o.DataDir
	if dir == "" {
		dir = tb.TempDir()
	}
	cfg := credential.Config{DataDir: dir, Logger: lg}
	if o.Config != nil {
		o.Config(&cfg)
	}
	svc, err := credential.New(cfg)
	if err != nil {
		tb.Fatalf("credential.New: %v", err)
	}
	svcToken := o.ServiceToken
	if svcToken == "" {
		svcToken = credfmt.New(credfmt.Service)
	}
	// Mounted as backlogd mounts it; the listener is ours so that Stop can
	// end the server before the test does (to start again on DataDir).
	srv := mount.New(svc, mount.Options{Name: "credential", Logger: lg, Auth: svc.Authenticator(), ServiceToken: svcToken})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		svc.Close()
		tb.Fatal(err)
	}
	go srv.Serve(lis)
	// The harness's connection acts as a sibling service: it holds the
	// service credential that internal RPCs require.
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: svcToken}))
	if err != nil {
		tb.Fatal(err)
	}
	e := &Env{
		Addr: lis.Addr().String(), Conn: conn, Service: svc, DataDir: dir,
		Internal:     credentialv1.NewCredentialInternalServiceClient(conn),
		Public:       credentialv1.NewCredentialServiceClient(conn),
		ServiceToken: svcToken,
		stop: func() {
			conn.Close()
			svc.EndWatches() // as backlogd: watch streams would hold up the graceful stop
			srv.Stop(time.Second)
			svc.Close()
		},
	}
	tb.Cleanup(e.Stop)
	tok, err := os.ReadFile(credential.OperatorTokenPath(dir))
	if err != nil {
		tb.Fatal(err)
	}
	e.OperatorToken = strings.TrimSpace(string(tok))
	return e
}

// Stop stops the server and closes the service and its store (once; the
// test's cleanup calls it too).
func (e *Env) Stop() { e.stopOnce.Do(e.stop) }

// As returns ctx carrying token as the bearer credential.
func As(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// NewWorkspace creates a workspace and returns its id and its owner's token.
func (e *Env) NewWorkspace(tb testing.TB, name string) (wsID, ownerToken string) {
	tb.Helper()
	resp, err := e.Public.CreateWorkspace(As(context.Background(), e.OperatorToken), &credentialv1.CreateWorkspaceRequest{Name: name})
	if err != nil {
		tb.Fatalf("CreateWorkspace: %v", err)
	}
	return resp.Workspace.Id, resp.Token
}

// NewMember adds a member with role and returns its id and personal token.
func (e *Env) NewMember(tb testing.TB, ws, ownerToken, role string) (memberID, token string) {
	tb.Helper()
	resp, err := e.Public.CreateMember(As(context.Background(), ownerToken), &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: role + " person", Role: role})
	if err != nil {
		tb.Fatalf("CreateMember: %v", err)
	}
	return resp.Member.Id, resp.Token
}
