package vault

import (
	"context"
	"errors"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// actorService is the audit actor kind of VaultInternalService callers.
const actorService = "service"

// Resolve returns an integration secret's value to a trusted internal
// service holding the service token. The decryption, the last-used time and
// the audit event share one transaction: no value leaves the vault without
// its secret.use event on disk.
func (s *Service) Resolve(ctx context.Context, req *vaultv1.ResolveRequest) (*vaultv1.ResolveResponse, error) {
	if err := s.checkServiceToken(ctx); err != nil {
		return nil, err
	}
	ws, name := req.GetWorkspaceId(), req.GetName()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	caller, err := validCaller(req.GetCaller())
	if err != nil {
		return nil, err
	}
	purpose, err := validPurpose(req.GetPurpose())
	if err != nil {
		return nil, err
	}
	if err := existingName(name); err != nil {
		return nil, err
	}
	event := func(target, outcome, detail string) *auditEvent {
		ev := s.rec.Event(ctx, ws, actionUse, "secret", target, outcome, detail)
		ev.ActorKind, ev.ActorId = actorService, caller
		return ev
	}
	detail := "resolve"
	if purpose != "" {
		detail += " purpose=" + quote(purpose)
	}
	if s.keys.sealed() {
		s.recordEvents(ctx, event(name, audit.Failure, failureDetail(ErrSealed, detail)))
		return nil, ErrSealed
	}
	now := s.now()
	var out *secretRecord
	var value []byte
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		clear(value) // a value decrypted by an earlier run of fn
		out, value = nil, nil
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		if err := usable(rec, now, KindIntegration, "resolving is"); err != nil {
			return err
		}
		v, err := s.decrypt(tx, ws, nameKey(rec.GetName()), rec.GetVersion(), rec.GetName())
		if err != nil {
			return err
		}
		rec.LastUsedAt = timestamppb.New(now)
		if err := putSecret(tx, rec); err != nil {
			clear(v)
			return err
		}
		out, value = rec, v
		return audit.Put(tx, event(rec.GetName(), audit.Success, detail))
	})
	if err != nil {
		clear(value)
		s.recordEvents(ctx, event(name, audit.Failure, failureDetail(err, detail)))
		return nil, err
	}
	defer clear(value)
	s.lg.Info("secret resolved", zap.String("workspace-id", ws), zap.String("secret", out.GetName()), zap.String("caller", caller))
	return &vaultv1.ResolveResponse{Secret: present(out, now), Value: string(value)}, nil
}

// RotateKek rotates the key-encryption key online (see RotateKEK).
func (s *Service) RotateKek(ctx context.Context, req *vaultv1.RotateKekRequest) (*vaultv1.RotateKekResponse, error) {
	if err := s.checkServiceToken(ctx); err != nil {
		return nil, err
	}
	src, err := kekSourceOf(req)
	if err != nil {
		return nil, err
	}
	res, err := s.RotateKEKTo(ctx, src)
	if err != nil {
		if !errors.Is(err, ErrSealed) && !errors.Is(err, ErrRotation) {
			s.lg.Error("key-encryption key rotation failed", zap.Error(err))
		}
		return nil, err
	}
	return &vaultv1.RotateKekResponse{KekId: res.KEKID, RetiredKekIds: res.Retired, DataKeysRewrapped: int32(res.Rewrapped)}, nil
}

func quote(s string) string {
	b, _ := jsonString(s)
	return b
}
