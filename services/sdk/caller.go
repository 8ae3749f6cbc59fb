package sdk

import (
	"context"
	"slices"
	"strings"
	"time"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// CallerKind is what a verified credential belongs to.
type CallerKind string

// Caller kinds.
const (
	CallerMember     CallerKind = "member"     // a person, by personal access token
	CallerAutomation CallerKind = "automation" // an automation, by access token
	CallerAgent      CallerKind = "agent"      // a visible agent, by API key
	CallerOperator   CallerKind = "operator"   // the operator token (refused by the Verifier)
)

// Caller is who a verified request acts as. Handlers read it with
// CallerFrom; it is a copy, theirs to keep.
type Caller struct {
	Kind           CallerKind
	CredentialKind CredentialKind
	// SubjectID is the member, automation or agent id.
	SubjectID   string
	WorkspaceID string
	Name        string
	// Role is a person's or an agent's role (owner, admin, member); empty
	// for an automation.
	Role string
	// Scopes are what the credential grants: an automation's scopes (or
	// the subset its access token was narrowed to), or the control-plane
	// scopes of a person's or an agent's role.
	Scopes []string
	// TeamIDs is the team boundary of an automation or an agent; empty
	// means no boundary.
	TeamIDs      []string
	CredentialID string
	// ExpiresAt is when an access token expires; zero for credentials
	// that do not expire.
	ExpiresAt time.Time
}

// HasScope reports whether the caller holds scope.
func (c *Caller) HasScope(scope string) bool { return c != nil && slices.Contains(c.Scopes, scope) }

// WithinTeam reports whether the caller may act in team: a person always
// (people act by role and have no team boundary), an automation or agent
// without a team boundary always, otherwise only if team is in TeamIDs.
func (c *Caller) WithinTeam(team string) bool {
	if c == nil || c.Kind == CallerOperator {
		return false
	}
	return c.Kind == CallerMember || len(c.TeamIDs) == 0 || slices.Contains(c.TeamIDs, team)
}

func (c *Caller) clone() *Caller {
	out := *c
	out.Scopes = slices.Clone(c.Scopes)
	out.TeamIDs = slices.Clone(c.TeamIDs)
	return &out
}

var callerKinds = map[credentialv1.SubjectKind]CallerKind{
	credentialv1.SubjectKind_SUBJECT_KIND_MEMBER:     CallerMember,
	credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION: CallerAutomation,
	credentialv1.SubjectKind_SUBJECT_KIND_AGENT:      CallerAgent,
	credentialv1.SubjectKind_SUBJECT_KIND_OPERATOR:   CallerOperator,
}

var credentialKinds = map[credentialv1.CredentialKind]CredentialKind{
	credentialv1.CredentialKind_CREDENTIAL_KIND_OPERATOR:          KindOperator,
	credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL:          KindPersonal,
	credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET: KindAutomation,
	credentialv1.CredentialKind_CREDENTIAL_KIND_ACCESS_TOKEN:      KindAccessToken,
	credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY:         KindAgentKey,
	credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET:   KindRotationSecret,
}

// callerOf converts the credential service's principal.
func callerOf(p *credentialv1.Principal) *Caller {
	c := &Caller{
		Kind: callerKinds[p.GetSubjectKind()], CredentialKind: credentialKinds[p.GetCredentialKind()],
		SubjectID: p.GetSubjectId(), WorkspaceID: p.GetWorkspaceId(), Name: p.GetName(), Role: p.GetRole(),
		Scopes: slices.Clone(p.GetScopes()), TeamIDs: slices.Clone(p.GetTeamIds()), CredentialID: p.GetCredentialId(),
	}
	if t := p.GetExpiresAt(); t != nil {
		c.ExpiresAt = t.AsTime()
	}
	return c
}

type callerKey struct{}

// WithCaller returns ctx carrying c. The Verifier's interceptors and
// middleware call it; tests of handlers may too.
func WithCaller(ctx context.Context, c *Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the verified caller of a request, or nil when the
// request did not pass through the Verifier.
func CallerFrom(ctx context.Context) *Caller {
	c, _ := ctx.Value(callerKey{}).(*Caller)
	return c
}

func caller(ctx context.Context) (*Caller, error) {
	c := CallerFrom(ctx)
	if c == nil {
		return nil, Unauthenticated(MsgMissing)
	}
	if c.Kind == CallerOperator {
		return nil, Forbidden(MsgOperator)
	}
	return c, nil
}

// RequireWorkspace checks that the caller acts in workspace ws. Another
// workspace is NotFound (404), never PermissionDenied, so that a caller
// learns nothing about workspaces other than its own.
func RequireWorkspace(ctx context.Context, ws string) (*Caller, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if ws == "" || c.WorkspaceID != ws {
		return nil, NotFound("workspace " + clip(ws) + " not found")
	}
	return c, nil
}

// RequireScope checks that the caller holds scope (PermissionDenied, 403,
// if not). A person's or an agent's credential carries its role's
// control-plane scopes only: a scope such as issues:write is granted to
// automations.
func RequireScope(ctx context.Context, scope string) (*Caller, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !c.HasScope(scope) {
		return nil, Forbidden("this credential lacks the scope " + clip(scope))
	}
	return c, nil
}

// RequireTeam checks the caller's team boundary (see Caller.WithinTeam):
// PermissionDenied (403) for an automation or agent bounded to other teams.
func RequireTeam(ctx context.Context, team string) (*Caller, error) {
	c, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	if !c.WithinTeam(team) {
		return nil, Forbidden("this credential is bounded to teams (" + strings.Join(c.TeamIDs, ", ") + ") and may not act in team " + clip(team))
	}
	return c, nil
}

// Require checks workspace, scope and team together, in that order; an
// empty scope or team is not checked.
func Require(ctx context.Context, ws, scope, team string) (*Caller, error) {
	c, err := RequireWorkspace(ctx, ws)
	if err != nil {
		return nil, err
	}
	if scope != "" {
		if _, err := RequireScope(ctx, scope); err != nil {
			return nil, err
		}
	}
	if team != "" {
		if _, err := RequireTeam(ctx, team); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
