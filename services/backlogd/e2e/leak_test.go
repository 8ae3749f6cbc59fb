package e2e

import (
	"bytes"
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/credfmt"
)

// TestNoCredentialLeaks issues every kind of credential this build serves,
// uses each one on good and bad paths (REST and gRPC), then stops the
// processes and reads their debug logs and every *.db file: no raw
// credential may appear in either. (Every other test's cluster gets the
// same check on cleanup; this one makes sure the check is not vacuous.)
func TestNoCredentialLeaks(t *testing.T) {
	t.Parallel()
	forEachLayout(t, func(t *testing.T, c *cluster) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ws := c.createWorkspace(t, "Acme")
		base := "/v1/workspaces/" + ws.ID
		adminID, adminTok := c.createMember(t, ws, "Alan", "admin")
		_, memberTok := c.createMember(t, ws, "Grace", "member")
		c.expect(t, http.StatusOK, "PATCH", base+"/members/"+adminID, ws.OwnerToken, map[string]any{"role": "member"})
		c.expect(t, http.StatusOK, "GET", "/v1/auth/whoami", adminTok, nil)

		// Demoted, the former admin may no longer create automations.
		c.expectError(t, http.StatusForbidden, codes.PermissionDenied, "POST", base+"/automations", adminTok, map[string]any{"name": "nope"})
		auto, secret := c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{
			"name": "leaky", "scopes": []string{"automations:read"}, "credentialLabel": "first",
		})
		id := auto.str("id")
		path := base + "/automations/" + id
		at := c.exchange(t, secret, nil).str("accessToken")
		c.exchange(t, secret, map[string]any{"ttlSeconds": 30, "scopes": []string{"automations:read"}})
		c.expect(t, http.StatusOK, "GET", path, at, nil)
		c.expect(t, http.StatusOK, "GET", base+"/automations", memberTok, nil)

		// Failure paths: credentials where they do not belong.
		c.call(t, "GET", path, secret, nil)
		c.call(t, "GET", "/v1/auth/whoami", corrupt(ws.OwnerToken), nil)
		c.call(t, "POST", "/v1/auth/exchange", at, nil)
		c.call(t, "POST", "/v1/auth/exchange", ws.OwnerToken, nil)
		c.call(t, "POST", "/v1/workspaces", ws.OwnerToken, map[string]any{"name": "nope"})
		c.call(t, "GET", base+"/automations?pageToken="+secret, ws.OwnerToken, nil)
		c.call(t, "GET", base+"/members", memberTok, nil)

		rot := c.expect(t, http.StatusOK, "POST", path+"/rotate-secret", ws.OwnerToken, map[string]any{"credentialLabel": "second"})
		c.call(t, "POST", "/v1/auth/exchange", secret, nil) // the old one: refused, audited
		c.call(t, "GET", path, at, nil)                     // minted from the old one
		secret = rot.str("secret")
		at = c.exchange(t, secret, nil).str("accessToken")
		c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": true})
		c.call(t, "GET", path, at, nil)
		c.call(t, "POST", "/v1/auth/exchange", secret, nil)
		c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": false})

		// gRPC, straight to the services.
		autos, creds := c.automationClient(), c.credentialClient()
		if _, err := autos.GetAutomation(as(ctx, at), &automationv1.GetAutomationRequest{WorkspaceId: ws.ID, AutomationId: id}); err != nil {
			t.Errorf("GetAutomation over gRPC: %v", err)
		}
		_, _ = autos.GetAutomation(as(ctx, secret), &automationv1.GetAutomationRequest{WorkspaceId: ws.ID, AutomationId: id})
		ex, err := creds.Exchange(as(ctx, secret), &credentialv1.ExchangeRequest{})
		if err != nil {
			t.Fatalf("Exchange over gRPC: %v", err)
		}
		c.track(ex)
		_, _ = creds.WhoAmI(as(ctx, ex.GetAccessToken()), &credentialv1.WhoAmIRequest{})

		c.expect(t, http.StatusOK, "DELETE", base+"/automations/"+id, ws.OwnerToken, nil)
		c.call(t, "GET", path, ex.GetAccessToken(), nil)
		c.call(t, "POST", "/v1/auth/exchange", secret, nil)

		for kind, min := range map[credfmt.Kind]int{credfmt.Operator: 1, credfmt.Personal: 3, credfmt.Automation: 2, credfmt.AccessToken: 4} {
			if n := c.creds.count(kind); n < min {
				t.Errorf("only %d %s credentials collected, want at least %d", n, kind, min)
			}
		}

		c.CloseConns()
		c.stop(t)
		c.checkLeaks(t)

		// The check saw real content: debug logs from every process, and
		// stores that hold what was created.
		for name, b := range c.Logs() {
			if !bytes.Contains(b, []byte(`"level":"debug"`)) {
				t.Errorf("the %s process logged nothing at debug level", name)
			}
		}
		if !c.LogsContain(id) {
			t.Error("no log line names the automation: is the log capture working?")
		}
		dbs := c.dbFiles(t)
		for file, want := range map[string]string{"credential.db": ws.ID, "automation.db": id} {
			found := false
			for name, b := range dbs {
				// In the HA layout the stores are in etcd: its members' files.
				if filepath.Base(name) == file || c.layout == layoutHA && strings.HasPrefix(name, "etcd:") && bytes.Contains(b, []byte(want)) {
					found = true
					if !bytes.Contains(b, []byte(want)) {
						t.Errorf("%s does not hold %q: is the store flushed?", name, want)
					}
				}
			}
			if !found {
				t.Errorf("no %s under the data dirs (found %d .db files)", file, len(dbs))
			}
		}
	})
}
