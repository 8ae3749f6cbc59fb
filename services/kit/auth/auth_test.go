package auth

import "testing"

func TestScopeAndTeamSyntax(t *testing.T) {
	for s, want := range map[string]bool{
		"automations:read": true, "issues:write": true, "a:b": true, "x.y-z_1:do.it": true,
		"": false, ":": false, "a:": false, ":b": false, "A:b": false, "a:B": false, "1a:b": false,
		"a:b:c": false, "a b:c": false, "automations:read ": false,
	} {
		if ValidScope(s) != want {
			t.Errorf("ValidScope(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{"team-a": true, "T_1": true, "0": true, "": false, "-a": false, "_a": false, "a b": false, "é": false} {
		if validTeamID(s) != want {
			t.Errorf("validTeamID(%q) = %v", s, !want)
		}
	}
	if ValidScope("a:" + string(make([]byte, 63))) {
		t.Error("accepted NUL bytes")
	}
}
