package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/store"
)

type auditEvent = auditv1.AuditEvent

// Audit actions.
const (
	actionCreate = "secret.create"
	actionUpdate = "secret.update"
	actionRevoke = "secret.revoke"
	actionDelete = "secret.delete"
	actionUse    = "secret.use"
)

// ListSecrets lists a workspace's secrets by name, metadata only.
func (s *Service) ListSecrets(ctx context.Context, req *vaultv1.ListSecretsRequest) (*vaultv1.ListSecretsResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	kind := req.GetKind()
	if kind != "" {
		if _, err := validKind(kind); err != nil {
			return nil, err
		}
	}
	var within time.Duration
	if d := req.GetExpiringWithin(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
			return nil, errs.Invalid(fieldExpiring, "must be a positive duration, e.g. 604800s")
		}
		within = d.AsDuration()
	}
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	scope := fmt.Sprintf("%s|%s|%d", ws, kind, within)
	after, err := page.Decode(ctx, scope, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if len(after) > 0 && !listStartIn(ws, after) {
		return nil, errs.Invalid("pageToken", "does not belong to this workspace")
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsRead); err != nil {
		return nil, err
	}
	now := s.now()
	resp := &vaultv1.ListSecretsResponse{}
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		resp.Secrets = nil
		next, err := listSecrets(tx, ws, after, size, func(rec *secretRecord) bool {
			if kind != "" && rec.GetKind() != kind {
				return false
			}
			// Due within the window: expiring by now+within, including those
			// already expired (they need attention most).
			if within > 0 && (rec.GetExpiresAt() == nil || rec.GetExpiresAt().AsTime().After(now.Add(within))) {
				return false
			}
			resp.Secrets = append(resp.Secrets, present(rec, now))
			return true
		})
		resp.NextPageToken = page.Encode(ctx, scope, next)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// GetSecret reads one secret's metadata.
func (s *Service) GetSecret(ctx context.Context, req *vaultv1.GetSecretRequest) (*vaultv1.GetSecretResponse, error) {
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
	var out *vaultv1.Secret
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		out = present(rec, s.now())
		if out.UsedBy, err = usedBy(tx, ws, rec.GetName(), 0); err != nil {
			return err
		}
		out.Versions, err = listVersions(tx, rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.GetSecretResponse{Secret: out}, nil
}

// CreateSecret stores a new secret, its value sealed under the workspace's
// data key (created with the workspace's first secret), the record, the
// ciphertext and the audit event in one transaction.
func (s *Service) CreateSecret(ctx context.Context, req *vaultv1.CreateSecretRequest) (*vaultv1.CreateSecretResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	name, err := validName(req.GetName())
	if err != nil {
		return nil, err
	}
	kind, err := validKind(req.GetKind())
	if err != nil {
		return nil, err
	}
	desc, err := validDescription(req.GetDescription())
	if err != nil {
		return nil, err
	}
	if err := validValue(req.GetValue()); err != nil {
		return nil, err
	}
	now := s.now()
	expires, err := validExpiry(req.GetExpiresAt(), now)
	if err != nil {
		return nil, err
	}
	hosts, err := validAllowedHosts(kind, req.GetAllowedHosts())
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.SecretsWrite)
	if err != nil {
		return nil, err
	}
	if s.keys.sealed() {
		return nil, ErrSealed
	}

	ts := timestamppb.New(now)
	rec := &secretRecord{
		WorkspaceId: ws, Name: name, Kind: kind, Description: desc, ExpiresAt: expires,
		State: StateActive, Version: 1, CreatedAt: ts, UpdatedAt: ts, AllowedHosts: hosts,
	}
	ev := s.rec.Event(ctx, ws, actionCreate, "secret", name, audit.Success,
		fmt.Sprintf("kind=%s version=1%s%s", kind, expiryDetail(expires), hostsDetail(hosts)))
	value := []byte(req.GetValue())
	defer clear(value)
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if taken, err := secretExists(tx, ws, name); err != nil {
			return err
		} else if taken {
			return fail(ErrNameTaken, "a secret named %q already exists in this workspace (names are unique regardless of case); update it instead", name)
		}
		dk, err := s.dataKeyForWrite(tx, ws)
		if err != nil {
			return err
		}
		sealed, err := sealValue(dk, ws, nameKey(name), rec.Version, value)
		if err != nil {
			return err
		}
		if err := putSecret(tx, rec); err != nil {
			return err
		}
		if err := putSealedValue(tx, ws, name, sealed); err != nil {
			return err
		}
		if err := putVersion(tx, ws, name, &versionRecord{Version: 1, CreatedAt: ts, CreatedBy: p.GetSubjectId(), Sealed: sealed, AllowedHosts: hosts}); err != nil {
			return err
		}
		if err := s.secretEvent(tx, EventSecretCreated, rec, now); err != nil {
			return err
		}
		return audit.Put(tx, ev)
	})
	if err != nil {
		if !errors.Is(err, ErrNameTaken) {
			s.recordFailure(ctx, ws, actionCreate, name, err, "")
		}
		return nil, err
	}
	s.lg.Info("secret created", zap.String("workspace-id", ws), zap.String("secret", name), zap.String("kind", kind))
	return &vaultv1.CreateSecretResponse{Secret: present(rec, now)}, nil
}

// UpdateSecret changes the fields named in the update mask: a new value
// (rotation: the version goes up and every later use gets the new value; a
// revoked secret becomes active again), the description, the expiry (unset
// in the mask: no expiry).
func (s *Service) UpdateSecret(ctx context.Context, req *vaultv1.UpdateSecretRequest) (*vaultv1.UpdateSecretResponse, error) {
	ws, name := req.GetWorkspaceId(), req.GetName()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	in := req.GetSecret()
	if in == nil {
		return nil, errs.Invalid(fieldSecret, "is required: send the fields to change")
	}
	now := s.now()
	ch, err := validMask(req.GetUpdateMask().GetPaths(), in, now)
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.SecretsWrite)
	if err != nil {
		return nil, err
	}
	if err := existingName(name); err != nil {
		return nil, err
	}
	if ch.has(pathValue) && s.keys.sealed() {
		return nil, ErrSealed
	}
	value := []byte(ch.value)
	defer clear(value)
	var out *secretRecord
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		var notes []string
		if ch.has(pathValue) && !ch.has(pathExpiresAt) && stateAt(rec, now) == StateExpired {
			// A new value under a past expiry would still not work: say so
			// rather than store it and fail at the next use.
			return errs.Invalid(fieldExpiresAt, "secret %q expired at %s: send a new expiresAt (or null for none) together with the new value",
				rec.GetName(), rec.GetExpiresAt().AsTime().UTC().Format(time.RFC3339))
		}
		if ch.has(pathAllowedHosts) {
			if len(ch.allowedHosts) > 0 && rec.GetKind() != KindWebhook {
				return errs.Invalid(fieldAllowedHosts, "only webhook secrets carry allowed hosts: %q is an %s secret", rec.GetName(), rec.GetKind())
			}
			rec.AllowedHosts = ch.allowedHosts
		}
		if ch.has(pathValue) {
			if err := keepCurrent(tx, rec); err != nil {
				return err
			}
			dk, err := s.dataKeyForWrite(tx, ws)
			if err != nil {
				return err
			}
			rec.Version++
			sealed, err := sealValue(dk, ws, nameKey(rec.Name), rec.Version, value)
			if err != nil {
				return err
			}
			if err := putSealedValue(tx, ws, name, sealed); err != nil {
				return err
			}
			if err := putVersion(tx, ws, name, &versionRecord{
				Version: rec.Version, CreatedAt: timestamppb.New(now), CreatedBy: p.GetSubjectId(), Sealed: sealed, AllowedHosts: rec.GetAllowedHosts(),
			}); err != nil {
				return err
			}
			if rec.State == StateRevoked {
				rec.State, rec.RevokedAt = StateActive, nil
				notes = append(notes, "reactivated")
			}
		}
		if ch.has(pathDescription) {
			rec.Description = ch.description
		}
		if ch.has(pathExpiresAt) {
			rec.ExpiresAt = ch.expiresAt
		}
		rec.UpdatedAt = timestamppb.New(now)
		if err := putSecret(tx, rec); err != nil {
			return err
		}
		detail := fmt.Sprintf("fields=%s version=%d%s", strings.Join(ch.fields(), ","), rec.Version, expiryDetail(rec.ExpiresAt))
		if ch.has(pathAllowedHosts) {
			detail += hostsDetail(rec.GetAllowedHosts())
			if len(rec.GetAllowedHosts()) == 0 {
				detail += " allowed-hosts=any"
			}
		}
		if len(notes) > 0 {
			detail += " " + strings.Join(notes, " ")
		}
		out = rec
		if err := s.secretEvent(tx, EventSecretUpdated, rec, now, "fields", strings.Join(ch.fields(), ","), "version", strconv.FormatInt(rec.Version, 10)); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionUpdate, "secret", rec.Name, audit.Success, detail))
	})
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			s.recordFailure(ctx, ws, actionUpdate, name, err, "")
		}
		return nil, err
	}
	s.lg.Info("secret updated", zap.String("workspace-id", ws), zap.String("secret", out.Name), zap.Strings("fields", ch.fields()), zap.Int64("version", out.Version))
	return &vaultv1.UpdateSecretResponse{Secret: present(out, now)}, nil
}

// RevokeSecret disables a secret at once and keeps its record (and
// ciphertext, so that a later value update can reactivate it).
func (s *Service) RevokeSecret(ctx context.Context, req *vaultv1.RevokeSecretRequest) (*vaultv1.RevokeSecretResponse, error) {
	ws, name := req.GetWorkspaceId(), req.GetName()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsWrite); err != nil {
		return nil, err
	}
	if err := existingName(name); err != nil {
		return nil, err
	}
	now := s.now()
	var out *secretRecord
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		detail := "revoked"
		if rec.State != StateRevoked {
			if deps, err := s.checkInUse(tx, rec, req.GetForce(), "revoke"); err != nil {
				return err
			} else if len(deps) > 0 {
				detail += " forced used-by=" + depsDetail(deps)
			}
		}
		if rec.State == StateRevoked {
			detail = "already revoked"
		} else {
			rec.State, rec.RevokedAt, rec.UpdatedAt = StateRevoked, timestamppb.New(now), timestamppb.New(now)
			if err := putSecret(tx, rec); err != nil {
				return err
			}
			if err := s.secretEvent(tx, EventSecretRevoked, rec, now); err != nil {
				return err
			}
		}
		out = rec
		return audit.Put(tx, s.rec.Event(ctx, ws, actionRevoke, "secret", rec.Name, audit.Success, detail))
	})
	if err != nil {
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInUse) {
			s.recordFailure(ctx, ws, actionRevoke, name, err, "")
		}
		return nil, err
	}
	s.lg.Info("secret revoked", zap.String("workspace-id", ws), zap.String("secret", out.Name))
	return &vaultv1.RevokeSecretResponse{Secret: present(out, now)}, nil
}

// DeleteSecret removes a secret's record and ciphertext.
func (s *Service) DeleteSecret(ctx context.Context, req *vaultv1.DeleteSecretRequest) (*vaultv1.DeleteSecretResponse, error) {
	ws, name := req.GetWorkspaceId(), req.GetName()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsWrite); err != nil {
		return nil, err
	}
	if err := existingName(name); err != nil {
		return nil, err
	}
	var deleted string
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		rec, err := getSecret(tx, ws, name)
		if err != nil {
			return err
		}
		deps, err := s.checkInUse(tx, rec, req.GetForce(), "delete")
		if err != nil {
			return err
		}
		if err := deleteSecret(tx, ws, name); err != nil {
			return err
		}
		if err := deleteVersions(tx, ws, name); err != nil {
			return err
		}
		deleted = rec.Name
		if err := s.secretEvent(tx, EventSecretDeleted, rec, s.now()); err != nil {
			return err
		}
		detail := fmt.Sprintf("kind=%s version=%d", rec.Kind, rec.Version)
		if len(deps) > 0 {
			detail += " forced used-by=" + depsDetail(deps)
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionDelete, "secret", rec.Name, audit.Success, detail))
	})
	if err != nil {
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInUse) {
			s.recordFailure(ctx, ws, actionDelete, name, err, "")
		}
		return nil, err
	}
	s.lg.Info("secret deleted", zap.String("workspace-id", ws), zap.String("secret", deleted))
	return &vaultv1.DeleteSecretResponse{}, nil
}

// stateAt is a record's state at now: revoked, expired (expiry reached), or
// active.
func stateAt(rec *secretRecord, now time.Time) string {
	switch {
	case rec.GetState() == StateRevoked:
		return StateRevoked
	case rec.GetExpiresAt() != nil && !rec.GetExpiresAt().AsTime().After(now):
		return StateExpired
	}
	return StateActive
}

// present is a stored record as callers see it, the one conversion from
// record to API message: state computed, never a value.
func present(rec *secretRecord, now time.Time) *vaultv1.Secret {
	return &vaultv1.Secret{
		WorkspaceId:  rec.GetWorkspaceId(),
		Name:         rec.GetName(),
		Kind:         rec.GetKind(),
		Description:  rec.GetDescription(),
		ExpiresAt:    proto.CloneOf(rec.GetExpiresAt()),
		State:        stateAt(rec, now),
		Version:      rec.GetVersion(),
		CreatedAt:    proto.CloneOf(rec.GetCreatedAt()),
		UpdatedAt:    proto.CloneOf(rec.GetUpdatedAt()),
		LastUsedAt:   proto.CloneOf(rec.GetLastUsedAt()),
		RevokedAt:    proto.CloneOf(rec.GetRevokedAt()),
		AllowedHosts: slices.Clone(rec.GetAllowedHosts()),
	}
}

// usable checks that a secret may be used now, by kind.
func usable(rec *secretRecord, now time.Time, kind, use string) error {
	switch stateAt(rec, now) {
	case StateRevoked:
		return fail(ErrRevoked, "secret %q is revoked: %s refused until an owner or admin updates its value", rec.GetName(), use)
	case StateExpired:
		return fail(ErrExpired, "secret %q expired at %s: %s refused until an owner or admin extends its expiry or updates it",
			rec.GetName(), rec.GetExpiresAt().AsTime().UTC().Format(time.RFC3339), use)
	}
	if rec.GetKind() != kind {
		if kind == KindWebhook {
			return fail(ErrWrongKind, "secret %q is an %s secret: HTTP Request steps can only use webhook secrets", rec.GetName(), rec.GetKind())
		}
		return fail(ErrWrongKind, "secret %q is a %s secret: only integration secrets can be resolved", rec.GetName(), rec.GetKind())
	}
	return nil
}

func hostsDetail(hosts []string) string {
	if len(hosts) == 0 {
		return ""
	}
	return " allowed-hosts=" + strings.Join(hosts, ",")
}

func expiryDetail(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return " expires=" + ts.AsTime().UTC().Format(time.RFC3339)
}
