package automation_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
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
	orphan := issueOrphan(t, h, ws, "lost")
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

	// The next start's clock is past the orphan's creation: the sweep
	// judges subjects created strictly before the start.
	later := time.Now().Add(time.Second)
	svc, err := automation.New(automation.Config{DataDir: h.dataDir, Logger: zaptest.NewLogger(t), Credential: h.env.Internal, SweepOrphans: true,
		Now: func() time.Time { return later }})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: orphan})
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

// issueOrphan is the half of a create that reached the credential service
// only: a live automation secret with no record. It returns the secret.
func issueOrphan(t *testing.T, h *harness, ws, name string) string {
	t.Helper()
	orphan, err := h.env.Internal.IssueCredential(bg(), &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: ids.New("auto"), WorkspaceId: ws, Name: name},
		Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.seen.add(orphan.Credential)
	return orphan.Credential
}

// live reports whether a secret still authenticates.
func (h *harness) live(t *testing.T, secret string) bool {
	t.Helper()
	_, err := h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: secret})
	switch status.Code(err) {
	case codes.OK:
		return true
	case codes.Unauthenticated:
		return false
	}
	t.Fatalf("authenticate: %v", err)
	return false
}

// restart starts the service again on the harness's data dir with the
// orphan sweep on, and waits for the sweep to finish.
func (h *harness) restart(t *testing.T, opener store.Opener) (*automation.Service, error) {
	t.Helper()
	svc, err := automation.New(automation.Config{DataDir: h.dataDir, Store: opener, Logger: zaptest.NewLogger(t), Credential: h.env.Internal,
		SweepOrphans: true, StartTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { svc.Close() })
	select {
	case <-automation.SweepDone(svc):
	case <-time.After(10 * time.Second):
		t.Fatal("the orphan sweep did not finish")
	}
	return svc, nil
}

// lostStore makes a harness whose service recorded one automation and knows
// nothing of a second live subject, then stops it. It returns both secrets.
func lostStore(t *testing.T) (h *harness, recorded, orphan string) {
	t.Helper()
	h = newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "Acme")
	recorded = h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "kept"}).GetSecret()
	orphan = issueOrphan(t, h, ws, "lost")
	h.stop()
	return h, recorded, orphan
}

func wantMessage(t *testing.T, err error, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("the service started")
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not say %q", err, w)
		}
	}
}

func wantAbsent(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s was left behind (%v)", p, err)
		}
	}
}

// TestLostStoreAndMarkerRefuseToStart: with automation.db and its marker
// both gone, the store opens as new; the credential service's live
// automation subjects show that it existed, so start-up refuses, revokes
// nothing, and removes the empty store again so that the next start refuses
// too instead of finding an innocent-looking empty one.
func TestLostStoreAndMarkerRefuseToStart(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	path := filepath.Join(h.dataDir, "automation.db")
	for _, p := range []string{path, boltstore.MarkerPath(path)} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		_, err := h.restart(t, nil)
		wantMessage(t, err, path, "restore", "-init-store=automation")
		wantAbsent(t, path, boltstore.MarkerPath(path))
	}
	if !h.live(t, recorded) || !h.live(t, orphan) {
		t.Fatal("a refused start revoked credentials")
	}
}

// TestLostStoreWithMarkerRefusesToStart: with only automation.db gone, its
// marker stops the open itself; nothing is revoked.
func TestLostStoreWithMarkerRefusesToStart(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	path := filepath.Join(h.dataDir, "automation.db")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := h.restart(t, nil)
	wantMessage(t, err, path, "restore", "-init-store=automation")
	wantAbsent(t, path)
	if !h.live(t, recorded) || !h.live(t, orphan) {
		t.Fatal("a refused start revoked credentials")
	}
}

// TestInitStoreRevokesWhatItCannotKnow: -init-store after losing
// automation.db is a deliberate fresh start. The service starts, and the
// sweep revokes every automation credential the empty store has no record
// of.
func TestInitStoreRevokesWhatItCannotKnow(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	path := filepath.Join(h.dataDir, "automation.db")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := h.restart(t, boltstore.Dir(h.dataDir, zaptest.NewLogger(t), "automation")); err != nil {
		t.Fatal(err)
	}
	if h.live(t, recorded) || h.live(t, orphan) {
		t.Fatal("the sweep of a re-initialised store left unrecorded credentials live")
	}
}

// TestSweepLeavesSubjectsOlderThanTheStore: a store judges only subjects it
// could have recorded. Start-up refuses a new store while live subjects
// exist when it sweeps (see TestLostStoreAndMarkerRefuseToStart), so this
// state needs a first start without the sweep: the store is then created
// after a live subject, and a later start with the sweep leaves that
// subject alone while it revokes an orphan made after the store.
func TestSweepLeavesSubjectsOlderThanTheStore(t *testing.T) {
	h, recorded, older := lostStore(t)
	dir := t.TempDir()
	first, err := automation.New(automation.Config{DataDir: dir, Logger: zaptest.NewLogger(t), Credential: h.env.Internal})
	if err != nil {
		t.Fatal(err)
	}
	created := first.DB().Info().CreatedAt
	first.Close()
	subjects, err := h.env.Internal.ListSubjects(bg(), &credentialv1.ListSubjectsRequest{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subjects.GetSubjects() {
		if !s.GetCreatedAt().AsTime().Before(created) {
			t.Fatalf("subject %s was created at %v, not before the store (%v)", s.GetId(), s.GetCreatedAt().AsTime(), created)
		}
	}
	ws, _ := h.env.NewWorkspace(t, "Later")
	newer := issueOrphan(t, h, ws, "after the store")

	later := time.Now().Add(time.Second)
	svc, err := automation.New(automation.Config{DataDir: dir, Logger: zaptest.NewLogger(t), Credential: h.env.Internal, SweepOrphans: true,
		Now: func() time.Time { return later }})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if !svc.DB().Info().CreatedAt.Equal(created) {
		t.Fatalf("the store was created again: %v, first %v", svc.DB().Info().CreatedAt, created)
	}
	select {
	case <-automation.SweepDone(svc):
	case <-time.After(10 * time.Second):
		t.Fatal("the orphan sweep did not finish")
	}
	if !h.live(t, recorded) || !h.live(t, older) {
		t.Fatal("the sweep revoked subjects created before its store")
	}
	if h.live(t, newer) {
		t.Fatal("the sweep left an orphan created after its store live")
	}
}
