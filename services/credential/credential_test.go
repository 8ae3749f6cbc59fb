package credential_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/mount/mounttest"
)

var as = credentialtest.As

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) Sync() error                 { return nil }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// debugLogger logs everything at debug level into a buffer the test can search.
func debugLogger() (*zap.Logger, *syncBuf) {
	buf := &syncBuf{}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), buf, zapcore.DebugLevel)
	return zap.New(core), buf
}

func code(err error) codes.Code { return status.Code(err) }

func newAutomation(t *testing.T, env *credentialtest.Env, ws string, scopes ...string) (id, secret string) {
	t.Helper()
	id = "auto_" + strings.Repeat("0", 20) + time.Now().Format("150405")
	resp, err := env.Internal.IssueCredential(context.Background(), &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: id, WorkspaceId: ws, Name: "ci", Scopes: scopes, TeamIds: []string{"team-a"}},
		Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET, Label: "first",
	})
	if err != nil {
		t.Fatalf("IssueCredential: %v", err)
	}
	return id, resp.Credential
}

func TestOperatorTokenFile(t *testing.T) {
	env := credentialtest.Start(t)
	fi, err := os.Stat(credential.OperatorTokenPath(env.DataDir))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("operator-token: %v mode %v", err, fi.Mode())
	}
	if credfmt.KindOf(env.OperatorToken) != credfmt.Operator {
		t.Fatalf("operator token has the wrong kind")
	}
	ctx := as(context.Background(), env.OperatorToken)
	if _, err := env.Public.GetWorkspace(ctx, &credentialv1.GetWorkspaceRequest{WorkspaceId: "ws_x"}); code(err) != codes.PermissionDenied {
		t.Fatalf("operator reading a workspace: %v, want PermissionDenied", err)
	}
}

func TestWorkspacesAndMembers(t *testing.T) {
	env := credentialtest.Start(t)
	ws, owner := env.NewWorkspace(t, "Acme")
	ws2, owner2 := env.NewWorkspace(t, "Other")
	adminID, admin := env.NewMember(t, ws, owner, "admin")
	memberID, member := env.NewMember(t, ws, owner, "member")
	bg := context.Background()

	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"owner creates workspace", func() error {
			_, err := env.Public.CreateWorkspace(as(bg, owner), &credentialv1.CreateWorkspaceRequest{Name: "x"})
			return err
		}, codes.PermissionDenied},
		{"empty workspace name", func() error {
			_, err := env.Public.CreateWorkspace(as(bg, env.OperatorToken), &credentialv1.CreateWorkspaceRequest{Name: "  "})
			return err
		}, codes.InvalidArgument},
		{"anonymous", func() error {
			_, err := env.Public.GetWorkspace(bg, &credentialv1.GetWorkspaceRequest{WorkspaceId: ws})
			return err
		}, codes.Unauthenticated},
		{"bad checksum", func() error {
			_, err := env.Public.GetWorkspace(as(bg, mistype(owner)), &credentialv1.GetWorkspaceRequest{WorkspaceId: ws})
			return err
		}, codes.Unauthenticated},
		{"member reads workspace", func() error {
			_, err := env.Public.GetWorkspace(as(bg, member), &credentialv1.GetWorkspaceRequest{WorkspaceId: ws})
			return err
		}, codes.OK},
		{"other workspace is 404", func() error {
			_, err := env.Public.GetWorkspace(as(bg, owner2), &credentialv1.GetWorkspaceRequest{WorkspaceId: ws})
			return err
		}, codes.NotFound},
		{"member cannot list members", func() error {
			_, err := env.Public.ListMembers(as(bg, member), &credentialv1.ListMembersRequest{WorkspaceId: ws})
			return err
		}, codes.PermissionDenied},
		{"admin lists members", func() error {
			_, err := env.Public.ListMembers(as(bg, admin), &credentialv1.ListMembersRequest{WorkspaceId: ws})
			return err
		}, codes.OK},
		{"unknown role", func() error {
			_, err := env.Public.CreateMember(as(bg, owner), &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "x", Role: "king"})
			return err
		}, codes.InvalidArgument},
		{"empty member name", func() error {
			_, err := env.Public.CreateMember(as(bg, owner), &credentialv1.CreateMemberRequest{WorkspaceId: ws, Role: "member"})
			return err
		}, codes.InvalidArgument},
		{"bad email", func() error {
			_, err := env.Public.CreateMember(as(bg, owner), &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "x", Email: "not an email"})
			return err
		}, codes.InvalidArgument},
		{"admin cannot make an owner", func() error {
			_, err := env.Public.CreateMember(as(bg, admin), &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "x", Role: "owner"})
			return err
		}, codes.PermissionDenied},
		{"member cannot add members", func() error {
			_, err := env.Public.CreateMember(as(bg, member), &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "x"})
			return err
		}, codes.PermissionDenied},
		{"unknown mask path", func() error {
			_, err := env.Public.UpdateMember(as(bg, owner), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: memberID,
				Member: &credentialv1.Member{}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"workspace_id"}}})
			return err
		}, codes.InvalidArgument},
		{"empty mask", func() error {
			_, err := env.Public.UpdateMember(as(bg, owner), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: memberID, Member: &credentialv1.Member{}})
			return err
		}, codes.InvalidArgument},
		{"update member of other workspace", func() error {
			_, err := env.Public.UpdateMember(as(bg, owner2), &credentialv1.UpdateMemberRequest{WorkspaceId: ws2, MemberId: memberID,
				Member: &credentialv1.Member{Name: "y"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}})
			return err
		}, codes.NotFound},
		{"admin cannot demote owner", func() error {
			resp, _ := env.Public.WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{})
			_, err := env.Public.UpdateMember(as(bg, admin), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: resp.SubjectId,
				Member: &credentialv1.Member{Role: "member"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"role"}}})
			return err
		}, codes.PermissionDenied},
		{"admin cannot rename an owner", func() error {
			resp, _ := env.Public.WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{})
			_, err := env.Public.UpdateMember(as(bg, admin), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: resp.SubjectId,
				Member: &credentialv1.Member{Name: "Mallory"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name"}}})
			return err
		}, codes.PermissionDenied},
		{"admin cannot change an owner's email", func() error {
			resp, _ := env.Public.WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{})
			_, err := env.Public.UpdateMember(as(bg, admin), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: resp.SubjectId,
				Member: &credentialv1.Member{Email: "mallory@example.com"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"email"}}})
			return err
		}, codes.PermissionDenied},
		{"owner renames itself", func() error {
			resp, _ := env.Public.WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{})
			_, err := env.Public.UpdateMember(as(bg, owner), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: resp.SubjectId,
				Member: &credentialv1.Member{Name: "Olga", Email: "olga@example.com"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"name", "email"}}})
			return err
		}, codes.OK},
		{"last owner cannot leave", func() error {
			resp, _ := env.Public.WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{})
			_, err := env.Public.DeleteMember(as(bg, owner), &credentialv1.DeleteMemberRequest{WorkspaceId: ws, MemberId: resp.SubjectId})
			return err
		}, codes.FailedPrecondition},
		{"promote member to admin", func() error {
			_, err := env.Public.UpdateMember(as(bg, owner), &credentialv1.UpdateMemberRequest{WorkspaceId: ws, MemberId: memberID,
				Member: &credentialv1.Member{Role: "admin"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"role"}}})
			return err
		}, codes.OK},
		{"promoted member now lists members", func() error {
			_, err := env.Public.ListMembers(as(bg, member), &credentialv1.ListMembersRequest{WorkspaceId: ws})
			return err
		}, codes.OK},
		{"delete admin", func() error {
			_, err := env.Public.DeleteMember(as(bg, owner), &credentialv1.DeleteMemberRequest{WorkspaceId: ws, MemberId: adminID})
			return err
		}, codes.OK},
		{"deleted member's token is dead", func() error {
			_, err := env.Public.WhoAmI(as(bg, admin), &credentialv1.WhoAmIRequest{})
			return err
		}, codes.Unauthenticated},
	}
	for _, c := range cases {
		if err := c.call(); code(err) != c.want {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestExchangeAndRevocation(t *testing.T) {
	lg, logs := debugLogger()
	env := credentialtest.StartWith(t, credentialtest.Options{Logger: lg})
	ws, owner := env.NewWorkspace(t, "Acme")
	bg := context.Background()
	autoID, secret := newAutomation(t, env, ws, "automations:read", "issues:write")

	// A raw automation secret is refused everywhere but exchange.
	_, err := env.Public.WhoAmI(as(bg, secret), &credentialv1.WhoAmIRequest{})
	if code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "exchange") {
		t.Fatalf("whoami with an automation secret: %v", err)
	}
	// Exchange rejects other kinds and bad input.
	for name, c := range map[string]struct {
		tok  string
		req  *credentialv1.ExchangeRequest
		want codes.Code
	}{
		"personal token":  {owner, &credentialv1.ExchangeRequest{}, codes.Unauthenticated},
		"no token":        {"", &credentialv1.ExchangeRequest{}, codes.Unauthenticated},
		"negative ttl":    {secret, &credentialv1.ExchangeRequest{TtlSeconds: -1}, codes.InvalidArgument},
		"ttl above max":   {secret, &credentialv1.ExchangeRequest{TtlSeconds: 90000}, codes.InvalidArgument},
		"malformed scope": {secret, &credentialv1.ExchangeRequest{Scopes: []string{"Not A Scope"}}, codes.InvalidArgument},
		"scope not held":  {secret, &credentialv1.ExchangeRequest{Scopes: []string{"automations:write"}}, codes.InvalidArgument},
		"unknown secret":  {credfmt.New(credfmt.Automation), &credentialv1.ExchangeRequest{}, codes.Unauthenticated},
	} {
		ctx := bg
		if c.tok != "" {
			ctx = as(bg, c.tok)
		}
		if _, err := env.Public.Exchange(ctx, c.req); code(err) != c.want {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	resp, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.TokenType != "Bearer" || resp.ExpiresIn != 3600 || resp.AutomationId != autoID || resp.WorkspaceId != ws || len(resp.Scopes) != 2 {
		t.Fatalf("exchange response: %v", resp)
	}
	narrow, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{TtlSeconds: 60, Scopes: []string{"issues:write"}})
	if err != nil || narrow.ExpiresIn != 60 || len(narrow.Scopes) != 1 {
		t.Fatalf("narrow exchange: %v %v", narrow, err)
	}
	who, err := env.Public.WhoAmI(as(bg, narrow.AccessToken), &credentialv1.WhoAmIRequest{})
	if err != nil || who.Kind != "access_token" || len(who.Scopes) != 1 || who.Scopes[0] != "issues:write" {
		t.Fatalf("whoami with a narrowed token: %v %v", who, err)
	}
	// A forged token (valid checksum, wrong MAC) is refused.
	forged := credfmt.Encode(credfmt.AccessToken, bytes.Repeat([]byte{7}, 80))
	if _, err := env.Public.WhoAmI(as(bg, forged), &credentialv1.WhoAmIRequest{}); code(err) != codes.Unauthenticated {
		t.Fatalf("forged token: %v", err)
	}

	// A sibling service's cache, with its revocation watch, on a connection
	// of its own that counts the Authenticate calls reaching the server and
	// records the watch stream's traffic.
	spy := &rpcSpy{}
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: env.ServiceToken}),
		grpc.WithUnaryInterceptor(spy.unary), grpc.WithStreamInterceptor(spy.stream))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	remote := auth.NewRemote(credentialv1.NewCredentialInternalServiceClient(conn), zap.NewNop())
	wctx, cancel := context.WithCancel(bg)
	defer cancel()
	go remote.Watch(wctx)
	// The cache answers only while the watch is connected: a repeated
	// authenticate that does not reach the server proves both.
	waitForCacheHit(t, remote, spy, resp.AccessToken)
	if n := spy.watches(); n != 1 {
		t.Fatalf("%d watch streams opened, want 1", n)
	}

	// Suspension: exchange is 403 and the token dies everywhere at once. The
	// revocation reaches the cache through the same watch, which drops the
	// entry before acknowledging, and UpdateSubject waits for that ack.
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: autoID, WorkspaceId: ws, Name: "ci", Scopes: []string{"automations:read", "issues:write"}, Suspended: true}
	if _, err := env.Internal.UpdateSubject(bg, &credentialv1.UpdateSubjectRequest{Subject: subj}); err != nil {
		t.Fatal(err)
	}
	if !spy.ackedInvalidation(autoID) {
		t.Fatalf("UpdateSubject returned before the watch acknowledged dropping %s", autoID)
	}
	if n := spy.watches(); n != 1 {
		t.Fatalf("the watch reconnected (%d streams): the cache was dropped by the disconnect, not by the revocation", n)
	}
	before := spy.authCalls()
	if _, err := remote.Authenticate(bg, resp.AccessToken); code(err) != codes.PermissionDenied {
		t.Fatalf("cached token after suspension: %v", err)
	}
	if spy.authCalls() != before+1 {
		t.Fatalf("the request after the suspension was answered from the cache")
	}
	if _, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{}); code(err) != codes.PermissionDenied {
		t.Fatalf("exchange while suspended: %v", err)
	}
	subj.Suspended = false
	env.Internal.UpdateSubject(bg, &credentialv1.UpdateSubjectRequest{Subject: subj})
	if _, err := remote.Authenticate(bg, resp.AccessToken); err != nil {
		t.Fatalf("token after resume: %v", err)
	}

	// Rotation: old secret and every token minted from it die at once.
	rot, err := env.Internal.RotateCredential(bg, &credentialv1.RotateCredentialRequest{WorkspaceId: ws, SubjectId: autoID, Kind: credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET, Label: "second"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Authenticate(bg, resp.AccessToken); code(err) != codes.Unauthenticated {
		t.Fatalf("token after rotation: %v", err)
	}
	if _, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{}); code(err) != codes.Unauthenticated {
		t.Fatalf("old secret after rotation: %v", err)
	}
	if _, err := env.Public.Exchange(as(bg, rot.Credential), &credentialv1.ExchangeRequest{}); err != nil {
		t.Fatalf("new secret: %v", err)
	}

	// Nothing secret in the logs or the store file.
	env.Service.Close()
	dbBytes, _ := os.ReadFile(filepath.Join(env.DataDir, "credential.db"))
	for _, s := range []string{secret, rot.Credential, resp.AccessToken, narrow.AccessToken, owner, env.OperatorToken} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("a credential appears in the logs")
		}
		if bytes.Contains(dbBytes, []byte(s)) {
			t.Errorf("a raw credential appears in credential.db")
		}
	}
}

func TestConcurrentRotationsLeaveOneLiveSecret(t *testing.T) {
	env := credentialtest.Start(t)
	ws, _ := env.NewWorkspace(t, "Acme")
	autoID, _ := newAutomation(t, env, ws, "automations:read")
	var wg sync.WaitGroup
	secrets := make([]string, 20)
	for i := range secrets {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := env.Internal.RotateCredential(context.Background(), &credentialv1.RotateCredentialRequest{WorkspaceId: ws, SubjectId: autoID, Kind: credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET})
			if err != nil {
				t.Error(err)
				return
			}
			secrets[i] = r.Credential
		}(i)
	}
	wg.Wait()
	live := 0
	for _, s := range secrets {
		if _, err := env.Public.Exchange(as(context.Background(), s), &credentialv1.ExchangeRequest{}); err == nil {
			live++
		}
	}
	if live != 1 {
		t.Fatalf("%d secrets live after concurrent rotations, want 1", live)
	}
}

// TestInternalAPIRequiresServiceCredential: the internal API and
// AdminService, mounted as backlogd mounts them, answer only a caller
// presenting the service credential.
func TestInternalAPIRequiresServiceCredential(t *testing.T) {
	env := credentialtest.Start(t)
	ws, owner := env.NewWorkspace(t, "Acme")
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bg := context.Background()
	calls := map[string]func(ctx context.Context, cc *grpc.ClientConn) error{
		"IssueCredential": func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := credentialv1.NewCredentialInternalServiceClient(cc).IssueCredential(ctx, &credentialv1.IssueCredentialRequest{
				Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: "auto_x", WorkspaceId: ws},
				Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
			})
			return err
		},
		"Authenticate": func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := credentialv1.NewCredentialInternalServiceClient(cc).Authenticate(ctx, &credentialv1.AuthenticateRequest{Credential: owner})
			return err
		},
		"AdminService.Snapshot": func(ctx context.Context, cc *grpc.ClientConn) error {
			name, b, err := mounttest.Snapshot(ctx, cc)
			if err == nil && (name != "credential.db" || len(b) == 0) {
				t.Errorf("snapshot of %q, %d bytes", name, len(b))
			}
			return err
		},
	}
	for _, tc := range []struct {
		name string
		conn *grpc.ClientConn
		ctx  context.Context
		want codes.Code
	}{
		{"no service credential", conn, bg, codes.Unauthenticated},
		{"a member's token", conn, as(bg, owner), codes.Unauthenticated},
		{"wrong service credential", conn, metadata.AppendToOutgoingContext(bg, auth.ServiceTokenKey, credfmt.New(credfmt.Service)), codes.Unauthenticated},
		{"the service credential", env.Conn, bg, codes.OK},
	} {
		for method, call := range calls {
			if err := call(tc.ctx, tc.conn); code(err) != tc.want {
				t.Errorf("%s: %s = %v, want %v", tc.name, method, err, tc.want)
			}
		}
	}
	// The public API on the same port is unaffected.
	if _, err := credentialv1.NewCredentialServiceClient(conn).WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{}); err != nil {
		t.Fatalf("public API: %v", err)
	}
}

// mistype changes the last character of a credential (always to a different one).
func mistype(s string) string {
	last := s[len(s)-1]
	if last == 'x' {
		return s[:len(s)-1] + "y"
	}
	return s[:len(s)-1] + "x"
}

// rpcSpy watches a sibling service's connection to the credential service:
// the Authenticate calls that reach the server, and the revocation watch.
type rpcSpy struct {
	mu      sync.Mutex
	auths   int
	streams int
	events  map[uint64][]string // sequence → subject ids received
	acks    map[uint64]bool     // sequences acknowledged
}

func (s *rpcSpy) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == credentialv1.CredentialInternalService_Authenticate_FullMethodName {
		s.mu.Lock()
		s.auths++
		s.mu.Unlock()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (s *rpcSpy) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || method != credentialv1.CredentialInternalService_WatchRevocations_FullMethodName {
		return cs, err
	}
	s.mu.Lock()
	s.streams++
	s.mu.Unlock()
	return &spyStream{ClientStream: cs, spy: s}, nil
}

func (s *rpcSpy) authCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auths
}

func (s *rpcSpy) watches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// ackedInvalidation reports whether the watch received an invalidation of
// subject and acknowledged it.
func (s *rpcSpy) ackedInvalidation(subject string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for seq, subjects := range s.events {
		if s.acks[seq] && slices.Contains(subjects, subject) {
			return true
		}
	}
	return false
}

type spyStream struct {
	grpc.ClientStream
	spy *rpcSpy
}

func (c *spyStream) RecvMsg(m any) error {
	err := c.ClientStream.RecvMsg(m)
	if ev, ok := m.(*credentialv1.WatchRevocationsResponse); ok && err == nil {
		c.spy.mu.Lock()
		if c.spy.events == nil {
			c.spy.events = map[uint64][]string{}
		}
		c.spy.events[ev.GetSequence()] = slices.Clone(ev.GetSubjectIds())
		c.spy.mu.Unlock()
	}
	return err
}

// SendMsg records an ack before sending it: the Remote sends it after it
// has applied the invalidation, and the server waits for it.
func (c *spyStream) SendMsg(m any) error {
	if req, ok := m.(*credentialv1.WatchRevocationsRequest); ok {
		c.spy.mu.Lock()
		if c.spy.acks == nil {
			c.spy.acks = map[uint64]bool{}
		}
		c.spy.acks[req.GetAckSequence()] = true
		c.spy.mu.Unlock()
	}
	return c.ClientStream.SendMsg(m)
}

// waitForCacheHit authenticates raw through remote until a call is answered
// without reaching the server.
func waitForCacheHit(t *testing.T, remote *auth.Remote, spy *rpcSpy, raw string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := spy.authCalls()
		if _, err := remote.Authenticate(context.Background(), raw); err != nil {
			t.Fatalf("remote authenticate: %v", err)
		}
		if spy.authCalls() == before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no authenticate was answered from the cache in 10s: the revocation watch never connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
