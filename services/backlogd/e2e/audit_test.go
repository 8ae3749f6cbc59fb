package e2e

import (
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestAuditTrail reads the merged audit trail through the gateway: the
// credential service fronts it and, in the split layout, gathers the
// automation service's events from another process. It must record the
// automation's life, refused exchanges, and no secret material.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	forEachLayout(t, func(t *testing.T, c *cluster) {
		ws := c.createWorkspace(t, "Acme")
		_, memberTok := c.createMember(t, ws, "Grace", "member")
		other := c.createWorkspace(t, "Globex")
		auto, secret := c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{"name": "audited", "scopes": []string{"automations:read"}})
		id := auto.str("id")
		path := "/v1/workspaces/" + ws.ID + "/automations/" + id
		c.exchange(t, secret, nil)
		rot := c.expect(t, http.StatusOK, "POST", path+"/rotate-secret", ws.OwnerToken, map[string]any{"credentialLabel": "second"})
		c.expectError(t, http.StatusUnauthorized, codes.Unauthenticated, "POST", "/v1/auth/exchange", secret, nil) // rotated away
		c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": true})
		c.expectError(t, http.StatusForbidden, codes.PermissionDenied, "POST", "/v1/auth/exchange", rot.str("secret"), nil) // suspended
		c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": false})
		c.expect(t, http.StatusOK, "DELETE", path, ws.OwnerToken, nil)

		trail := "/v1/workspaces/" + ws.ID + "/audit-events"
		r := c.call(t, "GET", trail+"?pageSize=1000", ws.OwnerToken, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("%s: want 200", r)
		}
		for _, what := range c.creds.findIn(r.Body) {
			t.Errorf("the audit trail holds %s", what)
		}
		events := r.JSON(t).list("auditEvents")
		var actions []string
		var last time.Time
		for _, e := range events {
			if e.str("workspaceId") != ws.ID {
				t.Errorf("event %s of workspace %q in the trail of %s", e.str("id"), e.str("workspaceId"), ws.ID)
			}
			if at := e.time(t, "time"); at.Before(last) {
				t.Errorf("trail not time-ordered: %s after %s", at, last)
			} else {
				last = at
			}
			if e.str("targetId") == id || e.str("action") == "auth.exchange" {
				actions = append(actions, e.str("action")+"/"+e.str("outcome"))
			}
		}
		for _, want := range []string{
			"automation.create/success", "automation.rotate_secret/success",
			"automation.suspend/success", "automation.resume/success", "automation.delete/success",
		} {
			if !slices.Contains(actions, want) {
				t.Errorf("the trail lacks %s; it has %v for the automation", want, actions)
			}
		}
		if !slices.Contains(actions, "auth.exchange/failure") {
			t.Errorf("exchanges refused for a known automation (rotated-away secret: 401; suspended: 403) are not in the audit trail; it has %v", actions)
		}

		// Filtered by action.
		q := url.Values{"action": {"automation.delete"}}
		for _, e := range c.expect(t, http.StatusOK, "GET", trail+"?"+q.Encode(), ws.OwnerToken, nil).list("auditEvents") {
			if e.str("action") != "automation.delete" {
				t.Errorf("filter action=automation.delete returned %s", e.str("action"))
			}
		}
		// Owners and admins only; never across workspaces.
		c.expectError(t, http.StatusForbidden, codes.PermissionDenied, "GET", trail, memberTok, nil)
		c.expectError(t, http.StatusNotFound, codes.NotFound, "GET", trail, other.OwnerToken, nil)
	})
}
