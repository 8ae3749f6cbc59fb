// Package validate holds the input checks every service shares: display
// names, free text, update masks. Errors are InvalidArgument statuses naming
// the field as callers send it (lowerCamelCase), and never quote more than a
// clipped piece of the input.
package validate

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/backlog/controlplane/services/kit/errs"
)

// Name trims and checks a display name: 1 to max characters of valid UTF-8
// with nothing that can disguise it (see Disguising).
func Name(field, s string, max int) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return "", errs.Invalid(field, "is required")
	case !utf8.ValidString(s):
		return "", errs.Invalid(field, "is not valid UTF-8")
	case utf8.RuneCountInString(s) > max:
		return "", errs.Invalid(field, "must be at most %d characters", max)
	}
	if i := strings.IndexFunc(s, Disguising); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return "", errs.Invalid(field, "must not contain control, bidirectional-formatting, line-separator or invisible characters (found U+%04X)", r)
	}
	return s, nil
}

// Text trims and checks optional free text (a description): up to max
// characters; line breaks (\n, \r) and tabs are allowed, anything else
// Disguising is not — U+2028 and U+2029 included: write \n instead.
func Text(field, s string, max int) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case !utf8.ValidString(s):
		return "", errs.Invalid(field, "is not valid UTF-8")
	case utf8.RuneCountInString(s) > max:
		return "", errs.Invalid(field, "must be at most %d characters", max)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return r != '\n' && r != '\r' && r != '\t' && Disguising(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(s[i:])
		return "", errs.Invalid(field, "must not contain control, bidirectional-formatting, line-separator or invisible characters other than line breaks and tabs (found U+%04X)", r)
	}
	return s, nil
}

// Disguising reports characters that can make text read other than it is,
// in a console, a terminal, a log line or an audit trail:
//   - control characters (C0, DEL, C1), which include line breaks;
//   - the line and paragraph separators U+2028 and U+2029;
//   - format characters (Unicode category Cf): the bidirectional marks,
//     embeddings, overrides and isolates (U+061C, U+200E–U+200F,
//     U+202A–U+202E, U+2066–U+2069) that reorder what is shown, and the
//     invisible ones (zero-width space, word joiner, soft hyphen, byte-order
//     mark, tag characters, …) that hide what is there;
//
// except the zero-width joiner and non-joiner (U+200D, U+200C), which
// emoji sequences and Persian and Indic scripts need.
func Disguising(r rune) bool {
	switch {
	case r == '\u200c' || r == '\u200d':
		return false
	case unicode.IsControl(r), r == '\u2028', r == '\u2029':
		return true
	}
	return unicode.Is(unicode.Cf, r)
}

// Required checks that a path parameter such as the workspace id is present.
// Whether the caller may act there is auth.Require's question.
func Required(field, s string) error {
	if s == "" {
		return errs.Invalid(field, "is required")
	}
	return nil
}

// Clip shortens s for quoting in an error message.
func Clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

// Mask normalises update-mask paths. canon maps every accepted spelling
// (snake_case as in the proto, lowerCamelCase as in JSON) to one canonical
// path. Empty paths are dropped (the gateway sends [""] for a PATCH of `{}`);
// an unknown path, or nothing left to update, is InvalidArgument listing the
// fields that can change.
func Mask(paths []string, canon map[string]string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		c, ok := canon[p]
		if !ok {
			return nil, errs.Invalid("updateMask", "%q is not a field you can change; allowed: %s", Clip(p), allowed(canon))
		}
		out[c] = true
	}
	if len(out) == 0 {
		return nil, errs.Invalid("updateMask", "nothing to update: send at least one of %s", allowed(canon))
	}
	return out, nil
}

// allowed lists the JSON spellings of canon's paths.
func allowed(canon map[string]string) string {
	seen := map[string]bool{}
	var names []string
	for _, c := range canon {
		if !seen[c] {
			seen[c] = true
			names = append(names, camel(c))
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func camel(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}

// MaskSpellings builds a canon map accepting both spellings of each path.
func MaskSpellings(paths ...string) map[string]string {
	m := make(map[string]string, 2*len(paths))
	for _, p := range paths {
		m[p] = p
		m[camel(p)] = p
	}
	return m
}
