package cli

import (
	"net/http"
	"strings"
	"testing"
)

// TestConsoleLink: `backlog console` sends the profile's personal access
// token (never another kind) and prints the gateway's one-time link under the
// API's base URL; without a personal token it refuses before sending.
func TestConsoleLink(t *testing.T) {
	h := newHarness(t)
	var sent string
	h.api.handle("POST /console/sign-in-links", func(w http.ResponseWriter, r *http.Request) {
		sent = r.Header.Get("Authorization")
		writeJSON(w, http.StatusOK, map[string]string{"path": "/console/sign-in#code=abc", "expiresAt": "2030-01-02T03:09:05Z"})
	})

	r := h.run("console")
	if r.code != ExitAuth || !strings.Contains(r.stderr, "no personal access token") {
		t.Fatalf("without a personal token: exit %d, stderr %q", r.code, r.stderr)
	}
	if sent != "" {
		t.Fatalf("sent a request without a personal token")
	}

	h.mustRun("auth", "set-token", h.personal)
	r = h.mustRun("console")
	if sent != "Bearer "+h.personal {
		t.Errorf("sent Authorization %q", sent)
	}
	if got := strings.TrimSpace(r.stdout); got != h.srv.URL+"/console/sign-in#code=abc" {
		t.Errorf("printed %q", got)
	}
	if !strings.Contains(r.stderr, "works once") {
		t.Errorf("stderr %q does not say the link works once", r.stderr)
	}
}
