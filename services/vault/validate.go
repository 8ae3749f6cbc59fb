package vault

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/text/unicode/norm"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/validate"
)

// Limits on what callers send.
const (
	maxNameLen        = 100 // characters
	maxLegacyNameLen  = 128
	maxDescriptionLen = 1000
	// MaxValueBytes caps a secret's value.
	MaxValueBytes = 64 << 10

	maxURLLen         = 2048
	maxHeaders        = 50
	maxHeaderNameLen  = 256
	maxHeaderValueLen = 8 << 10
	// MaxRequestBodyBytes caps an HTTP Request step's body.
	MaxRequestBodyBytes = 1 << 20

	maxCallerLen  = 64
	maxPurposeLen = 256
)

// Kinds and states (strings, as in the JSON contract).
const (
	KindIntegration = "integration"
	KindWebhook     = "webhook"

	StateActive  = "active"
	StateRevoked = "revoked"
	StateExpired = "expired"
)

// Field names in errors are the JSON (lowerCamelCase) names callers send.
const (
	fieldWorkspace   = "workspaceId"
	fieldName        = "name"
	fieldKind        = "kind"
	fieldDescription = "description"
	fieldValue       = "value"
	fieldExpiresAt   = "expiresAt"
	fieldSecret      = "secret"
	fieldMask        = "updateMask"
	fieldExpiring    = "expiringWithin"
	fieldMethod      = "method"
	fieldURL         = "url"
	fieldHeaders     = "headers"
	fieldBody        = "body"
	fieldCaller      = "caller"
	fieldPurpose     = "purpose"
)

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

// checkSlug checks an identifier-like label (a Resolve caller, an
// integration): 1 to max letters, digits, '_', '-' or '.', not only dots.
func checkSlug(s string, max int) error {
	switch {
	case s == "":
		return errors.New("is required")
	case len(s) > max:
		return fmt.Errorf("must be at most %d characters", max)
	case strings.Trim(s, ".") == "":
		return errors.New(`must not consist of dots only`)
	}
	for i := 0; i < len(s); i++ {
		if !isNameByte(s[i]) {
			return errors.New("may only contain letters, digits, '_', '-' and '.'")
		}
	}
	return nil
}

// checkName checks a new secret name: 1 to 100 printable characters,
// spaces and Unicode punctuation included ("HubSpot API key – production");
// no '{' or '}' (they delimit references), no '/' (paths), nothing that can
// disguise it (control, bidi-formatting, invisible characters), no leading
// or trailing space, not only dots (which a URL path would swallow).
func checkName(s string) error { return checkNameLen(s, maxNameLen) }

// checkExistingName checks a name that refers to a secret: as checkName,
// but up to 128 characters, the limit names had before they became
// readable text, so that every stored secret stays reachable.
func checkExistingName(s string) error { return checkNameLen(s, maxLegacyNameLen) }

func checkNameLen(s string, max int) error {
	switch {
	case s == "":
		return errors.New("is required")
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8")
	case utf8.RuneCountInString(s) > max:
		return fmt.Errorf("must be at most %d characters", max)
	case strings.TrimSpace(s) != s:
		return errors.New("must not begin or end with a space")
	case strings.Trim(s, ".") == "":
		return errors.New(`must not consist of dots only`)
	}
	for _, r := range s {
		switch {
		case r == '{' || r == '}' || r == '/':
			return errors.New("must not contain '{', '}' or '/'")
		case validate.Disguising(r):
			return fmt.Errorf("must not contain control, bidirectional-formatting or invisible characters (found U+%04X)", r)
		case r != ' ' && !unicode.IsPrint(r):
			return fmt.Errorf("must contain only printable characters and spaces (found U+%04X)", r)
		}
	}
	return nil
}

func validName(s string) (string, error) {
	if err := checkName(s); err != nil {
		return "", errs.Invalid(fieldName, "%s", err.Error())
	}
	return s, nil
}

// nameKey is the form under which names are unique and looked up:
// case-insensitive, so "Stripe" and "stripe" cannot both exist, and in
// Unicode normal form C, so that "é" typed either way is one name. Each
// character is mapped to upper then lower case (so "ſ", "S" and "s" agree);
// for the ASCII names of earlier versions this is strings.ToLower, so keys
// (and the AAD sealed values are bound to) are unchanged for them.
func nameKey(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return nameKeyUnicode(s)
		}
	}
	// ASCII: already in normal form C, and upper-then-lower case is
	// lower case (the common case, on every secret lookup).
	return strings.ToLower(s)
}

func nameKeyUnicode(s string) string {
	return strings.Map(func(r rune) rune { return unicode.ToLower(unicode.ToUpper(r)) }, norm.NFC.String(s))
}

// existingName checks a name that must name an existing secret: a name that
// cannot exist is NotFound, decided without I/O.
func existingName(s string) error {
	if checkExistingName(s) != nil {
		return fail(ErrNotFound, "secret %q not found", clip(s))
	}
	return nil
}

func validKind(s string) (string, error) {
	switch s {
	case KindIntegration, KindWebhook:
		return s, nil
	case "":
		return "", errs.Invalid(fieldKind, "is required: %q or %q", KindIntegration, KindWebhook)
	}
	return "", errs.Invalid(fieldKind, "%q is not a kind: want %q or %q", clip(s), KindIntegration, KindWebhook)
}

// validDescription checks free text: up to 1000 characters; line breaks and
// tabs are allowed, other control characters are not.
func validDescription(s string) (string, error) {
	return validate.Text(fieldDescription, s, maxDescriptionLen)
}

// validValue checks a secret's value. It is kept exactly as sent (never
// trimmed), and error messages never quote it.
func validValue(s string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return errs.Invalid(fieldValue, "is required and must not be empty or only whitespace")
	case len(s) > MaxValueBytes:
		return errs.Invalid(fieldValue, "is %d bytes; the most a secret may hold is %d bytes (64 KiB)", len(s), MaxValueBytes)
	case !utf8.ValidString(s):
		return errs.Invalid(fieldValue, "is not valid UTF-8")
	}
	return nil
}

// validExpiry checks an optional expiry: nil means none; otherwise a valid
// time strictly in the future.
func validExpiry(ts *timestamppb.Timestamp, now time.Time) (*timestamppb.Timestamp, error) {
	if ts == nil {
		return nil, nil
	}
	if err := ts.CheckValid(); err != nil {
		return nil, errs.Invalid(fieldExpiresAt, "is not a valid time (RFC 3339, e.g. 2030-01-31T00:00:00Z)")
	}
	if !ts.AsTime().After(now) {
		return nil, errs.Invalid(fieldExpiresAt, "%s is not in the future", ts.AsTime().UTC().Format(time.RFC3339))
	}
	return timestamppb.New(ts.AsTime()), nil
}

func validWorkspace(ws string) error { return validate.Required(fieldWorkspace, ws) }

// Update mask paths. Callers may spell them in proto (snake_case) or JSON
// (lowerCamelCase) form; the gateway derives them from the PATCH body.
const (
	pathValue        = "value"
	pathDescription  = "description"
	pathExpiresAt    = "expires_at"
	pathAllowedHosts = "allowed_hosts"
)

var maskPaths = validate.MaskSpellings(pathValue, pathDescription, pathExpiresAt, pathAllowedHosts)

// changeSet is a validated update.
type changeSet struct {
	paths       map[string]bool
	value       string
	description string
	expiresAt   *timestamppb.Timestamp // nil with pathExpiresAt clears the expiry
	// allowedHosts, normalised; nil with pathAllowedHosts: any host.
	allowedHosts []string
}

func (c *changeSet) has(p string) bool { return c.paths[p] }

// fields lists the changed fields in a fixed order, for the audit trail.
func (c *changeSet) fields() []string {
	var out []string
	for _, p := range []string{pathValue, pathDescription, pathExpiresAt, pathAllowedHosts} {
		if c.has(p) {
			out = append(out, p)
		}
	}
	return out
}

// validMask normalises the update mask and validates the masked fields. An
// empty mask is refused: a PATCH must name what it changes.
func validMask(paths []string, in *vaultv1.Secret, now time.Time) (*changeSet, error) {
	set, err := validate.Mask(paths, maskPaths)
	if err != nil {
		return nil, err
	}
	c := &changeSet{paths: set}
	if c.has(pathValue) {
		if err := validValue(in.GetValue()); err != nil {
			return nil, err
		}
		c.value = in.GetValue()
	}
	if c.has(pathDescription) {
		if c.description, err = validDescription(in.GetDescription()); err != nil {
			return nil, err
		}
	}
	if c.has(pathExpiresAt) {
		if c.expiresAt, err = validExpiry(in.GetExpiresAt(), now); err != nil {
			return nil, err
		}
	}
	if c.has(pathAllowedHosts) {
		// Rebinding a stored secret to other hosts takes knowing it: else
		// anyone who may edit it could send it to a host of their own.
		if !c.has(pathValue) {
			return nil, errs.Invalid(fieldAllowedHosts, "changing allowedHosts requires the secret's value in the same update: send value too")
		}
		if c.allowedHosts, err = validAllowedHosts(KindWebhook, in.GetAllowedHosts()); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// headerTemplate is one validated request header.
type headerTemplate struct {
	name  string // canonical form
	parts []part
}

// httpStep is a validated HTTP Request step, before substitution.
type httpStep struct {
	method  string
	url     *url.URL
	headers []headerTemplate
	body    string
	refs    []string // distinct secret names referenced, in order
}

var methods = map[string]bool{
	http.MethodGet: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodHead: true,
}

// vaultHeaders are set by the vault (framing, hop-by-hop, compression it
// must undo to redact echoed values) and may not be sent by a step.
var vaultHeaders = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true, "Connection": true,
	"Keep-Alive": true, "Proxy-Authorization": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Accept-Encoding": true,
}

// validStep checks an HTTP Request step and parses its secret references.
// Nothing is looked up or sent.
func validStep(req *vaultv1.RunHttpRequestRequest) (*httpStep, error) {
	st := &httpStep{method: strings.ToUpper(strings.TrimSpace(req.GetMethod()))}
	if !methods[st.method] {
		return nil, errs.Invalid(fieldMethod, "%q is not supported: use GET, POST, PUT, PATCH, DELETE or HEAD", clip(req.GetMethod()))
	}

	raw := req.GetUrl()
	switch {
	case raw == "":
		return nil, errs.Invalid(fieldURL, "is required")
	case len(raw) > maxURLLen:
		return nil, errs.Invalid(fieldURL, "must be at most %d characters", maxURLLen)
	}
	lit, err := literalOnly(raw)
	if err != nil {
		return nil, templateInvalid(fieldURL, err)
	}
	u, err := url.Parse(lit)
	if err != nil {
		return nil, errs.Invalid(fieldURL, "is not a URL")
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errs.Invalid(fieldURL, "must be an absolute http:// or https:// URL")
	case u.Hostname() == "":
		return nil, errs.Invalid(fieldURL, "has no host")
	case u.User != nil:
		return nil, errs.Invalid(fieldURL, "must not carry user:password@; send credentials in a header, e.g. Authorization: Bearer {secret:name}")
	}
	u.Fragment, u.RawFragment = "", ""
	st.url = u

	if len(req.GetHeaders()) > maxHeaders {
		return nil, errs.Invalid(fieldHeaders, "at most %d headers", maxHeaders)
	}
	seen := map[string]string{}
	for name, value := range req.GetHeaders() {
		field := fieldHeaders + "." + clip(name)
		switch {
		case name == "" || len(name) > maxHeaderNameLen || !httpguts.ValidHeaderFieldName(name):
			return nil, errs.Invalid(fieldHeaders, "%q is not a valid header name", clip(name))
		case len(value) > maxHeaderValueLen:
			return nil, errs.Invalid(field, "must be at most %d bytes", maxHeaderValueLen)
		}
		canon := http.CanonicalHeaderKey(name)
		if vaultHeaders[canon] {
			return nil, errs.Invalid(fieldHeaders, "%s is set by the vault and cannot be sent by a step", canon)
		}
		if other, dup := seen[canon]; dup {
			return nil, errs.Invalid(fieldHeaders, "%q and %q are the same header", clip(other), clip(name))
		}
		seen[canon] = name
		parts, err := parseTemplate(value)
		if err != nil {
			return nil, templateInvalid(field, err)
		}
		for _, p := range parts {
			if p.ref == "" && !validHeaderText(p.lit) {
				return nil, errs.Invalid(field, "contains characters a header value cannot hold (line breaks or other control characters)")
			}
		}
		st.headers = append(st.headers, headerTemplate{name: canon, parts: parts})
	}
	// Deterministic order (the map's is random), for sending and errors.
	slices.SortFunc(st.headers, func(a, b headerTemplate) int { return strings.Compare(a.name, b.name) })
	var all []part
	for _, h := range st.headers {
		all = append(all, h.parts...)
	}
	st.refs = refs(all)

	if len(req.GetBody()) > MaxRequestBodyBytes {
		return nil, errs.Invalid(fieldBody, "is %d bytes; at most %d (1 MiB)", len(req.GetBody()), MaxRequestBodyBytes)
	}
	if st.body, err = literalOnly(req.GetBody()); err != nil {
		return nil, templateInvalid(fieldBody, err)
	}
	if len(st.refs) > 0 && u.Scheme != "https" {
		return nil, errs.Invalid(fieldURL, "must use https:// because a header references a secret (HTTPS is enforced whenever a secret is used)")
	}
	return st, nil
}

func templateInvalid(field string, err error) error {
	return errs.Invalid(field, "%s", err.Error())
}

// validHeaderText reports whether s may appear in a header value: no
// control characters except tab.
func validHeaderText(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// validCaller checks Resolve's caller label (default "service").
func validCaller(s string) (string, error) {
	if s == "" {
		return "service", nil
	}
	if checkSlug(s, maxCallerLen) != nil {
		return "", errs.Invalid(fieldCaller, "must be 1 to %d letters, digits, '_', '-' or '.'", maxCallerLen)
	}
	return s, nil
}

func validPurpose(s string) (string, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxPurposeLen || !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl) {
		return "", errs.Invalid(fieldPurpose, "must be at most %d bytes of text without control characters", maxPurposeLen)
	}
	return s, nil
}

// clip shortens a caller-supplied string for an error message.
func clip(s string) string { return validate.Clip(s) }
