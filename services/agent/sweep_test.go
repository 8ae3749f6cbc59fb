package agent_test

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

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// issueOrphan is the half of a create that reached the credential service
// only: a live agent key and rotation secret with no record. It returns the
// API key.
func issueOrphan(t *testing.T, h *harness, ws, name string) string {
	t.Helper()
	issued, err := h.env.Internal.IssueCredential(bg(), &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AGENT, Id: ids.New("agt"), WorkspaceId: ws, Name: name, Role: auth.RoleMember},
		Kinds:   []credentialv1.CredentialKind{credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY, credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range issued.GetCredentials() {
		h.seen.add(c.GetCredential())
	}
	return issued.GetCredentials()[0].GetCredential()
}

// live reports whether an API key still authenticates (a revoked agent's
// key is refused with PermissionDenied, a dead key with Unauthenticated).
func (h *harness) live(t *testing.T, key string) bool {
	t.Helper()
	_, err := h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: key})
	switch status.Code(err) {
	case codes.OK:
		return true
	case codes.Unauthenticated, codes.PermissionDenied:
		return false
	}
	t.Fatalf("authenticate: %v", err)
	return false
}

// start starts another agent service on dir against the harness's
// credential service and, with the sweep on, waits for the sweep to finish.
func (h *harness) start(t *testing.T, dir string, opener store.Opener, sweep bool, now func() time.Time) (*agent.Service, error) {
	t.Helper()
	svc, err := agent.New(agent.Config{DataDir: dir, Store: opener, Logger: zaptest.NewLogger(t), Credential: h.env.Internal,
		Now: now, SweepOrphans: sweep, StartTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { svc.Close() })
	select {
	case <-agent.SweepDone(svc):
	case <-time.After(10 * time.Second):
		t.Fatal("the orphan sweep did not finish")
	}
	return svc, nil
}

// lostStore makes a harness whose service recorded one agent and knows
// nothing of a second live agent subject, then stops it. It returns both
// API keys.
func lostStore(t *testing.T) (h *harness, recorded, orphan string) {
	t.Helper()
	h = newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	recorded = h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "kept"}).GetApiKey()
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

// TestSweepRevokesUnrecordedAgents: a create that died after the credential
// service issued the pair but before the record was written leaves a live
// subject nobody can see. On the next start the service revokes it, and
// leaves recorded agents alone.
func TestSweepRevokesUnrecordedAgents(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	// The next start's clock is past the orphan's creation: the sweep
	// judges subjects created strictly before the start.
	later := time.Now().Add(time.Second)
	if _, err := h.start(t, h.dataDir, nil, true, func() time.Time { return later }); err != nil {
		t.Fatal(err)
	}
	if h.live(t, orphan) {
		t.Fatal("the unrecorded agent's key still authenticates")
	}
	if !h.live(t, recorded) {
		t.Fatal("the sweep revoked a recorded agent")
	}
}

// TestLostStoreAndMarkerRefuseToStart: with agent.db and its marker both
// gone, the store opens as new; the credential service's live agent
// subjects show that it existed, so start-up refuses, revokes nothing, and
// removes the empty store again so that the next start refuses too instead
// of finding an innocent-looking empty one.
func TestLostStoreAndMarkerRefuseToStart(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	path := filepath.Join(h.dataDir, "agent.db")
	for _, p := range []string{path, boltstore.MarkerPath(path)} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		_, err := h.start(t, h.dataDir, nil, true, nil)
		wantMessage(t, err, path, "restore", "-init-store=agent")
		wantAbsent(t, path, boltstore.MarkerPath(path))
	}
	if !h.live(t, recorded) || !h.live(t, orphan) {
		t.Fatal("a refused start revoked credentials")
	}
}

// TestLostStoreWithMarkerRefusesToStart: with only agent.db gone, its
// marker stops the open itself; nothing is revoked.
func TestLostStoreWithMarkerRefusesToStart(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	path := filepath.Join(h.dataDir, "agent.db")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err := h.start(t, h.dataDir, nil, true, nil)
	wantMessage(t, err, path, "restore", "-init-store=agent")
	wantAbsent(t, path)
	if !h.live(t, recorded) || !h.live(t, orphan) {
		t.Fatal("a refused start revoked credentials")
	}
}

// TestInitStoreRevokesWhatItCannotKnow: -init-store after losing agent.db
// is a deliberate fresh start. The service starts, and the sweep revokes
// every agent credential the empty store has no record of.
func TestInitStoreRevokesWhatItCannotKnow(t *testing.T) {
	h, recorded, orphan := lostStore(t)
	path := filepath.Join(h.dataDir, "agent.db")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := h.start(t, h.dataDir, boltstore.Dir(h.dataDir, zaptest.NewLogger(t), "agent"), true, nil); err != nil {
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
// after live subjects, and a later start with the sweep leaves them alone
// while it revokes an orphan made after the store.
func TestSweepLeavesSubjectsOlderThanTheStore(t *testing.T) {
	h, recorded, older := lostStore(t)
	dir := t.TempDir()
	first, err := h.start(t, dir, nil, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	created := first.DB().Info().CreatedAt
	first.Close()
	subjects, err := h.env.Internal.ListSubjects(bg(), &credentialv1.ListSubjectsRequest{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AGENT})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range subjects.GetSubjects() {
		if !s.GetCreatedAt().AsTime().Before(created) {
			t.Fatalf("subject %s was created at %v, not before the store (%v)", s.GetId(), s.GetCreatedAt().AsTime(), created)
		}
	}
	ws, _ := h.env.NewWorkspace(t, "later")
	newer := issueOrphan(t, h, ws, "after the store")

	later := time.Now().Add(time.Second)
	svc, err := h.start(t, dir, nil, true, func() time.Time { return later })
	if err != nil {
		t.Fatal(err)
	}
	if !svc.DB().Info().CreatedAt.Equal(created) {
		t.Fatalf("the store was created again: %v, first %v", svc.DB().Info().CreatedAt, created)
	}
	if !h.live(t, recorded) || !h.live(t, older) {
		t.Fatal("the sweep revoked subjects created before its store")
	}
	if h.live(t, newer) {
		t.Fatal("the sweep left an orphan created after its store live")
	}
}
