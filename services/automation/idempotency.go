package automation

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Retry-safe one-time secrets (PRODUCT.md, "Idempotent creates"):
// CreateAutomation and RotateAutomationSecret honour an Idempotency-Key.
// The response of a call made with one is kept, sealed (package idem), in
// replaysBucket, written in the same transaction as the record it answers
// for; a retry with the same key, caller and body within 24 hours gets it
// again, and issues or rotates nothing. The same key with another body is
// refused (idem.ErrReused, 422 at the gateway).
//
// Creates with one key in this process take turns (a lock on the name) and
// look the replay up once it is their turn, so that a retry arriving while
// the first request is still running gets its result; across replicas the
// store decides: the loser's write fails on the name or the replay key, and
// it revokes what it issued and answers with the winner's result
// (createRaced). A rotation cannot be undone, so keyed rotations of one
// automation take turns everywhere, by a lease in the shared store (takeLease),
// and look the replay up once they hold it. Should the lease not suffice
// (it expired, or the store lost a reply), rotateRaced decides.

// Audit actions of replays: the first response was returned again.
const (
	actionCreateReplay = actionCreate + "_replay"
	actionRotateReplay = actionRotate + "_replay"
)

// replayDetail is the audit detail of every replay.
const replayDetail = "the first response returned again for a retry with the same Idempotency-Key; no secret issued"

// Scopes of Idempotency-Keys: a key is unique within a workspace and method
// (and bound to the caller's credential by package idem).
func createScope(ws string) string { return ws + "|CreateAutomation" }
func rotateScope(ws string) string { return ws + "|RotateAutomationSecret" }

// createLockKey serialises, within this process, creates of one name made
// with an Idempotency-Key (automation ids, the other keys of s.locks, never
// contain '|').
func createLockKey(ws, name string) string { return "create|" + ws + "|" + foldName(name) }

// lookupReplay reads r's replay into resp; false when there is none,
// idem.ErrReused when the key was used with another body.
func (s *Service) lookupReplay(ctx context.Context, r *idem.Request, resp proto.Message) (bool, error) {
	var found bool
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		found, err = idem.Lookup(tx, replaysBucket, r, resp)
		return err
	})
	return found, err
}

// saveReplay stores resp as r's replay in tx; nothing without a key.
func (s *Service) saveReplay(tx store.WriteTx, r *idem.Request, resp proto.Message) error {
	if r == nil {
		return nil
	}
	return idem.Save(tx, replaysBucket, r, resp, s.now())
}

// recordReplay writes the audit event of a replay. The response is only
// returned once it is written: every handing out of a secret is in the
// trail.
func (s *Service) recordReplay(ctx context.Context, ws, action, id string) error {
	ev := s.rec.Event(ctx, ws, action, "automation", id, audit.Success, replayDetail)
	if err := audit.Record(ctx, s.db, ev); err != nil {
		return err
	}
	s.lg.Info("automation request replayed for a retry with the same Idempotency-Key",
		zap.String("automation-id", id), zap.String("workspace-id", ws), zap.String("action", action))
	return nil
}

// replayCreate answers a create from its replay, if there is one (nil,
// nil when there is none).
func (s *Service) replayCreate(ctx context.Context, ws string, r *idem.Request) (*automationv1.CreateAutomationResponse, error) {
	resp := &automationv1.CreateAutomationResponse{}
	found, err := s.lookupReplay(ctx, r, resp)
	if err != nil || !found {
		return nil, err
	}
	if err := s.recordReplay(ctx, ws, actionCreateReplay, resp.GetAutomation().GetId()); err != nil {
		return nil, err
	}
	return resp, nil
}

// detached is a context for the steps that must happen after the caller
// gave up (compensation, and finding out whether a commit applied).
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
}

// errIsRace reports a failed write that another request with the same
// Idempotency-Key may explain: its Save won (store.ErrExists), it took the
// name first (ErrNameTaken), or the commit's outcome is unknown (ours may
// have applied).
func errIsRace(err error) bool {
	return errors.Is(err, store.ErrExists) || errors.Is(err, ErrNameTaken) || errors.Is(err, store.ErrOutcomeUnknown)
}

// replayRotate answers a rotation from its replay, if there is one (nil,
// nil when there is none).
func (s *Service) replayRotate(ctx context.Context, ws, id string, r *idem.Request) (*automationv1.RotateAutomationSecretResponse, error) {
	resp := &automationv1.RotateAutomationSecretResponse{}
	found, err := s.lookupReplay(ctx, r, resp)
	if err != nil || !found {
		return nil, err
	}
	if err := s.recordReplay(ctx, ws, actionRotateReplay, id); err != nil {
		return nil, err
	}
	return resp, nil
}

// createRaced decides a keyed create whose write failed in a way another
// request with the same Idempotency-Key may explain (errIsRace). done is
// false when none did: the caller fails as any create would.
//
//   - Our own commit applied (its reply was lost): our response.
//   - Another request with the key was recorded first: our secret is
//     revoked (nobody saw it) and the winner's response returned, or
//     idem.ErrReused when the winner had another body.
func (s *Service) createRaced(ctx context.Context, ws string, r *idem.Request, a *automationv1.Automation,
	resp *automationv1.CreateAutomationResponse) (out *automationv1.CreateAutomationResponse, done bool, err error) {
	dctx, cancel := detached(ctx)
	defer cancel()
	won := &automationv1.CreateAutomationResponse{}
	found, err := s.lookupReplay(dctx, r, won)
	switch {
	case errors.Is(err, idem.ErrReused):
		s.revokeSubject(ctx, ws, a.GetId(), "another request with the same Idempotency-Key was recorded first")
		return nil, true, err
	case err != nil || !found:
		return nil, false, nil
	case won.GetAutomation().GetId() == a.GetId():
		s.lg.Info("automation created (the store's reply was lost; the commit had applied)",
			zap.String("automation-id", a.GetId()), zap.String("workspace-id", ws))
		return resp, true, nil
	}
	s.revokeSubject(ctx, ws, a.GetId(), "another request with the same Idempotency-Key was recorded first")
	if err := s.recordReplay(dctx, ws, actionCreateReplay, won.GetAutomation().GetId()); err != nil {
		return nil, true, err
	}
	return won, true, nil
}

// rotateRaced decides a keyed rotation whose write failed with
// store.ErrExists or store.ErrOutcomeUnknown. done is false when no other
// request with the key explains it: the caller fails as any rotation would.
//
// A rotation cannot be undone: when two requests with one key rotated at
// the same moment (on two replicas), the one the credential service
// rotated last holds the live secret. If that is ours, the record is moved
// to it and our response returned (the replay kept under the key names the
// secret our rotation killed; a retry would get that one). If it is the
// winner's, ours is already dead and the winner's response is returned (or
// idem.ErrReused when the winner had another body).
func (s *Service) rotateRaced(ctx context.Context, ws, id string, r *idem.Request, si *automationv1.SecretInfo,
	resp *automationv1.RotateAutomationSecretResponse, ev *auditv1.AuditEvent) (out *automationv1.RotateAutomationSecretResponse, done bool, err error) {
	dctx, cancel := detached(ctx)
	defer cancel()
	won := &automationv1.RotateAutomationSecretResponse{}
	found, lerr := s.lookupReplay(dctx, r, won)
	switch {
	case lerr != nil && !errors.Is(lerr, idem.ErrReused), lerr == nil && !found:
		return nil, false, nil
	case found && won.GetCredential().GetId() == si.GetId():
		s.lg.Info("automation secret rotated (the store's reply was lost; the commit had applied)",
			zap.String("automation-id", id), zap.String("workspace-id", ws), zap.String("credential-id", si.GetId()))
		return resp, true, nil
	}
	var live bool
	err = s.db.Update(dctx, func(tx store.WriteTx) error {
		live = false
		cur, err := getAutomation(tx, ws, id)
		if err != nil {
			return err
		}
		if !newer(si, cur.GetCredential()) {
			return nil // the winner rotated after us: our secret is dead
		}
		live = true
		cur.Credential = si
		cur.UpdatedAt = timestamppb.New(s.now())
		if err := putAutomation(tx, cur); err != nil {
			return err
		}
		if err := clearPending(tx, ws, id); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	if errors.Is(err, ErrNotFound) {
		s.revokeSubject(ctx, ws, id, "rotated an automation that was deleted")
		return nil, true, err
	}
	if err != nil {
		return nil, true, err
	}
	if live {
		s.lg.Warn("two requests with one Idempotency-Key rotated an automation's secret at the same moment; the later one's secret is live and returned, the key's replay names the other",
			zap.String("automation-id", id), zap.String("workspace-id", ws), zap.String("credential-id", si.GetId()))
		return resp, true, nil
	}
	if lerr != nil {
		return nil, true, lerr
	}
	if err := s.recordReplay(dctx, ws, actionRotateReplay, id); err != nil {
		return nil, true, err
	}
	return won, true, nil
}

// leaseTTL bounds a keyed rotation's lease: a replica that dies holding one
// delays other keyed rotations of that automation by at most this much.
const leaseTTL = 30 * time.Second

func leaseKey(ws, id string) []byte { return store.Key(ws, id) }

// leases makes keyed rotations of one automation take turns across replicas.
func (s *Service) leases() store.Leases {
	return store.Leases{Bucket: leasesBucket, TTL: leaseTTL, Poll: 20 * time.Millisecond, Now: s.now}
}

// takeLease waits until no replica holds the rotation lease of automation id,
// takes it, and returns its token.
func (s *Service) takeLease(ctx context.Context, ws, id string) ([]byte, error) {
	return s.leases().Take(ctx, s.db, leaseKey(ws, id))
}

// dropLease ends the lease tok in tx, if it is still held.
func dropLease(tx store.WriteTx, ws, id string, tok []byte) error {
	return store.Leases{Bucket: leasesBucket}.Drop(tx, leaseKey(ws, id), tok)
}

// releaseLease ends the lease tok in a transaction of its own, for a
// rotation that did not commit (best effort: it expires anyway).
func (s *Service) releaseLease(ctx context.Context, ws, id string, tok []byte) {
	ctx, cancel := detached(ctx)
	defer cancel()
	if err := s.leases().Release(ctx, s.db, leaseKey(ws, id), tok); err != nil && !errors.Is(err, store.ErrOutcomeUnknown) {
		s.lg.Warn("could not end a rotation lease; it expires by itself", zap.String("automation-id", id), zap.Duration("ttl", leaseTTL), zap.Error(err))
	}
}

// clearLeases ends the rotation leases a process that died mid-rotation
// left in a store only this process writes (see store.Leases.ClearAll).
func clearLeases(ctx context.Context, db store.Backend, lg *zap.Logger) {
	n, err := store.Leases{Bucket: leasesBucket}.ClearAll(ctx, db)
	if err != nil {
		lg.Warn("could not end the rotation leases left by an earlier process; they expire by themselves", zap.Duration("ttl", leaseTTL), zap.Error(err))
	} else if n > 0 {
		lg.Info("ended rotation leases left by an earlier process", zap.Int("leases", n))
	}
}
