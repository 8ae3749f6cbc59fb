package vault

// Secret references in HTTP Request steps.
//
// A header value may reference a webhook secret as {secret:name} or
// {{secret:name}} (the two forms mean the same); the vault replaces the
// reference with the secret's value when it sends the request. The name is
// everything up to the closing brace(s), as readable as the secret's own
// ("{secret:HubSpot API key – production}"), matched regardless of case.
//
// Escape: a backslash right before "{secret:" or "{{secret:" makes it
// literal text: `\{secret:x}` sends `{secret:x}` and `\{{secret:x}}` sends
// `{{secret:x}}`. To send a backslash followed by a substituted reference,
// double it: `\\{secret:x}` sends `\` and the value. In general, a run of n
// backslashes right before an opener stands for n/2 backslashes, and the
// opener is literal when n is odd. Backslashes anywhere else are plain text.
//
// Anything that starts like a reference but is not a complete one — an
// unclosed "{secret:", a name with other characters, "{{secret:x}" — is an
// error, so that a typo never sends a half-substituted header.
//
// URLs and bodies use the same grammar, except that a reference there is an
// error (values only travel in headers); escapes are honoured, so
// `\{secret:x}` in a body sends the literal text.
//
// Substituted values are never parsed again. (One thing the grammar cannot
// say is a literal '{' right before a reference: "{{secret:x}" is refused as
// a double-brace reference missing a brace.)

import (
	"fmt"
	"strings"
)

const (
	openSingle = "{secret:"
	openDouble = "{{secret:"
)

// part is a piece of a parsed template: literal text, or a reference.
type part struct {
	lit string
	ref string // secret name; set for a reference (lit is then empty)
}

// templateError says where and why a template is malformed. It never quotes
// the template: header values may hold credentials typed in literally.
type templateError struct {
	pos    int // byte offset of the reference's first '{'
	reason string
}

func (e *templateError) Error() string {
	return fmt.Sprintf("malformed secret reference at byte %d: %s", e.pos, e.reason)
}

// parseTemplate splits s into literal parts and references.
func parseTemplate(s string) ([]part, error) {
	var parts []part
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			parts = append(parts, part{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case '\\':
			j := i
			for j < len(s) && s[j] == '\\' {
				j++
			}
			n := j - i
			open := opener(s[j:])
			if open == "" {
				lit.WriteString(s[i:j])
				i = j
				continue
			}
			lit.WriteString(strings.Repeat(`\`, n/2))
			if n%2 == 1 {
				lit.WriteString(open)
				i = j + len(open)
				continue
			}
			i = j // the reference itself is parsed next
		case '{':
			open := opener(s[i:])
			if open == "" {
				lit.WriteByte('{')
				i++
				continue
			}
			name, end, err := parseRef(s, i, open)
			if err != nil {
				return nil, err
			}
			flush()
			parts = append(parts, part{ref: name})
			i = end
		default:
			j := i + 1
			for j < len(s) && s[j] != '\\' && s[j] != '{' {
				j++
			}
			lit.WriteString(s[i:j])
			i = j
		}
	}
	flush()
	return parts, nil
}

// opener returns the reference opener s starts with, or "".
func opener(s string) string {
	switch {
	case strings.HasPrefix(s, openDouble):
		return openDouble
	case strings.HasPrefix(s, openSingle):
		return openSingle
	}
	return ""
}

// parseRef parses the reference whose opener starts at s[i].
func parseRef(s string, i int, open string) (name string, end int, err error) {
	closer := "}"
	if open == openDouble {
		closer = "}}"
	}
	j := i + len(open)
	k := j
	for k < len(s) && s[k] != '}' && s[k] != '{' {
		k++
	}
	name = s[j:k]
	switch {
	case k == len(s):
		return "", 0, &templateError{i, fmt.Sprintf("%q is not closed with %q", open, closer)}
	case s[k] == '{':
		return "", 0, &templateError{i, "a secret name cannot contain '{'"}
	case !strings.HasPrefix(s[k:], closer):
		return "", 0, &templateError{i, `a reference opened with "{{secret:" must close with "}}"`}
	case name == "":
		return "", 0, &templateError{i, "the secret name is empty"}
	}
	if err := checkExistingName(name); err != nil {
		return "", 0, &templateError{i, "the secret name " + err.Error()}
	}
	return name, k + len(closer), nil
}

// refs returns the distinct names a template references, in order.
func refs(parts []part) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range parts {
		if p.ref != "" && !seen[nameKey(p.ref)] {
			seen[nameKey(p.ref)] = true
			out = append(out, p.ref)
		}
	}
	return out
}

// render joins parts, replacing each reference with value(name).
func render(parts []part, value func(name string) string) string {
	var b strings.Builder
	for _, p := range parts {
		if p.ref != "" {
			b.WriteString(value(p.ref))
		} else {
			b.WriteString(p.lit)
		}
	}
	return b.String()
}

// literalOnly parses s (a URL or a body) and returns its text with escapes
// applied, or an error if it references a secret or is malformed.
func literalOnly(s string) (string, error) {
	if !strings.Contains(s, openSingle) { // every opener contains "{secret:"
		return s, nil
	}
	parts, err := parseTemplate(s)
	if err != nil {
		return "", err
	}
	for _, p := range parts {
		if p.ref != "" {
			return "", errRefOutsideHeader
		}
	}
	return render(parts, nil), nil
}

var errRefOutsideHeader = fmt.Errorf("secret references are only allowed in header values (write \\{secret: for the literal text)")
