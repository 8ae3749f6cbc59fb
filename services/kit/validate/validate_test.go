package validate

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestName(t *testing.T) {
	if got, err := Name("name", "  Deploy bot ", 100); err != nil || got != "Deploy bot" {
		t.Fatalf("Name = %q, %v", got, err)
	}
	for _, bad := range []string{"", "   ", "a\x00b", "\xff", strings.Repeat("é", 101)} {
		if _, err := Name("name", bad, 100); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Name(%q) = %v", bad, err)
		}
	}
	if _, err := Text("description", "line one\nline two\tx", 100); err != nil {
		t.Fatalf("Text refused line breaks: %v", err)
	}
	if _, err := Text("description", "bell\a", 100); err == nil {
		t.Fatal("Text accepted a control character")
	}
}

func TestMask(t *testing.T) {
	canon := MaskSpellings("name", "team_ids", "suspended")
	got, err := Mask([]string{"teamIds", "name", ""}, canon)
	if err != nil || !got["team_ids"] || !got["name"] || len(got) != 2 {
		t.Fatalf("Mask = %v, %v", got, err)
	}
	for _, c := range []struct {
		paths []string
		want  string
	}{
		{nil, "nothing to update: send at least one of name, suspended, teamIds"},
		{[]string{""}, "nothing to update"},
		{[]string{"workspace_id"}, `"workspace_id" is not a field you can change; allowed: name, suspended, teamIds`},
	} {
		_, err := Mask(c.paths, canon)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), c.want) {
			t.Errorf("Mask(%q) = %v, want %q", c.paths, err, c.want)
		}
	}
	if Clip(strings.Repeat("é", 100)) == "" || len(Clip(strings.Repeat("x", 100))) > 70 {
		t.Fatal("Clip")
	}
}

func TestDisguisingCharacters(t *testing.T) {
	disguising := map[string]rune{
		"LRE": 0x202A, "RLE": 0x202B, "PDF": 0x202C, "LRO": 0x202D, "RLO": 0x202E,
		"LRI": 0x2066, "RLI": 0x2067, "FSI": 0x2068, "PDI": 0x2069,
		"LRM": 0x200E, "RLM": 0x200F, "ALM": 0x061C,
		"line separator": 0x2028, "paragraph separator": 0x2029,
		"zero width space": 0x200B, "word joiner": 0x2060, "soft hyphen": 0x00AD, "BOM": 0xFEFF,
		"tag A": 0xE0041, "cancel tag": 0xE007F, "interlinear annotation": 0xFFF9,
		"NUL": 0, "ESC": 0x1B, "DEL": 0x7F, "NEL": 0x85, "CSI": 0x9B,
	}
	for name, r := range disguising {
		s := "ad" + string(r) + "min"
		_, err := Name("name", s, 100)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "name: must not contain") {
			t.Errorf("Name with %s (%U) = %v", name, r, err)
		}
		if _, err := Text("description", s, 100); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Text with %s (%U) = %v", name, r, err)
		}
	}
	// What stays allowed: joiners, other scripts, emoji, punctuation.
	for _, s := range []string{
		"👩\u200D💻 deploy bot", "می\u200Cخواهم", "HubSpot API key – production", "Zürich 東京 Ελλάδα",
		"שלום world", "🏳️\u200D🌈", "a\u00A0b",
	} {
		if got, err := Name("name", s, 100); err != nil || got != s {
			t.Errorf("Name(%q) = %q, %v", s, got, err)
		}
	}
	_, err := Name("name", "x\u202Ey", 100)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "U+202E") {
		t.Errorf("the message does not name the character: %q", msg)
	}
	if _, err := Text("description", "one\r\ntwo\tthree\u2028four", 100); !strings.Contains(status.Convert(err).Message(), "U+2028") {
		t.Errorf("Text with U+2028 = %v", err)
	}
}

func FuzzName(f *testing.F) {
	f.Add("Deploy bot")
	f.Add("a\u202Eb")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Name("name", s, 100)
		if err == nil && strings.ContainsFunc(got, Disguising) {
			t.Fatalf("Name accepted %q", got)
		}
	})
}
