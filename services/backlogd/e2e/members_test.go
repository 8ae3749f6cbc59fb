package e2e

import (
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestWorkspacesAndMembers walks the workspace and member routes of the
// credential service through the gateway: who may do what, the 404 wall
// between workspaces, and the contract's JSON errors.
func TestWorkspacesAndMembers(t *testing.T) {
	t.Parallel()
	forEachLayout(t, func(t *testing.T, c *cluster) {
		// The operator token creates a workspace; the response holds the
		// workspace, its first owner and the owner's token.
		created := c.create(t, "/v1/workspaces", c.OperatorToken,
			map[string]any{"name": "Acme", "ownerName": "Ada", "ownerEmail": "ada@example.com"})
		ws := workspace{ID: created.str("workspace.id"), OwnerID: created.str("owner.id"), OwnerToken: created.str("token")}
		if ws.ID == "" || created.str("workspace.name") != "Acme" {
			t.Fatalf("create workspace: workspace %v", created.sub("workspace"))
		}
		if created.str("owner.role") != "owner" || created.str("owner.workspaceId") != ws.ID || created.str("owner.name") != "Ada" {
			t.Fatalf("create workspace: owner %v", created.sub("owner"))
		}
		if kindOf(ws.OwnerToken) != "pat" {
			t.Fatalf("create workspace: the owner token is of kind %q, want pat", kindOf(ws.OwnerToken))
		}
		base := "/v1/workspaces/" + ws.ID

		me := c.expect(t, http.StatusOK, http.MethodGet, "/v1/auth/whoami", ws.OwnerToken, nil)
		if me.str("kind") != "member" || me.str("role") != "owner" || me.str("workspaceId") != ws.ID || me.str("subjectId") != ws.OwnerID {
			t.Errorf("owner whoami: %v", me)
		}
		if got := c.expect(t, http.StatusOK, http.MethodGet, base, ws.OwnerToken, nil); got.str("workspace.id") != ws.ID {
			t.Errorf("GET %s: %v", base, got)
		}

		adminID, adminTok := c.createMember(t, ws, "Alan", "admin")
		memberID, memberTok := c.createMember(t, ws, "Grace", "member")
		for _, tc := range []struct{ token, role, id string }{{adminTok, "admin", adminID}, {memberTok, "member", memberID}} {
			me := c.expect(t, http.StatusOK, http.MethodGet, "/v1/auth/whoami", tc.token, nil)
			if me.str("role") != tc.role || me.str("subjectId") != tc.id || me.str("workspaceId") != ws.ID {
				t.Errorf("%s whoami: %v", tc.role, me)
			}
		}
		// Any member reads the workspace; owners and admins list members.
		c.expect(t, http.StatusOK, http.MethodGet, base, memberTok, nil)
		for _, tok := range []string{ws.OwnerToken, adminTok} {
			list := c.expect(t, http.StatusOK, http.MethodGet, base+"/members", tok, nil)
			if n := len(list.list("members")); n != 3 {
				t.Errorf("GET %s/members: %d members, want 3", base, n)
			}
		}

		other := c.createWorkspace(t, "Globex")
		badChecksum := corrupt(ws.OwnerToken)
		memberPath := base + "/members/" + memberID

		tests := []struct {
			name   string
			method string
			path   string
			token  string
			body   any
			status int
			code   codes.Code
		}{
			{"member lists members", "GET", base + "/members", memberTok, nil, 403, codes.PermissionDenied},
			{"member creates a member", "POST", base + "/members", memberTok, map[string]any{"name": "Eve", "role": "member"}, 403, codes.PermissionDenied},
			{"member changes a member", "PATCH", base + "/members/" + adminID, memberTok, map[string]any{"role": "member"}, 403, codes.PermissionDenied},
			{"admin makes an owner", "POST", base + "/members", adminTok, map[string]any{"name": "Eve", "role": "owner"}, 403, codes.PermissionDenied},
			{"other owner reads the workspace", "GET", base, other.OwnerToken, nil, 404, codes.NotFound},
			{"other owner lists its members", "GET", base + "/members", other.OwnerToken, nil, 404, codes.NotFound},
			{"other owner adds a member", "POST", base + "/members", other.OwnerToken, map[string]any{"name": "Eve", "role": "owner"}, 404, codes.NotFound},
			{"other owner changes a member", "PATCH", memberPath, other.OwnerToken, map[string]any{"role": "owner"}, 404, codes.NotFound},
			{"owner reads another workspace", "GET", "/v1/workspaces/" + other.ID, ws.OwnerToken, nil, 404, codes.NotFound},
			{"operator reads a workspace", "GET", base, c.OperatorToken, nil, 403, codes.PermissionDenied},
			{"owner creates a workspace", "POST", "/v1/workspaces", ws.OwnerToken, map[string]any{"name": "Initech"}, 403, codes.PermissionDenied},
			{"malformed JSON", "POST", base + "/members", ws.OwnerToken, `{"name": "Eve",`, 400, codes.InvalidArgument},
			{"unknown JSON field", "POST", base + "/members", ws.OwnerToken, `{"name": "Eve", "role": "member", "nickname": "e"}`, 400, codes.InvalidArgument},
			{"unknown JSON field in a PATCH", "PATCH", memberPath, ws.OwnerToken, `{"bogus": 1}`, 400, codes.InvalidArgument},
			{"member without a name", "POST", base + "/members", ws.OwnerToken, map[string]any{"role": "member"}, 400, codes.InvalidArgument},
			{"unknown role on create", "POST", base + "/members", ws.OwnerToken, map[string]any{"name": "Eve", "role": "king"}, 400, codes.InvalidArgument},
			{"unknown role on update", "PATCH", memberPath, ws.OwnerToken, map[string]any{"role": "king"}, 400, codes.InvalidArgument},
			{"workspace without a name", "POST", "/v1/workspaces", c.OperatorToken, map[string]any{"name": ""}, 400, codes.InvalidArgument},
			{"bad checksum", "GET", "/v1/auth/whoami", badChecksum, nil, 401, codes.Unauthenticated},
			{"bad checksum on a workspace route", "GET", base, badChecksum, nil, 401, codes.Unauthenticated},
			{"not a credential", "GET", "/v1/auth/whoami", "hello", nil, 401, codes.Unauthenticated},
			{"no token", "GET", "/v1/auth/whoami", "", nil, 401, codes.Unauthenticated},
			{"no token on a workspace route", "GET", base + "/members", "", nil, 401, codes.Unauthenticated},
			{"no token creating a workspace", "POST", "/v1/workspaces", "", map[string]any{"name": "Initech"}, 401, codes.Unauthenticated},
			{"unknown route", "GET", "/v1/no-such-route", ws.OwnerToken, nil, 404, codes.NotFound},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c.expectError(t, tc.status, tc.code, tc.method, tc.path, tc.token, tc.body)
			})
		}

		t.Run("patch changes only the fields sent", func(t *testing.T) {
			got := c.expect(t, http.StatusOK, http.MethodPatch, memberPath, ws.OwnerToken, map[string]any{"email": "grace@example.com"})
			if got.str("member.email") != "grace@example.com" || got.str("member.name") != "Grace" || got.str("member.role") != "member" {
				t.Errorf("PATCH email: %v", got.sub("member"))
			}
			// A role change takes effect on the member's next request.
			got = c.expect(t, http.StatusOK, http.MethodPatch, memberPath, ws.OwnerToken, map[string]any{"role": "admin"})
			if got.str("member.role") != "admin" || got.str("member.email") != "grace@example.com" {
				t.Errorf("PATCH role: %v", got.sub("member"))
			}
			c.expect(t, http.StatusOK, http.MethodGet, base+"/members", memberTok, nil)
		})

		t.Run("a deleted member's token dies everywhere at once", func(t *testing.T) {
			// Warm the automation service's cache of this principal first.
			c.expect(t, http.StatusOK, http.MethodGet, base+"/automations", memberTok, nil)
			c.expect(t, http.StatusOK, http.MethodDelete, memberPath, ws.OwnerToken, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", base+"/automations", memberTok, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", "/v1/auth/whoami", memberTok, nil)
			list := c.expect(t, http.StatusOK, http.MethodGet, base+"/members", ws.OwnerToken, nil)
			for _, m := range list.list("members") {
				if m.str("id") == memberID {
					t.Errorf("deleted member %s still listed", memberID)
				}
			}
		})

		t.Run("no raw token in list responses", func(t *testing.T) {
			r := c.call(t, "GET", base+"/members", ws.OwnerToken, nil)
			if strings.Contains(string(r.Body), "blg_") {
				t.Errorf("GET %s/members holds a credential-shaped string", base)
			}
		})
	})
}

// corrupt changes the last character of a credential, so its checksum no
// longer matches.
func corrupt(tok string) string {
	last := tok[len(tok)-1]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	return tok[:len(tok)-1] + string(repl)
}
