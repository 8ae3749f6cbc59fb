package automation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	automationstorev1 "github.com/backlog/controlplane/gen/go/backlog/automationstore/v1"
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
	actionCreate = "automation.create"
	actionUpdate = "automation.update"
	actionSusp   = "automation.suspend"
	actionResume = "automation.resume"
	actionDelete = "automation.delete"
	actionRotate = "automation.rotate_secret"
)

const secretKind = credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET

// ListAutomations lists a workspace's automations, oldest first, paginated.
func (s *Service) ListAutomations(ctx context.Context, req *automationv1.ListAutomationsRequest) (*automationv1.ListAutomationsResponse, error) {
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
	if !cursorInWorkspace(ws, after) {
		return nil, errs.Invalid("pageToken", "does not belong to this workspace")
	}
	if _, err := auth.Require(ctx, ws, auth.AutomationsRead); err != nil {
		return nil, err
	}
	resp := &automationv1.ListAutomationsResponse{}
	var marks map[string]*automationstorev1.PendingSecret
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		resp.Automations, marks = nil, nil
		next, err := listAutomations(tx, ws, after, size, func(a *automationv1.Automation) {
			resp.Automations = append(resp.Automations, a)
		})
		resp.NextPageToken = page.Encode(ctx, ws, next)
		if err != nil {
			return err
		}
		if any, err := anyPending(tx, ws); err != nil || !any {
			return err
		}
		for _, a := range resp.Automations {
			m, err := getPending(tx, ws, a.GetId())
			if err != nil {
				return err
			}
			if m != nil {
				if marks == nil {
					marks = map[string]*automationstorev1.PendingSecret{}
				}
				marks[a.GetId()] = m
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(marks) > 0 {
		// Records whose credential is being issued show what they count
		// as; a create not yet done is left out of the page.
		shown := resp.Automations[:0]
		for _, a := range resp.Automations {
			a, err := s.settle(ctx, a, marks[a.GetId()])
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			shown = append(shown, a)
		}
		resp.Automations = shown
	}
	return resp, nil
}

// GetAutomation reads one automation. The record never holds a secret.
func (s *Service) GetAutomation(ctx context.Context, req *automationv1.GetAutomationRequest) (*automationv1.GetAutomationResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAutomationId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.AutomationsRead); err != nil {
		return nil, err
	}
	if err := validAutomationID(id); err != nil {
		return nil, err
	}
	a, err := s.load(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	return &automationv1.GetAutomationResponse{Automation: a}, nil
}

// CreateAutomation creates an automation and returns its raw secret once.
//
// The id is chosen first, the credential service issues the secret for it,
// then the record and its audit event are written in one transaction. If
// that write fails, the secret is revoked again: no live secret may belong to
// an automation nobody can see.
//
// With an Idempotency-Key, the response is kept in that same transaction,
// and a retry with the key and body gets it again (see idempotency.go).
func (s *Service) CreateAutomation(ctx context.Context, req *automationv1.CreateAutomationRequest) (*automationv1.CreateAutomationResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	name, err := validName(fieldName, req.GetName())
	if err != nil {
		return nil, err
	}
	desc, err := validDescription(req.GetDescription())
	if err != nil {
		return nil, err
	}
	teams, err := auth.ValidateTeamIDs(fieldTeamIDs, req.GetTeamIds())
	if err != nil {
		return nil, err
	}
	scopes, err := auth.ValidateScopes(fieldScopes, req.GetScopes())
	if err != nil {
		return nil, err
	}
	label, err := validLabel(req.GetCredentialLabel())
	if err != nil {
		return nil, err
	}
	r, err := idem.FromContext(ctx, createScope(ws), req)
	if err != nil {
		return nil, err
	}

	p, err := auth.Require(ctx, ws, auth.AutomationsWrite)
	if err != nil {
		return nil, err
	}
	if err := withinCaller(p, scopes, teams); err != nil {
		s.recordRefusal(ctx, ws, actionCreate, "", err)
		return nil, err
	}
	if isAccessToken(p) && slices.Contains(scopes, auth.AutomationsWrite) {
		err := fmt.Errorf("%w (asked for automation %q)", ErrManagerFromToken, name)
		s.recordRefusal(ctx, ws, actionCreate, "", err)
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

	// A duplicate name is refused before a credential is issued; the check
	// is repeated inside the write for a concurrent create.
	if err := s.db.View(ctx, func(tx store.ReadTx) error { return names.Free(tx, ws, name, "") }); err != nil {
		if r != nil && errors.Is(err, ErrNameTaken) {
			// Another replica may just have created it for this key.
			if resp, rerr := s.replayCreate(ctx, ws, r); resp != nil || rerr != nil {
				return resp, rerr
			}
		}
		return nil, err
	}
	now := timestamppb.New(s.now())
	a := &automationv1.Automation{
		Id:          ids.New(idPrefix),
		WorkspaceId: ws,
		Name:        name,
		Description: desc,
		TeamIds:     teams,
		Scopes:      scopes,
		CreatedAt:   now,
		UpdatedAt:   now,
	}
	if r == nil {
		return s.createConcurrently(ctx, a, label)
	}
	issued, err := s.cred.IssueCredential(ctx, &credentialv1.IssueCredentialRequest{Subject: subjectOf(a), Kind: secretKind, Label: label})
	if err != nil {
		err = s.credErr(ctx, "issue", err)
		s.recordFailure(ctx, ws, actionCreate, a.Id, err)
		return nil, err
	}
	secret, info := issued.GetCredential(), issued.GetInfo()
	if err := checkIssued(secret, info); err != nil {
		s.revokeSubject(ctx, ws, a.Id, "issued credential malformed")
		return nil, err
	}
	a.Credential = secretInfo(info)
	resp := &automationv1.CreateAutomationResponse{Automation: a, Secret: secret}

	ev := s.rec.Event(ctx, ws, actionCreate, "automation", a.Id, audit.Success,
		fmt.Sprintf("name=%q scopes=[%s] teams=[%s] credential=%s", a.Name, strings.Join(a.Scopes, ","), strings.Join(a.TeamIds, ","), info.GetId()))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := names.Claim(tx, ws, a.Name, a.Id); err != nil {
			return err
		}
		if err := putAutomation(tx, a); err != nil {
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
		if !errors.Is(err, ErrNameTaken) {
			s.recordFailure(ctx, ws, actionCreate, a.Id, err)
		}
		return nil, err
	}
	s.lg.Info("automation created", zap.String("automation-id", a.Id), zap.String("workspace-id", ws), zap.String("credential-id", info.GetId()),
		zap.Bool("idempotency-key", r != nil))
	return resp, nil
}

// UpdateAutomation changes the fields named in the update mask, and only those.
//
// When the change touches what the automation's credentials carry (name,
// scopes, teams, suspension), the credential service must be told, and the
// two writes — its UpdateSubject and our record — cannot share a transaction.
// The order decides what a crash (or a failed second write) between them
// leaves behind, and it must always leave the credentials no more powerful
// than the record shows:
//
//   - Resuming (suspended true → false): the record first, then the
//     credentials. In between, the record says active while the credentials
//     are still suspended: fail-closed.
//   - Everything else, notably suspending and removing scopes or teams: the
//     credentials first, then the record. A suspension therefore takes effect
//     (every token refused, everywhere) before we acknowledge it, and a crash
//     in between can never leave tokens alive that the admin has suspended.
//     (Widening scopes while active has no fail-closed order — the credentials
//     briefly carry what the record does not show yet — but then the change
//     was asked for by an admin and the request fails visibly.)
//
// Either way the request reports the failure and repeating it converges,
// because UpdateSubject is called whenever the mask names a grant field,
// even when the value equals the stored one.
func (s *Service) UpdateAutomation(ctx context.Context, req *automationv1.UpdateAutomationRequest) (*automationv1.UpdateAutomationResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAutomationId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	in := req.GetAutomation()
	if in == nil {
		return nil, errs.Invalid(fieldAutomation, "is required: send the fields to change")
	}
	ch, err := validMask(req.GetUpdateMask().GetPaths(), in.GetName(), in.GetDescription(), in.GetTeamIds(), in.GetScopes(), in.GetSuspended())
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.AutomationsWrite)
	if err != nil {
		return nil, err
	}
	if err := validAutomationID(id); err != nil {
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
	next := proto.CloneOf(old)
	if ch.has(pathName) {
		next.Name = ch.name
	}
	if ch.has(pathDescription) {
		next.Description = ch.description
	}
	if ch.has(pathTeamIDs) {
		next.TeamIds = ch.teamIDs
	}
	if ch.has(pathScopes) {
		next.Scopes = ch.scopes
	}
	if ch.has(pathSuspended) {
		next.Suspended = ch.suspended
	}
	next.UpdatedAt = timestamppb.New(s.now())

	// A scope-bound caller may neither touch an automation wider than itself
	// nor widen one beyond itself.
	if err := withinCaller(p, old.GetScopes(), old.GetTeamIds()); err != nil {
		s.recordRefusal(ctx, ws, actionUpdate, id, err)
		return nil, err
	}
	if err := withinCaller(p, next.GetScopes(), next.GetTeamIds()); err != nil {
		s.recordRefusal(ctx, ws, actionUpdate, id, err)
		return nil, err
	}
	if isAccessToken(p) && slices.Contains(next.GetScopes(), auth.AutomationsWrite) && !slices.Contains(old.GetScopes(), auth.AutomationsWrite) {
		s.recordRefusal(ctx, ws, actionUpdate, id, ErrManagerFromToken)
		return nil, ErrManagerFromToken
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
			cur, err := getAutomation(tx, ws, id)
			if err != nil {
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
			// The stored credential stays as it is (it may be pending,
			// see settle); only the fields of the mask change.
			rec := proto.CloneOf(next)
			rec.Credential = cur.GetCredential()
			if err := putAutomation(tx, rec); err != nil {
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
	switch {
	case !ch.grant():
		err = write()
	case old.GetSuspended() && !next.GetSuspended():
		if err = write(); err == nil {
			err = updateSubject()
		}
	default:
		if err = updateSubject(); err == nil {
			err = write()
		}
	}
	if err != nil {
		if !errors.Is(err, ErrNameTaken) && !errors.Is(err, ErrNotFound) {
			s.recordFailure(ctx, ws, action, id, err)
		}
		return nil, err
	}
	s.lg.Info("automation updated", zap.String("automation-id", id), zap.String("workspace-id", ws), zap.String("action", action))
	return &automationv1.UpdateAutomationResponse{Automation: next}, nil
}

// updateEvents describes an update for the audit trail: automation.suspend
// or automation.resume when the suspension flips, automation.update for any
// other change (both when both happen).
func (s *Service) updateEvents(ctx context.Context, ws string, old, next *automationv1.Automation, ch *changeSet) []*auditv1.AuditEvent {
	var out []*auditv1.AuditEvent
	switch {
	case !old.GetSuspended() && next.GetSuspended():
		out = append(out, s.rec.Event(ctx, ws, actionSusp, "automation", next.Id, audit.Success, "suspended"))
	case old.GetSuspended() && !next.GetSuspended():
		out = append(out, s.rec.Event(ctx, ws, actionResume, "automation", next.Id, audit.Success, "resumed"))
	}
	var fields []string
	for _, p := range []string{pathName, pathDescription, pathTeamIDs, pathScopes} {
		if ch.has(p) {
			fields = append(fields, p)
		}
	}
	if len(fields) > 0 || len(out) == 0 {
		detail := "fields=" + strings.Join(fields, ",")
		if ch.has(pathScopes) {
			detail += " scopes=[" + strings.Join(next.Scopes, ",") + "]"
		}
		if ch.has(pathTeamIDs) {
			detail += " teams=[" + strings.Join(next.TeamIds, ",") + "]"
		}
		if len(fields) == 0 {
			detail = fmt.Sprintf("suspended=%v (unchanged)", next.GetSuspended())
		}
		out = append(out, s.rec.Event(ctx, ws, actionUpdate, "automation", next.Id, audit.Success, detail))
	}
	return out
}

// DeleteAutomation revokes every credential of the automation, then deletes
// its record. Revoking first means a crash in between leaves a visible
// automation whose credentials are dead (delete again to finish), never a
// deleted one whose secret still works.
func (s *Service) DeleteAutomation(ctx context.Context, req *automationv1.DeleteAutomationRequest) (*automationv1.DeleteAutomationResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAutomationId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.AutomationsWrite); err != nil {
		return nil, err
	}
	if err := validAutomationID(id); err != nil {
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
	if _, err := s.cred.RevokeSubject(ctx, &credentialv1.RevokeSubjectRequest{WorkspaceId: ws, SubjectId: id}); err != nil {
		// NotFound: nothing left to revoke (e.g. a delete that crashed
		// after revoking); go on and delete the record.
		if err = s.credErr(ctx, "revoke subject", err); !errors.Is(err, ErrNotFound) {
			s.recordFailure(ctx, ws, actionDelete, id, err)
			return nil, err
		}
	}
	ev := s.rec.Event(ctx, ws, actionDelete, "automation", id, audit.Success, fmt.Sprintf("name=%q", a.GetName()))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := deleteAutomation(tx, ws, id); err != nil {
			return err
		}
		// Remove the name only if it is still ours.
		if err := names.Release(tx, ws, a.GetName(), id); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	if err != nil {
		s.recordFailure(ctx, ws, actionDelete, id, err)
		return nil, err
	}
	s.lg.Info("automation deleted", zap.String("automation-id", id), zap.String("workspace-id", ws))
	return &automationv1.DeleteAutomationResponse{}, nil
}

// RotateAutomationSecret has the credential service revoke every live
// secret of the automation and issue one new one (atomically, in its store),
// then records the new secret's metadata. The old secret is dead when the
// credential service answers.
//
// Concurrent rotations of one automation are serialised twice: here by the
// per-automation lock, and at the credential service by its transaction.
// The record only ever moves to a newer credential, so even without the
// lock it would end up describing the one secret that is live.
//
// If the record cannot be written, the call fails and the new secret is
// not returned: the old one is already dead, so the automation has no usable
// secret until the caller rotates again — fail-closed, and every secret
// ever handed out is in the audit trail.
//
// With an Idempotency-Key, the response is kept in the record's
// transaction, and a retry with the key and body gets that secret again
// instead of a second rotation, which would kill the secret the client has
// not seen yet (see idempotency.go).
func (s *Service) RotateAutomationSecret(ctx context.Context, req *automationv1.RotateAutomationSecretRequest) (*automationv1.RotateAutomationSecretResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetAutomationId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	label, err := validLabel(req.GetCredentialLabel())
	if err != nil {
		return nil, err
	}
	r, err := idem.FromContext(ctx, rotateScope(ws), req)
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.AutomationsWrite)
	if err != nil {
		return nil, err
	}
	if err := validAutomationID(id); err != nil {
		return nil, err
	}
	// A short-lived token never turns itself into a long-lived secret.
	if isAccessToken(p) && p.GetSubjectId() == id {
		s.recordRefusal(ctx, ws, actionRotate, id, ErrOwnSecret)
		return nil, ErrOwnSecret
	}
	// A retry with the Idempotency-Key gets the first response: a second
	// rotation would kill the secret the client has not seen yet. One that
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
	// The new secret can be exchanged for the automation's full grant: a
	// scope-bound caller may only rotate automations within its own grant,
	// and an access token none whose secret could rotate its own.
	if err := withinCaller(p, a.GetScopes(), a.GetTeamIds()); err != nil {
		s.recordRefusal(ctx, ws, actionRotate, id, err)
		return nil, err
	}
	if isAccessToken(p) && slices.Contains(a.GetScopes(), auth.AutomationsWrite) {
		s.recordRefusal(ctx, ws, actionRotate, id, ErrManagerFromToken)
		return nil, ErrManagerFromToken
	}
	if label == "" {
		label = a.GetCredential().GetLabel() // keep the current label unless a new one is sent
	}
	if r == nil {
		return s.rotateConcurrently(ctx, a, label)
	}
	rotated, err := s.cred.RotateCredential(ctx, &credentialv1.RotateCredentialRequest{WorkspaceId: ws, SubjectId: id, Kind: secretKind, Label: label})
	if err != nil {
		err = s.credErr(ctx, "rotate", err)
		s.recordFailure(ctx, ws, actionRotate, id, err)
		return nil, err
	}
	secret, info := rotated.GetCredential(), rotated.GetInfo()
	if err := checkIssued(secret, info); err != nil {
		return nil, err
	}
	si := secretInfo(info)
	resp := &automationv1.RotateAutomationSecretResponse{Secret: secret, Credential: si}
	ev := s.rec.Event(ctx, ws, actionRotate, "automation", id, audit.Success,
		fmt.Sprintf("credential=%s label=%q", si.GetId(), si.GetLabel()))
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		cur, err := getAutomation(tx, ws, id)
		if err != nil {
			return err
		}
		if newer(si, cur.GetCredential()) {
			cur.Credential = si
			cur.UpdatedAt = timestamppb.New(s.now())
			if err := putAutomation(tx, cur); err != nil {
				return err
			}
			if err := clearPending(tx, ws, id); err != nil {
				return err
			}
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
		if out, done, err := s.rotateRaced(ctx, ws, id, r, si, resp, ev); done {
			if err != nil && !errors.Is(err, ErrNotFound) {
				s.recordFailure(ctx, ws, actionRotate, id, err)
			}
			return out, err
		}
		if errors.Is(err, store.ErrExists) {
			err = ErrIdempotentRace // a replay we could not read back
		}
	}
	if errors.Is(err, ErrNotFound) {
		// Deleted meanwhile (only possible without the lock): the new
		// secret must not outlive its automation.
		s.revokeSubject(ctx, ws, id, "rotated an automation that was deleted")
		return nil, err
	}
	if err != nil {
		s.recordFailure(ctx, ws, actionRotate, id, err)
		return nil, err
	}
	s.lg.Info("automation secret rotated", zap.String("automation-id", id), zap.String("workspace-id", ws), zap.String("credential-id", si.GetId()),
		zap.Bool("idempotency-key", r != nil))
	return resp, nil
}

// load reads one automation of workspace ws.
// A record written while its credential was being issued shows what it
// counts as (see settle).
func (s *Service) load(ctx context.Context, ws, id string) (*automationv1.Automation, error) {
	a, m, err := s.loadRaw(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	return s.settle(ctx, a, m)
}

// withinCaller keeps a caller that is not a person — an access token or an
// agent's key — from granting or taking over more than it holds: every scope
// must be one of its own (an agent holds its role's control-plane scopes),
// and if it is bounded to teams, so must the automation be, to a subset of
// them (no team ids = no team boundary). People act by role: an owner or
// admin may grant any scope, and has no team boundary.
func withinCaller(p *auth.Principal, scopes, teams []string) error {
	if p.GetSubjectKind() == credentialv1.SubjectKind_SUBJECT_KIND_MEMBER {
		return nil
	}
	for _, sc := range scopes {
		if !slices.Contains(p.GetScopes(), sc) {
			return fmt.Errorf("%w: it lacks the scope %s", ErrGrantTooWide, sc)
		}
	}
	if len(p.GetTeamIds()) > 0 {
		if len(teams) == 0 {
			return fmt.Errorf("%w: it is bounded to teams (%s) and cannot manage an automation without a team boundary",
				ErrGrantTooWide, strings.Join(p.GetTeamIds(), ", "))
		}
		for _, t := range teams {
			if !slices.Contains(p.GetTeamIds(), t) {
				return fmt.Errorf("%w: it is not bounded to team %s", ErrGrantTooWide, t)
			}
		}
	}
	return nil
}

// isAccessToken reports a short-lived access token (exchanged from an
// automation secret): it may never obtain a long-lived secret that could
// stand in for it (see RotateAutomationSecret and CreateAutomation).
func isAccessToken(p *auth.Principal) bool {
	return p.GetCredentialKind() == credentialv1.CredentialKind_CREDENTIAL_KIND_ACCESS_TOKEN
}

// subjectOf is the grant an automation's credentials carry.
func subjectOf(a *automationv1.Automation) *credentialv1.Subject {
	return &credentialv1.Subject{
		Kind:        credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION,
		Id:          a.GetId(),
		WorkspaceId: a.GetWorkspaceId(),
		Name:        a.GetName(),
		Scopes:      a.GetScopes(),
		TeamIds:     a.GetTeamIds(),
		Suspended:   a.GetSuspended(),
	}
}

// errMalformedCredential means the credential service answered with
// something that is not an automation secret. Its message never holds what
// was received.
var errMalformedCredential = errors.New("credential service returned a malformed automation secret")

// checkIssued checks what the credential service produced before anyone
// sees it.
func checkIssued(raw string, info *credentialv1.CredentialInfo) error {
	if credfmt.KindOf(raw) != credfmt.Automation || info.GetId() == "" || info.GetCreatedAt() == nil ||
		(info.GetKind() != secretKind && info.GetKind() != credentialv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED) {
		return errMalformedCredential
	}
	return nil
}

func secretInfo(info *credentialv1.CredentialInfo) *automationv1.SecretInfo {
	return &automationv1.SecretInfo{Id: info.GetId(), Label: info.GetLabel(), CreatedAt: info.GetCreatedAt()}
}

// newer reports whether credential a was issued after b (ids break ties:
// they sort by time too).
func newer(a, b *automationv1.SecretInfo) bool {
	if b == nil || b.GetCreatedAt() == nil {
		return true
	}
	at, bt := a.GetCreatedAt().AsTime(), b.GetCreatedAt().AsTime()
	if at.Equal(bt) {
		return a.GetId() > b.GetId()
	}
	return at.After(bt)
}
