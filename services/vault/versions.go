package vault

// Versions: every value a secret takes is kept, sealed like the current one
// and bound to its version number, so that an update can be undone with a
// rollback (which makes an old value current again as a new version). The
// last maxVersions are kept; their metadata is listable, their values never
// leave the vault except by being used.

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	vaultstorev1 "github.com/backlog/controlplane/gen/go/backlog/vaultstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/store"
)

type versionRecord = vaultstorev1.VersionRecord

// maxVersions is how many versions of a secret's value are kept, the
// current one included.
const maxVersions = 10

const actionRollback = "secret.rollback"

// ErrVersionNotFound: a rollback named a version that is not kept.
var ErrVersionNotFound = errors.New("secret version not found")

// putVersion keeps v as a version of ws's secret name and drops the
// oldest beyond maxVersions.
func putVersion(tx store.WriteTx, ws, name string, v *versionRecord) error {
	if err := store.Put(tx, versionsBucket, versionKey(ws, name, v.GetVersion()), v); err != nil {
		return err
	}
	var keys [][]byte
	_, err := tx.Scan(versionsBucket, store.ScanOptions{Prefix: versionsPrefix(ws, name), Reverse: true}, func(k, _ []byte) (bool, error) {
		keys = append(keys, append([]byte(nil), k...))
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys[min(len(keys), maxVersions):] {
		if err := tx.Delete(versionsBucket, k); err != nil {
			return err
		}
	}
	return nil
}

// keepCurrent makes sure rec's current value is kept as a version: secrets
// stored before versions were kept have none until their next change.
func keepCurrent(tx store.WriteTx, rec *secretRecord) error {
	ws, name := rec.GetWorkspaceId(), rec.GetName()
	if v, err := tx.Get(versionsBucket, versionKey(ws, name, rec.GetVersion())); err != nil || v != nil {
		return err
	}
	sealed, err := sealedValue(tx, ws, name)
	if err != nil || sealed == nil {
		return err
	}
	return putVersion(tx, ws, name, &versionRecord{
		Version: rec.GetVersion(), CreatedAt: proto.CloneOf(rec.GetUpdatedAt()),
		Sealed: append([]byte(nil), sealed...), AllowedHosts: rec.GetAllowedHosts(),
	})
}

// deleteVersions drops every kept version of ws's secret name.
func deleteVersions(tx store.WriteTx, ws, name string) error {
	var keys [][]byte
	_, err := tx.Scan(versionsBucket, store.ScanOptions{Prefix: versionsPrefix(ws, name)}, func(k, _ []byte) (bool, error) {
		keys = append(keys, append([]byte(nil), k...))
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(versionsBucket, k); err != nil {
			return err
		}
	}
	return nil
}

// listVersions returns the metadata of rec's kept versions, newest first.
// A secret stored before versions were kept shows its current one.
func listVersions(tx store.ReadTx, rec *secretRecord) ([]*vaultv1.SecretVersion, error) {
	var out []*vaultv1.SecretVersion
	_, err := tx.Scan(versionsBucket, store.ScanOptions{Prefix: versionsPrefix(rec.GetWorkspaceId(), rec.GetName()), Reverse: true}, func(_, v []byte) (bool, error) {
		vr := &versionRecord{}
		if err := proto.Unmarshal(v, vr); err != nil {
			return false, fmt.Errorf("decode secret version: %w", err)
		}
		out = append(out, &vaultv1.SecretVersion{
			Version: vr.GetVersion(), CreatedAt: vr.GetCreatedAt(), CreatedBy: vr.GetCreatedBy(),
			Current: vr.GetVersion() == rec.GetVersion(), RestoredFrom: vr.GetRestoredFrom(),
		})
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 || out[0].GetVersion() != rec.GetVersion() {
		cur := &vaultv1.SecretVersion{Version: rec.GetVersion(), CreatedAt: proto.CloneOf(rec.GetUpdatedAt()), Current: true}
		out = append([]*vaultv1.SecretVersion{cur}, out...)
	}
	return out, nil
}

// ListSecretVersions lists a secret's kept versions, metadata only.
func (s *Service) ListSecretVersions(ctx context.Context, req *vaultv1.ListSecretVersionsRequest) (*vaultv1.ListSecretVersionsResponse, error) {
	ws, name := req.GetWorkspaceId(), req.GetName()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsRead); err != nil {
		return nil, err
	}
	if err := existingName(name); err != nil {
		return nil, err
	}
	resp := &vaultv1.ListSecretVersionsResponse{}
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		resp.Versions, err = listVersions(tx, rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// RollbackSecret makes a kept version's value, and the allowed hosts that
// went with it, current again as a new version. Like a value update it
// reactivates a revoked secret; an expired one needs a new expiry first.
func (s *Service) RollbackSecret(ctx context.Context, req *vaultv1.RollbackSecretRequest) (*vaultv1.RollbackSecretResponse, error) {
	ws, name := req.GetWorkspaceId(), req.GetName()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if req.GetVersion() <= 0 {
		return nil, errs.Invalid("version", "is required: a kept version number (see the secret's versions)")
	}
	p, err := auth.Require(ctx, ws, auth.SecretsWrite)
	if err != nil {
		return nil, err
	}
	if err := existingName(name); err != nil {
		return nil, err
	}
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	now := s.now()
	var out *secretRecord
	var from int64
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		if stateAt(rec, now) == StateExpired {
			return errs.Invalid(fieldExpiresAt, "secret %q expired at %s: extend its expiry (PATCH expiresAt) before rolling back",
				rec.GetName(), rec.GetExpiresAt().AsTime().UTC().Format("2006-01-02T15:04:05Z07:00"))
		}
		if err := keepCurrent(tx, rec); err != nil {
			return err
		}
		vr := &versionRecord{}
		ok, err := store.Get(tx, versionsBucket, versionKey(ws, name, req.GetVersion()), vr)
		if err != nil {
			return err
		}
		if !ok {
			return fail(ErrVersionNotFound, "secret %q has no kept version %d (the last %d versions are kept; list them with GET …/versions)",
				rec.GetName(), req.GetVersion(), maxVersions)
		}
		dk, err := s.dataKeyForWrite(tx, ws)
		if err != nil {
			return err
		}
		v, err := s.openVersion(tx, ws, rec.GetName(), vr)
		if err != nil {
			return err
		}
		defer clear(v)
		rec.Version++
		sealed, err := sealValue(dk, ws, nameKey(rec.GetName()), rec.Version, v)
		if err != nil {
			return err
		}
		if err := putSealedValue(tx, ws, name, sealed); err != nil {
			return err
		}
		rec.AllowedHosts = vr.GetAllowedHosts()
		detail := fmt.Sprintf("restored=%d version=%d", vr.GetVersion(), rec.Version)
		if rec.State == StateRevoked {
			rec.State, rec.RevokedAt = StateActive, nil
			detail += " reactivated"
		}
		rec.UpdatedAt = timestamppb.New(now)
		if err := putSecret(tx, rec); err != nil {
			return err
		}
		if err := putVersion(tx, ws, name, &versionRecord{
			Version: rec.Version, CreatedAt: timestamppb.New(now), CreatedBy: p.GetSubjectId(),
			Sealed: sealed, AllowedHosts: rec.GetAllowedHosts(), RestoredFrom: vr.GetVersion(),
		}); err != nil {
			return err
		}
		out, from = rec, vr.GetVersion()
		if err := s.secretEvent(tx, EventSecretUpdated, rec, now, "fields", "value", "version", strconv.FormatInt(rec.Version, 10),
			"restoredFrom", strconv.FormatInt(vr.GetVersion(), 10)); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionRollback, "secret", rec.GetName(), audit.Success, detail))
	})
	if err != nil {
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrVersionNotFound) {
			s.recordFailure(ctx, ws, actionRollback, name, err, "")
		}
		return nil, err
	}
	s.lg.Info("secret rolled back", zap.String("workspace-id", ws), zap.String("secret", out.GetName()),
		zap.Int64("restored", from), zap.Int64("version", out.GetVersion()))
	return &vaultv1.RollbackSecretResponse{Secret: present(out, now)}, nil
}

// openVersion decrypts a kept version's value. The caller clears it.
func (s *Service) openVersion(tx store.ReadTx, ws, name string, vr *versionRecord) ([]byte, error) {
	ver, err := sealedBy(vr.GetSealed())
	if err != nil {
		return nil, fail(ErrUnreadable, "version %d of secret %q is unreadable", vr.GetVersion(), name)
	}
	dk, err := s.dataKeyFor(tx, ws, ver)
	if err != nil {
		return nil, err
	}
	v, err := openValue(dk, ws, nameKey(name), vr.GetVersion(), vr.GetSealed())
	if err != nil {
		s.lg.Error("secret version ciphertext unreadable", zap.String("workspace-id", ws), zap.String("secret", name), zap.Int64("version", vr.GetVersion()), zap.Error(err))
		return nil, fail(ErrUnreadable, "version %d of secret %q could not be decrypted (corrupted or tampered with)", vr.GetVersion(), name)
	}
	return v, nil
}
