package credential

// Idempotency-Key on the creates that return a one-time credential
// (CreateWorkspace, CreateMember), with kit/idem: a retry with the same key
// and body within idem.TTL gets the first response again and issues
// nothing; the same key with another body is idem.ErrReused (422 at the
// gateway). The replay is written in the same update as what it answers
// for, so a response is either kept for its retries or was never issued.

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Audit actions of a retry answered from its replay: nothing was created.
const (
	actionCreateWorkspaceReplay = "workspace.create_replay"
	actionCreateMemberReplay    = "member.create_replay"
)

// lookupReplay reads the replay of r into resp. r == nil (no
// Idempotency-Key) finds nothing.
func lookupReplay[T proto.Message](ctx context.Context, s *Service, r *idem.Request, resp T) (T, bool, error) {
	if r == nil {
		return resp, false, nil
	}
	var found bool
	err := s.db.View(ctx, func(tx store.ReadTx) (err error) {
		found, err = getReplay(tx, r, resp)
		return err
	})
	return resp, found && err == nil, err
}

// saveReplay keeps resp as the replay of r, inside the update that created
// what resp holds (nothing when r is nil).
func (s *Service) saveReplay(tx store.WriteTx, r *idem.Request, resp proto.Message) error {
	if r == nil {
		return nil
	}
	return putReplay(tx, r, resp, s.cfg.Now())
}

// lostRace is called with the error of a create's update. When a concurrent
// request with the same key committed first (store.ErrExists from
// saveReplay), the update rolled back whole — the credential issued with it
// included, so there is nothing to undo — and it returns the winner's
// response (or idem.ErrReused when the winner sent another body). Otherwise
// it reports not found and the caller returns err.
//
// The winner's replay is read in an Update, not a View: the store orders an
// update after every commit that ended before it, while a write refused in
// a group commit hears of it before the rest of its group is committed, and
// a View then could still miss the winner.
func lostRace[T proto.Message](ctx context.Context, s *Service, err error, r *idem.Request, resp T) (T, bool, error) {
	if r == nil || !errors.Is(err, store.ErrExists) {
		return resp, false, nil
	}
	var found bool
	err = s.db.Update(ctx, func(tx store.WriteTx) (err error) {
		found, err = getReplay(tx, r, resp)
		return err
	})
	if err == nil && !found {
		// The winner's update failed after all: this one did not happen
		// either, and a retry will.
		err = fmt.Errorf("%w: a concurrent request with the same Idempotency-Key did not complete; retry", store.ErrUnavailable)
	}
	return resp, found && err == nil, err
}

// auditReplay records that a retry got the first response again.
func (s *Service) auditReplay(ctx context.Context, ws, action, targetKind, targetID string) error {
	ev := s.event(ctx, ws, action, targetKind, targetID, audit.Success,
		"the first response returned again for a retry with the same Idempotency-Key; nothing created")
	if err := audit.Record(ctx, s.db, ev); err != nil {
		return err
	}
	s.lg.Info("create replayed for a retry", zap.String("action", action), zap.String("workspace-id", ws), zap.String("target-id", targetID))
	return nil
}
