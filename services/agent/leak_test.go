package agent_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/store"
)

func TestNoRotationSecretConfigured(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "legacy"})
	id := created.GetAgent().GetId()
	if err := h.svc.ForgetRotationSecret(ws, id); err != nil {
		t.Fatal(err)
	}
	_, err := h.selfRotate(fromIP(bg(), "198.51.100.90"), created.GetApiKey(), created.GetRotationSecret())
	wantCode(t, err, codes.PermissionDenied, "NO_ROTATION_SECRET")
	// An admin rotation gives it one.
	a := h.adminRotate(t, ws, owner, id)
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.90"), a.GetApiKey(), a.GetRotationSecret())
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.rotate_key_self:failure",
		"agent.rotate_key:success", "agent.rotate_key_self:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestFailedSelfRotationRecordFailsClosed: when the rotation happened but
// could not be recorded, the new pair is not handed out (nor kept for a
// replay), the old one is dead, and an admin rotation recovers.
func TestFailedSelfRotationRecordFailsClosed(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	// The store fails once the credential service has rotated (the limits
	// and turns before it are in the store too).
	h.svc.DB().(store.Faults).SetFault(func() error {
		if h.rotated.Load() > 0 {
			return errors.New("disk full")
		}
		return nil
	})
	_, err := h.selfRotate(withIdem(fromIP(bg(), "198.51.100.91"), "k"), created.GetApiKey(), created.GetRotationSecret())
	wantCode(t, err, codes.Unavailable, "STORE_UNAVAILABLE")
	h.svc.DB().(store.Faults).SetFault(nil)
	if h.svc.Replays() != 0 {
		t.Fatal("a result that was not returned is kept for a replay")
	}
	_, err = h.self(created.GetApiKey())
	wantCode(t, err, codes.Unauthenticated, "")
	a := h.adminRotate(t, ws, owner, created.GetAgent().GetId())
	if _, err := h.self(a.GetApiKey()); err != nil {
		t.Fatal(err)
	}
}

// TestNoSecretAtRestOrInLogs drives every path that handles a raw
// credential, then looks for each one in the debug-level logs, the audit
// trail and the raw bytes of the store file.
func TestNoSecretAtRestOrInLogs(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.seen.add(owner, h.env.ServiceToken)
	inst := h.installation(t, ws, owner, "app")
	var ids []string
	var pairs [][2]string
	for i := range 3 {
		c := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: fmt.Sprintf("bot-%d", i), Role: auth.RoleAdmin, TeamIds: []string{"t1"}})
		ids = append(ids, c.GetAgent().GetId())
		pairs = append(pairs, [2]string{c.GetApiKey(), c.GetRotationSecret()})
		h.self(c.GetApiKey())
	}
	for i := range ids {
		ip := fromIP(bg(), fmt.Sprintf("198.51.100.%d", 150+i))
		// Self-rotation with a replay, a wrong secret, a dead pair.
		r := h.mustSelfRotate(t, withIdem(ip, "idem-"+ids[i]), pairs[i][0], pairs[i][1])
		h.mustSelfRotate(t, withIdem(ip, "idem-"+ids[i]), pairs[i][0], pairs[i][1])
		h.selfRotate(ip, r.GetApiKey(), pairs[(i+1)%3][1])
		h.selfRotate(fromIP(bg(), "198.51.100.200"), pairs[i][0], pairs[i][1])
		// Admin rotation.
		a := h.adminRotate(t, ws, owner, ids[i])
		h.self(a.GetApiKey())
		pairs[i] = [2]string{a.GetApiKey(), a.GetRotationSecret()}
	}
	// A credential presented where it does not belong, and rate limiting.
	h.self(pairs[0][1])
	for range 4 {
		h.selfRotate(fromIP(bg(), "198.51.100.201"), pairs[0][0], "blg_rot_"+strings.Repeat("x", 40))
	}
	// Failure paths log too.
	h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
	h.client.CreateAgent(as(bg(), owner), &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "doomed"})
	h.client.RotateAgentKey(as(bg(), owner), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: ids[0]})
	h.selfRotate(fromIP(bg(), "198.51.100.202"), pairs[1][0], pairs[1][1])
	h.svc.DB().(store.Faults).SetFault(nil)
	if _, err := h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: ids[2],
		Agent: &agentv1.Agent{Suspended: true}, UpdateMask: mask("suspended")}); err != nil {
		t.Fatal(err)
	}
	h.selfRotate(fromIP(bg(), "198.51.100.203"), pairs[2][0], pairs[2][1])
	if _, err := h.client.RevokeAgent(as(bg(), owner), &agentv1.RevokeAgentRequest{WorkspaceId: ws, AgentId: ids[2]}); err != nil {
		t.Fatal(err)
	}
	h.self(pairs[2][0])
	events, err := h.audit.ListAuditEvents(as(bg(), owner), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.GetAuditEvents()) < 15 {
		t.Fatalf("only %d audit events", len(events.GetAuditEvents()))
	}
	trail := fmt.Sprint(events.GetAuditEvents())
	h.stop()

	db, err := os.ReadFile(filepath.Join(h.dataDir, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "agent credentials rotated by the agent") || !strings.Contains(logs, `"level":"debug"`) {
		t.Fatal("the log capture did not see the service's logs at debug level")
	}
	all := h.seen.list()
	if len(all) < 30 {
		t.Fatalf("only %d credentials seen", len(all))
	}
	for _, s := range all {
		// The body without its prefix and checksum, too: an encoding that
		// kept the middle would still be a leak.
		body := s[strings.LastIndexByte(s, '_')+1 : len(s)-6]
		kind := s[:strings.LastIndexByte(s, '_')]
		for _, needle := range []string{s, body} {
			if strings.Contains(logs, needle) {
				t.Errorf("a %s credential appears in the logs", kind)
			}
			if bytes.Contains(db, []byte(needle)) {
				t.Errorf("a %s credential appears in agent.db", kind)
			}
			if strings.Contains(trail, needle) {
				t.Errorf("a %s credential appears in the audit trail", kind)
			}
		}
	}
}
