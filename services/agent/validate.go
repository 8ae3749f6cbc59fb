package agent

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/validate"
)

// Limits on what callers send.
const (
	maxNameLen           = 100
	maxAppIDLen          = 200
	maxIdempotencyKeyLen = 255
	agentIDPrefix        = "agt"
	installationIDPrefix = "inst"
)

// Field names in errors are the JSON (lowerCamelCase) names callers send.
const (
	fieldName           = "name"
	fieldAppID          = "appId"
	fieldTeamIDs        = "teamIds"
	fieldRole           = "role"
	fieldWorkspace      = "workspaceId"
	fieldMask           = "updateMask"
	fieldAgent          = "agent"
	fieldRotationSecret = "rotationSecret"
	fieldIdempotencyKey = "Idempotency-Key"
)

func validName(field, s string) (string, error) { return validate.Name(field, s, maxNameLen) }

// validAppID checks an optional app id: up to 200 printable characters
// without spaces.
func validAppID(s string) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case !utf8.ValidString(s):
		return "", errs.Invalid(fieldAppID, "is not valid UTF-8")
	case len(s) > maxAppIDLen:
		return "", errs.Invalid(fieldAppID, "must be at most %d bytes", maxAppIDLen)
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }):
		return "", errs.Invalid(fieldAppID, "must not contain spaces or control characters")
	}
	return s, nil
}

// validRole checks an agent's role. On create an empty role means member
// (the least privilege); in an update that names the role it must be given.
func validRole(s string, emptyIsMember bool) (string, error) {
	switch s {
	case auth.RoleMember, auth.RoleAdmin:
		return s, nil
	case "":
		if emptyIsMember {
			return auth.RoleMember, nil
		}
		return "", errs.Invalid(fieldRole, "is required: member or admin")
	}
	return "", errs.Invalid(fieldRole, "%q is not a role an agent can have: member or admin", clip(s))
}

func validWorkspace(ws string) error { return validate.Required(fieldWorkspace, ws) }

// validAgentID rejects ids this service cannot have made. Such an agent does
// not exist, so the answer is NotFound, decided without I/O.
func validAgentID(id string) error {
	if !ids.Valid(agentIDPrefix, id) {
		return ErrAgentNotFound
	}
	return nil
}

// validInstallationID is validAgentID for installations.
func validInstallationID(id string) error {
	if !ids.Valid(installationIDPrefix, id) {
		return ErrInstallationNotFound
	}
	return nil
}

// validIdempotencyKey checks an Idempotency-Key: 1 to 255 visible ASCII
// characters. Empty means none was sent.
func validIdempotencyKey(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > maxIdempotencyKeyLen {
		return errs.Invalid(fieldIdempotencyKey, "must be at most %d characters", maxIdempotencyKeyLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return errs.Invalid(fieldIdempotencyKey, "must be visible ASCII characters (a UUID is a good choice)")
		}
	}
	return nil
}

// foldName is the form under which names are unique: case-insensitive.
func foldName(s string) string { return strings.ToLower(s) }

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// Update mask paths. Callers may spell them in proto (snake_case) or JSON
// (lowerCamelCase) form; the gateway sends whichever it derives from the
// PATCH body.
const (
	pathName      = "name"
	pathTeamIDs   = "team_ids"
	pathRole      = "role"
	pathSuspended = "suspended"
)

var maskPaths = validate.MaskSpellings(pathName, pathTeamIDs, pathRole, pathSuspended)

// changeSet is a validated update: which fields to set and their new values.
type changeSet struct {
	paths     map[string]bool
	name      string
	teamIDs   []string
	role      string
	suspended bool
}

func (c *changeSet) has(p string) bool { return c.paths[p] }

// validMask normalises the update mask and validates the values of the
// masked fields. An empty mask is refused: a PATCH must name what it
// changes.
func validMask(paths []string, name string, teamIDs []string, role string, suspended bool) (*changeSet, error) {
	set, err := validate.Mask(paths, maskPaths)
	if err != nil {
		return nil, err
	}
	c := &changeSet{paths: set}
	if c.has(pathName) {
		if c.name, err = validName(fieldName, name); err != nil {
			return nil, err
		}
	}
	if c.has(pathTeamIDs) {
		if c.teamIDs, err = auth.ValidateTeamIDs(fieldTeamIDs, teamIDs); err != nil {
			return nil, err
		}
	}
	if c.has(pathRole) {
		if c.role, err = validRole(role, false); err != nil {
			return nil, err
		}
	}
	c.suspended = suspended
	return c, nil
}
