package server

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/backlog/controlplane/services/kit/auth"
)

// TestInterceptorsAreTheServers: the chains Interceptors returns do what a
// call through the gRPC server gets: a request id, the service-credential
// check on internal methods, the error table.
func TestInterceptorsAreTheServers(t *testing.T) {
	const token = "blg_svc_test-service-token-0123456789"
	srv := New(Config{Name: "t", ServiceToken: token, Internal: func(m string) bool { return m == "/t.Internal/Do" }})
	unary, stream := srv.Interceptors()
	if unary == nil || stream == nil {
		t.Fatal("no interceptor chains")
	}
	requestID := func(ctx context.Context, _ any) (any, error) { return RequestID(ctx), nil }
	call := func(method string, md metadata.MD, h grpc.UnaryHandler) (any, error) {
		ctx := metadata.NewIncomingContext(context.Background(), md)
		return unary(ctx, &emptypb.Empty{}, &grpc.UnaryServerInfo{FullMethod: method}, h)
	}
	if got, err := call("/t.Public/Do", metadata.Pairs(RequestIDKey, "rid-1"), requestID); err != nil || got != "rid-1" {
		t.Fatalf("request id: %v %v", got, err)
	}
	if _, err := call("/t.Internal/Do", metadata.Pairs(RequestIDKey, "rid-2"), requestID); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("internal method without the service credential: %v", err)
	}
	if _, err := call("/t.Internal/Do", metadata.Pairs(auth.ServiceTokenKey, token), requestID); err != nil {
		t.Fatalf("internal method with the service credential: %v", err)
	}
	panics := func(context.Context, any) (any, error) { panic("boom") }
	if _, err := call("/t.Public/Do", nil, panics); status.Code(err) != codes.Internal {
		t.Fatalf("a panicking handler: %v", err)
	}
}
