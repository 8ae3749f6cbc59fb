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

// Sweep revokes the live subjects of kind that were created before `before`
// and that the calling service holds no record of (reconcile reports false):
// the leftovers of creates that died between the credential service issuing
// a credential and the record being written. Nobody ever received those
// credentials; this makes sure they cannot be used either. Subjects created
// after `before` are left alone: their creates may still be in flight. It
// retries until the credential service answers or ctx ends, and returns how
// many subjects it revoked. reconcile may also repair the service's record
// from the subject's live credentials (e.g. metadata a rotation killed
// half-way did not write).
func Sweep(ctx context.Context, c credentialv1.CredentialInternalServiceClient, lg *zap.Logger,
	kind credentialv1.SubjectKind, kindName string, before time.Time, reconcile func(*credentialv1.SubjectSummary) (bool, error)) int {
	backoff := 100 * time.Millisecond
	for {
		n, err := sweepOnce(ctx, c, lg, kind, kindName, before, reconcile)
		if err == nil {
			lg.Info("orphan sweep finished", zap.String("subject-kind", kindName), zap.Int("revoked", n))
			return n
		}
		lg.Debug("orphan sweep will retry", zap.String("subject-kind", kindName), zap.Error(err))
		select {
		case <-ctx.Done():
			return n
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

func sweepOnce(ctx context.Context, c credentialv1.CredentialInternalServiceClient, lg *zap.Logger,
	kind credentialv1.SubjectKind, kindName string, before time.Time, reconcile func(*credentialv1.SubjectSummary) (bool, error)) (int, error) {
	revoked, token := 0, ""
	for {
		resp, err := c.ListSubjects(ctx, &credentialv1.ListSubjectsRequest{Kind: kind, PageSize: 1000, PageToken: token})
		if err != nil {
			return revoked, err
		}
		for _, sub := range resp.GetSubjects() {
			if sub.GetCreatedAt() == nil || !sub.GetCreatedAt().AsTime().Before(before) {
				continue
			}
			ok, err := reconcile(sub)
			if err != nil {
				return revoked, err
			}
			if ok {
				continue
			}
			if _, err := c.RevokeSubject(ctx, &credentialv1.RevokeSubjectRequest{WorkspaceId: sub.GetWorkspaceId(), SubjectId: sub.GetId()}); err != nil && status.Code(err) != codes.NotFound {
				return revoked, err
			}
			lg.Info("revoked an unrecorded subject", zap.String("subject-kind", kindName), zap.String("subject-id", sub.GetId()), zap.String("workspace-id", sub.GetWorkspaceId()))
			revoked++
		}
		if token = resp.GetNextPageToken(); token == "" {
			return revoked, nil
		}
	}
}
