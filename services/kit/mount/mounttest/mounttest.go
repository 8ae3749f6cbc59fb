// Package mounttest serves a service for a test the way backlogd does
// (mount.New) on a real loopback listener.
package mounttest

import (
	"net"
	"testing"
	"time"

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
