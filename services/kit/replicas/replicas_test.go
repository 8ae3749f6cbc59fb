package replicas_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/backlog/controlplane/services/kit/replicas"
)

type countingHealth struct {
	healthpb.UnimplementedHealthServer
	calls atomic.Int64
}

func (h *countingHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.calls.Add(1)
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func serve(t *testing.T) (string, *countingHealth, *grpc.Server) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &countingHealth{}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, h)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String(), h, s
}

// A comma list balances over every replica and fails over when one stops.
func TestBalancesAndFailsOver(t *testing.T) {
	a, ha, sa := serve(t)
	b, hb, _ := serve(t)
	target, opts := replicas.Target(a + ", " + b)
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 40 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if ha.calls.Load() == 0 || hb.calls.Load() == 0 {
		t.Fatalf("calls were not spread: %d and %d", ha.calls.Load(), hb.calls.Load())
	}
	sa.Stop()
	// A call already on its way to the stopped replica fails (Unavailable,
	// retryable); once the connection noticed, every call goes to the other.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no call succeeded after a replica stopped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := hb.calls.Load()
	for i := range 20 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("call %d after the stop was noticed: %v", i, err)
		}
	}
	if hb.calls.Load()-before != 20 {
		t.Fatalf("the live replica answered %d of 20 calls", hb.calls.Load()-before)
	}
}

func TestOneAddressIsUnchanged(t *testing.T) {
	if target, opts := replicas.Target("127.0.0.1:9101"); target != "127.0.0.1:9101" || opts != nil {
		t.Fatalf("Target of one address = %q, %d options", target, len(opts))
	}
	if got := replicas.Split(" a:1, ,b:2 "); len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Fatalf("Split = %q", got)
	}
}
