package credential_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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

	// A sibling service's cache, with its revocation watch.
	remote := auth.NewRemote(env.Internal, zap.NewNop())
	wctx, cancel := context.WithCancel(bg)
	defer cancel()
	go remote.Watch(wctx)
	time.Sleep(100 * time.Millisecond)
	if _, err := remote.Authenticate(bg, resp.AccessToken); err != nil {
		t.Fatalf("remote authenticate: %v", err)
	}

	// Suspension: exchange is 403 and the token dies everywhere at once.
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: autoID, WorkspaceId: ws, Name: "ci", Scopes: []string{"automations:read", "issues:write"}, Suspended: true}
	if _, err := env.Internal.UpdateSubject(bg, &credentialv1.UpdateSubjectRequest{Subject: subj}); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Authenticate(bg, resp.AccessToken); code(err) != codes.PermissionDenied {
		t.Fatalf("cached token after suspension: %v", err)
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

func TestInternalAPIRequiresServiceCredential(t *testing.T) {
	env := credentialtest.Start(t)
	ws, owner := env.NewWorkspace(t, "Acme")
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stranger := credentialv1.NewCredentialInternalServiceClient(conn)
	req := &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: "auto_x", WorkspaceId: ws},
		Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
	}
	bg := context.Background()
	for name, ctx := range map[string]context.Context{
		"no service credential":    bg,
		"a member's token":         as(bg, owner),
		"wrong service credential": metadata.AppendToOutgoingContext(bg, auth.ServiceTokenKey, credfmt.New(credfmt.Service)),
	} {
		if _, err := stranger.IssueCredential(ctx, req); code(err) != codes.Unauthenticated {
			t.Errorf("%s: IssueCredential = %v, want Unauthenticated", name, err)
		}
		if _, err := stranger.Authenticate(ctx, &credentialv1.AuthenticateRequest{Credential: owner}); code(err) != codes.Unauthenticated {
			t.Errorf("%s: Authenticate = %v, want Unauthenticated", name, err)
		}
	}
	// The public API on the same port is unaffected.
	if _, err := credentialv1.NewCredentialServiceClient(conn).WhoAmI(as(bg, owner), &credentialv1.WhoAmIRequest{}); err != nil {
		t.Fatalf("public API: %v", err)
	}
	if _, err := env.Internal.IssueCredential(bg, req); err != nil {
		t.Fatalf("with the service credential: %v", err)
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
