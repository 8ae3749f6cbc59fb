package server

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

type rawMsg struct{ b []byte }

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.(*rawMsg).b, nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	v.(*rawMsg).b = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func str(num protowire.Number, s string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
}

type unimplemented struct {
	credentialv1.UnimplementedCredentialServiceServer
}

// TestUndecodableRequestsAreInvalidArgument sends raw request bytes over
// real gRPC: a string that is not UTF-8 (top-level, nested, in a stream)
// and bytes that are not a protobuf at all are InvalidArgument naming the
// field — gRPC's own answer would be Internal — and nothing is left behind.
func TestUndecodableRequestsAreInvalidArgument(t *testing.T) {
	srv := New(Config{Name: "test"})
	credentialv1.RegisterCredentialServiceServer(srv.GRPC, unimplemented{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Stop(time.Second) })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx := context.Background()

	nested := protowire.AppendBytes(protowire.AppendTag(str(1, "ws_1"), 3, protowire.BytesType), str(3, "name \xc0\xaf"))
	cases := []struct {
		name, method string
		body         []byte
		want         string
	}{
		{"top-level string", "/backlog.credential.v1.CredentialService/GetWorkspace", str(1, "ws_\xff"), "workspaceId: is not valid UTF-8"},
		{"nested string", "/backlog.credential.v1.CredentialService/UpdateMember", nested, "member.name: is not valid UTF-8"},
		{"health, registered by the kit", "/grpc.health.v1.Health/Check", str(1, "\xed\xa0\x80"), "service: is not valid UTF-8"},
		{"not a protobuf", "/backlog.credential.v1.CredentialService/GetWorkspace", []byte{0x0a, 0x7f, 'x'}, "request: is not a valid protobuf encoding of backlog.credential.v1.GetWorkspaceRequest"},
	}
	for _, c := range cases {
		err := conn.Invoke(ctx, c.method, &rawMsg{c.body}, &rawMsg{}, grpc.ForceCodec(rawCodec{}))
		if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), c.want) {
			t.Errorf("%s: %v %q, want InvalidArgument %q", c.name, st.Code(), st.Message(), c.want)
		}
	}

	// A server-streaming call reads its request through the kit's stream.
	stream, err := conn.NewStream(ctx, &healthpb.Health_ServiceDesc.Streams[0], "/grpc.health.v1.Health/Watch", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&rawMsg{str(1, "\xff")}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	stream.CloseSend()
	if err := stream.RecvMsg(&rawMsg{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "service: is not valid UTF-8") {
		t.Errorf("Watch: %v, want InvalidArgument about service", err)
	}

	// The same connection still serves valid calls, and the codec forgot
	// every message it refused.
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a valid call after the invalid ones: %v", err)
	}
	srv.cdc.mu.Lock()
	left := len(srv.cdc.bad)
	srv.cdc.mu.Unlock()
	if left != 0 || srv.cdc.n.Load() != 0 {
		t.Fatalf("the codec still holds %d refused messages", left)
	}
}
