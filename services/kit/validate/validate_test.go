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
