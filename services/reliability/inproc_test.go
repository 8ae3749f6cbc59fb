package reliability

// An in-process control plane for the fuzz targets and the fault-injection
// suite: the real credential, automation, agent and vault services, each on
// its own loopback listener, mounted as backlogd mounts it (mount.New),
// talking to each other over gRPC with the service credential as in
// backlogd, and the real REST gateway in an httptest server.

import (
	"context"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/gateway"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/vault"
)

type stack struct {
	Dir      string
	Cred     *credential.Service
	Auto     *automation.Service
	Agent    *agent.Service
	Vault    *vault.Service
	Web      *httptest.Server
	Operator string
	// gRPC addresses of the two services.
	CredAddr, AutoAddr string

	// Public clients (no service credential), as a user's.
	CredClient credentialv1.CredentialServiceClient
	AutoClient automationv1.AutomationServiceClient
}

func (s *stack) rest() *restClient {
	return &restClient{base: s.Web.URL, http: s.Web.Client()}
}

func listenLoopback(tb testing.TB) net.Listener {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

func dialLoopback(tb testing.TB, addr, svcToken string) *grpc.ClientConn {
	tb.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if svcToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: svcToken}))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// newStack starts the in-process control plane in tb.TempDir(). lg may be nil.
func newStack(tb testing.TB, lg *zap.Logger) *stack {
	tb.Helper()
	if lg == nil {
		lg = zap.NewNop()
	}
	dir := tb.TempDir()
	svcToken := credfmt.New(credfmt.Service)
	credLis, autoLis, agentLis, vaultLis := listenLoopback(tb), listenLoopback(tb), listenLoopback(tb), listenLoopback(tb)
	credAddr, autoAddr := credLis.Addr().String(), autoLis.Addr().String()
	// Each service is mounted as backlogd mounts it (mount.New), with the
	// one service credential; the listeners come first because the
	// credential service and its siblings need each other's addresses.
	serve := func(name string, svc mount.Service, authn auth.Authenticator, lis net.Listener) {
		srv := mount.New(svc, mount.Options{Name: name, Logger: lg, Auth: authn, ServiceToken: svcToken})
		go srv.Serve(lis)
		tb.Cleanup(func() { srv.Stop(2 * time.Second) })
	}
	peers := map[string]auditv1.AuditServiceClient{}
	for name, addr := range map[string]string{"automation": autoAddr, "agent": agentLis.Addr().String(), "vault": vaultLis.Addr().String()} {
		peers[name] = auditv1.NewAuditServiceClient(dialLoopback(tb, addr, svcToken))
	}
	credSvc, err := credential.New(credential.Config{DataDir: dir, Logger: lg, AuditPeers: peers})
	if err != nil {
		tb.Fatalf("credential.New: %v", err)
	}
	serve("credential", credSvc, credSvc.Authenticator(), credLis)
	tb.Cleanup(func() { credSvc.Close() })

	internal := credentialv1.NewCredentialInternalServiceClient(dialLoopback(tb, credAddr, svcToken))
	remote := auth.NewRemote(internal, lg)
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { defer close(watched); remote.Watch(ctx) }()
	tb.Cleanup(func() { cancel(); <-watched })
	autoSvc, err := automation.New(automation.Config{DataDir: dir, Logger: lg, Credential: internal})
	if err != nil {
		tb.Fatalf("automation.New: %v", err)
	}
	serve("automation", autoSvc, remote, autoLis)
	tb.Cleanup(func() { autoSvc.Close() })

	// The agent service; self-rotation's per-IP limit is lifted (every
	// request comes from 127.0.0.1 here), its lockout is kept.
	agentSvc, err := agent.New(agent.Config{DataDir: dir, Logger: lg, Credential: internal, SelfRotationsPerIP: 1 << 20})
	if err != nil {
		tb.Fatalf("agent.New: %v", err)
	}
	serve("agent", agentSvc, remote, agentLis)
	tb.Cleanup(func() { agentSvc.Close() })

	// The vault, unsealed with a fresh key-encryption key; HTTP Request
	// steps keep the SSRF guard (the fuzzers never aim them anywhere).
	kek := filepath.Join(dir, "vault.kek")
	if err := vault.GenerateKEKFile(kek); err != nil {
		tb.Fatalf("vault.GenerateKEKFile: %v", err)
	}
	vaultSvc, err := vault.New(vault.Config{DataDir: dir, Logger: lg, KEKFile: kek, ServiceToken: svcToken})
	if err != nil {
		tb.Fatalf("vault.New: %v", err)
	}
	serve("vault", vaultSvc, remote, vaultLis)
	tb.Cleanup(func() { vaultSvc.Close() })

	gw, err := gateway.New(gateway.Config{CredentialAddr: credAddr, AutomationAddr: autoAddr,
		AgentAddr: agentLis.Addr().String(), VaultAddr: vaultLis.Addr().String(), Logger: lg})
	if err != nil {
		tb.Fatalf("gateway.New: %v", err)
	}
	web := httptest.NewServer(gw.Handler())
	tb.Cleanup(func() { web.Close(); gw.Close() })

	op, err := os.ReadFile(credential.OperatorTokenPath(dir))
	if err != nil {
		tb.Fatal(err)
	}
	return &stack{
		Dir: dir, Cred: credSvc, Auto: autoSvc, Agent: agentSvc, Vault: vaultSvc, Web: web, Operator: strings.TrimSpace(string(op)),
		CredAddr: credAddr, AutoAddr: autoAddr,
		CredClient: credentialv1.NewCredentialServiceClient(dialLoopback(tb, credAddr, "")),
		AutoClient: automationv1.NewAutomationServiceClient(dialLoopback(tb, autoAddr, "")),
	}
}

// as returns a context sending token as the bearer credential.
func as(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}
