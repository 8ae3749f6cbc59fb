package vault

// Secrets in use: connections (an integration and the integration secret it
// authenticates with) and actions (saved HTTP Request steps whose headers
// reference webhook secrets), both naming secrets rather than holding
// values, so that an update of a secret reaches every one of them on its
// next use. usesBucket indexes who names which secret: GetSecret shows it as
// usedBy, and revoking or deleting a secret in use needs force.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	vaultstorev1 "github.com/backlog/controlplane/gen/go/backlog/vaultstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/validate"
)

type (
	connectionRecord = vaultstorev1.ConnectionRecord
	actionRecord     = vaultstorev1.ActionRecord
)

// Kinds of dependents, as usedBy shows them.
const (
	usageAction     = "action"
	usageConnection = "connection"
)

// Audit actions of connections and actions.
const (
	actionConnectionCreate = "connection.create"
	actionConnectionUpdate = "connection.update"
	actionConnectionDelete = "connection.delete"
	actionActionCreate     = "action.create"
	actionActionUpdate     = "action.update"
	actionActionDelete     = "action.delete"
	actionActionRun        = "action.run"
)

const (
	fieldSecretName  = "secretName"
	fieldIntegration = "integration"
	maxIntegration   = 64
	// maxDependentsShown caps the dependents an in-use error names.
	maxDependentsShown = 20
)

// Id prefixes.
const (
	connectionPrefix = "conn"
	actionPrefix     = "act"
)

// ---- where-used ----

// putUse and dropUse keep the uses index.
func putUse(tx store.WriteTx, ws, secret, kind, id string) error {
	return tx.Put(usesBucket, useKey(ws, secret, kind, id), []byte{})
}

func dropUse(tx store.WriteTx, ws, secret, kind, id string) error {
	return tx.Delete(usesBucket, useKey(ws, secret, kind, id))
}

// usedBy lists the actions and connections that name ws's secret, by kind
// then id (limit 0: all).
func usedBy(tx store.ReadTx, ws, secret string, limit int) ([]*vaultv1.SecretUsage, error) {
	prefix := usesPrefix(ws, secret)
	var out []*vaultv1.SecretUsage
	_, err := tx.Scan(usesBucket, store.ScanOptions{Prefix: prefix, Limit: limit}, func(k, _ []byte) (bool, error) {
		kind, id, ok := bytes.Cut(k[len(prefix):], []byte{'/'})
		if !ok {
			return false, fmt.Errorf("malformed use key %q", k)
		}
		u := &vaultv1.SecretUsage{Kind: string(kind), Id: string(id)}
		switch u.Kind {
		case usageAction:
			a, err := getAction(tx, ws, u.Id)
			if err != nil {
				return false, err
			}
			u.Name = a.GetName()
		case usageConnection:
			c, err := getConnection(tx, ws, u.Id)
			if err != nil {
				return false, err
			}
			u.Name = c.GetName()
		}
		out = append(out, u)
		return true, nil
	})
	return out, err
}

// checkInUse refuses to revoke or delete a secret that actions or
// connections name, unless forced; it returns the dependents either way.
func (s *Service) checkInUse(tx store.ReadTx, rec *secretRecord, force bool, verb string) ([]*vaultv1.SecretUsage, error) {
	deps, err := usedBy(tx, rec.GetWorkspaceId(), rec.GetName(), 0)
	if err != nil || len(deps) == 0 || force {
		return deps, err
	}
	return nil, fail(ErrInUse, "secret %q is used by %s: change or delete them first, or %s it anyway with force=true (they fail from then on until a secret of that name is usable again)",
		rec.GetName(), describeDeps(deps), verb)
}

// describeDeps lists dependents for a person: kind, name and id.
func describeDeps(deps []*vaultv1.SecretUsage) string {
	var parts []string
	for i, d := range deps {
		if i == maxDependentsShown {
			parts = append(parts, fmt.Sprintf("and %d more", len(deps)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %q (%s)", d.GetKind(), d.GetName(), d.GetId()))
	}
	return strings.Join(parts, ", ")
}

// depsDetail lists dependents for the audit trail: kind:id.
func depsDetail(deps []*vaultv1.SecretUsage) string {
	var parts []string
	for _, d := range deps {
		parts = append(parts, d.GetKind()+":"+d.GetId())
	}
	return strings.Join(parts, ",")
}

// ---- records ----

func getConnection(tx store.ReadTx, ws, id string) (*connectionRecord, error) {
	c := &connectionRecord{}
	ok, err := store.Get(tx, connectionsBucket, store.Key(ws, id), c)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fail(ErrNoConnection, "connection %q not found in this workspace", clip(id))
	}
	return c, nil
}

func getAction(tx store.ReadTx, ws, id string) (*actionRecord, error) {
	a := &actionRecord{}
	ok, err := store.Get(tx, actionsBucket, store.Key(ws, id), a)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fail(ErrNoAction, "action %q not found in this workspace", clip(id))
	}
	return a, nil
}

func presentConnection(c *connectionRecord) *vaultv1.Connection {
	return &vaultv1.Connection{
		WorkspaceId: c.GetWorkspaceId(), Id: c.GetId(), Name: c.GetName(), Integration: c.GetIntegration(),
		Description: c.GetDescription(), SecretName: c.GetSecretName(),
		CreatedAt: proto.CloneOf(c.GetCreatedAt()), UpdatedAt: proto.CloneOf(c.GetUpdatedAt()), CreatedBy: c.GetCreatedBy(),
	}
}

func presentAction(a *actionRecord) *vaultv1.Action {
	h := make(map[string]string, len(a.GetHeaders()))
	for k, v := range a.GetHeaders() {
		h[k] = v
	}
	return &vaultv1.Action{
		WorkspaceId: a.GetWorkspaceId(), Id: a.GetId(), Name: a.GetName(), Description: a.GetDescription(),
		Method: a.GetMethod(), Url: a.GetUrl(), Headers: h, Body: a.GetBody(), SecretNames: slices.Clone(a.GetSecretNames()),
		CreatedAt: proto.CloneOf(a.GetCreatedAt()), UpdatedAt: proto.CloneOf(a.GetUpdatedAt()), CreatedBy: a.GetCreatedBy(),
	}
}

// validID checks a path id: anything else cannot exist.
func validID(prefix, id string, notFound error, what string) error {
	if !ids.Valid(prefix, id) {
		return fail(notFound, "%s %q not found in this workspace", what, clip(id))
	}
	return nil
}

func validIntegration(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if err := checkSlug(s, maxIntegration); err != nil {
		return "", errs.Invalid(fieldIntegration, "%s (e.g. \"hubspot\")", err.Error())
	}
	return s, nil
}

// connectionSecret checks that name is an integration secret of ws and
// returns its stored name.
func connectionSecret(tx store.ReadTx, ws, name string) (string, error) {
	if name == "" {
		return "", errs.Invalid(fieldSecretName, "is required: the name of an integration secret")
	}
	if checkExistingName(name) != nil {
		return "", errs.Invalid(fieldSecretName, "no secret named %q in this workspace", clip(name))
	}
	rec, err := getSecret(tx, ws, name)
	if errors.Is(err, ErrNotFound) {
		return "", errs.Invalid(fieldSecretName, "no secret named %q in this workspace; create the integration secret first", clip(name))
	}
	if err != nil {
		return "", err
	}
	if rec.GetKind() != KindIntegration {
		return "", errs.Invalid(fieldSecretName, "secret %q is a %s secret: a connection needs an integration secret", rec.GetName(), rec.GetKind())
	}
	return rec.GetName(), nil
}

// ---- connections ----

// listRecords serves a workspace-scoped list of one record kind: it checks
// the workspace, the page size and a page token bound to scope (and to the
// workspace), runs authz, then decodes up to a page of records R from
// bucket under the workspace's prefix and presents each as P.
func listRecords[R any, P any, RP interface {
	*R
	proto.Message
}](ctx context.Context, s *Service, ws, kind string, pageSize int32, pageToken string, authz func() error,
	bucket store.Bucket, present func(*R) P) ([]P, string, error) {
	if err := validWorkspace(ws); err != nil {
		return nil, "", err
	}
	size, err := page.Size(pageSize)
	if err != nil {
		return nil, "", err
	}
	scope := ws + "|" + kind
	after, err := page.Decode(ctx, scope, pageToken)
	if err != nil {
		return nil, "", err
	}
	if len(after) > 0 && !listStartIn(ws, after) {
		return nil, "", errs.Invalid("pageToken", "does not belong to this workspace")
	}
	if err := authz(); err != nil {
		return nil, "", err
	}
	var out []P
	var token string
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		out = nil
		next, err := tx.Scan(bucket, store.ScanOptions{Prefix: workspacePrefix(ws), After: after, Limit: size}, func(_, v []byte) (bool, error) {
			r := RP(new(R))
			if err := proto.Unmarshal(v, r); err != nil {
				return false, err
			}
			out = append(out, present((*R)(r)))
			return true, nil
		})
		token = page.Encode(ctx, scope, next)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return out, token, nil
}

// ListConnections lists a workspace's connections, oldest first.
func (s *Service) ListConnections(ctx context.Context, req *vaultv1.ListConnectionsRequest) (*vaultv1.ListConnectionsResponse, error) {
	ws := req.GetWorkspaceId()
	items, next, err := listRecords[connectionRecord](ctx, s, ws, "connections", req.GetPageSize(), req.GetPageToken(),
		func() error { _, err := auth.Require(ctx, ws, auth.SecretsRead); return err }, connectionsBucket, presentConnection)
	if err != nil {
		return nil, err
	}
	return &vaultv1.ListConnectionsResponse{Connections: items, NextPageToken: next}, nil
}

// CreateConnection saves a connection using an integration secret.
func (s *Service) CreateConnection(ctx context.Context, req *vaultv1.CreateConnectionRequest) (*vaultv1.CreateConnectionResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	name, err := validate.Name(fieldName, req.GetName(), maxNameLen)
	if err != nil {
		return nil, err
	}
	integ, err := validIntegration(req.GetIntegration())
	if err != nil {
		return nil, err
	}
	desc, err := validDescription(req.GetDescription())
	if err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.SecretsWrite)
	if err != nil {
		return nil, err
	}
	now := timestamppb.New(s.now())
	c := &connectionRecord{
		WorkspaceId: ws, Id: ids.New(connectionPrefix), Name: name, Integration: integ, Description: desc,
		CreatedAt: now, UpdatedAt: now, CreatedBy: p.GetSubjectId(),
	}
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		secret, err := connectionSecret(tx, ws, req.GetSecretName())
		if err != nil {
			return err
		}
		c.SecretName = secret
		if err := store.Put(tx, connectionsBucket, store.Key(ws, c.Id), c); err != nil {
			return err
		}
		if err := putUse(tx, ws, secret, usageConnection, c.Id); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionConnectionCreate, "connection", c.Id, audit.Success,
			fmt.Sprintf("integration=%s secret=%s", integ, quote(secret))))
	})
	if err != nil {
		return nil, err
	}
	s.lg.Info("connection created", zap.String("workspace-id", ws), zap.String("connection-id", c.Id), zap.String("secret", c.SecretName))
	return &vaultv1.CreateConnectionResponse{Connection: presentConnection(c)}, nil
}

// GetConnection reads a connection.
func (s *Service) GetConnection(ctx context.Context, req *vaultv1.GetConnectionRequest) (*vaultv1.GetConnectionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetConnectionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsRead); err != nil {
		return nil, err
	}
	if err := validID(connectionPrefix, id, ErrNoConnection, "connection"); err != nil {
		return nil, err
	}
	var c *connectionRecord
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		c, err = getConnection(tx, ws, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.GetConnectionResponse{Connection: presentConnection(c)}, nil
}

var connectionMask = validate.MaskSpellings("name", "integration", "description", "secret_name")

// UpdateConnection changes the fields in the mask.
func (s *Service) UpdateConnection(ctx context.Context, req *vaultv1.UpdateConnectionRequest) (*vaultv1.UpdateConnectionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetConnectionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	in := req.GetConnection()
	if in == nil {
		return nil, errs.Invalid("connection", "is required: send the fields to change")
	}
	paths, err := validate.Mask(req.GetUpdateMask().GetPaths(), connectionMask)
	if err != nil {
		return nil, err
	}
	var name, integ, desc string
	if paths["name"] {
		if name, err = validate.Name(fieldName, in.GetName(), maxNameLen); err != nil {
			return nil, err
		}
	}
	if paths["integration"] {
		if integ, err = validIntegration(in.GetIntegration()); err != nil {
			return nil, err
		}
	}
	if paths["description"] {
		if desc, err = validDescription(in.GetDescription()); err != nil {
			return nil, err
		}
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsWrite); err != nil {
		return nil, err
	}
	if err := validID(connectionPrefix, id, ErrNoConnection, "connection"); err != nil {
		return nil, err
	}
	var out *connectionRecord
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		c, err := getConnection(tx, ws, id)
		if err != nil {
			return err
		}
		var fields []string
		if paths["name"] {
			c.Name, fields = name, append(fields, "name")
		}
		if paths["integration"] {
			c.Integration, fields = integ, append(fields, "integration")
		}
		if paths["description"] {
			c.Description, fields = desc, append(fields, "description")
		}
		if paths["secret_name"] {
			secret, err := connectionSecret(tx, ws, in.GetSecretName())
			if err != nil {
				return err
			}
			if err := dropUse(tx, ws, c.SecretName, usageConnection, id); err != nil {
				return err
			}
			if err := putUse(tx, ws, secret, usageConnection, id); err != nil {
				return err
			}
			c.SecretName, fields = secret, append(fields, "secret_name")
		}
		c.UpdatedAt = timestamppb.New(s.now())
		if err := store.Put(tx, connectionsBucket, store.Key(ws, id), c); err != nil {
			return err
		}
		out = c
		return audit.Put(tx, s.rec.Event(ctx, ws, actionConnectionUpdate, "connection", id, audit.Success,
			fmt.Sprintf("fields=%s secret=%s", strings.Join(fields, ","), quote(c.SecretName))))
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.UpdateConnectionResponse{Connection: presentConnection(out)}, nil
}

// DeleteConnection removes a connection; its secret stays.
func (s *Service) DeleteConnection(ctx context.Context, req *vaultv1.DeleteConnectionRequest) (*vaultv1.DeleteConnectionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetConnectionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsWrite); err != nil {
		return nil, err
	}
	if err := validID(connectionPrefix, id, ErrNoConnection, "connection"); err != nil {
		return nil, err
	}
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		c, err := getConnection(tx, ws, id)
		if err != nil {
			return err
		}
		if err := tx.Delete(connectionsBucket, store.Key(ws, id)); err != nil {
			return err
		}
		if err := dropUse(tx, ws, c.SecretName, usageConnection, id); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionConnectionDelete, "connection", id, audit.Success, "secret="+quote(c.SecretName)))
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.DeleteConnectionResponse{}, nil
}

// ResolveConnection hands a trusted internal service a connection's
// credential: the current value of its integration secret, audited as a
// secret.use by that service with the connection as purpose.
func (s *Service) ResolveConnection(ctx context.Context, req *vaultv1.ResolveConnectionRequest) (*vaultv1.ResolveConnectionResponse, error) {
	if err := s.checkServiceToken(ctx); err != nil {
		return nil, err
	}
	ws, id := req.GetWorkspaceId(), req.GetConnectionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if err := validID(connectionPrefix, id, ErrNoConnection, "connection"); err != nil {
		return nil, err
	}
	purpose, err := validPurpose(req.GetPurpose())
	if err != nil {
		return nil, err
	}
	var c *connectionRecord
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		c, err = getConnection(tx, ws, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	why := "connection=" + id
	if purpose != "" {
		why += " " + purpose
	}
	res, err := s.Resolve(ctx, &vaultv1.ResolveRequest{WorkspaceId: ws, Name: c.GetSecretName(), Caller: req.GetCaller(), Purpose: clipPurpose(why)})
	if err != nil {
		return nil, err
	}
	return &vaultv1.ResolveConnectionResponse{Connection: presentConnection(c), Secret: res.GetSecret(), Value: res.GetValue()}, nil
}

func clipPurpose(s string) string {
	if len(s) <= maxPurposeLen {
		return s
	}
	return validate.Clip(s[:maxPurposeLen-4])
}

// ---- actions ----

// actionStep validates an action's step and its references: every secret
// must exist in ws and be a webhook secret allowed to the step's host. It
// returns the stored names of the secrets referenced.
func actionStep(tx store.ReadTx, a *actionRecord) ([]string, error) {
	st, err := validStep(&vaultv1.RunHttpRequestRequest{Method: a.GetMethod(), Url: a.GetUrl(), Headers: a.GetHeaders(), Body: a.GetBody()})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ref := range st.refs {
		rec, err := getSecret(tx, a.GetWorkspaceId(), ref)
		if errors.Is(err, ErrNotFound) {
			return nil, fail(ErrBadReference, "headers: secret %q does not exist in this workspace; create it (a webhook secret) or fix the reference", clip(ref))
		}
		if err != nil {
			return nil, err
		}
		if rec.GetKind() != KindWebhook {
			return nil, fail(ErrBadReference, "headers: secret %q is an %s secret: actions can only use webhook secrets (integration secrets belong to connections)", rec.GetName(), rec.GetKind())
		}
		if !hostAllowed(rec.GetAllowedHosts(), st.url) {
			return nil, fail(ErrBadReference, "headers: secret %q may only be sent to %s, not to %s", rec.GetName(), strings.Join(rec.GetAllowedHosts(), ", "), st.url.Host)
		}
		out = append(out, rec.GetName())
	}
	a.Method = st.method
	return out, nil
}

// setUses makes the uses index of action id say exactly names.
func setUses(tx store.WriteTx, ws, id string, old, names []string) error {
	for _, n := range old {
		if err := dropUse(tx, ws, n, usageAction, id); err != nil {
			return err
		}
	}
	for _, n := range names {
		if err := putUse(tx, ws, n, usageAction, id); err != nil {
			return err
		}
	}
	return nil
}

// ListActions lists a workspace's actions, oldest first.
func (s *Service) ListActions(ctx context.Context, req *vaultv1.ListActionsRequest) (*vaultv1.ListActionsResponse, error) {
	ws := req.GetWorkspaceId()
	items, next, err := listRecords[actionRecord](ctx, s, ws, "actions", req.GetPageSize(), req.GetPageToken(),
		func() error { _, err := auth.Require(ctx, ws, auth.SecretsRead); return err }, actionsBucket, presentAction)
	if err != nil {
		return nil, err
	}
	return &vaultv1.ListActionsResponse{Actions: items, NextPageToken: next}, nil
}

// CreateAction saves an HTTP Request step.
func (s *Service) CreateAction(ctx context.Context, req *vaultv1.CreateActionRequest) (*vaultv1.CreateActionResponse, error) {
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	name, err := validate.Name(fieldName, req.GetName(), maxNameLen)
	if err != nil {
		return nil, err
	}
	desc, err := validDescription(req.GetDescription())
	if err != nil {
		return nil, err
	}
	now := timestamppb.New(s.now())
	a := &actionRecord{
		WorkspaceId: ws, Id: ids.New(actionPrefix), Name: name, Description: desc,
		Method: req.GetMethod(), Url: req.GetUrl(), Headers: req.GetHeaders(), Body: req.GetBody(),
		CreatedAt: now, UpdatedAt: now,
	}
	// Step errors are the caller's input: checked before authorisation
	// only where they need no lookup.
	if _, err := validStep(&vaultv1.RunHttpRequestRequest{Method: a.Method, Url: a.Url, Headers: a.Headers, Body: a.Body}); err != nil {
		return nil, err
	}
	p, err := auth.Require(ctx, ws, auth.SecretsWrite)
	if err != nil {
		return nil, err
	}
	a.CreatedBy = p.GetSubjectId()
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		names, err := actionStep(tx, a)
		if err != nil {
			return err
		}
		a.SecretNames = names
		if err := store.Put(tx, actionsBucket, store.Key(ws, a.Id), a); err != nil {
			return err
		}
		if err := setUses(tx, ws, a.Id, nil, names); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionActionCreate, "action", a.Id, audit.Success, actionDetail(a)))
	})
	if err != nil {
		return nil, err
	}
	s.lg.Info("action created", zap.String("workspace-id", ws), zap.String("action-id", a.Id), zap.Strings("secrets", a.SecretNames))
	return &vaultv1.CreateActionResponse{Action: presentAction(a)}, nil
}

// actionDetail describes an action for the audit trail: method, host and
// secret names, never headers (they may hold literal credentials).
func actionDetail(a *actionRecord) string {
	host := ""
	if st, err := validStep(&vaultv1.RunHttpRequestRequest{Method: a.GetMethod(), Url: a.GetUrl()}); err == nil {
		host = st.url.Host
	}
	var q []string
	for _, n := range a.GetSecretNames() {
		q = append(q, quote(n))
	}
	return fmt.Sprintf("method=%s host=%s secrets=[%s]", a.GetMethod(), host, strings.Join(q, ","))
}

// GetAction reads an action.
func (s *Service) GetAction(ctx context.Context, req *vaultv1.GetActionRequest) (*vaultv1.GetActionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetActionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsRead); err != nil {
		return nil, err
	}
	if err := validID(actionPrefix, id, ErrNoAction, "action"); err != nil {
		return nil, err
	}
	var a *actionRecord
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		a, err = getAction(tx, ws, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.GetActionResponse{Action: presentAction(a)}, nil
}

var actionMask = validate.MaskSpellings("name", "description", "method", "url", "headers", "body")

// UpdateAction changes the fields in the mask; the step is checked whole
// again, references included.
func (s *Service) UpdateAction(ctx context.Context, req *vaultv1.UpdateActionRequest) (*vaultv1.UpdateActionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetActionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	in := req.GetAction()
	if in == nil {
		return nil, errs.Invalid("action", "is required: send the fields to change")
	}
	paths, err := validate.Mask(req.GetUpdateMask().GetPaths(), actionMask)
	if err != nil {
		return nil, err
	}
	var name, desc string
	if paths["name"] {
		if name, err = validate.Name(fieldName, in.GetName(), maxNameLen); err != nil {
			return nil, err
		}
	}
	if paths["description"] {
		if desc, err = validDescription(in.GetDescription()); err != nil {
			return nil, err
		}
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsWrite); err != nil {
		return nil, err
	}
	if err := validID(actionPrefix, id, ErrNoAction, "action"); err != nil {
		return nil, err
	}
	var out *actionRecord
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		a, err := getAction(tx, ws, id)
		if err != nil {
			return err
		}
		old := a.GetSecretNames()
		var fields []string
		if paths["name"] {
			a.Name, fields = name, append(fields, "name")
		}
		if paths["description"] {
			a.Description, fields = desc, append(fields, "description")
		}
		if paths["method"] {
			a.Method, fields = in.GetMethod(), append(fields, "method")
		}
		if paths["url"] {
			a.Url, fields = in.GetUrl(), append(fields, "url")
		}
		if paths["headers"] {
			a.Headers, fields = in.GetHeaders(), append(fields, "headers")
		}
		if paths["body"] {
			a.Body, fields = in.GetBody(), append(fields, "body")
		}
		names, err := actionStep(tx, a)
		if err != nil {
			return err
		}
		a.SecretNames = names
		a.UpdatedAt = timestamppb.New(s.now())
		if err := store.Put(tx, actionsBucket, store.Key(ws, id), a); err != nil {
			return err
		}
		if err := setUses(tx, ws, id, old, names); err != nil {
			return err
		}
		out = a
		return audit.Put(tx, s.rec.Event(ctx, ws, actionActionUpdate, "action", id, audit.Success,
			"fields="+strings.Join(fields, ",")+" "+actionDetail(a)))
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.UpdateActionResponse{Action: presentAction(out)}, nil
}

// DeleteAction removes an action; its secrets stay.
func (s *Service) DeleteAction(ctx context.Context, req *vaultv1.DeleteActionRequest) (*vaultv1.DeleteActionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetActionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsWrite); err != nil {
		return nil, err
	}
	if err := validID(actionPrefix, id, ErrNoAction, "action"); err != nil {
		return nil, err
	}
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		a, err := getAction(tx, ws, id)
		if err != nil {
			return err
		}
		if err := tx.Delete(actionsBucket, store.Key(ws, id)); err != nil {
			return err
		}
		if err := setUses(tx, ws, id, a.GetSecretNames(), nil); err != nil {
			return err
		}
		return audit.Put(tx, s.rec.Event(ctx, ws, actionActionDelete, "action", id, audit.Success, actionDetail(a)))
	})
	if err != nil {
		return nil, err
	}
	return &vaultv1.DeleteActionResponse{}, nil
}

// RunAction runs a stored action with the current values of the secrets
// it names, exactly as RunHttpRequest runs a step.
func (s *Service) RunAction(ctx context.Context, req *vaultv1.RunActionRequest) (*vaultv1.RunActionResponse, error) {
	ws, id := req.GetWorkspaceId(), req.GetActionId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsUse); err != nil {
		return nil, err
	}
	if err := validID(actionPrefix, id, ErrNoAction, "action"); err != nil {
		return nil, err
	}
	var a *actionRecord
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		a, err = getAction(tx, ws, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	resp, err := s.RunHttpRequest(ctx, &vaultv1.RunHttpRequestRequest{
		WorkspaceId: ws, Method: a.GetMethod(), Url: a.GetUrl(), Headers: a.GetHeaders(), Body: a.GetBody(),
	})
	if err != nil {
		s.recordEvents(ctx, s.rec.Event(ctx, ws, actionActionRun, "action", id, audit.Failure, failureDetail(err, "run")))
		return nil, err
	}
	s.recordEvents(ctx, s.rec.Event(ctx, ws, actionActionRun, "action", id, audit.Success, fmt.Sprintf("status=%d", resp.GetStatusCode())))
	return &vaultv1.RunActionResponse{
		StatusCode: resp.GetStatusCode(), Headers: resp.GetHeaders(), Body: resp.GetBody(), SecretsUsed: resp.GetSecretsUsed(),
		BodyTruncated: resp.GetBodyTruncated(), BodyEncoding: resp.GetBodyEncoding(), BodyWithheld: resp.GetBodyWithheld(),
	}, nil
}
