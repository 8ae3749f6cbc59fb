package server_test

import (
	"context"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/server"
)

// ipRecorder is a health service that remembers the client IP the kit
// resolved for its last call (what audit events and rate limits use).
type ipRecorder struct {
	healthpb.UnimplementedHealthServer
	mu   sync.Mutex
	last string
}

func (r *ipRecorder) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	r.mu.Lock()
	r.last = server.ClientIP(ctx)
	r.mu.Unlock()
	return &healthpb.HealthCheckResponse{}, nil
}

func (r *ipRecorder) get() string { r.mu.Lock(); defer r.mu.Unlock(); return r.last }

func TestClientIPBelievedOnlyFromServiceCredential(t *testing.T) {
	svcTok := credfmt.New(credfmt.Service)
	for _, configured := range []string{svcTok, ""} {
		rec := &ipRecorder{}
		conn := start(t, server.Config{Name: "test", ServiceToken: configured}, func(g *grpc.Server) {
			sd := healthpb.Health_ServiceDesc
			sd.ServiceName = "test.IP"
			g.RegisterService(&sd, rec)
		})
		claim := func(md ...string) string {
			t.Helper()
			ctx := metadata.AppendToOutgoingContext(context.Background(), append([]string{clientip.MetadataKey, "203.0.113.50"}, md...)...)
			if err := conn.Invoke(ctx, "/test.IP/Check", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}); err != nil {
				t.Fatal(err)
			}
			return rec.get()
		}
		want := "127.0.0.1"
		if configured != "" {
			want = "203.0.113.50"
		}
		cases := []struct {
			name, got, want string
		}{
			{"no service credential", claim(), "127.0.0.1"},
			{"a wrong service credential", claim(auth.ServiceTokenKey, credfmt.New(credfmt.Service)), "127.0.0.1"},
			{"an empty service credential", claim(auth.ServiceTokenKey, ""), "127.0.0.1"},
			{"the service credential twice", claim(auth.ServiceTokenKey, svcTok, auth.ServiceTokenKey, svcTok), "127.0.0.1"},
			{"the service credential", claim(auth.ServiceTokenKey, svcTok), want},
		}
		for _, c := range cases {
			if c.got != c.want {
				t.Errorf("server with service token %v, a claim with %s: client IP %q, want %q", configured != "", c.name, c.got, c.want)
			}
		}
	}
}

// lister answers ListMembers with the page token it was sent, decoded and
// encoded again: enough to see which tokens the server's key accepts.
type lister struct {
	credentialv1.UnimplementedCredentialServiceServer
}

func (lister) ListMembers(ctx context.Context, req *credentialv1.ListMembersRequest) (*credentialv1.ListMembersResponse, error) {
	cursor, err := page.Decode(ctx, req.GetWorkspaceId(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if cursor == nil {
		cursor = []byte(req.GetWorkspaceId() + "/mem_first")
	}
	return &credentialv1.ListMembersResponse{NextPageToken: page.Encode(ctx, req.GetWorkspaceId(), cursor)}, nil
}

func TestPageTokensAcrossReplicas(t *testing.T) {
	tok := credfmt.New(credfmt.Personal)
	shared := credfmt.New(credfmt.Service)
	replica := func(svc string) credentialv1.CredentialServiceClient {
		return credentialv1.NewCredentialServiceClient(start(t, server.Config{Name: "test", Auth: fakeAuth{tok}, ServiceToken: svc},
			func(g *grpc.Server) { credentialv1.RegisterCredentialServiceServer(g, lister{}) }))
	}
	a, b, other, none := replica(shared), replica(shared), replica(credfmt.New(credfmt.Service)), replica("")
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	first, err := a.ListMembers(ctx, &credentialv1.ListMembersRequest{WorkspaceId: "ws_1"})
	if err != nil || first.NextPageToken == "" {
		t.Fatalf("first page: %v %v", first, err)
	}
	next := &credentialv1.ListMembersRequest{WorkspaceId: "ws_1", PageToken: first.NextPageToken}
	if _, err := b.ListMembers(ctx, next); err != nil {
		t.Fatalf("a replica sharing the service credential refused the token: %v", err)
	}
	for name, c := range map[string]credentialv1.CredentialServiceClient{"another deployment": other, "a server without a service credential": none} {
		if _, err := c.ListMembers(ctx, next); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s accepted the token: %v", name, err)
		}
	}
}
