package automation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	automationstorev1 "github.com/backlog/controlplane/gen/go/backlog/automationstore/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/store"
)

// credentialIDPrefix is the prefix of the credential service's ids.
const credentialIDPrefix = "cred"

// Writes with one commit's latency.
//
// A create (or a rotation) made without an Idempotency-Key writes two
// stores: the credential service's (the secret) and ours (the record). Made
// one after the other they cost two durable commits; here they run at the
// same time. We choose the credential's id and creation time, write the
// record naming it together with a pending marker (automationstorev1.
// PendingSecret) while the credential service issues it, and answer once
// both have committed.
//
// The marker decides what a record shows until it is known whether the
// credential was issued: a marked create is no automation at all, a marked
// rotation shows the previous secret. It is known
//
//   - here, in memory, for the writes this process makes (pendingWrites):
//     in flight (not yet issued), live (both commits done; the marker is
//     then removed in the background, many in one commit), or failed;
//   - otherwise (after a crash, or for another replica's write) by asking
//     the credential service (GetSubject) whether the credential was issued
//     to the automation — live, or revoked since by a later rotation whose
//     record was not written: the write happened either way.
//
// So a record counts from the moment both commits are durable, never
// before, and no acknowledged write depends on the marker's removal. A
// crash between the commits leaves a marked record whose credential was
// never issued (invisible, undone by the sweep: settlePending), or a live
// credential whose record was never written (an orphan, revoked by the
// orphan sweep as before). Writes made with an Idempotency-Key keep the
// response with the record and so still issue first, then write.

// pendState is what this process knows of one of its pending writes.
type pendState int

const (
	pendInFlight pendState = iota // commits running: not yet live
	pendLive                      // both committed: the record counts
	pendFailed                    // the credential call failed: being undone
)

type pendEntry struct {
	ws, cred string
	state    pendState
}

// pendingWrites tracks this process's pending writes, by automation id, and
// removes the markers of those that became live in batches.
type pendingWrites struct {
	mu   sync.Mutex
	m    map[string]pendEntry
	kick chan struct{}
}

func newPendingWrites() *pendingWrites {
	return &pendingWrites{m: map[string]pendEntry{}, kick: make(chan struct{}, 1)}
}

func (p *pendingWrites) begin(ws, id, cred string) {
	p.mu.Lock()
	p.m[id] = pendEntry{ws: ws, cred: cred, state: pendInFlight}
	p.mu.Unlock()
}

// set records the outcome of the write of cred to id (when it is still the
// latest of id).
func (p *pendingWrites) set(id, cred string, st pendState) {
	p.mu.Lock()
	if e, ok := p.m[id]; ok && e.cred == cred {
		e.state = st
		p.m[id] = e
	}
	p.mu.Unlock()
	if st == pendLive {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// live records that cred, found live by asking, is id's credential.
func (p *pendingWrites) live(ws, id, cred string) {
	p.mu.Lock()
	if e, ok := p.m[id]; !ok || e.cred == cred {
		p.m[id] = pendEntry{ws: ws, cred: cred, state: pendLive}
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// drop forgets the write of cred to id.
func (p *pendingWrites) drop(id, cred string) {
	p.mu.Lock()
	if e, ok := p.m[id]; ok && e.cred == cred {
		delete(p.m, id)
	}
	p.mu.Unlock()
}

// state reports what is known here of the write of cred to id.
func (p *pendingWrites) state(id, cred string) (pendState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.m[id]
	if !ok || e.cred != cred {
		return 0, false
	}
	return e.state, true
}

// lives lists up to n writes known live, to have their markers removed.
func (p *pendingWrites) lives(n int) map[string]pendEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]pendEntry{}
	for id, e := range p.m {
		if e.state == pendLive {
			out[id] = e
			if len(out) == n {
				break
			}
		}
	}
	return out
}

// promoteEvery is how long marker removals wait to share a commit: the
// longer, the fewer commits (each a write on the disk the next create
// waits for); a marked record this process knows live costs a read nothing
// more, and other replicas one question to the credential service.
const promoteEvery = 200 * time.Millisecond

// promoteLoop removes the markers of writes known live, many per commit,
// until ctx ends. A removal that fails is retried; until it succeeds the
// record still counts (it is known live here), and after a restart the
// credential service is asked again.
func (s *Service) promoteLoop(ctx context.Context) {
	batch := s.promoteBatch()
	backoff := promoteEvery
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.pending.kick:
		}
		select { // let concurrent writes join the batch
		case <-ctx.Done():
			return
		case <-time.After(promoteEvery):
		}
		for {
			todo := s.pending.lives(batch)
			if len(todo) == 0 {
				break
			}
			if err := s.promote(ctx, todo); err != nil {
				if ctx.Err() != nil {
					return
				}
				s.lg.Debug("could not remove pending markers; will retry", zap.Int("markers", len(todo)), zap.Error(err))
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			backoff = promoteEvery
		}
	}
}

// promoteBatch is how many markers one commit removes.
func (s *Service) promoteBatch() int { return max(1, s.db.Limits().MaxOpsPerUpdate-4) }

// promote removes the markers of todo (writes known live) in one commit,
// each only while it still names the credential known live.
func (s *Service) promote(ctx context.Context, todo map[string]pendEntry) error {
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		for id, e := range todo {
			m, err := getPending(tx, e.ws, id)
			if err != nil {
				return err
			}
			if m != nil && m.GetCredentialId() == e.cred {
				if err := clearPending(tx, e.ws, id); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for id, e := range todo {
		s.pending.drop(id, e.cred)
	}
	return nil
}

// settle returns what record a shows given its pending marker m (nil: a as
// it is): a itself once its credential was issued, else the previous secret
// (rotation) or ErrNotFound (create). It asks the credential service only
// about writes this process does not know.
func (s *Service) settle(ctx context.Context, a *automationv1.Automation, m *automationstorev1.PendingSecret) (*automationv1.Automation, error) {
	if m == nil {
		return a, nil
	}
	cred := m.GetCredentialId()
	st, known := s.pending.state(a.GetId(), cred)
	if !known {
		issued, err := s.credentialIssued(ctx, a.GetWorkspaceId(), a.GetId(), cred)
		if err != nil {
			return nil, err
		}
		if issued {
			s.pending.live(a.GetWorkspaceId(), a.GetId(), cred)
			st = pendLive
		} else {
			st = pendInFlight
		}
	}
	if st == pendLive {
		return a, nil
	}
	if m.GetPrevious() == nil {
		return nil, ErrNotFound // a create not (yet) done
	}
	b := proto.CloneOf(a)
	b.Credential = m.GetPrevious()
	return b, nil
}

// credentialIssued asks the credential service whether credential cred
// was issued to automation id (and the automation is not revoked): the
// write that named it then happened, even if a later rotation has revoked
// cred since.
func (s *Service) credentialIssued(ctx context.Context, ws, id, cred string) (bool, error) {
	resp, err := s.cred.GetSubject(ctx, &credentialv1.GetSubjectRequest{WorkspaceId: ws, SubjectId: id, CredentialId: cred})
	if status.Code(err) == codes.NotFound {
		return false, nil
	}
	if err != nil {
		return false, s.credErr(ctx, "get subject", err)
	}
	return resp.GetCredential().GetId() == cred, nil
}

// loadRaw reads automation id and its pending marker.
func (s *Service) loadRaw(ctx context.Context, ws, id string) (*automationv1.Automation, *automationstorev1.PendingSecret, error) {
	var a *automationv1.Automation
	var m *automationstorev1.PendingSecret
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		if a, err = getAutomation(tx, ws, id); err != nil {
			return err
		}
		m, err = getPending(tx, ws, id)
		return err
	})
	return a, m, err
}

// newPending is the marker of a write of cred begun now; prev is the
// secret the record named before (nil for a create).
func (s *Service) newPending(cred string, prev *automationv1.SecretInfo) *automationstorev1.PendingSecret {
	return &automationstorev1.PendingSecret{CredentialId: cred, Previous: prev, Since: timestamppb.New(s.now())}
}

// settlePending decides the marked records no write of this process is
// making that began before before: a record whose credential was issued
// keeps it (the marker goes), one whose credential never was is undone
// (a create removed with its name, a rotation back to its previous secret),
// with an audit event. Called by the sweep, which repeats it until it
// succeeds.
func (s *Service) settlePending(ctx context.Context, before time.Time) error {
	type marked struct {
		ws, id string
		m      *automationstorev1.PendingSecret
	}
	var todo []marked
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		todo = todo[:0]
		_, err := store.Scan(tx, pendingBucket, nil, nil, 0, func(k, v []byte) (bool, error) {
			m := &automationstorev1.PendingSecret{}
			if err := proto.Unmarshal(v, m); err != nil {
				return false, err
			}
			ws, id, ok := splitKey(k)
			if !ok || !m.GetSince().AsTime().Before(before) {
				return false, nil
			}
			if st, known := s.pending.state(id, m.GetCredentialId()); known && st != pendFailed {
				return false, nil // ours, in flight or live
			}
			todo = append(todo, marked{ws: ws, id: id, m: m})
			return true, nil
		})
		return err
	})
	if err != nil {
		return err
	}
	undone := 0
	for _, t := range todo {
		issued, err := s.credentialIssued(ctx, t.ws, t.id, t.m.GetCredentialId())
		if err != nil {
			return err
		}
		did, err := s.resolveMarker(ctx, t.ws, t.id, t.m, issued, "interrupted")
		if err != nil {
			return err
		}
		s.pending.drop(t.id, t.m.GetCredentialId())
		if did {
			undone++
		}
	}
	if len(todo) > 0 {
		s.lg.Info("settled pending secrets left by interrupted writes", zap.Int("settled", len(todo)), zap.Int("undone", undone))
	}
	return nil
}

// resolveMarker removes marker m of automation id, undoing the write when
// its credential was not issued. It reports whether it undid a write.
// why says what interrupted the write, for the audit event.
func (s *Service) resolveMarker(ctx context.Context, ws, id string, m *automationstorev1.PendingSecret, issued bool, why string) (bool, error) {
	var ev *auditv1.AuditEvent
	undone := false
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		undone = false
		cur, err := getPending(tx, ws, id)
		if err != nil || cur == nil || cur.GetCredentialId() != m.GetCredentialId() {
			return err // settled meanwhile
		}
		if issued {
			return clearPending(tx, ws, id)
		}
		a, err := getAutomation(tx, ws, id)
		if errors.Is(err, ErrNotFound) {
			return clearPending(tx, ws, id)
		}
		if err != nil {
			return err
		}
		undone = true
		if m.GetPrevious() == nil {
			ev = s.rec.Event(ctx, ws, actionCreate, "automation", id, audit.Failure, fmt.Sprintf("undone (%s): its secret %s was not issued", why, m.GetCredentialId()))
			if err := deleteAutomation(tx, ws, id); err != nil {
				return err
			}
			if err := names.Release(tx, ws, a.GetName(), id); err != nil {
				return err
			}
		} else {
			ev = s.rec.Event(ctx, ws, actionRotate, "automation", id, audit.Failure, fmt.Sprintf("undone (%s): its new secret %s was not issued; the previous one stays", why, m.GetCredentialId()))
			a.Credential = m.GetPrevious()
			if err := putAutomation(tx, a); err != nil {
				return err
			}
			if err := clearPending(tx, ws, id); err != nil {
				return err
			}
		}
		return audit.Put(tx, ev)
	})
	return undone, err
}

// splitKey splits a key made by automationKey into workspace and id.
func splitKey(k []byte) (ws, id string, ok bool) {
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] == '/' {
			return string(k[:i]), string(k[i+1:]), i > 0 && i < len(k)-1
		}
	}
	return "", "", false
}

// issueResult is the answer of the credential service to a concurrent write.
type issueResult struct {
	secret string
	info   *credentialv1.CredentialInfo
	err    error
}

// answerErr is what the credential service's answer to op on credential
// cred means for our caller: nil when it issued cred as asked.
func (s *Service) answerErr(ctx context.Context, op string, res issueResult, cred string) error {
	if res.err != nil {
		return s.credErr(ctx, op, res.err)
	}
	if err := checkIssued(res.secret, res.info); err != nil || res.info.GetId() != cred {
		return errMalformedCredential
	}
	return nil
}

// createConcurrently finishes CreateAutomation without an Idempotency-Key:
// the credential service issues the secret while the record (marked
// pending), its name and its audit event are written here.
func (s *Service) createConcurrently(ctx context.Context, a *automationv1.Automation, label string) (*automationv1.CreateAutomationResponse, error) {
	ws := a.GetWorkspaceId()
	cred := ids.New(credentialIDPrefix)
	a.Credential = &automationv1.SecretInfo{Id: cred, Label: label, CreatedAt: a.GetCreatedAt()}
	subject := subjectOf(a)
	ev := s.rec.Event(ctx, ws, actionCreate, "automation", a.Id, audit.Success,
		fmt.Sprintf("name=%q scopes=[%s] teams=[%s] credential=%s", a.Name, strings.Join(a.Scopes, ","), strings.Join(a.TeamIds, ","), cred))
	mark := s.newPending(cred, nil)

	s.pending.begin(ws, a.Id, cred)
	issued := make(chan issueResult, 1)
	go func() {
		resp, err := s.cred.IssueCredential(ctx, &credentialv1.IssueCredentialRequest{
			Subject: subject, Kind: secretKind, Label: label, CredentialId: cred, CreatedAt: a.GetCreatedAt(),
		})
		issued <- issueResult{secret: resp.GetCredential(), info: resp.GetInfo(), err: err}
	}()
	werr := s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := names.Claim(tx, ws, a.Name, a.Id); err != nil {
			return err
		}
		if err := putAutomation(tx, a); err != nil {
			return err
		}
		if err := putPending(tx, ws, a.Id, mark); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	res := <-issued
	ierr := s.answerErr(ctx, "issue", res, cred)
	if ierr == nil && werr == nil {
		s.pending.set(a.Id, cred, pendLive)
		s.lg.Info("automation created", zap.String("automation-id", a.Id), zap.String("workspace-id", ws), zap.String("credential-id", cred),
			zap.Bool("idempotency-key", false))
		return &automationv1.CreateAutomationResponse{Automation: a, Secret: res.secret}, nil
	}

	// One side failed: the secret must not stay live without a record the
	// caller was told about, and the record must not stay without a secret.
	s.pending.set(a.Id, cred, pendFailed)
	dctx, cancel := detached(ctx)
	defer cancel()
	s.revokeSubject(dctx, ws, a.Id, "record or secret not written")
	err := werr
	if ierr != nil {
		err = ierr
	}
	if werr == nil {
		// The record was written: undo it (its secret is not live).
		if _, uerr := s.resolveMarker(dctx, ws, a.Id, mark, false, failureDetail(ierr)); uerr != nil {
			s.lg.Warn("could not undo the record of a failed create; the sweep will", zap.String("automation-id", a.Id), zap.Error(uerr))
			return nil, err
		}
		s.pending.drop(a.Id, cred)
		return nil, err
	}
	if !errors.Is(werr, store.ErrOutcomeUnknown) {
		s.pending.drop(a.Id, cred)
	}
	if !errors.Is(err, ErrNameTaken) {
		s.recordFailure(ctx, ws, actionCreate, a.Id, err)
	}
	return nil, err
}

// rotateConcurrently finishes RotateAutomationSecret without an
// Idempotency-Key, a being the automation as it shows now: the credential
// service rotates while the record, naming the new secret (marked pending,
// with the previous one), and its audit event are written here.
func (s *Service) rotateConcurrently(ctx context.Context, a *automationv1.Automation, label string) (*automationv1.RotateAutomationSecretResponse, error) {
	ws, id := a.GetWorkspaceId(), a.GetId()
	cred := ids.New(credentialIDPrefix)
	now := timestamppb.New(s.now())
	si := &automationv1.SecretInfo{Id: cred, Label: label, CreatedAt: now}
	mark := s.newPending(cred, a.GetCredential())
	ev := s.rec.Event(ctx, ws, actionRotate, "automation", id, audit.Success, fmt.Sprintf("credential=%s label=%q", cred, label))

	s.pending.begin(ws, id, cred)
	rotated := make(chan issueResult, 1)
	go func() {
		resp, err := s.cred.RotateCredential(ctx, &credentialv1.RotateCredentialRequest{
			WorkspaceId: ws, SubjectId: id, Kind: secretKind, Label: label, CredentialId: cred, CreatedAt: now,
		})
		rotated <- issueResult{secret: resp.GetCredential(), info: resp.GetInfo(), err: err}
	}()
	werr := s.db.Update(ctx, func(tx store.WriteTx) error {
		cur, err := getAutomation(tx, ws, id)
		if err != nil {
			return err
		}
		cur.Credential = si
		cur.UpdatedAt = now
		if err := putAutomation(tx, cur); err != nil {
			return err
		}
		if err := putPending(tx, ws, id, mark); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	res := <-rotated
	rerr := s.answerErr(ctx, "rotate", res, cred)
	switch {
	case rerr == nil && werr == nil:
		s.pending.set(id, cred, pendLive)
		s.lg.Info("automation secret rotated", zap.String("automation-id", id), zap.String("workspace-id", ws), zap.String("credential-id", cred),
			zap.Bool("idempotency-key", false))
		return &automationv1.RotateAutomationSecretResponse{Secret: res.secret, Credential: si}, nil
	case rerr == nil:
		// The new secret is live (the old one dead) but not recorded:
		// fail-closed, the caller rotates again; the sweep repairs the
		// record's metadata.
		s.pending.set(id, cred, pendLive)
		if errors.Is(werr, ErrNotFound) {
			// Deleted meanwhile: the new secret must not outlive it.
			s.revokeSubject(ctx, ws, id, "rotated an automation that was deleted")
			return nil, werr
		}
		s.recordFailure(ctx, ws, actionRotate, id, werr)
		return nil, werr
	}
	s.pending.set(id, cred, pendFailed)
	if werr != nil {
		if !errors.Is(werr, store.ErrOutcomeUnknown) {
			s.pending.drop(id, cred)
		}
		s.recordFailure(ctx, ws, actionRotate, id, rerr)
		return nil, rerr
	}
	// The record names a secret the credential service may not have
	// issued: keep it only if it was issued after all, else go back.
	dctx, cancel := detached(ctx)
	defer cancel()
	issued, lerr := s.credentialIssued(dctx, ws, id, cred)
	if lerr == nil {
		_, lerr = s.resolveMarker(dctx, ws, id, mark, issued, failureDetail(rerr))
	}
	if lerr != nil {
		s.lg.Warn("could not settle the record of a failed rotation; the sweep will", zap.String("automation-id", id), zap.Error(lerr))
		return nil, rerr
	}
	s.pending.drop(id, cred)
	return nil, rerr
}
