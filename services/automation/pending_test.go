package automation_test

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/kit/ids"
)

// Creates and rotations write the record while the credential service
// issues the secret (pending.go). These tests break that pair at each
// point and check what the service shows and what it leaves behind.

// waitNoMarkers waits until every pending marker has been removed.
func waitNoMarkers(t *testing.T, s *automation.Service) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := automation.PendingMarkers(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(m) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending markers remain: %v", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) names(t *testing.T, ws, token string) []string {
	t.Helper()
	resp, err := h.client.ListAutomations(as(bg(), token), &automationv1.ListAutomationsRequest{WorkspaceId: ws, PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range resp.GetAutomations() {
		out = append(out, a.GetName())
	}
	return out
}

func (h *harness) auditDetails(t *testing.T, ws, token, action string) []string {
	t.Helper()
	resp, err := h.audit.ListAuditEvents(as(bg(), token), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range resp.GetAuditEvents() {
		if ev.GetAction() == action {
			out = append(out, ev.GetOutcome()+" "+ev.GetDetail())
		}
	}
	return out
}

// TestWritesLeaveNoMarkers: the markers of creates and rotations that
// completed are removed in the background, many per commit.
func TestWritesLeaveNoMarkers(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			resp, err := h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "ci-" + string(rune('a'+i))})
			if err != nil {
				t.Error(err)
				return
			}
			h.seen.add(resp.GetSecret())
			rot, err := h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: resp.GetAutomation().GetId()})
			if err != nil {
				t.Error(err)
				return
			}
			h.seen.add(rot.GetSecret())
			// What the call returned is what a read shows, and it works.
			got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: resp.GetAutomation().GetId()})
			if err != nil || got.GetAutomation().GetCredential().GetId() != rot.GetCredential().GetId() {
				t.Errorf("read %v (%v), the rotation returned %s", got.GetAutomation().GetCredential(), err, rot.GetCredential().GetId())
			}
			if _, err := h.exchange(rot.GetSecret()); err != nil {
				t.Errorf("the rotated secret does not exchange: %v", err)
			}
			if _, err := h.exchange(resp.GetSecret()); err == nil {
				t.Error("the secret a rotation replaced still exchanges")
			}
		})
	}
	wg.Wait()
	waitNoMarkers(t, h.svc)
	if n := len(h.names(t, ws, owner)); n != 16 {
		t.Fatalf("listed %d automations, want 16", n)
	}
}

// TestCreateRefusedByCredentialServiceLeavesNothing: the record was written
// but the secret never issued: the create fails, and no automation, name or
// marker remains; the audit trail says why.
func TestCreateRefusedByCredentialServiceLeavesNothing(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.faults.set("IssueCredential", faultRefuse)
	_, err := h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "deploy"})
	wantCode(t, err, codes.Unavailable, "")
	if got := h.names(t, ws, owner); len(got) != 0 {
		t.Fatalf("a failed create is listed: %v", got)
	}
	if m, err := automation.PendingMarkers(h.svc); err != nil || len(m) != 0 {
		t.Fatalf("markers after a failed create: %v %v", m, err)
	}
	if d := h.auditDetails(t, ws, owner, "automation.create"); !slices.ContainsFunc(d, func(s string) bool {
		return strings.HasPrefix(s, "failure undone (failed: credential service unavailable)")
	}) {
		t.Fatalf("audit of the failed create: %q", d)
	}
	// The name is free again.
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "deploy"})
}

// TestCreateWhoseAnswerWasLostRevokesTheSecret: the credential service
// issued the secret but its answer was lost: the create fails, the secret
// is revoked, and no automation remains.
func TestCreateWhoseAnswerWasLostRevokesTheSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	before := len(h.secrets())
	h.faults.set("IssueCredential", faultLoseAnswer)
	_, err := h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "deploy"})
	wantCode(t, err, codes.Unavailable, "")
	lost := h.secrets()[before:]
	if len(lost) != 1 {
		t.Fatalf("want the one secret issued, saw %d", len(lost))
	}
	if h.live(t, lost[0]) {
		t.Fatal("the secret of a failed create still authenticates")
	}
	if got := h.names(t, ws, owner); len(got) != 0 {
		t.Fatalf("a failed create is listed: %v", got)
	}
	if m, err := automation.PendingMarkers(h.svc); err != nil || len(m) != 0 {
		t.Fatalf("markers after a failed create: %v %v", m, err)
	}
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "deploy"})
}

// TestRotationRefusedKeepsThePreviousSecret: the record was moved to the new
// secret but the credential service never rotated: the call fails, the
// record names the previous secret again, and that secret still works.
func TestRotationRefusedKeepsThePreviousSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	c := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "deploy"})
	id := c.GetAutomation().GetId()
	h.faults.set("RotateCredential", faultRefuse)
	_, err := h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.Unavailable, "")
	if got := h.record(t, ws, owner, id); got.GetCredential().GetId() != c.GetAutomation().GetCredential().GetId() {
		t.Fatalf("after a failed rotation the record names %s, want the previous %s", got.GetCredential().GetId(), c.GetAutomation().GetCredential().GetId())
	}
	h.mustExchange(t, c.GetSecret())
	waitNoMarkers(t, h.svc)
	rec, err := automation.LoadForTest(h.svc, ws, id)
	if err != nil || rec.GetCredential().GetId() != c.GetAutomation().GetCredential().GetId() {
		t.Fatalf("stored record after the undo: %v %v", rec, err)
	}
	if d := h.auditDetails(t, ws, owner, "automation.rotate_secret"); !slices.ContainsFunc(d, func(s string) bool {
		return strings.HasPrefix(s, "failure undone (failed: credential service unavailable)")
	}) {
		t.Fatalf("audit of the failed rotation: %q", d)
	}
}

// TestRotationWhoseAnswerWasLostNamesTheLiveSecret: the credential service
// rotated but its answer was lost: the call fails (nobody holds the new
// secret: the caller rotates again), the old secret is dead, and the
// record names the secret that is live.
func TestRotationWhoseAnswerWasLostNamesTheLiveSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	c := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "deploy"})
	id := c.GetAutomation().GetId()
	before := len(h.secrets())
	h.faults.set("RotateCredential", faultLoseAnswer)
	_, err := h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.Unavailable, "")
	if h.live(t, c.GetSecret()) {
		t.Fatal("the replaced secret still authenticates")
	}
	lost := h.secrets()[before:]
	if len(lost) != 1 || !h.live(t, lost[0]) {
		t.Fatalf("want the rotated secret live, saw %d", len(lost))
	}
	got := h.record(t, ws, owner, id)
	if got.GetCredential().GetId() == c.GetAutomation().GetCredential().GetId() {
		t.Fatal("the record names the dead secret")
	}
	waitNoMarkers(t, h.svc)
}

// TestInterruptedCreateIsNoAutomation: a crash between the record's commit
// and the credential's leaves a marked record whose secret does not exist.
// After the restart it is no automation (not read, not listed), and the
// sweep removes it and frees its name, with an audit event.
func TestInterruptedCreateIsNoAutomation(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	kept := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "kept"})
	waitNoMarkers(t, h.svc)
	a := &automationv1.Automation{Id: ids.New("auto"), WorkspaceId: ws, Name: "half", Scopes: []string{"automations:read"}}
	if err := automation.WriteInterrupted(h.svc, a, ids.New("cred"), nil); err != nil {
		t.Fatal(err)
	}
	automation.ForgetPending(h.svc) // as after a restart

	_, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: a.GetId()})
	wantCode(t, err, codes.NotFound, "")
	if got := h.names(t, ws, owner); !slices.Equal(got, []string{"kept"}) {
		t.Fatalf("listed %v, want only the automation whose secret exists", got)
	}
	if _, err := h.client.DeleteAutomation(as(bg(), owner), &automationv1.DeleteAutomationRequest{WorkspaceId: ws, AutomationId: a.GetId()}); status.Code(err) != codes.NotFound {
		t.Fatalf("delete of an interrupted create: %v, want NotFound", err)
	}
	if err := automation.SettlePending(h.svc, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if m, err := automation.PendingMarkers(h.svc); err != nil || len(m) != 0 {
		t.Fatalf("markers after settling: %v %v", m, err)
	}
	if _, err := automation.LoadForTest(h.svc, ws, a.GetId()); err == nil {
		t.Fatal("the interrupted create's record is still stored")
	}
	if d := h.auditDetails(t, ws, owner, "automation.create"); !slices.ContainsFunc(d, func(s string) bool { return strings.HasPrefix(s, "failure undone (interrupted)") }) {
		t.Fatalf("no audit event for the undone create: %q", d)
	}
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "half"}) // the name is free
	h.mustExchange(t, kept.GetSecret())
}

// TestInterruptedRotationShowsThePreviousSecret: a crash between a
// rotation's record commit and the credential service's leaves the record
// naming a secret that was never issued. Reads show the previous secret,
// which still works; the sweep puts the record back.
func TestInterruptedRotationShowsThePreviousSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	c := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "deploy"})
	waitNoMarkers(t, h.svc)
	prev := c.GetAutomation().GetCredential()
	if err := automation.WriteInterrupted(h.svc, c.GetAutomation(), ids.New("cred"), prev); err != nil {
		t.Fatal(err)
	}
	automation.ForgetPending(h.svc)
	if got := h.record(t, ws, owner, c.GetAutomation().GetId()); got.GetCredential().GetId() != prev.GetId() {
		t.Fatalf("read shows credential %s, want the previous %s", got.GetCredential().GetId(), prev.GetId())
	}
	h.mustExchange(t, c.GetSecret())
	if err := automation.SettlePending(h.svc, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	rec, err := automation.LoadForTest(h.svc, ws, c.GetAutomation().GetId())
	if err != nil || rec.GetCredential().GetId() != prev.GetId() {
		t.Fatalf("stored record after settling: %v %v", rec, err)
	}
	if m, err := automation.PendingMarkers(h.svc); err != nil || len(m) != 0 {
		t.Fatalf("markers after settling: %v %v", m, err)
	}
	// A rotation from there works as usual.
	r := h.rotate(t, ws, owner, c.GetAutomation().GetId(), "")
	h.mustExchange(t, r.GetSecret())
}

// TestMarkerOfALiveSecretCounts: a crash after both commits but before the
// marker was removed: the record counts (the credential service is asked),
// and the marker goes.
func TestMarkerOfALiveSecretCounts(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	c := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "deploy"})
	waitNoMarkers(t, h.svc)
	// The record as it was committed, marked, its credential live.
	if err := automation.WriteInterrupted(h.svc, c.GetAutomation(), c.GetAutomation().GetCredential().GetId(), nil); err != nil {
		t.Fatal(err)
	}
	automation.ForgetPending(h.svc)
	got := h.record(t, ws, owner, c.GetAutomation().GetId())
	if got.GetCredential().GetId() != c.GetAutomation().GetCredential().GetId() {
		t.Fatalf("read shows %v", got.GetCredential())
	}
	waitNoMarkers(t, h.svc) // learnt live by asking: removed in the background
}
