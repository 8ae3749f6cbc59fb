// Package mounttest serves a service for a test the way backlogd does
// (mount.New) on a real loopback listener.
package mounttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	adminv1 "github.com/backlog/controlplane/gen/go/backlog/admin/v1"
	"github.com/backlog/controlplane/services/kit/mount"
)

// Start serves svc on 127.0.0.1 and returns its address; the server stops
// in tb.Cleanup.
func Start(tb testing.TB, svc mount.Service, o mount.Options) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	srv := mount.New(svc, o)
	go srv.Serve(lis)
	tb.Cleanup(func() { srv.Stop(time.Second) })
	return lis.Addr().String()
}

// Snapshot reads a whole AdminService.Snapshot: the store's name and bytes.
// It fails if the bytes received differ from the size announced.
func Snapshot(ctx context.Context, cc grpc.ClientConnInterface) (string, []byte, error) {
	stream, err := adminv1.NewAdminServiceClient(cc).Snapshot(ctx, &adminv1.SnapshotRequest{})
	if err != nil {
		return "", nil, err
	}
	var (
		name string
		size int64
		b    []byte
	)
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", nil, err
		}
		if m.GetStore() != "" {
			name, size = m.GetStore(), m.GetSize()
		}
		b = append(b, m.GetChunk()...)
	}
	if int64(len(b)) != size {
		return name, b, fmt.Errorf("snapshot sent %d bytes, announced %d", len(b), size)
	}
	return name, b, nil
}
