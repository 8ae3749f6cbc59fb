package automation_test

import (
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/kit/ids"
)

// TestSweepRevokesUnrecordedSecrets: a create that died after the credential
// service issued the secret but before the record was written leaves a live
// subject nobody can see. On the next start the service revokes it, and
// leaves recorded automations alone.
func TestSweepRevokesUnrecordedSecrets(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "Acme")
	created, err := h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	// The half of a create that reached the credential service only.
	orphan, err := h.env.Internal.IssueCredential(bg(), &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: ids.New("auto"), WorkspaceId: ws, Name: "lost"},
		Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.seen.add(orphan.Credential)
	// A rotation that reached the credential service only: the record still
	// names the old secret.
	rotated, err := h.env.Internal.RotateCredential(bg(), &credentialv1.RotateCredentialRequest{
		WorkspaceId: ws, SubjectId: created.Automation.Id, Kind: credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET, Label: "lost-rotation",
	})
	if err != nil {
		t.Fatal(err)
	}
	h.seen.add(rotated.Credential)
	h.stop()
	time.Sleep(10 * time.Millisecond) // created strictly before the next start

	svc, err := automation.New(automation.Config{DataDir: h.dataDir, Logger: zaptest.NewLogger(t), Credential: h.env.Internal, SweepOrphans: true})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: orphan.Credential})
		if status.Code(err) == codes.Unauthenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unrecorded secret still authenticates: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := h.env.Public.Exchange(as(bg(), rotated.Credential), &credentialv1.ExchangeRequest{}); err != nil {
		t.Fatalf("the sweep touched a recorded automation: %v", err)
	}
	// Its record now names the live secret. Subjects are swept in id order,
	// and ids sort by creation: the orphan (made last) being revoked means
	// the automation before it was reconciled. Read it through a fresh store.
	svc.Close()
	svc2, err := automation.New(automation.Config{DataDir: h.dataDir, Logger: zaptest.NewLogger(t), Credential: h.env.Internal})
	if err != nil {
		t.Fatal(err)
	}
	defer svc2.Close()
	rec, err := automation.LoadForTest(svc2, ws, created.Automation.Id)
	if err != nil || rec.GetCredential().GetId() != rotated.Info.Id || rec.GetCredential().GetLabel() != "lost-rotation" {
		t.Fatalf("the record's secret metadata was not repaired: %v %v", rec.GetCredential(), err)
	}
}
