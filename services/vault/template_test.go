package vault

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseTemplate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []part
	}{
		{"", nil},
		{"plain", []part{{lit: "plain"}}},
		{"{secret:a}", []part{{ref: "a"}}},
		{"{{secret:a}}", []part{{ref: "a"}}},
		{"Bearer {secret:tok.en-1_x}", []part{{lit: "Bearer "}, {ref: "tok.en-1_x"}}},
		{"{secret:a}{{secret:b}}c", []part{{ref: "a"}, {ref: "b"}, {lit: "c"}}},
		{"{secret:a}}", []part{{ref: "a"}, {lit: "}"}}},
		{"{{{secret:a}}}", []part{{lit: "{"}, {ref: "a"}, {lit: "}"}}},
		{`\{secret:a}`, []part{{lit: "{secret:a}"}}},
		{`\{{secret:a}}`, []part{{lit: "{{secret:a}}"}}},
		{`\\{secret:a}`, []part{{lit: `\`}, {ref: "a"}}},
		{`\\\{secret:a}`, []part{{lit: `\{secret:a}`}}},
		{`a\b\\c`, []part{{lit: `a\b\\c`}}},
		{`\{secret:`, []part{{lit: "{secret:"}}},
		{"{not:a} {secret {Secret:a} { secret:a}", []part{{lit: "{not:a} {secret {Secret:a} { secret:a}"}}},
		{"x{", []part{{lit: "x{"}}},
		{`trailing\`, []part{{lit: `trailing\`}}},
		// Names are readable text.
		{"{secret:a b}", []part{{ref: "a b"}}},
		{"x {secret:é}", []part{{lit: "x "}, {ref: "é"}}},
		{"Bearer {{secret:HubSpot API key – production}}", []part{{lit: "Bearer "}, {ref: "HubSpot API key – production"}}},
	} {
		got, err := parseTemplate(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q = %#v, want %#v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{
		"{secret:", "{secret:a", "{{secret:a}", "{{secret:a", "{secret:}", "{{secret:}}",
		"{secret: a}", "{secret:a }", "{secret:a/b}", "{secret:..}", "{secret:a{b}", "{secret:a\u202eb}",
		"{secret:" + strings.Repeat("a", 129) + "}", `\\{secret:a`,
	} {
		_, err := parseTemplate(bad)
		var te *templateError
		if !errors.As(err, &te) {
			t.Errorf("%q: want a template error, got %v", bad, err)
		}
	}
	if _, err := parseTemplate("{secret:" + strings.Repeat("a", 128) + "}"); err != nil {
		t.Errorf("128-character name: %v", err)
	}
}

func TestTemplateErrorsNeverQuoteTheValue(t *testing.T) {
	_, err := parseTemplate("Bearer sk_live_literal_credential {secret:oops")
	if err == nil || strings.Contains(err.Error(), "sk_live") || strings.Contains(err.Error(), "oops") {
		t.Fatalf("error = %v", err)
	}
}

func TestLiteralOnly(t *testing.T) {
	if s, err := literalOnly(`https://x/\{secret:a}?q=\\`); err != nil || s != `https://x/{secret:a}?q=\\` {
		t.Fatalf("%q %v", s, err)
	}
	if _, err := literalOnly(`{"k":"{{secret:a}}"}`); !errors.Is(err, errRefOutsideHeader) {
		t.Fatalf("reference: %v", err)
	}
	if _, err := literalOnly(`{secret:`); err == nil {
		t.Fatal("malformed accepted")
	}
	if s, err := literalOnly(`no refs \ here {}`); err != nil || s != `no refs \ here {}` {
		t.Fatalf("%q %v", s, err)
	}
}

// FuzzParseTemplate checks the parser never panics and that parsing is
// exactly invertible: formatting what was parsed parses back to the same
// parts, a literal escaped by escapeLiteral renders as itself, and a
// substituted value is never parsed again.
func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"", "{secret:a}", "{{secret:a}}", `\{secret:a}`, `\\{secret:a}`, `\\\{{secret:a}}`, "{secret:", "{{secret:a}",
		"Bearer {secret:tok}", "{{{secret:a}}}", `a\`, "{secret:a}}", "x{secret:a.b-c_d}y{{secret:E}}z", "{secret:a b}",
	} {
		f.Add(s, "value {secret:x} \\")
	}
	f.Fuzz(func(t *testing.T, in, value string) {
		parts, err := parseTemplate(in)
		if esc := escapeLiteral(in, false); true {
			back, err := parseTemplate(esc)
			if err != nil {
				t.Fatalf("escaped literal %q does not parse: %v", esc, err)
			}
			if got := render(back, nil); got != in {
				t.Fatalf("escaped literal renders %q, want %q", got, in)
			}
			if len(refs(back)) != 0 {
				t.Fatalf("escaped literal %q has references", esc)
			}
		}
		if err != nil {
			var te *templateError
			if !errors.As(err, &te) || te.pos < 0 || te.pos >= len(in) || (in[te.pos] != '{') {
				t.Fatalf("%q: bad error %v", in, err)
			}
			return
		}
		norm := merge(parts)
		for i, p := range norm {
			if p.ref != "" {
				if checkName(p.ref) != nil {
					t.Fatalf("%q: invalid name %q accepted", in, p.ref)
				}
			} else if p.lit == "" || (i > 0 && norm[i-1].ref == "") {
				t.Fatalf("%q: literal parts not merged: %#v", in, norm)
			}
		}
		again, err := parseTemplate(formatTemplate(norm))
		if err != nil {
			t.Fatalf("%q: formatted %q does not parse: %v", in, formatTemplate(norm), err)
		}
		if !reflect.DeepEqual(merge(again), norm) {
			t.Fatalf("%q: round trip %#v != %#v", in, again, norm)
		}
		// Substitution is one pass: the value appears verbatim.
		out := render(parts, func(string) string { return value })
		var want strings.Builder
		for _, p := range parts {
			if p.ref != "" {
				want.WriteString(value)
			} else {
				want.WriteString(p.lit)
			}
		}
		if out != want.String() {
			t.Fatalf("render mismatch")
		}
	})
}

// merge joins adjacent literal parts.
func merge(parts []part) []part {
	var out []part
	for _, p := range parts {
		if p.ref == "" && len(out) > 0 && out[len(out)-1].ref == "" {
			out[len(out)-1].lit += p.lit
			continue
		}
		out = append(out, p)
	}
	return out
}

// formatTemplate is the inverse of parseTemplate: a template that parses
// back to parts, references written in the {{secret:name}} form.
func formatTemplate(parts []part) string {
	var b strings.Builder
	for i, p := range parts {
		if p.ref != "" {
			b.WriteString(openDouble + p.ref + "}}")
			continue
		}
		beforeRef := i+1 < len(parts) && parts[i+1].ref != ""
		b.WriteString(escapeLiteral(p.lit, beforeRef))
	}
	return b.String()
}

// escapeLiteral returns a template that renders as exactly s. With
// beforeRef, a reference follows, so trailing backslashes are doubled.
func escapeLiteral(s string, beforeRef bool) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] == '\\' {
			j++
		}
		if open := opener(s[j:]); open != "" {
			// n backslashes then an opener: 2n+1 backslashes keep both literal.
			b.WriteString(strings.Repeat(`\`, 2*(j-i)+1))
			b.WriteString(open)
			i = j + len(open)
			continue
		}
		if j > i {
			if j == len(s) && beforeRef {
				b.WriteString(strings.Repeat(`\`, 2*(j-i)))
			} else {
				b.WriteString(s[i:j])
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}
