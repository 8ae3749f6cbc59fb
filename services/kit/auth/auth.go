// Package auth is the one authentication path of every service: a gRPC
// interceptor resolves `authorization: Bearer …` into a principal by asking the
// credential service (through an Authenticator), and helpers check workspace
// and scope for each call.
package auth

import (
	"context"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
)

// Principal is who a request acts as.
type Principal = credentialv1.Principal

// Authenticator resolves a raw credential into a principal. Errors are gRPC
// statuses (Unauthenticated, PermissionDenied) with messages safe to show.
type Authenticator interface {
	Authenticate(ctx context.Context, raw string) (*Principal, error)
}

// Control-plane scopes.
const (
	AutomationsRead  = "automations:read"
	AutomationsWrite = "automations:write"
	AgentsRead       = "agents:read"
	AgentsWrite      = "agents:write"
	SecretsRead      = "secrets:read"
	SecretsWrite     = "secrets:write"
	SecretsUse       = "secrets:use"
	AuditRead        = "audit:read"
)

// Roles.
const (
	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// AdminScopes are the control-plane scopes an owner or admin holds.
var AdminScopes = []string{AutomationsRead, AutomationsWrite, AgentsRead, AgentsWrite, SecretsRead, SecretsWrite, SecretsUse, AuditRead}

// MemberScopes are those of a plain member: read metadata, nothing else.
var MemberScopes = []string{AutomationsRead, AgentsRead, SecretsRead}

// ScopesForRole returns the control-plane scopes a role grants.
func ScopesForRole(role string) []string {
	switch role {
	case RoleOwner, RoleAdmin:
		return AdminScopes
	case RoleMember:
		return MemberScopes
	}
	return nil
}

// ValidScope reports whether s has the form resource:action, each part a
// lower-case letter then up to 62 of [a-z0-9_.-].
func ValidScope(s string) bool {
	i := strings.IndexByte(s, ':')
	return i > 0 && scopePart(s[:i]) && scopePart(s[i+1:])
}

func scopePart(p string) bool {
	if len(p) == 0 || len(p) > 63 || p[0] < 'a' || p[0] > 'z' {
		return false
	}
	for i := 1; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// ValidateScopes checks every scope's form and removes duplicates.
func ValidateScopes(field string, scopes []string) ([]string, error) {
	if len(scopes) > 100 {
		return nil, errs.Invalid(field, "at most 100 scopes")
	}
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		if !ValidScope(s) {
			return nil, errs.Invalid(field, "%q is not a scope: want resource:action in lower case, e.g. automations:read", clip(s))
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// validTeamID: a letter or digit, then up to 63 of [A-Za-z0-9_-].
func validTeamID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// ValidateTeamIDs checks team id format (letters, digits, '_' and '-', up to 64).
func ValidateTeamIDs(field string, ids []string) ([]string, error) {
	if len(ids) > 100 {
		return nil, errs.Invalid(field, "at most 100 team ids")
	}
	out := make([]string, 0, len(ids))
	for _, s := range ids {
		if !validTeamID(s) {
			return nil, errs.Invalid(field, "%q is not a team id: letters, digits, '_' and '-', 1 to 64 characters", clip(s))
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the principal of the call, or nil.
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(ctxKey{}).(*Principal)
	return p
}

// Bearer returns the bearer credential of an incoming call, or "".
func Bearer(ctx context.Context) string {
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}

// Messages that tell the caller what to do.
const (
	MsgMissing        = "missing credential: send the header Authorization: Bearer <token>"
	MsgExchangeFirst  = "an automation secret cannot call this API: exchange it for a short-lived access token first (POST /v1/auth/exchange, or `backlog auth exchange`)"
	MsgRotationSecret = "a rotation secret is not a bearer credential: send it in the body of POST /v1/agents/self/rotate-key with the agent API key as Bearer"
	MsgInvalid        = "invalid credential"
)

// Resolve authenticates the bearer credential of ctx with a, applying the
// rules every service shares: format and checksum first, then the kinds that
// may never be bearer credentials.
func Resolve(ctx context.Context, a Authenticator) (*Principal, error) {
	raw := Bearer(ctx)
	if raw == "" {
		return nil, errs.Unauthenticated(MsgMissing)
	}
	p, err := credfmt.Parse(raw)
	if err != nil {
		return nil, errs.Unauthenticated(err.Error())
	}
	switch p.Kind {
	case credfmt.Automation:
		return nil, errs.Unauthenticated(MsgExchangeFirst)
	case credfmt.RotationSecret:
		return nil, errs.Unauthenticated(MsgRotationSecret)
	}
	return a.Authenticate(ctx, raw)
}

// Interceptors returns the unary and stream interceptors that authenticate
// every method except those for which skip returns true (health, reflection,
// internal RPCs, and methods that read their own credential like Exchange).
func Interceptors(a Authenticator, skip func(fullMethod string) bool) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if skip(info.FullMethod) {
			return h(ctx, req)
		}
		p, err := Resolve(ctx, a)
		if err != nil {
			return nil, err
		}
		return h(WithPrincipal(ctx, p), req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if skip(info.FullMethod) {
			return h(srv, ss)
		}
		p, err := Resolve(ss.Context(), a)
		if err != nil {
			return err
		}
		return h(srv, &wrapped{ss, WithPrincipal(ss.Context(), p)})
	}
	return unary, stream
}

type wrapped struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrapped) Context() context.Context { return w.ctx }

// Require checks that the caller acts in workspace ws and holds scope. A
// workspace other than the caller's is NotFound, never PermissionDenied, so
// that callers learn nothing about other workspaces.
func Require(ctx context.Context, ws, scope string) (*Principal, error) {
	p := FromContext(ctx)
	if p == nil {
		return nil, errs.Unauthenticated(MsgMissing)
	}
	if p.SubjectKind == credentialv1.SubjectKind_SUBJECT_KIND_OPERATOR {
		return nil, errs.Forbidden("the operator token can only create workspaces")
	}
	if ws == "" || p.WorkspaceId != ws {
		return nil, errs.NotFound("workspace " + clip(ws) + " not found")
	}
	if scope != "" && !slices.Contains(p.Scopes, scope) {
		return nil, errs.Forbidden("this credential lacks the scope " + scope)
	}
	return p, nil
}

// RequireRole checks that the caller is a person of workspace ws with at
// least role min ("admin" admits owners and admins). An agent's role sets
// only its control-plane scopes: it never manages people.
func RequireRole(ctx context.Context, ws, min string) (*Principal, error) {
	p, err := Require(ctx, ws, "")
	if err != nil {
		return nil, err
	}
	if p.SubjectKind != credentialv1.SubjectKind_SUBJECT_KIND_MEMBER {
		return nil, errs.Forbidden("only a workspace " + min + " (a person, with a personal access token) may do this")
	}
	if !RoleAtLeast(p.Role, min) {
		if p.Role == "" {
			return nil, errs.Forbidden("only a workspace " + min + " may do this; access tokens cannot")
		}
		return nil, errs.Forbidden("only a workspace " + min + " may do this; you are " + p.Role)
	}
	return p, nil
}

// RoleAtLeast orders owner > admin > member.
func RoleAtLeast(role, min string) bool {
	rank := map[string]int{RoleMember: 1, RoleAdmin: 2, RoleOwner: 3}
	return rank[role] >= rank[min] && rank[role] > 0
}
