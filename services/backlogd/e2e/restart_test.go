package e2e

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/backlog/controlplane/services/kit/proctest"
)

// TestRestartDurability stops the all-in-one process with SIGTERM (it must
// exit 0) and starts it again on the same data dir: workspaces, members,
// automations, secrets and unexpired access tokens survive, and the
// operator token is neither rewritten nor replaced.
func TestRestartDurability(t *testing.T) {
	t.Parallel()
	c := startCluster(t, layoutAll)
	opPath := filepath.Join(c.ProcFor(proctest.TargetCredential).DataDir, "operator-token")
	opBefore, err := os.ReadFile(opPath)
	if err != nil {
		t.Fatal(err)
	}
	infoBefore, err := os.Stat(opPath)
	if err != nil {
		t.Fatal(err)
	}
	if infoBefore.Mode().Perm() != 0o600 {
		t.Errorf("operator-token has mode %v, want 0600", infoBefore.Mode().Perm())
	}

	ws := c.createWorkspace(t, "Acme")
	_, memberTok := c.createMember(t, ws, "Grace", "member")
	auto, secret := c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{
		"name": "survivor", "description": "before restart", "scopes": []string{"automations:read"},
	})
	path := "/v1/workspaces/" + ws.ID + "/automations/" + auto.str("id")
	at := c.exchange(t, secret, nil).str("accessToken")

	c.restart(t)

	opAfter, err := os.ReadFile(opPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(opBefore, opAfter) {
		t.Error("the operator-token file changed across a restart")
	}
	if infoAfter, err := os.Stat(opPath); err != nil || !infoAfter.ModTime().Equal(infoBefore.ModTime()) {
		t.Errorf("the operator-token file was rewritten across a restart (%v)", err)
	}

	got := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil).sub("automation")
	if got.str("name") != "survivor" || got.str("description") != "before restart" || got.str("credential.id") != auto.str("credential.id") {
		t.Errorf("automation after restart: %v, before: %v", got, auto)
	}
	me := c.expect(t, http.StatusOK, "GET", "/v1/auth/whoami", ws.OwnerToken, nil)
	if me.str("role") != "owner" || me.str("workspaceId") != ws.ID {
		t.Errorf("owner whoami after restart: %v", me)
	}
	c.expect(t, http.StatusOK, "GET", "/v1/workspaces/"+ws.ID+"/automations", memberTok, nil)
	// An access token minted before the restart is still good until it expires.
	c.expect(t, http.StatusOK, "GET", path, at, nil)
	fresh := c.exchange(t, secret, nil).str("accessToken")
	c.expect(t, http.StatusOK, "GET", path, fresh, nil)
	// The same operator token still creates workspaces, and names stay taken.
	c.createWorkspace(t, "Globex")
	c.expectError(t, http.StatusConflict, 6, "POST", "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken, map[string]any{"name": "survivor"})
}
