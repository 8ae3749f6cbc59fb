// Package admin serves a store's online snapshot (AdminService.Snapshot).
package admin

import (
	"path/filepath"
	"strings"

	"google.golang.org/grpc"

	adminv1 "github.com/backlog/controlplane/gen/go/backlog/admin/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

const chunkSize = 256 << 10

// Server streams snapshots of one store.
type Server struct {
	adminv1.UnsafeAdminServiceServer
	DB store.Backend
}

// Register registers s on g.
func (s *Server) Register(g grpc.ServiceRegistrar) { adminv1.RegisterAdminServiceServer(g, s) }

// IsAdminMethod reports the methods of AdminService (internal: they need the
// service credential, not a bearer principal).
func IsAdminMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+adminv1.AdminService_ServiceDesc.ServiceName+"/")
}

// Snapshot writes the store in one read transaction: a consistent copy while
// writers carry on.
func (s *Server) Snapshot(_ *adminv1.SnapshotRequest, stream adminv1.AdminService_SnapshotServer) error {
	snap, err := s.DB.Snapshot(stream.Context())
	if err != nil {
		return err
	}
	defer snap.Close()
	w := &chunker{stream: stream, first: &adminv1.SnapshotResponse{Store: filepath.Base(s.DB.Info().Name), Size: snap.Size()}}
	if _, err := snap.WriteTo(w); err != nil {
		return err
	}
	return w.flush()
}

type chunker struct {
	stream adminv1.AdminService_SnapshotServer
	first  *adminv1.SnapshotResponse
	buf    []byte
}

func (c *chunker) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	for len(c.buf) >= chunkSize {
		if err := c.send(c.buf[:chunkSize]); err != nil {
			return 0, err
		}
		c.buf = c.buf[chunkSize:]
	}
	return len(p), nil
}

func (c *chunker) flush() error {
	if len(c.buf) > 0 || c.first != nil {
		return c.send(c.buf)
	}
	return nil
}

func (c *chunker) send(b []byte) error {
	msg := &adminv1.SnapshotResponse{Chunk: append([]byte(nil), b...)}
	if c.first != nil {
		msg.Store, msg.Size = c.first.Store, c.first.Size
		c.first = nil
	}
	return c.stream.Send(msg)
}
