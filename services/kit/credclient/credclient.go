// Package credclient is how services call the credential service's internal
// API: its errors are translated for their own callers, and compensating
// revocations run even after the caller's request has ended.
package credclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// ErrUnavailable means the credential service could not be reached. Each
// service maps it to Unavailable with a message of its own.
var ErrUnavailable = errors.New("the credential service is unavailable; try again")

// CompensateTimeout bounds a compensating call made after the caller's
// request has already failed (or was cancelled).
const CompensateTimeout = 10 * time.Second

// Err turns a failed call to the credential service into an error for our
// caller. Statuses are never passed on wholesale: an Unavailable carries the
// credential service's dial target, which is none of the caller's business,
// and an Unauthenticated would tell a caller with a good token that its
// credential is bad. notFound is what a NotFound subject means to the caller
// (e.g. "automation not found").
func Err(ctx context.Context, lg *zap.Logger, op string, err, notFound error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("credential service %s: %v", op, err) // Internal, cause logged by the server kit
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		lg.Warn("credential service call failed", zap.String("op", op), zap.String("code", st.Code().String()), zap.String("error", st.Message()))
		return ErrUnavailable
	case codes.Canceled:
		return context.Canceled
	case codes.NotFound:
		return notFound
	case codes.InvalidArgument, codes.FailedPrecondition, codes.ResourceExhausted:
		// Written for callers by the credential service (e.g. a label it
		// refuses): pass on as is.
		return st.Err()
	}
	// Anything else means the two services disagree: Internal, logged.
	return fmt.Errorf("credential service %s: %s: %s", op, st.Code(), st.Message())
}

// Revoke revokes every credential of a subject as a compensating action
// after the caller's request failed: it runs even if ctx is done. kind names
// the subject in logs ("automation", "agent").
func Revoke(ctx context.Context, c credentialv1.CredentialInternalServiceClient, lg *zap.Logger, kind, ws, id, why string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CompensateTimeout)
	defer cancel()
	_, err := c.RevokeSubject(ctx, &credentialv1.RevokeSubjectRequest{WorkspaceId: ws, SubjectId: id})
	if err != nil && status.Code(err) != codes.NotFound {
		// The credentials were never handed out, but they are live until
		// revoked. The id lets an operator find and revoke them.
		lg.Error("compensating revocation failed; unrecorded credentials may be live",
			zap.String("subject-kind", kind), zap.String("subject-id", id), zap.String("workspace-id", ws), zap.String("why", why), zap.Error(err))
		return
	}
	lg.Warn("revoked the credentials of a subject that was not recorded",
		zap.String("subject-kind", kind), zap.String("subject-id", id), zap.String("workspace-id", ws), zap.String("why", why))
}

// Sweeper revokes the live subjects of one kind that the calling service
// holds no record of (Recorded reports false): the leftovers of creates that
// died between the credential service issuing a credential and the record
// being written. Nobody ever received those credentials; this makes sure they
// cannot be used either.
//
// It only ever judges subjects its own store could have recorded: those
// created after the store was (unless the store was re-initialised on
// purpose) and before Before (later creates may still be in flight).
type Sweeper struct {
	Client   credentialv1.CredentialInternalServiceClient
	Logger   *zap.Logger
	Kind     credentialv1.SubjectKind
	KindName string // "automation", "agent": for logs and messages
	Store    store.Info
	Before   time.Time
	Recorded func(*credentialv1.SubjectSummary) (bool, error)
	// Settle (optional) runs first in every sweep, with Before: the service
	// decides the records it wrote while their credentials were being
	// issued, by writes that began before it and are no longer running.
	Settle func(ctx context.Context, before time.Time) error
	// After is the retry timer (default time.After): the injected clock.
	After func(time.Duration) <-chan time.Time
}

// Run sweeps, retrying until the credential service answers or ctx ends,
// and returns how many subjects it revoked.
func (s Sweeper) Run(ctx context.Context) int {
	after := s.After
	if after == nil {
		after = time.After
	}
	backoff := 100 * time.Millisecond
	for {
		n, err := s.once(ctx)
		if err == nil {
			s.Logger.Info("orphan sweep finished", zap.String("subject-kind", s.KindName), zap.Int("revoked", n))
			return n
		}
		s.Logger.Debug("orphan sweep will retry", zap.String("subject-kind", s.KindName), zap.Error(err))
		select {
		case <-ctx.Done():
			return n
		case <-after(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// judged reports whether the sweep may judge sub.
func (s Sweeper) judged(sub *credentialv1.SubjectSummary) bool {
	if sub.GetCreatedAt() == nil {
		return false
	}
	t := sub.GetCreatedAt().AsTime()
	if !t.Before(s.Before) {
		return false
	}
	return s.Store.Reinit || s.Store.CreatedAt.IsZero() || !t.Before(s.Store.CreatedAt)
}

func (s Sweeper) once(ctx context.Context) (int, error) {
	if s.Settle != nil {
		if err := s.Settle(ctx, s.Before); err != nil {
			return 0, err
		}
	}
	revoked, token := 0, ""
	for {
		resp, err := s.Client.ListSubjects(ctx, &credentialv1.ListSubjectsRequest{Kind: s.Kind, PageSize: 1000, PageToken: token})
		if err != nil {
			return revoked, err
		}
		for _, sub := range resp.GetSubjects() {
			if !s.judged(sub) {
				continue
			}
			ok, err := s.Recorded(sub)
			if err != nil {
				return revoked, err
			}
			if ok {
				continue
			}
			if _, err := s.Client.RevokeSubject(ctx, &credentialv1.RevokeSubjectRequest{WorkspaceId: sub.GetWorkspaceId(), SubjectId: sub.GetId()}); err != nil && status.Code(err) != codes.NotFound {
				return revoked, err
			}
			s.Logger.Info("revoked an unrecorded subject", zap.String("subject-kind", s.KindName), zap.String("subject-id", sub.GetId()), zap.String("workspace-id", sub.GetWorkspaceId()))
			revoked++
		}
		if token = resp.GetNextPageToken(); token == "" {
			return revoked, nil
		}
	}
}

// ErrStoreLost is returned by CheckNewStore.
var ErrStoreLost = errors.New("store lost")

// CheckNewStore is called at start-up with the service's store. When this
// start has just created it empty (and not on purpose, see
// store.Info.Reinit) while the credential service holds live subjects of the
// kind, that store existed and is gone: it releases the store (store.Release)
// and fails with a message naming the store and what to do; the caller must
// not start. It waits up to timeout for the credential service: the first
// start of a store cannot be judged without it.
func CheckNewStore(c credentialv1.CredentialInternalServiceClient, kind credentialv1.SubjectKind, kindName string, db store.Backend, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := checkNewStore(ctx, c, kind, kindName, db.Info())
	if err != nil {
		store.Release(db)
	}
	return err
}

func checkNewStore(ctx context.Context, c credentialv1.CredentialInternalServiceClient, kind credentialv1.SubjectKind, kindName string, info store.Info) error {
	if !info.Created || info.Reinit {
		return nil
	}
	backoff := 50 * time.Millisecond
	for {
		resp, err := c.ListSubjects(ctx, &credentialv1.ListSubjectsRequest{Kind: kind, PageSize: 1})
		if err == nil {
			if len(resp.GetSubjects()) == 0 {
				return nil
			}
			return fmt.Errorf("%w: the %s store %s was just created empty, but the credential service holds live %s credentials issued before it: restore %s from a backup (backlogd restore), or start with -init-store=%s to begin empty on purpose (those credentials are then revoked)",
				ErrStoreLost, kindName, info.Name, kindName, info.Name, kindName)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the %s store %s is new, and the credential service could not confirm that no %s data existed before it: %v", kindName, info.Name, kindName, err)
		case <-time.After(backoff):
		}
		if backoff < time.Second {
			backoff *= 2
		}
	}
}

// Sweep timing for Keep.
const (
	// SweepEvery is how often the leading replica sweeps again.
	SweepEvery = 10 * time.Minute
	// SweepGrace: a subject younger than this is never judged by a repeated
	// sweep (a create in flight on some replica may not have written its
	// record yet); a create takes milliseconds.
	SweepGrace = time.Minute
)

// Keep runs the sweep on the one replica, among those sharing db, that
// leads the job "orphan-sweep" (store.Leadership), until ctx ends: first
// with s.Before (the process's start) when db is a store only this process
// writes, then every SweepEvery judging only subjects older than
// SweepGrace. On a shared store every sweep uses the grace: other replicas
// are serving creates while this one starts. firstDone (optional) is
// called after the first sweep.
func (s Sweeper) Keep(ctx context.Context, db store.Backend, now func() time.Time, firstDone func()) {
	after := s.After
	if after == nil {
		after = time.After
	}
	private := db.Info().Engine == "bbolt" // bbolt: one process owns the file
	first := true
	lead := store.Leadership{DB: db, Job: "orphan-sweep", Logger: s.Logger, Sole: private}
	lead.Run(ctx, func(ctx context.Context) {
		for ctx.Err() == nil {
			sw := s
			if !first || !private {
				sw.Before = now().Add(-SweepGrace)
			}
			sw.Run(ctx)
			if first && firstDone != nil {
				firstDone()
			}
			first = false
			select {
			case <-ctx.Done():
			case <-after(SweepEvery):
			}
		}
	})
}
