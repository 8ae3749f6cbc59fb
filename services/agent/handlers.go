package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/store"
)

// Audit actions.
const (
	actionInstallationCreate = "installation.create"
	actionCreate             = "agent.create"
	actionUpdate             = "agent.update"
	actionSuspend            = "agent.suspend"
	actionResume             = "agent.resume"
	actionRevoke             = "agent.revoke"
	actionRotate             = "agent.rotate_key"             // by an owner or admin
	actionRotateSelf         = "agent.rotate_key_self"        // by the agent, with its rotation secret
	actionRotateSelfReplay   = "agent.rotate_key_self_replay" // a retry with the same Idempotency-Key got the same pair
)

const (
	targetAgent        = "agent"
	targetInstallation = "installation"
)

// rotationMessage is the message of every successful rotation response.
const rotationMessage = "API key and rotation secret rotated successfully. Save both — they will not be shown again."

// The kinds of an agent's two credentials, in the order they are issued,
// rotated and returned.
var agentKinds = []credentialv1.CredentialKind{
	credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY,
	credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET,
}

// ListInstallations lists a workspace's installations, oldest first, paginated.
func (s *Service) ListInstallations(ctx context.Context, req *agentv1.ListInstallationsRequest) (*agentv1.ListInstallationsResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := page.Decode(ctx, ws, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if !cursorInList(ws, "", after) {
		return nil, errs.Invalid("pageToken", "does not belong to this workspace")
	}
	if _, err := auth.Require(ctx, ws, auth.AgentsRead); err != nil {
		return nil, err
	}
	resp := &agentv1.ListInstallationsResponse{}
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		resp.Installations = nil
		next, err := listInstallations(tx, ws, after, size, func(in *agentv1.Installation) {
			resp.Installations = append(resp.Installations, in)
		})
		resp.NextPageToken = page.Encode(ctx, ws, next)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// CreateInstallation records an app installation.
func (s *Service) CreateInstallation(ctx context.Context, req *agentv1.CreateInstallationRequest) (*agentv1.CreateInstallationResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	name, err := validName(fieldName, req.GetName())
	if err != nil {
		return nil, err
	}
	appID, err := validAppID(req.GetAppId())
	if err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.AgentsWrite); err != nil {
		return nil, err
	}
	in := &agentv1.Installation{
		Id:          ids.New(installationIDPrefix),
		WorkspaceId: ws,
		Name:        name,
		AppId:       appID,
		CreatedAt:   timestamppb.New(s.now()),
	}
	ev := s.rec.Event(ctx, ws, actionInstallationCreate, targetInstallation, in.Id, audit.Success,
		fmt.Sprintf("name=%q app=%q", in.Name, in.AppId))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := claimInstallationName(tx, ws, name, in.Id); err != nil {
			return err
		}
		if err := putInstallation(tx, in); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	if err != nil {
		if !errors.Is(err, ErrInstallationNameTaken) {
			s.recordFailure(ctx, ws, actionInstallationCreate, targetInstallation, in.Id, err)
		}
		return nil, err
	}
	s.lg.Info("installation created", zap.String("installation-id", in.Id), zap.String("workspace-id", ws))
	return &agentv1.CreateInstallationResponse{Installation: in}, nil
}

// ListAgents lists a workspace's agents (revoked ones included, marked),
// oldest first, paginated; with installationId, only that installation's.
// A page token is bound to the workspace and the filter.
func (s *Service) ListAgents(ctx context.Context, req *agentv1.ListAgentsRequest) (*agentv1.ListAgentsResponse, error) {
	ws, inst := req.GetWorkspaceId(), req.GetInstallationId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	scope := ws + "|installation=" + inst
	after, err := page.Decode(ctx, scope, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if !cursorInList(ws, inst, after) {
		return nil, errs.Invalid("pageToken", "does not belong to this list")
	}
	if _, err := auth.Require(ctx, ws, auth.AgentsRead); err != nil {
		return nil, err
	}
	if inst != "" {
		if err := validInstallationID(inst); err != nil {
			return nil, err
		}
	}
	resp := &agentv1.ListAgentsResponse{}
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		if inst != "" {
			if ok, err := hasInstallation(tx, ws, inst); err != nil {
				return err
			} else if !ok {
				return ErrInstallationNotFound
			}
		}
		resp.Agents = nil
		next, err := listAgents(tx, ws, inst, after, size, func(a *agentv1.Agent) {
			resp.Agents = append(resp.Agents, a)
		})
		resp.NextPageToken = page.Encode(ctx, scope, next)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// GetAgent reads one agent. The record never holds a credential.
func (s *Service) GetAgent(ctx context.Context, req *agentv1.GetAgentRequest) (*agentv1.GetAgentResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAgentId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.AgentsRead); err != nil {
		return nil, err
	}
	if err := validAgentID(id); err != nil {
		return nil, err
	}
	a, err := s.load(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	return &agentv1.GetAgentResponse{Agent: a}, nil
}

// CreateAgent registers a visible agent under an existing installation and
// returns its API key and rotation secret once.
//
// The id is chosen first, the credential service issues both credentials
// for it in one transaction, then the record, its indexes and its audit
// event are written in one transaction. If that write fails, the
// credentials are revoked again: no live credential may belong to an agent
// nobody can see.
//
// With an Idempotency-Key, the response is kept in that same transaction,
// and a retry with the key and body gets it again (see idempotency.go).
func (s *Service) CreateAgent(ctx context.Context, req *agentv1.CreateAgentRequest) (*agentv1.CreateAgentResponse, error) {
	ws, inst := req.GetWorkspaceId(), req.GetInstallationId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	name, err := validName(fieldName, req.GetName())
	if err != nil {
		return nil, err
	}
	role, err := validRole(req.GetRole(), true)
	if err != nil {
		return nil, err
	}
	teams, err := auth.ValidateTeamIDs(fieldTeamIDs, req.GetTeamIds())
	if err != nil {
		return nil, err
	}
	r, err := idem.FromContext(ctx, createScope(ws), req)
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.AgentsWrite)
	if err != nil {
		return nil, err
	}
	if err := validInstallationID(inst); err != nil {
		return nil, err
	}
	if err := withinCaller(p, role, teams); err != nil {
		return nil, err
	}
	if r != nil {
		// A retry with the Idempotency-Key gets the first response; one
		// that arrives while the first request runs waits for it.
		unlock, err := s.locks.Lock(ctx, createLockKey(ws, name))
		if err != nil {
			return nil, err
		}
		defer unlock()
		if resp, err := s.replayCreate(ctx, ws, r); resp != nil || err != nil {
			return resp, err
		}
	}
	// A missing installation or a duplicate name is refused before any
	// credential is issued; both are checked again inside the write.
	if err := s.db.View(ctx, func(tx store.ReadTx) error {
		if err := installationExists(tx, ws, inst); err != nil {
			return err
		}
		return names.Free(tx, ws, name, "")
	}); err != nil {
		if r != nil && errors.Is(err, ErrNameTaken) {
			// Another replica may just have created it for this key.
			if resp, rerr := s.replayCreate(ctx, ws, r); resp != nil || rerr != nil {
				return resp, rerr
			}
		}
		return nil, err
	}
	now := timestamppb.New(s.now())
	a := &agentv1.Agent{
		Id:             ids.New(agentIDPrefix),
		WorkspaceId:    ws,
		InstallationId: inst,
		Name:           name,
		TeamIds:        teams,
		Role:           role,
		CreatedAt:      now,
		UpdatedAt:      now,
	}
	issued, err := s.cred.IssueCredential(ctx, &credentialv1.IssueCredentialRequest{Subject: subjectOf(a), Kinds: agentKinds})
	if err != nil {
		err = s.credErr(ctx, "issue", err)
		s.recordFailure(ctx, ws, actionCreate, targetAgent, a.Id, err)
		return nil, err
	}
	pair := issued.GetCredentials()
	if err := checkPair(pair); err != nil {
		s.revokeSubject(ctx, ws, a.Id, "issued credentials malformed")
		return nil, err
	}
	a.KeyRotatedAt = pair[0].GetInfo().GetCreatedAt()
	resp := &agentv1.CreateAgentResponse{Agent: a, ApiKey: pair[0].GetCredential(), RotationSecret: pair[1].GetCredential()}

	ev := s.rec.Event(ctx, ws, actionCreate, targetAgent, a.Id, audit.Success,
		fmt.Sprintf("name=%q installation=%s role=%s teams=[%s] credentials=%s", a.Name, inst, a.Role, strings.Join(a.TeamIds, ","), credIDs(pair)))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := installationExists(tx, ws, inst); err != nil {
			return err
		}
		if err := names.Claim(tx, ws, a.Name, a.Id); err != nil {
			return err
		}
		if err := putAgent(tx, a); err != nil {
			return err
		}
		if err := indexAgent(tx, ws, inst, a.Id); err != nil {
			return err
		}
		if err := putCredentialInfos(tx, ws, a.Id, pair); err != nil {
			return err
		}
		if err := audit.Put(tx, ev); err != nil {
			return err
		}
		return s.saveReplay(tx, r, resp) // with the record, or not at all
	})
	if err != nil && r != nil && errIsRace(err) {
		if out, done, err := s.createRaced(ctx, ws, r, a, resp); done {
			return out, err
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrExists) {
			err = ErrIdempotentRace // a replay we could not read back
		}
		s.revokeSubject(ctx, ws, a.Id, "record not written")
		if !errors.Is(err, ErrNameTaken) && !errors.Is(err, ErrInstallationNotFound) {
			s.recordFailure(ctx, ws, actionCreate, targetAgent, a.Id, err)
		}
		return nil, err
	}
	s.lg.Info("agent created", zap.String("agent-id", a.Id), zap.String("workspace-id", ws), zap.String("installation-id", inst),
		zap.String("credential-ids", credIDs(pair)), zap.Bool("idempotency-key", r != nil))
	return resp, nil
}

// UpdateAgent changes the fields named in the update mask, and only those.
//
// Every field an agent has (name, teams, role, suspension) is carried by its
// credentials, so the credential service is told of every update, and the
// two writes — its UpdateSubject and our record — cannot share a
// transaction. The order decides what a crash (or a failed second write)
// between them leaves behind, and it keeps the credentials no more powerful
// than the record shows whenever an order can:
//
//   - The agent is (or becomes) suspended: the credentials first. A
//     suspension takes effect — every request with the key refused,
//     everywhere — before we acknowledge it.
//   - Resuming, or only widening an active agent (member → admin, a team
//     boundary lifted or extended): the record first. In between, the record
//     shows more than the credentials carry: fail-closed.
//   - Anything else (narrowing, renaming, or narrowing and widening at
//     once): the credentials first. (A change that both narrows and widens
//     has no fail-closed order; it was asked for by an admin and a failure
//     is reported.)
//
// Either way the request reports the failure and repeating it converges.
func (s *Service) UpdateAgent(ctx context.Context, req *agentv1.UpdateAgentRequest) (*agentv1.UpdateAgentResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAgentId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	in := req.GetAgent()
	if in == nil {
		return nil, errs.Invalid(fieldAgent, "is required: send the fields to change")
	}
	ch, err := validMask(req.GetUpdateMask().GetPaths(), in.GetName(), in.GetTeamIds(), in.GetRole(), in.GetSuspended())
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.AgentsWrite)
	if err != nil {
		return nil, err
	}
	if err := validAgentID(id); err != nil {
		return nil, err
	}

	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	old, err := s.load(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	if old.GetRevoked() {
		return nil, ErrRevoked
	}
	next := proto.CloneOf(old)
	if ch.has(pathName) {
		next.Name = ch.name
	}
	if ch.has(pathTeamIDs) {
		next.TeamIds = ch.teamIDs
	}
	if ch.has(pathRole) {
		next.Role = ch.role
	}
	if ch.has(pathSuspended) {
		next.Suspended = ch.suspended
	}
	next.UpdatedAt = timestamppb.New(s.now())

	// A scope-bound caller may neither touch an agent wider than itself nor
	// widen one beyond itself.
	if err := withinCaller(p, old.GetRole(), old.GetTeamIds()); err != nil {
		return nil, err
	}
	if err := withinCaller(p, next.GetRole(), next.GetTeamIds()); err != nil {
		return nil, err
	}
	renamed := foldName(next.Name) != foldName(old.Name)
	if renamed {
		if err := s.db.View(ctx, func(tx store.ReadTx) error { return names.Free(tx, ws, next.Name, id) }); err != nil {
			return nil, err
		}
	}

	events := s.updateEvents(ctx, ws, old, next, ch)
	write := func() error {
		return s.db.Update(ctx, func(tx store.WriteTx) error {
			if _, err := getAgent(tx, ws, id); err != nil {
				return err
			}
			if renamed {
				if err := names.Release(tx, ws, old.Name, id); err != nil {
					return err
				}
			}
			if err := names.Claim(tx, ws, next.Name, id); err != nil {
				return err
			}
			if err := putAgent(tx, next); err != nil {
				return err
			}
			for _, ev := range events {
				if err := audit.Put(tx, ev); err != nil {
					return err
				}
			}
			return nil
		})
	}
	updateSubject := func() error {
		if _, err := s.cred.UpdateSubject(ctx, &credentialv1.UpdateSubjectRequest{Subject: subjectOf(next)}); err != nil {
			return s.credErr(ctx, "update subject", err)
		}
		return nil
	}

	action := events[0].GetAction()
	recordFirst := !next.GetSuspended() &&
		(old.GetSuspended() || (widens(old, next) && !narrows(old, next)))
	if recordFirst {
		if err = write(); err == nil {
			err = updateSubject()
		}
	} else {
		if err = updateSubject(); err == nil {
			err = write()
		}
	}
	if err != nil {
		if !errors.Is(err, ErrNameTaken) && !errors.Is(err, ErrAgentNotFound) {
			s.recordFailure(ctx, ws, action, targetAgent, id, err)
		}
		return nil, err
	}
	s.lg.Info("agent updated", zap.String("agent-id", id), zap.String("workspace-id", ws), zap.String("action", action))
	return &agentv1.UpdateAgentResponse{Agent: next}, nil
}

// widens reports whether next grants something old did not: a higher role,
// or a team boundary lifted or extended (no team ids = no boundary).
func widens(old, next *agentv1.Agent) bool {
	if !auth.RoleAtLeast(old.GetRole(), next.GetRole()) {
		return true
	}
	return teamsWider(next.GetTeamIds(), old.GetTeamIds())
}

// narrows reports whether next loses something old granted.
func narrows(old, next *agentv1.Agent) bool {
	if !auth.RoleAtLeast(next.GetRole(), old.GetRole()) {
		return true
	}
	return teamsWider(old.GetTeamIds(), next.GetTeamIds())
}

// teamsWider reports whether boundary a admits a team that b does not.
func teamsWider(a, b []string) bool {
	if len(b) == 0 {
		return false // b has no boundary: nothing is wider
	}
	if len(a) == 0 {
		return true
	}
	for _, t := range a {
		if !slices.Contains(b, t) {
			return true
		}
	}
	return false
}

// updateEvents describes an update for the audit trail: agent.suspend or
// agent.resume when the suspension flips, agent.update for any other change
// (both when both happen).
func (s *Service) updateEvents(ctx context.Context, ws string, old, next *agentv1.Agent, ch *changeSet) []*auditv1.AuditEvent {
	var out []*auditv1.AuditEvent
	switch {
	case !old.GetSuspended() && next.GetSuspended():
		out = append(out, s.rec.Event(ctx, ws, actionSuspend, targetAgent, next.Id, audit.Success, "suspended"))
	case old.GetSuspended() && !next.GetSuspended():
		out = append(out, s.rec.Event(ctx, ws, actionResume, targetAgent, next.Id, audit.Success, "resumed"))
	}
	var fields []string
	for _, p := range []string{pathName, pathTeamIDs, pathRole} {
		if ch.has(p) {
			fields = append(fields, p)
		}
	}
	if len(fields) > 0 || len(out) == 0 {
		detail := "fields=" + strings.Join(fields, ",")
		if ch.has(pathName) {
			detail += fmt.Sprintf(" name=%q", next.Name)
		}
		if ch.has(pathTeamIDs) {
			detail += " teams=[" + strings.Join(next.TeamIds, ",") + "]"
		}
		if ch.has(pathRole) {
			detail += " role=" + next.Role
		}
		if len(fields) == 0 {
			detail = fmt.Sprintf("suspended=%v (unchanged)", next.GetSuspended())
		}
		out = append(out, s.rec.Event(ctx, ws, actionUpdate, targetAgent, next.Id, audit.Success, detail))
	}
	return out
}

// RevokeAgent revokes the agent for good: the credential service revokes the
// subject and every credential of it, then the record is kept with revoked
// set (its name is free again). Revoking first means a crash in between
// leaves a record that looks live with dead credentials (revoke again to
// finish), never a revoked-looking agent whose key still works. Revoking a
// revoked agent changes nothing and succeeds.
func (s *Service) RevokeAgent(ctx context.Context, req *agentv1.RevokeAgentRequest) (*agentv1.RevokeAgentResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAgentId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.AgentsWrite)
	if err != nil {
		return nil, err
	}
	if err := validAgentID(id); err != nil {
		return nil, err
	}
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	a, err := s.load(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	if a.GetRevoked() {
		return &agentv1.RevokeAgentResponse{Agent: a}, nil
	}
	if err := withinCaller(p, a.GetRole(), a.GetTeamIds()); err != nil {
		return nil, err
	}
	if _, err := s.cred.RevokeSubject(ctx, &credentialv1.RevokeSubjectRequest{WorkspaceId: ws, SubjectId: id}); err != nil {
		// NotFound: nothing left to revoke; go on and mark the record.
		if err = s.credErr(ctx, "revoke subject", err); !errors.Is(err, ErrAgentNotFound) {
			s.recordFailure(ctx, ws, actionRevoke, targetAgent, id, err)
			return nil, err
		}
	}
	next := proto.CloneOf(a)
	next.Revoked = true
	next.UpdatedAt = timestamppb.New(s.now())
	ev := s.rec.Event(ctx, ws, actionRevoke, targetAgent, id, audit.Success, fmt.Sprintf("name=%q", a.GetName()))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := putAgent(tx, next); err != nil {
			return err
		}
		if err := names.Release(tx, ws, a.GetName(), id); err != nil {
			return err
		}
		if err := deleteCredentialInfos(tx, ws, id); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	if err != nil {
		s.recordFailure(ctx, ws, actionRevoke, targetAgent, id, err)
		return nil, err
	}
	s.lg.Info("agent revoked", zap.String("agent-id", id), zap.String("workspace-id", ws))
	return &agentv1.RevokeAgentResponse{Agent: next}, nil
}

// RotateAgentKey is the owner/admin rotation of both of an agent's
// credentials, for when both have leaked: the credential service revokes
// the live API key and rotation secret and issues new ones in one
// transaction, then the record notes the rotation. It needs no rotation
// secret and the per-IP limit of self-rotation does not apply; the new key
// is locked out nowhere (a self-rotation lockout is of an API key at an
// address). An agent cannot use it on itself (that would bypass the
// rotation secret and the limit).
//
// If the record cannot be written, the call fails and the new pair is not
// returned: the old pair is already dead, so the agent has no usable
// credentials until the caller rotates again — fail-closed, like automation
// secrets.
//
// With an Idempotency-Key, the response is kept in the record's
// transaction, and a retry with the key and body gets that pair again
// instead of a second rotation, which would kill the pair the client has
// not seen yet (see idempotency.go).
func (s *Service) RotateAgentKey(ctx context.Context, req *agentv1.RotateAgentKeyRequest) (*agentv1.RotateAgentKeyResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAgentId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	r, err := idem.FromContext(ctx, rotateScope(ws), req)
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.AgentsWrite)
	if err != nil {
		return nil, err
	}
	if err := validAgentID(id); err != nil {
		return nil, err
	}
	if p.GetSubjectKind() == credentialv1.SubjectKind_SUBJECT_KIND_AGENT && p.GetSubjectId() == id {
		return nil, ErrSelfRotateOnly
	}
	// A retry with the Idempotency-Key gets the first response: a second
	// rotation would kill the pair the client has not seen yet. One that
	// arrives while the first request runs (here or on another replica)
	// waits for its lease, then finds its response.
	var lease []byte
	if r != nil {
		if resp, err := s.replayRotate(ctx, ws, id, r); resp != nil || err != nil {
			return resp, err
		}
		if lease, err = s.takeLease(ctx, ws, id); err != nil {
			return nil, err
		}
		defer func() { s.releaseLease(ctx, ws, id, lease) }()
	}
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if r != nil {
		if resp, err := s.replayRotate(ctx, ws, id, r); resp != nil || err != nil {
			return resp, err
		}
	}
	a, err := s.load(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	if a.GetRevoked() {
		return nil, ErrRevoked
	}
	// The new key carries the agent's full grant: a scope-bound caller may
	// only rotate agents within its own.
	if err := withinCaller(p, a.GetRole(), a.GetTeamIds()); err != nil {
		return nil, err
	}
	rotated, err := s.cred.RotateCredentials(ctx, &credentialv1.RotateCredentialsRequest{WorkspaceId: ws, SubjectId: id, Kinds: agentKinds})
	if err != nil {
		err = s.credErr(ctx, "rotate", err)
		s.recordFailure(ctx, ws, actionRotate, targetAgent, id, err)
		return nil, err
	}
	pair := rotated.GetCredentials()
	if err := checkPair(pair); err != nil {
		return nil, err
	}
	resp := &agentv1.RotateAgentKeyResponse{
		Message: rotationMessage, ApiKey: pair[0].GetCredential(), RotationSecret: pair[1].GetCredential(),
		AgentId: id, AgentName: a.GetName(),
	}
	ev := s.rec.Event(ctx, ws, actionRotate, targetAgent, id, audit.Success, "credentials="+credIDs(pair))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if _, _, err := s.noteRotation(tx, ws, id, pair); err != nil {
			return err
		}
		if err := audit.Put(tx, ev); err != nil {
			return err
		}
		if err := dropLease(tx, ws, id, lease); err != nil {
			return err
		}
		return s.saveReplay(tx, r, resp) // with the record, or not at all
	})
	if err == nil {
		lease = nil // ended with the commit
	}
	if r != nil && (errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrOutcomeUnknown)) {
		if out, done, err := s.rotateRaced(ctx, ws, id, r, pair, resp, ev); done {
			if err != nil {
				s.recordFailure(ctx, ws, actionRotate, targetAgent, id, err)
			}
			return out, err
		}
		if errors.Is(err, store.ErrExists) {
			err = ErrIdempotentRace // a replay we could not read back
		}
	}
	if err != nil {
		s.recordFailure(ctx, ws, actionRotate, targetAgent, id, err)
		return nil, err
	}
	s.lg.Info("agent credentials rotated by an admin", zap.String("agent-id", id), zap.String("workspace-id", ws), zap.String("credential-ids", credIDs(pair)),
		zap.Bool("idempotency-key", r != nil))
	return resp, nil
}

// recordRotation notes a new pair in the agent's record (key_rotated_at)
// and credential metadata, and writes ev, in one transaction. The record
// only ever moves to a newer pair.
func (s *Service) recordRotation(ctx context.Context, ws, id string, pair []*credentialv1.IssuedCredential, ev *auditv1.AuditEvent) (*agentv1.Agent, error) {
	var out *agentv1.Agent
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		var err error
		if out, _, err = s.noteRotation(tx, ws, id, pair); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	return out, err
}

// noteRotation notes a new pair in the agent's record and credential
// metadata in tx if it is newer than the recorded pair (moved reports
// whether it was), and returns the record.
func (s *Service) noteRotation(tx store.WriteTx, ws, id string, pair []*credentialv1.IssuedCredential) (cur *agentv1.Agent, moved bool, err error) {
	cur, err = getAgent(tx, ws, id)
	if err != nil {
		return nil, false, err
	}
	stored, err := credentialInfo(tx, ws, id, credKeyAPIKey)
	if err != nil {
		return nil, false, err
	}
	if !newer(pair[0].GetInfo(), stored) {
		return cur, false, nil
	}
	cur.KeyRotatedAt = pair[0].GetInfo().GetCreatedAt()
	cur.UpdatedAt = timestamppb.New(s.now())
	if err := putAgent(tx, cur); err != nil {
		return nil, false, err
	}
	if err := putCredentialInfos(tx, ws, id, pair); err != nil {
		return nil, false, err
	}
	return cur, true, nil
}

// load reads one agent of workspace ws.
func (s *Service) load(ctx context.Context, ws, id string) (*agentv1.Agent, error) {
	var a *agentv1.Agent
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		a, err = getAgent(tx, ws, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// withinCaller keeps a caller from granting or taking over more than it
// holds. A scope-bound caller (an access token, which has no role) must hold
// every control-plane scope the agent's role grants; people and agents act
// by role: an owner or admin may register an admin agent. And any caller
// bounded to teams — an access token or an agent with team ids (people have
// none) — may only register or manage agents bounded to a subset of its
// teams: no team ids is no boundary, wider than any.
func withinCaller(p *auth.Principal, role string, teams []string) error {
	if p.GetRole() == "" {
		for _, sc := range auth.ScopesForRole(role) {
			if !slices.Contains(p.GetScopes(), sc) {
				return fmt.Errorf("%w: an agent with role %s holds the scope %s, which it lacks", ErrGrantTooWide, role, sc)
			}
		}
	}
	if len(p.GetTeamIds()) > 0 {
		if len(teams) == 0 {
			return fmt.Errorf("%w: it is bounded to teams and cannot manage an agent without a team scope", ErrGrantTooWide)
		}
		for _, t := range teams {
			if !slices.Contains(p.GetTeamIds(), t) {
				return fmt.Errorf("%w: it is not bounded to team %s", ErrGrantTooWide, t)
			}
		}
	}
	return nil
}

// subjectOf is the grant an agent's credentials carry: its role decides its
// control-plane scopes (the credential service derives them).
func subjectOf(a *agentv1.Agent) *credentialv1.Subject {
	return &credentialv1.Subject{
		Kind:        credentialv1.SubjectKind_SUBJECT_KIND_AGENT,
		Id:          a.GetId(),
		WorkspaceId: a.GetWorkspaceId(),
		Name:        a.GetName(),
		Role:        a.GetRole(),
		TeamIds:     a.GetTeamIds(),
		Suspended:   a.GetSuspended(),
	}
}

// errMalformedCredential means the credential service answered with
// something that is not an agent's API key and rotation secret. Its message
// never holds what was received.
var errMalformedCredential = errors.New("credential service returned a malformed agent credential pair")

// checkPair checks what the credential service produced before anyone sees
// it: an API key then a rotation secret, each well-formed with metadata.
func checkPair(pair []*credentialv1.IssuedCredential) error {
	want := []credfmt.Kind{credfmt.AgentKey, credfmt.RotationSecret}
	if len(pair) != len(want) {
		return errMalformedCredential
	}
	for i, c := range pair {
		info := c.GetInfo()
		if credfmt.KindOf(c.GetCredential()) != want[i] || info.GetId() == "" || info.GetCreatedAt() == nil || info.GetKind() != agentKinds[i] {
			return errMalformedCredential
		}
	}
	return nil
}

// credIDs names a pair's credential ids (never the credentials) for logs
// and the audit trail.
func credIDs(pair []*credentialv1.IssuedCredential) string {
	out := make([]string, len(pair))
	for i, c := range pair {
		out[i] = c.GetInfo().GetId()
	}
	return strings.Join(out, ",")
}

// newer reports whether credential a was issued after b (ids break ties:
// they sort by time too).
func newer(a, b *credentialv1.CredentialInfo) bool {
	if b == nil || b.GetCreatedAt() == nil {
		return true
	}
	at, bt := a.GetCreatedAt().AsTime(), b.GetCreatedAt().AsTime()
	if at.Equal(bt) {
		return a.GetId() > b.GetId()
	}
	return at.After(bt)
}
