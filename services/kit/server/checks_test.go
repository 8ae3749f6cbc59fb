package server_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/backlog/controlplane/services/kit/server"
)

// A failing readiness check turns health NOT_SERVING; passing again, SERVING.
func TestReadinessChecks(t *testing.T) {
	var failing atomic.Bool
	srv := server.New(server.Config{Name: "checks"})
	srv.AddCheck(func(context.Context) error {
		if failing.Load() {
			return errors.New("store unreachable")
		}
		return nil
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop(time.Second)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	wait := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		deadline := time.Now().Add(5 * server.CheckEvery)
		for {
			resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
			if err == nil && resp.GetStatus() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("health never became %s (last %v, %v)", want, resp, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait(healthpb.HealthCheckResponse_SERVING)
	failing.Store(true)
	wait(healthpb.HealthCheckResponse_NOT_SERVING)
	failing.Store(false)
	wait(healthpb.HealthCheckResponse_SERVING)
}
