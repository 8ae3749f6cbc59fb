package reliability

// Fault injection at the store: every write transaction of one service's
// store fails (kit store's DB.SetFault). A failing commit must leave no
// partial state, hand out no credential, and answer Unavailable with a
// generic message, while the cause goes to the log.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// faultMarker is in every injected error: it must reach the log and never a caller.
const faultMarker = "INJECTED-FAULT-7f3a"

// faultEnv is a stack with a captured log and a workspace.
type faultEnv struct {
	s     *stack
	rc    *restClient
	logs  *observer.ObservedLogs
	ws    workspace
	fault error
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	s := newStack(t, zap.New(core))
	e := &faultEnv{s: s, rc: s.rest(), logs: logs}
	e.ws = e.rc.createWorkspace(t, s.Operator, "faults")
	e.fault = fmt.Errorf("%s: write %s/credential.db: no space left on device", faultMarker, s.Dir)
	return e
}

// inject makes every write transaction of db fail until the test's cleanup
// (or clear) removes the fault.
func (e *faultEnv) inject(t *testing.T, db store.Backend) {
	t.Helper()
	faults(db).SetFault(func() error { return e.fault })
	t.Cleanup(func() { faults(db).SetFault(nil) })
}

func (e *faultEnv) clear() {
	faults(e.s.Cred.DB()).SetFault(nil)
	faults(e.s.Auto.DB()).SetFault(nil)
}

// faults is the engine's fault-injection side (every engine has one).
func faults(db store.Backend) store.Faults { return db.(store.Faults) }

// generic fails the test if msg tells more than that the store failed.
func (e *faultEnv) generic(t *testing.T, what, msg string) {
	t.Helper()
	for _, bad := range []string{faultMarker, "no space", e.s.Dir, "bolt", "127.0.0.1", "blg_", "panic", "goroutine"} {
		if strings.Contains(msg, bad) {
			t.Errorf("%s: the error message %q reveals %q", what, redact(msg), bad)
		}
	}
	if strings.TrimSpace(msg) == "" {
		t.Errorf("%s: empty error message", what)
	}
}

// wantUnavailable checks a REST answer to a write whose commit failed.
func (e *faultEnv) wantUnavailable(t *testing.T, r *reply) {
	t.Helper()
	if r.Status != http.StatusServiceUnavailable {
		t.Errorf("%s: want 503 (the store failed)", r)
	}
	o := r.JSON()
	if code, _ := o.get("code").(float64); codes.Code(code) != codes.Unavailable {
		t.Errorf("%s: want gRPC code Unavailable (14) in the body", r)
	}
	e.generic(t, r.Method+" "+r.Path, o.str("message"))
	for _, field := range []string{"secret", "token", "accessToken", "automation", "member", "workspace", "agent", "apiKey", "rotationSecret", "installation"} {
		if o.get(field) != nil {
			t.Errorf("%s: a failed write answered with %q", r, field)
		}
	}
	if credentialRE.Match(r.Body) {
		t.Errorf("%s: a failed write answered with a credential", r)
	}
}

// wantGRPCUnavailable checks a gRPC answer to a write whose commit failed.
func (e *faultEnv) wantGRPCUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.Unavailable {
		t.Errorf("%s: got %s %q, want Unavailable", what, st.Code(), redact(st.Message()))
	}
	e.generic(t, what, st.Message())
}

// causeLogged checks that the injected cause reached the log.
func (e *faultEnv) causeLogged(t *testing.T) {
	t.Helper()
	for _, entry := range e.logs.All() {
		for _, f := range entry.Context {
			if f.Type == zapcore.ErrorType {
				if err, ok := f.Interface.(error); ok && strings.Contains(err.Error(), faultMarker) {
					return
				}
			}
		}
	}
	t.Errorf("the injected cause was not logged")
}

// liveSecrets returns, per automation subject, the number of live
// automation-secret credentials, and whether the subject is revoked.
func (e *faultEnv) liveSecrets(t *testing.T) (live map[string]int, revoked map[string]bool) {
	t.Helper()
	return e.liveCredentials(t, credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION)
}

// liveCredentials returns, per subject of kind, the number of its live
// credentials (of any kind), and whether the subject is revoked.
func (e *faultEnv) liveCredentials(t *testing.T, kind credentialv1.SubjectKind) (live map[string]int, revoked map[string]bool) {
	t.Helper()
	live, revoked = map[string]int{}, map[string]bool{}
	err := e.s.Cred.DB().View(context.Background(), func(tx store.ReadTx) error {
		err := each(tx, bucketSubjects, func(k, v []byte) error {
			rec := &credentialstorev1.SubjectRecord{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return err
			}
			if rec.GetSubject().GetKind() == kind {
				revoked[string(k)] = rec.GetRevoked()
				live[string(k)] += 0
			}
			return nil
		})
		if err != nil {
			return err
		}
		return each(tx, bucketCredentials, func(_, v []byte) error {
			rec := &credentialstorev1.CredentialRecord{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return err
			}
			if _, ours := revoked[rec.GetSubjectId()]; ours && rec.GetRevokedAt() == nil {
				live[rec.GetSubjectId()]++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return live, revoked
}

func (e *faultEnv) listAutomations(t *testing.T) []*automationv1.Automation {
	t.Helper()
	resp, err := e.s.AutoClient.ListAutomations(as(e.ws.OwnerToken), &automationv1.ListAutomationsRequest{WorkspaceId: e.ws.ID, PageSize: 100})
	if err != nil {
		t.Fatalf("ListAutomations: %v", err)
	}
	return resp.GetAutomations()
}

func (e *faultEnv) exchangeStatus(t *testing.T, secret string) int {
	t.Helper()
	return e.rc.call(t, http.MethodPost, "/v1/auth/exchange", secret, map[string]any{}).Status
}

func (e *faultEnv) automationPath(id string) string {
	return "/v1/workspaces/" + e.ws.ID + "/automations/" + id
}

func TestFaultInjection(t *testing.T) {
	t.Run("create/automation store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		e.inject(t, e.s.Auto.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/automations", e.ws.OwnerToken,
			map[string]any{"name": "doomed", "scopes": []string{"automations:read"}}))
		_, err := e.s.AutoClient.CreateAutomation(as(e.ws.OwnerToken), &automationv1.CreateAutomationRequest{WorkspaceId: e.ws.ID, Name: "doomed-2"})
		e.wantGRPCUnavailable(t, "CreateAutomation", err)
		e.clear()
		if got := e.listAutomations(t); len(got) != 0 {
			t.Errorf("after two failed creates, %d automations are listed, want 0", len(got))
		}
		// The credential service did issue a secret for each (the record
		// is written after), and the automation service revoked it again.
		live, revoked := e.liveSecrets(t)
		if len(live) != 2 {
			t.Errorf("the credential service saw %d automation subjects, want 2 (one per attempt)", len(live))
		}
		for id, n := range live {
			if n != 0 || !revoked[id] {
				t.Errorf("subject %s of a failed create: %d live secrets, revoked=%v; want 0 and revoked", id, n, revoked[id])
			}
		}
		e.causeLogged(t)
		// And the service recovers as soon as the store does.
		_, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "after", "automations:read")
		if st := e.exchangeStatus(t, secret); st != http.StatusOK {
			t.Errorf("exchange after recovery: %d", st)
		}
	})

	t.Run("create/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/automations", e.ws.OwnerToken,
			map[string]any{"name": "doomed", "scopes": []string{"automations:read"}}))
		_, err := e.s.AutoClient.CreateAutomation(as(e.ws.OwnerToken), &automationv1.CreateAutomationRequest{WorkspaceId: e.ws.ID, Name: "doomed-2"})
		e.wantGRPCUnavailable(t, "CreateAutomation", err)
		e.clear()
		if got := e.listAutomations(t); len(got) != 0 {
			t.Errorf("after two failed creates, %d automations are listed, want 0", len(got))
		}
		if live, _ := e.liveSecrets(t); len(live) != 0 {
			t.Errorf("the credential store holds %d automation subjects after failed issues, want 0", len(live))
		}
		e.causeLogged(t)
	})

	t.Run("rotate/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "rot", "automations:read")
		before := e.listAutomations(t)[0].GetCredential().GetId()
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, e.automationPath(id)+"/rotate-secret", e.ws.OwnerToken, map[string]any{}))
		e.clear()
		if st := e.exchangeStatus(t, secret); st != http.StatusOK {
			t.Errorf("the old secret after a rotation that failed to commit: %d, want 200 (nothing changed)", st)
		}
		if live, _ := e.liveSecrets(t); live[id] != 1 {
			t.Errorf("%d live secrets, want 1", live[id])
		}
		if after := e.listAutomations(t)[0].GetCredential().GetId(); after != before {
			t.Errorf("the record's credential changed from %s to %s on a failed rotation", before, after)
		}
		e.causeLogged(t)
	})

	t.Run("rotate/automation store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "rot", "automations:read")
		e.inject(t, e.s.Auto.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, e.automationPath(id)+"/rotate-secret", e.ws.OwnerToken, map[string]any{}))
		e.clear()
		// The credential service committed the rotation before the record
		// write failed: the old secret is dead, the new one was never
		// returned (fail-closed, as the automation service documents).
		if st := e.exchangeStatus(t, secret); st != http.StatusUnauthorized {
			t.Errorf("the old secret after a rotation whose record write failed: %d, want 401", st)
		}
		if live, _ := e.liveSecrets(t); live[id] != 1 {
			t.Errorf("%d live secrets, want exactly 1 (the one never returned)", live[id])
		}
		// Rotating again converges: one live secret, the one returned.
		o := e.rc.expect(t, http.StatusOK, http.MethodPost, e.automationPath(id)+"/rotate-secret", e.ws.OwnerToken, map[string]any{})
		if st := e.exchangeStatus(t, o.str("secret")); st != http.StatusOK {
			t.Errorf("the secret of the retried rotation: %d, want 200", st)
		}
		if live, _ := e.liveSecrets(t); live[id] != 1 {
			t.Errorf("after the retried rotation, %d live secrets, want 1", live[id])
		}
		if got := e.listAutomations(t)[0].GetCredential().GetId(); got != o.str("credential.id") {
			t.Errorf("the record names credential %s, the retried rotation returned %s", got, o.str("credential.id"))
		}
		e.causeLogged(t)
	})

	t.Run("suspend/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "susp", "automations:read")
		token := e.rc.exchange(t, secret)
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPatch, e.automationPath(id), e.ws.OwnerToken, map[string]any{"suspended": true}))
		e.clear()
		if e.listAutomations(t)[0].GetSuspended() {
			t.Errorf("the record says suspended after a suspension that failed")
		}
		if st := e.rc.call(t, http.MethodGet, e.automationPath(id), token, nil).Status; st != http.StatusOK {
			t.Errorf("the access token after a suspension that failed: %d, want 200 (nothing changed)", st)
		}
		e.causeLogged(t)
	})

	t.Run("suspend/automation store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "susp", "automations:read")
		token := e.rc.exchange(t, secret)
		e.inject(t, e.s.Auto.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPatch, e.automationPath(id), e.ws.OwnerToken, map[string]any{"suspended": true}))
		e.clear()
		// Fail-closed: the credentials were suspended first.
		if st := e.rc.call(t, http.MethodGet, e.automationPath(id), token, nil).Status; st != http.StatusForbidden {
			t.Errorf("the access token after a suspension whose record write failed: %d, want 403 (fail-closed)", st)
		}
		e.rc.expect(t, http.StatusOK, http.MethodPatch, e.automationPath(id), e.ws.OwnerToken, map[string]any{"suspended": true})
		if !e.listAutomations(t)[0].GetSuspended() {
			t.Errorf("repeating the suspension did not converge")
		}
		e.causeLogged(t)
	})

	t.Run("delete/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "del", "automations:read")
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodDelete, e.automationPath(id), e.ws.OwnerToken, nil))
		e.clear()
		if n := len(e.listAutomations(t)); n != 1 {
			t.Errorf("%d automations listed after a delete that failed, want 1", n)
		}
		if st := e.exchangeStatus(t, secret); st != http.StatusOK {
			t.Errorf("the secret after a delete that failed: %d, want 200 (nothing changed)", st)
		}
		e.causeLogged(t)
	})

	t.Run("delete/automation store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, secret := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "del", "automations:read")
		e.inject(t, e.s.Auto.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodDelete, e.automationPath(id), e.ws.OwnerToken, nil))
		e.clear()
		// Fail-closed: revoked first, so the secret is dead though the
		// record is still there; deleting again finishes.
		if st := e.exchangeStatus(t, secret); st != http.StatusUnauthorized {
			t.Errorf("the secret after a delete whose record write failed: %d, want 401 (fail-closed)", st)
		}
		e.rc.expect(t, http.StatusOK, http.MethodDelete, e.automationPath(id), e.ws.OwnerToken, nil)
		if n := len(e.listAutomations(t)); n != 0 {
			t.Errorf("%d automations listed after the repeated delete, want 0", n)
		}
		e.causeLogged(t)
	})

	t.Run("update mask/automation store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		id, _ := e.rc.createAutomation(t, e.ws.ID, e.ws.OwnerToken, "upd", "automations:read")
		e.inject(t, e.s.Auto.DB())
		_, err := e.s.AutoClient.UpdateAutomation(as(e.ws.OwnerToken), &automationv1.UpdateAutomationRequest{
			WorkspaceId: e.ws.ID, AutomationId: id, Automation: &automationv1.Automation{Description: "changed"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
		})
		e.wantGRPCUnavailable(t, "UpdateAutomation", err)
		e.clear()
		if d := e.listAutomations(t)[0].GetDescription(); d != "" {
			t.Errorf("description %q after an update that failed, want unchanged", d)
		}
	})

	t.Run("workspace and member/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		countWorkspaces := func() int {
			n := 0
			e.s.Cred.DB().View(context.Background(), func(tx store.ReadTx) error {
				return each(tx, store.Bucket("workspaces"), func(_, _ []byte) error { n++; return nil })
			})
			return n
		}
		before := countWorkspaces()
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, "/v1/workspaces", e.s.Operator, map[string]any{"name": "doomed"}))
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/members", e.ws.OwnerToken, map[string]any{"name": "doomed", "role": "admin"}))
		e.clear()
		if after := countWorkspaces(); after != before {
			t.Errorf("%d workspaces after a failed create, want %d", after, before)
		}
		o := e.rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+e.ws.ID+"/members", e.ws.OwnerToken, nil)
		if n := len(o.list("members")); n != 1 {
			t.Errorf("%d members after a failed create, want 1 (the owner)", n)
		}
		e.causeLogged(t)
	})

	t.Run("agent create/agent store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		inst := e.installation(t)
		e.inject(t, e.s.Agent.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, inst+"/agents", e.ws.OwnerToken, map[string]any{"name": "doomed", "role": "member"}))
		e.clear()
		e.noAgents(t)
		// The credential service issued the key and rotation secret before
		// the record write failed; the agent service revoked them again.
		live, revoked := e.liveCredentials(t, credentialv1.SubjectKind_SUBJECT_KIND_AGENT)
		for id, n := range live {
			if n != 0 || !revoked[id] {
				t.Errorf("agent subject %s of a failed create: %d live credentials, revoked=%v; want 0 and revoked", id, n, revoked[id])
			}
		}
		e.causeLogged(t)
	})

	t.Run("agent create/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		inst := e.installation(t)
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, inst+"/agents", e.ws.OwnerToken, map[string]any{"name": "doomed", "role": "admin"}))
		e.clear()
		e.noAgents(t)
		if live, _ := e.liveCredentials(t, credentialv1.SubjectKind_SUBJECT_KIND_AGENT); len(live) != 0 {
			t.Errorf("the credential store holds %d agent subjects after a failed issue, want 0", len(live))
		}
		e.causeLogged(t)
	})

	t.Run("agent rotate-key/credential store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		inst := e.installation(t)
		o := e.rc.expect(t, http.StatusOK, http.MethodPost, inst+"/agents", e.ws.OwnerToken, map[string]any{"name": "keeper", "role": "member"})
		id, key := o.str("agent.id"), o.str("apiKey")
		e.inject(t, e.s.Cred.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/agents/"+id+"/rotate-key", e.ws.OwnerToken, map[string]any{}))
		e.clear()
		if st := e.rc.call(t, http.MethodGet, "/v1/agents/self", key, nil).Status; st != http.StatusOK {
			t.Errorf("the agent key after a rotation that failed to commit: %d, want 200 (nothing changed)", st)
		}
		if live, _ := e.liveCredentials(t, credentialv1.SubjectKind_SUBJECT_KIND_AGENT); live[id] != 2 {
			t.Errorf("%d live credentials, want 2 (the key and the rotation secret)", live[id])
		}
		e.causeLogged(t)
	})

	t.Run("secret create/vault store fails", func(t *testing.T) {
		e := newFaultEnv(t)
		value := randomValue("fault-")
		e.inject(t, e.s.Vault.DB())
		e.wantUnavailable(t, e.rc.call(t, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/secrets", e.ws.OwnerToken,
			map[string]any{"name": "doomed", "kind": "webhook", "value": value}))
		e.clear()
		o := e.rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+e.ws.ID+"/secrets", e.ws.OwnerToken, nil)
		if n := len(o.list("secrets")); n != 0 {
			t.Errorf("%d secrets listed after a failed create, want 0", n)
		}
		if st := e.rc.call(t, http.MethodGet, "/v1/workspaces/"+e.ws.ID+"/secrets/doomed", e.ws.OwnerToken, nil).Status; st != http.StatusNotFound {
			t.Errorf("GET the secret of a failed create: %d, want 404", st)
		}
		for _, entry := range e.logs.All() {
			if strings.Contains(entry.Message, value) || strings.Contains(fmt.Sprint(entry.ContextMap()), value) {
				t.Errorf("the secret value of a failed create reached the log")
			}
		}
		e.causeLogged(t)
	})

	for _, which := range []string{"automation", "credential"} {
		t.Run("intermittent "+which+" store faults under concurrent creates", func(t *testing.T) {
			intermittentFaults(t, which)
		})
	}
}

// intermittentFaults fails every other commit of one store while 8 clients
// create at once: group commit must report each caller its own fate, and
// exactly the acknowledged automations exist, each with one live secret.
// (One store at a time: when both fail, the compensating revocation can
// fail too, which the automation service logs as an error.)
func intermittentFaults(t *testing.T, which string) {
	e := newFaultEnv(t)
	db := e.s.Auto.DB()
	if which == "credential" {
		db = e.s.Cred.DB()
	}
	var mu sync.Mutex
	n := 0
	faults(db).SetFault(func() error {
		mu.Lock()
		defer mu.Unlock()
		n++
		if n%2 == 0 {
			return e.fault
		}
		return nil
	})
	t.Cleanup(e.clear)
	type result struct {
		id, secret string
		status     int
	}
	const workers, each = 8, 8
	results := make(chan result, workers*each)
	for w := range workers {
		go func() {
			for i := range each {
				r, err := e.rc.do(context.Background(), http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/automations", e.ws.OwnerToken,
					map[string]any{"name": fmt.Sprintf("w%d-%d", w, i), "scopes": []string{"automations:read"}})
				if err != nil {
					results <- result{status: -1}
					continue
				}
				o := r.JSON()
				results <- result{id: o.str("automation.id"), secret: o.str("secret"), status: r.Status}
			}
		}()
	}
	acked := map[string]string{}
	failed := 0
	for range workers * each {
		r := <-results
		switch r.status {
		case http.StatusOK:
			acked[r.id] = r.secret
		case http.StatusServiceUnavailable:
			failed++
		default:
			t.Errorf("create under intermittent faults: status %d, want 200 or 503", r.status)
		}
	}
	e.clear()
	listed := map[string]bool{}
	for _, a := range e.listAutomations(t) {
		listed[a.GetId()] = true
	}
	for id, secret := range acked {
		if !listed[id] {
			t.Errorf("acknowledged automation %s is not listed", id)
		}
		if st := e.exchangeStatus(t, secret); st != http.StatusOK {
			t.Errorf("acknowledged automation %s: exchange %d", id, st)
		}
	}
	for id := range listed {
		if _, ok := acked[id]; !ok {
			t.Errorf("automation %s is listed but its create was not acknowledged", id)
		}
	}
	live, revoked := e.liveSecrets(t)
	for id, k := range live {
		switch {
		case listed[id] && k != 1:
			t.Errorf("listed automation %s has %d live secrets, want 1", id, k)
		case !listed[id] && k != 0:
			t.Errorf("automation %s of a failed create has %d live secrets (revoked=%v), want 0", id, k, revoked[id])
		}
	}
	t.Logf("%d concurrent creates with every other %s commit failing: %d acknowledged, %d refused with 503; no partial state",
		workers*each, which, len(acked), failed)
	if len(acked) == 0 || failed == 0 {
		t.Errorf("the fault pattern did not bite both ways (%d acknowledged, %d refused)", len(acked), failed)
	}
}

// installation creates an app installation and returns its path.
func (e *faultEnv) installation(t *testing.T) string {
	t.Helper()
	o := e.rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/installations", e.ws.OwnerToken, map[string]any{"name": "app"})
	return "/v1/workspaces/" + e.ws.ID + "/installations/" + o.str("installation.id")
}

func (e *faultEnv) noAgents(t *testing.T) {
	t.Helper()
	o := e.rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+e.ws.ID+"/agents", e.ws.OwnerToken, nil)
	if n := len(o.list("agents")); n != 0 {
		t.Errorf("%d agents listed after a failed create, want 0", n)
	}
}
