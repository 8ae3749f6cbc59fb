package automation

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
	maxNameLen        = 100
	maxDescriptionLen = 1000
	maxLabelLen       = 100
	idPrefix          = "auto"
)

// Field names in errors are the JSON (lowerCamelCase) names callers send.
const (
	fieldName        = "name"
	fieldDescription = "description"
	fieldTeamIDs     = "teamIds"
	fieldScopes      = "scopes"
	fieldLabel       = "credentialLabel"
	fieldWorkspace   = "workspaceId"
	fieldMask        = "updateMask"
	fieldAutomation  = "automation"
)

func validName(field, s string) (string, error) { return validate.Name(field, s, maxNameLen) }

func validDescription(s string) (string, error) {
	return validate.Text(fieldDescription, s, maxDescriptionLen)
}

// validLabel checks an optional credential label (empty is allowed).
func validLabel(s string) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case !utf8.ValidString(s):
		return "", errs.Invalid(fieldLabel, "is not valid UTF-8")
	case len(s) > maxLabelLen:
		// Bytes, not characters: the credential service counts bytes.
		return "", errs.Invalid(fieldLabel, "must be at most %d bytes of UTF-8", maxLabelLen)
	case strings.ContainsFunc(s, unicode.IsControl):
		return "", errs.Invalid(fieldLabel, "must not contain control characters")
	}
	return s, nil
}

func validWorkspace(ws string) error { return validate.Required(fieldWorkspace, ws) }

// validAutomationID rejects ids this service cannot have made. Such an
// automation does not exist, so the answer is NotFound (as for any missing
// automation), decided without I/O.
func validAutomationID(id string) error {
	if !ids.Valid(idPrefix, id) {
		return ErrNotFound
	}
	return nil
}

// foldName is the form under which names are unique: case-insensitive.
func foldName(s string) string { return strings.ToLower(s) }

// Update mask paths. Callers may spell them in proto (snake_case) or JSON
// (lowerCamelCase) form; the gateway sends whichever it derives from the
// PATCH body.
const (
	pathName        = "name"
	pathDescription = "description"
	pathTeamIDs     = "team_ids"
	pathScopes      = "scopes"
	pathSuspended   = "suspended"
)

var maskPaths = validate.MaskSpellings(pathName, pathDescription, pathTeamIDs, pathScopes, pathSuspended)

// changeSet is a validated update: which fields to set and their new values.
type changeSet struct {
	paths       map[string]bool
	name        string
	description string
	teamIDs     []string
	scopes      []string
	suspended   bool
}

func (c *changeSet) has(p string) bool { return c.paths[p] }

// grant reports whether the change touches what the automation's
// credentials carry (and so needs the credential service told).
func (c *changeSet) grant() bool {
	return c.has(pathName) || c.has(pathTeamIDs) || c.has(pathScopes) || c.has(pathSuspended)
}

// validMask normalises the update mask and validates the values of the
// masked fields. An empty mask is refused: a PATCH must name what it changes
// (the gateway derives the mask from the JSON keys sent, so `{}` changes
// nothing, and a gRPC caller without a mask would otherwise clear fields by
// accident).
func validMask(paths []string, name, description string, teamIDs, scopes []string, suspended bool) (*changeSet, error) {
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
	if c.has(pathDescription) {
		if c.description, err = validDescription(description); err != nil {
			return nil, err
		}
	}
	if c.has(pathTeamIDs) {
		if c.teamIDs, err = auth.ValidateTeamIDs(fieldTeamIDs, teamIDs); err != nil {
			return nil, err
		}
	}
	if c.has(pathScopes) {
		if c.scopes, err = auth.ValidateScopes(fieldScopes, scopes); err != nil {
			return nil, err
		}
	}
	c.suspended = suspended
	return c, nil
}
