package gateway

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/idem"
)

// idemCredential answers CreateMember as a service does when an
// Idempotency-Key is reused with another body, and any other
// FailedPrecondition when no key was sent.
type idemCredential struct {
	credentialv1.UnimplementedCredentialServiceServer
}

func (idemCredential) CreateMember(ctx context.Context, _ *credentialv1.CreateMemberRequest) (*credentialv1.CreateMemberResponse, error) {
	if len(metadata.ValueFromIncomingContext(ctx, idem.MetadataKey)) == 0 {
		st, _ := status.New(codes.FailedPrecondition, "a workspace must keep at least one owner").WithDetails(
			&errdetails.ErrorInfo{Reason: "LAST_OWNER", Domain: "credential.backlog"})
		return nil, st.Err()
	}
	st, _ := status.New(codes.FailedPrecondition, idem.ErrReused.Error()).WithDetails(
		&errdetails.ErrorInfo{Reason: idem.Reason, Domain: "credential.backlog"})
	return nil, st.Err()
}

// A reused Idempotency-Key is 422 with the contract's JSON error; every
// other FailedPrecondition stays 400.
func TestIdempotencyKeyReusedIs422(t *testing.T) {
	cred := startBackend(t, func(s *grpc.Server) { credentialv1.RegisterCredentialServiceServer(s, idemCredential{}) })
	other := startBackend(t, nil)
	g, err := New(Config{CredentialAddr: cred.addr, AutomationAddr: other.addr, AgentAddr: other.addr, VaultAddr: other.addr, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	hs := httptest.NewServer(g.Handler())
	t.Cleanup(hs.Close)
	e := &env{url: hs.URL, httpClient: hs.Client()}

	body := func() *strings.Reader { return strings.NewReader(`{"name":"Bob"}`) }
	r := e.do(t, "POST", "/v1/workspaces/ws_1/members", body(), "Authorization", "Bearer blg_pat_x", "Idempotency-Key", "k-1")
	m := checkError(t, r, 422, codes.FailedPrecondition)
	if m["message"] != idem.ErrReused.Error() {
		t.Errorf("message %q, want the service's", m["message"])
	}
	d, _ := m["details"].([]any)
	if len(d) != 1 || d[0].(map[string]any)["reason"] != idem.Reason {
		t.Errorf("details %v, want the ErrorInfo with reason %s", d, idem.Reason)
	}

	r = e.do(t, "POST", "/v1/workspaces/ws_1/members", body(), "Authorization", "Bearer blg_pat_x")
	checkError(t, r, 400, codes.FailedPrecondition)
}
