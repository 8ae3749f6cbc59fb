package credential

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/store"
)

// Limits of the console's pending sign-ins.
const (
	consoleDefaultSignInTTL = 5 * time.Minute
	consoleMaxSignInTTL     = 10 * time.Minute
	consoleMaxSealedBytes   = 4 << 10
)

// errSignInNotFound is the one answer for a code that is unknown, already
// used or expired: which of the three is not told.
var errSignInNotFound = errors.New("this sign-in link is unknown, already used or expired: run ./backlog.sh console again for a new one")

// consoleService serves ConsoleService over the credential store.
type consoleService struct {
	consolev1.UnsafeConsoleServiceServer
	s *Service
}

func validCodeHash(h []byte) error {
	if len(h) != 32 {
		return errs.Invalid("code_hash", "must be the 32-byte SHA-256 of the sign-in code")
	}
	return nil
}

// CreateSignIn stores a pending sign-in for the calling member, to expire
// after its TTL.
func (c consoleService) CreateSignIn(ctx context.Context, req *consolev1.CreateSignInRequest) (*consolev1.CreateSignInResponse, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return nil, errs.Unauthenticated(auth.MsgMissing)
	}
	if p.CredentialKind != credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL || p.SubjectKind != credentialv1.SubjectKind_SUBJECT_KIND_MEMBER {
		return nil, errs.Forbidden("only a workspace member's personal access token can make a console sign-in link")
	}
	if err := validCodeHash(req.GetCodeHash()); err != nil {
		return nil, err
	}
	if n := len(req.GetSealed()); n == 0 || n > consoleMaxSealedBytes {
		return nil, errs.Invalid("sealed", "must hold 1 to %d bytes", consoleMaxSealedBytes)
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	switch {
	case req.GetTtlSeconds() == 0:
		ttl = consoleDefaultSignInTTL
	case ttl < time.Second || ttl > consoleMaxSignInTTL:
		return nil, errs.Invalid("ttl_seconds", "must be between 1 and %d", int(consoleMaxSignInTTL/time.Second))
	}
	exp := c.s.cfg.Now().Add(ttl)
	rec := &consolev1.RedeemSignInResponse{Sealed: req.GetSealed(), WorkspaceId: p.WorkspaceId, MemberId: p.SubjectId}
	err := c.s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := store.Put(tx, bucketConsoleSignIns, req.GetCodeHash(), rec, store.IfAbsent(), store.ExpiresAt(exp)); err != nil {
			if errors.Is(err, store.ErrExists) {
				return errs.Invalid("code_hash", "is already in use: make a new code")
			}
			return err
		}
		return audit.Put(tx, c.s.event(ctx, p.WorkspaceId, "console.sign_in_link.create", "member", p.SubjectId, audit.Success, ""))
	})
	if err != nil {
		return nil, err
	}
	return &consolev1.CreateSignInResponse{ExpiresAt: timestamppb.New(exp)}, nil
}

// RedeemSignIn deletes the pending sign-in of a code and returns it: a second
// redemption, through this replica or any other, finds nothing.
func (c consoleService) RedeemSignIn(ctx context.Context, req *consolev1.RedeemSignInRequest) (*consolev1.RedeemSignInResponse, error) {
	if err := validCodeHash(req.GetCodeHash()); err != nil {
		return nil, err
	}
	var out *consolev1.RedeemSignInResponse
	err := c.s.db.Update(ctx, func(tx store.WriteTx) error {
		out = nil
		rec := &consolev1.RedeemSignInResponse{}
		ok, err := store.Get(tx, bucketConsoleSignIns, req.GetCodeHash(), rec)
		if err != nil {
			return err
		}
		if !ok {
			return errSignInNotFound
		}
		if err := tx.Delete(bucketConsoleSignIns, req.GetCodeHash()); err != nil {
			return err
		}
		out = rec
		return audit.Put(tx, c.s.event(ctx, rec.WorkspaceId, "console.sign_in_link.redeem", "member", rec.MemberId, audit.Success, ""))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// consoleMaxSessionRecord bounds how long an ended session is remembered.
const consoleMaxSessionRecord = 24 * time.Hour

// EndSession remembers a signed-out session until it would have expired.
func (c consoleService) EndSession(ctx context.Context, req *consolev1.EndSessionRequest) (*consolev1.EndSessionResponse, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return nil, errs.Unauthenticated(auth.MsgMissing)
	}
	if p.CredentialKind != credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL {
		return nil, errs.Forbidden("only the session's personal access token can end a console session")
	}
	if len(req.GetSessionHash()) != 32 {
		return nil, errs.Invalid("session_hash", "must be the 32-byte SHA-256 of the session id")
	}
	now := c.s.cfg.Now()
	exp := req.GetExpiresAt().AsTime()
	if !req.GetExpiresAt().IsValid() || !exp.After(now) {
		return &consolev1.EndSessionResponse{}, nil // already over
	}
	if limit := now.Add(consoleMaxSessionRecord); exp.After(limit) {
		exp = limit
	}
	err := c.s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := store.Put(tx, bucketConsoleEnded, req.GetSessionHash(), &consolev1.EndSessionResponse{}, store.ExpiresAt(exp)); err != nil {
			return err
		}
		return audit.Put(tx, c.s.event(ctx, p.WorkspaceId, "console.sign_out", "member", p.SubjectId, audit.Success, ""))
	})
	if err != nil {
		return nil, err
	}
	return &consolev1.EndSessionResponse{}, nil
}

// CheckSession tells whether a session was ended.
func (c consoleService) CheckSession(ctx context.Context, req *consolev1.CheckSessionRequest) (*consolev1.CheckSessionResponse, error) {
	if len(req.GetSessionHash()) != 32 {
		return nil, errs.Invalid("session_hash", "must be the 32-byte SHA-256 of the session id")
	}
	var ended bool
	err := c.s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		ended, err = store.Get(tx, bucketConsoleEnded, req.GetSessionHash(), &consolev1.EndSessionResponse{})
		return err
	})
	if err != nil {
		return nil, err
	}
	return &consolev1.CheckSessionResponse{Ended: ended}, nil
}
