package mount_test

import (
	"context"
	"io"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	adminv1 "github.com/backlog/controlplane/gen/go/backlog/admin/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/kit/mount/mounttest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/storetest"
)

// storeOnly is the smallest service: a store and no RPCs of its own, so the
// test sees exactly what mount adds.
type storeOnly struct{ db store.Backend }

func (s storeOnly) Register(grpc.ServiceRegistrar) {}
func (s storeOnly) Errors() *errs.Table            { return errs.NewTable("test.backlog") }
func (s storeOnly) NoAuth(string) bool             { return false }
func (s storeOnly) DB() store.Backend              { return s.db }

func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestMountServesAdminOnlyToSiblings(t *testing.T) {
	const token = "blg_svc_test-service-token-0123456789"
	db := storetest.New(t, []store.Bucket{store.Bucket("things")})
	addr := mounttest.Start(t, storeOnly{db}, mount.Options{Name: "test", Logger: zaptest.NewLogger(t), ServiceToken: token})
	ctx := context.Background()

	if _, err := healthpb.NewHealthClient(dial(t, addr)).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health: %v", err)
	}
	snapshot := func(conn *grpc.ClientConn) (int, error) {
		stream, err := adminv1.NewAdminServiceClient(conn).Snapshot(ctx, &adminv1.SnapshotRequest{})
		if err != nil {
			return 0, err
		}
		n := 0
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			n += len(msg.GetChunk())
		}
	}
	if _, err := snapshot(dial(t, addr)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("snapshot without the service credential: %v, want Unauthenticated", err)
	}
	if _, err := snapshot(dial(t, addr, grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: token + "x"}))); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("snapshot with a wrong service credential: %v, want Unauthenticated", err)
	}
	n, err := snapshot(dial(t, addr, grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: token})))
	if err != nil || n == 0 {
		t.Fatalf("snapshot with the service credential: %d bytes, %v", n, err)
	}
}
