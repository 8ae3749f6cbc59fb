package credential_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/ids"
)

// TestIssueWithChosenID: a caller that writes its own record of a
// credential while it is issued chooses the credential's id and creation
// time; GetSubject then tells it whether the credential became live.
func TestIssueWithChosenID(t *testing.T) {
	env := credentialtest.Start(t)
	ctx := context.Background()
	ws, _ := env.NewWorkspace(t, "acme")
	secret := credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET
	subject := func() *credentialv1.Subject {
		return &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: ids.New("auto"), WorkspaceId: ws, Name: "ci"}
	}
	now := timestamppb.New(time.Now().Truncate(time.Millisecond))
	for _, tc := range []struct {
		name string
		req  *credentialv1.IssueCredentialRequest
	}{
		{"not a credential id", &credentialv1.IssueCredentialRequest{Subject: subject(), Kind: secret, CredentialId: "auto_x"}},
		{"a time without an id", &credentialv1.IssueCredentialRequest{Subject: subject(), Kind: secret, CreatedAt: now}},
		{"a time far from now", &credentialv1.IssueCredentialRequest{Subject: subject(), Kind: secret, CredentialId: ids.New("cred"), CreatedAt: timestamppb.New(time.Now().Add(-time.Hour))}},
		{"an id for two kinds", &credentialv1.IssueCredentialRequest{Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AGENT, Id: ids.New("agent"), WorkspaceId: ws, Role: "member"},
			Kinds: []credentialv1.CredentialKind{credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY, credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET}, CredentialId: ids.New("cred")}},
	} {
		if _, err := env.Internal.IssueCredential(ctx, tc.req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", tc.name, err)
		}
	}

	id := ids.New("cred")
	sub := subject()
	issued, err := env.Internal.IssueCredential(ctx, &credentialv1.IssueCredentialRequest{Subject: sub, Kind: secret, CredentialId: id, CreatedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	if issued.GetInfo().GetId() != id || !issued.GetInfo().GetCreatedAt().AsTime().Equal(now.AsTime()) {
		t.Fatalf("issued %v, want id %s created %v", issued.GetInfo(), id, now.AsTime())
	}
	if _, err := env.Internal.IssueCredential(ctx, &credentialv1.IssueCredentialRequest{Subject: subject(), Kind: secret, CredentialId: id}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("a taken id: got %v, want AlreadyExists", err)
	}
	got, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: sub.Id})
	if err != nil || len(got.GetSubject().GetLiveCredentials()) != 1 || got.GetSubject().GetLiveCredentials()[0].GetId() != id {
		t.Fatalf("GetSubject: %v %v", got, err)
	}

	// A rotation to a chosen id: the new one is live, the old one not.
	next := ids.New("cred")
	if _, err := env.Internal.RotateCredential(ctx, &credentialv1.RotateCredentialRequest{WorkspaceId: ws, SubjectId: sub.Id, Kind: secret, CredentialId: id}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("rotating to a taken id: got %v, want AlreadyExists", err)
	}
	rotated, err := env.Internal.RotateCredential(ctx, &credentialv1.RotateCredentialRequest{WorkspaceId: ws, SubjectId: sub.Id, Kind: secret, CredentialId: next})
	if err != nil || rotated.GetInfo().GetId() != next {
		t.Fatalf("rotate: %v %v", rotated.GetInfo(), err)
	}
	got, err = env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: sub.Id})
	if err != nil || len(got.GetSubject().GetLiveCredentials()) != 1 || got.GetSubject().GetLiveCredentials()[0].GetId() != next {
		t.Fatalf("GetSubject after the rotation: %v %v", got, err)
	}

	// Asked by id, a credential issued to the subject is reported, live or
	// revoked since; one never issued (or another subject's) is not.
	for _, c := range []struct {
		id   string
		want bool
	}{{id, true}, {next, true}, {ids.New("cred"), false}} {
		got, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: sub.Id, CredentialId: c.id})
		if err != nil || (got.GetCredential().GetId() == c.id) != c.want {
			t.Fatalf("GetSubject asking for %s: %v %v, want issued=%v", c.id, got.GetCredential(), err, c.want)
		}
	}
	otherSub := subject()
	if _, err := env.Internal.IssueCredential(ctx, &credentialv1.IssueCredentialRequest{Subject: otherSub, Kind: secret}); err != nil {
		t.Fatal(err)
	}
	if got, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: otherSub.Id, CredentialId: next}); err != nil || got.GetCredential() != nil {
		t.Fatalf("another subject's credential reported: %v %v", got.GetCredential(), err)
	}

	// Unknown, other workspace's, and revoked subjects are not found.
	if _, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: ids.New("auto")}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown subject: %v", err)
	}
	other, _ := env.NewWorkspace(t, "other")
	if _, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: other, SubjectId: sub.Id}); status.Code(err) != codes.NotFound {
		t.Fatalf("another workspace's subject: %v", err)
	}
	if _, err := env.Internal.RevokeSubject(ctx, &credentialv1.RevokeSubjectRequest{WorkspaceId: ws, SubjectId: sub.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: sub.Id}); status.Code(err) != codes.NotFound {
		t.Fatalf("revoked subject: %v", err)
	}
	if _, err := env.Internal.GetSubject(ctx, &credentialv1.GetSubjectRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty request: %v", err)
	}
}
