package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestAutomations walks an automation's life through the gateway: create,
// read, update, exchange, rotate, suspend, resume, delete. In the split
// layout the automation routes and the credential routes are served by
// different processes, so "refused on the very next request" proves the
// revocation crossed the process boundary before the revoking call returned.
func TestAutomations(t *testing.T) {
	t.Parallel()
	forEachLayout(t, func(t *testing.T, c *cluster) {
		ws := c.createWorkspace(t, "Acme")
		_, memberTok := c.createMember(t, ws, "Grace", "member")
		other := c.createWorkspace(t, "Globex")
		base := "/v1/workspaces/" + ws.ID + "/automations"
		scopes := []string{"automations:read", "issues:write"}

		auto, secret := c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{
			"name": "ci-deploy", "description": "deploys main", "teamIds": []string{"team-a"},
			"scopes": scopes, "credentialLabel": "initial",
		})
		id := auto.str("id")
		path := base + "/" + id
		if auto.str("name") != "ci-deploy" || auto.str("workspaceId") != ws.ID || !slices.Equal(auto.strs("scopes"), scopes) ||
			!slices.Equal(auto.strs("teamIds"), []string{"team-a"}) || auto.boolean("suspended") {
			t.Fatalf("created automation: %v", auto)
		}
		if auto.str("credential.label") != "initial" || auto.str("credential.id") == "" {
			t.Errorf("created automation's credential: %v", auto.sub("credential"))
		}

		t.Run("get and list never show the secret", func(t *testing.T) {
			for _, p := range []string{path, base} {
				r := c.call(t, "GET", p, ws.OwnerToken, nil)
				if r.Status != http.StatusOK {
					t.Fatalf("%s: want 200", r)
				}
				if strings.Contains(string(r.Body), "blg_") {
					t.Errorf("GET %s holds a credential-shaped string", p)
				}
			}
			got := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil)
			if got.str("automation.id") != id || got.str("automation.description") != "deploys main" {
				t.Errorf("GET %s: %v", path, got)
			}
		})

		t.Run("who may do what", func(t *testing.T) {
			c.expect(t, http.StatusOK, "GET", path, memberTok, nil)
			c.expect(t, http.StatusOK, "GET", base, memberTok, nil)
			c.expectError(t, 403, codes.PermissionDenied, "POST", base, memberTok, map[string]any{"name": "nope"})
			c.expectError(t, 403, codes.PermissionDenied, "PATCH", path, memberTok, map[string]any{"description": "nope"})
			c.expectError(t, 403, codes.PermissionDenied, "POST", path+"/rotate-secret", memberTok, map[string]any{})
			c.expectError(t, 403, codes.PermissionDenied, "DELETE", path, memberTok, nil)
			c.expectError(t, 404, codes.NotFound, "GET", path, other.OwnerToken, nil)
			c.expectError(t, 404, codes.NotFound, "GET", base, other.OwnerToken, nil)
			c.expectError(t, 404, codes.NotFound, "GET", "/v1/workspaces/"+other.ID+"/automations/"+id, other.OwnerToken, nil)
			c.expectError(t, 404, codes.NotFound, "DELETE", path, other.OwnerToken, nil)
			c.expectError(t, 403, codes.PermissionDenied, "GET", base, c.OperatorToken, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", base, "", nil)
			c.expectError(t, 400, codes.InvalidArgument, "POST", base, ws.OwnerToken, map[string]any{"name": "bad-scope", "scopes": []string{"Not A Scope"}})
			c.expectError(t, 400, codes.InvalidArgument, "POST", base, ws.OwnerToken, `{"name": "x", "bogus": 1}`)
			c.expectError(t, 409, codes.AlreadyExists, "POST", base, ws.OwnerToken, map[string]any{"name": "ci-deploy"})
		})

		t.Run("patch changes only the fields sent", func(t *testing.T) {
			before := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil).sub("automation")
			after := c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"description": "x"}).sub("automation")
			if after.str("description") != "x" {
				t.Errorf("PATCH description: %v", after)
			}
			for _, f := range []string{"id", "name", "workspaceId", "createdAt", "credential.id", "credential.label"} {
				if before.str(f) != after.str(f) {
					t.Errorf("PATCH description changed %s: %q -> %q", f, before.str(f), after.str(f))
				}
			}
			for _, f := range []string{"scopes", "teamIds"} {
				if !slices.Equal(before.strs(f), after.strs(f)) {
					t.Errorf("PATCH description changed %s: %v -> %v", f, before.strs(f), after.strs(f))
				}
			}
			if after.boolean("suspended") {
				t.Error("PATCH description suspended the automation")
			}
			if !after.time(t, "updatedAt").After(before.time(t, "updatedAt")) {
				t.Errorf("PATCH did not move updatedAt (%s)", after.str("updatedAt"))
			}
			if got := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil); got.str("automation.description") != "x" {
				t.Errorf("GET after PATCH: description %q", got.str("automation.description"))
			}
			c.expectError(t, 400, codes.InvalidArgument, "PATCH", path, ws.OwnerToken, map[string]any{"bogus": 1})
			c.expectError(t, 400, codes.InvalidArgument, "PATCH", path, ws.OwnerToken, map[string]any{"scopes": []string{"NOPE"}})
			c.expectError(t, 400, codes.InvalidArgument, "PATCH", path, ws.OwnerToken, `{"description": `)
		})

		// The access token minted now must die when the secret is rotated.
		var preRotation string

		t.Run("exchange", func(t *testing.T) {
			ex := c.exchange(t, secret, nil)
			at := ex.str("accessToken")
			preRotation = at
			if ex.str("tokenType") != "Bearer" || ex.num("expiresIn") != 3600 || ex.str("automationId") != id || ex.str("workspaceId") != ws.ID ||
				!slices.Equal(ex.strs("scopes"), scopes) || !slices.Equal(ex.strs("teamIds"), []string{"team-a"}) {
				t.Errorf("exchange: %v", redactObj(ex))
			}
			if exp := ex.time(t, "expiresAt"); exp.Before(time.Now().Add(59*time.Minute)) || exp.After(time.Now().Add(61*time.Minute)) {
				t.Errorf("exchange: expiresAt %s, want about an hour from now", exp)
			}
			// The access token calls the automation routes and whoami.
			c.expect(t, http.StatusOK, "GET", base, at, nil)
			c.expect(t, http.StatusOK, "GET", path, at, nil)
			me := c.expect(t, http.StatusOK, "GET", "/v1/auth/whoami", at, nil)
			if me.str("kind") != "access_token" || me.str("subjectId") != id || me.str("workspaceId") != ws.ID || me.str("expiresAt") == "" {
				t.Errorf("whoami with an access token: %v", me)
			}
			// It holds automations:read only.
			c.expectError(t, 403, codes.PermissionDenied, "POST", base, at, map[string]any{"name": "by-token"})
			c.expectError(t, 404, codes.NotFound, "GET", "/v1/workspaces/"+other.ID+"/automations", at, nil)

			// The raw secret calls nothing but the exchange.
			for _, p := range []string{base, path, "/v1/auth/whoami"} {
				e := c.expectError(t, 401, codes.Unauthenticated, "GET", p, secret, nil)
				if !strings.Contains(e.str("message"), "exchange") {
					t.Errorf("GET %s with an automation secret: message %q does not say to exchange it", p, e.str("message"))
				}
			}
			// Only an automation secret is exchanged.
			for name, tok := range map[string]string{"personal token": ws.OwnerToken, "access token": at, "bad checksum": corrupt(secret), "none": ""} {
				t.Run(name, func(t *testing.T) {
					c.expectError(t, 401, codes.Unauthenticated, "POST", "/v1/auth/exchange", tok, map[string]any{})
				})
			}
		})

		t.Run("exchange lifetime and scopes", func(t *testing.T) {
			maxSecs := int(maxTokenTTL / time.Second)
			ok := []struct {
				body any
				want float64
			}{
				{map[string]any{"ttlSeconds": 0}, 3600},
				{map[string]any{}, 3600},
				{map[string]any{"ttlSeconds": 60}, 60},
				{map[string]any{"ttlSeconds": maxSecs}, float64(maxSecs)},
			}
			for _, tc := range ok {
				if got := c.exchange(t, secret, tc.body).num("expiresIn"); got != tc.want {
					t.Errorf("exchange %v: expiresIn %v, want %v", tc.body, got, tc.want)
				}
			}
			for _, body := range []any{
				map[string]any{"ttlSeconds": -5},
				map[string]any{"ttlSeconds": maxSecs + 1},
				map[string]any{"scopes": []string{"automations:write"}}, // not granted
				map[string]any{"scopes": []string{"NOT A SCOPE"}},
				map[string]any{"bogus": true},
				`{"ttlSeconds": `,
			} {
				t.Run(fmt.Sprint(body), func(t *testing.T) {
					c.expectError(t, 400, codes.InvalidArgument, "POST", "/v1/auth/exchange", secret, body)
				})
			}
			narrow := c.exchange(t, secret, map[string]any{"scopes": []string{"issues:write"}})
			if !slices.Equal(narrow.strs("scopes"), []string{"issues:write"}) {
				t.Errorf("narrowed exchange: scopes %v", narrow.strs("scopes"))
			}
			// Narrowed away from automations:read, the token cannot list.
			c.expectError(t, 403, codes.PermissionDenied, "GET", base, narrow.str("accessToken"), nil)
		})

		t.Run("rotate secret", func(t *testing.T) {
			if preRotation == "" {
				t.Skip("exchange failed")
			}
			old := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil).sub("automation.credential")
			rot := c.expect(t, http.StatusOK, "POST", path+"/rotate-secret", ws.OwnerToken, map[string]any{"credentialLabel": "rotated-1"})
			newSecret := rot.str("secret")
			if kindOf(newSecret) != "auto" || newSecret == secret {
				t.Fatalf("rotate-secret: no new automation secret in %v", redactObj(rot))
			}
			if rot.str("credential.id") == "" || rot.str("credential.id") == old.str("id") || rot.str("credential.label") != "rotated-1" {
				t.Errorf("rotate-secret: credential %v (old %v)", rot.sub("credential"), old)
			}
			rot.time(t, "credential.createdAt")

			// The old secret and the tokens it minted are dead at once.
			c.expectError(t, 401, codes.Unauthenticated, "POST", "/v1/auth/exchange", secret, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", path, preRotation, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", "/v1/auth/whoami", preRotation, nil)

			at := c.exchange(t, newSecret, nil).str("accessToken")
			c.expect(t, http.StatusOK, "GET", path, at, nil)
			if got := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil); got.str("automation.credential.label") != "rotated-1" {
				t.Errorf("GET after rotation: credential %v", got.sub("automation.credential"))
			}
			secret = newSecret
		})

		t.Run("suspend revokes everywhere on the next request", func(t *testing.T) {
			at := c.exchange(t, secret, nil).str("accessToken")
			// Use the token on both services first, so that any cache
			// along the way holds its principal.
			c.expect(t, http.StatusOK, "GET", path, at, nil)
			c.expect(t, http.StatusOK, "GET", "/v1/auth/whoami", at, nil)

			got := c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": true})
			if !got.boolean("automation.suspended") || got.str("automation.description") != "x" {
				t.Errorf("PATCH suspended: %v", got.sub("automation"))
			}
			c.expectError(t, 403, codes.PermissionDenied, "GET", path, at, nil)
			c.expectError(t, 403, codes.PermissionDenied, "GET", "/v1/auth/whoami", at, nil)
			c.expectError(t, 403, codes.PermissionDenied, "GET", base, at, nil)
			c.expectError(t, 403, codes.PermissionDenied, "POST", "/v1/auth/exchange", secret, nil)
			// Its record says so, and people still read it.
			if got := c.expect(t, http.StatusOK, "GET", path, ws.OwnerToken, nil); !got.boolean("automation.suspended") {
				t.Error("GET after suspending: not suspended")
			}

			got = c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": false})
			if got.boolean("automation.suspended") {
				t.Errorf("PATCH resume: %v", got.sub("automation"))
			}
			fresh := c.exchange(t, secret, nil).str("accessToken")
			c.expect(t, http.StatusOK, "GET", path, fresh, nil)
			c.expect(t, http.StatusOK, "GET", "/v1/auth/whoami", fresh, nil)
		})

		t.Run("delete", func(t *testing.T) {
			at := c.exchange(t, secret, nil).str("accessToken")
			c.expect(t, http.StatusOK, "GET", path, at, nil)
			c.expect(t, http.StatusOK, "DELETE", path, ws.OwnerToken, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", base, at, nil)
			c.expectError(t, 401, codes.Unauthenticated, "GET", "/v1/auth/whoami", at, nil)
			c.expectError(t, 401, codes.Unauthenticated, "POST", "/v1/auth/exchange", secret, nil)
			c.expectError(t, 404, codes.NotFound, "GET", path, ws.OwnerToken, nil)
			c.expectError(t, 404, codes.NotFound, "DELETE", path, ws.OwnerToken, nil)
			c.expectError(t, 404, codes.NotFound, "PATCH", path, ws.OwnerToken, map[string]any{"description": "ghost"})
			c.expectError(t, 404, codes.NotFound, "POST", path+"/rotate-secret", ws.OwnerToken, map[string]any{})
			// The name is free again.
			c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{"name": "ci-deploy"})
		})

		t.Run("pagination", func(t *testing.T) {
			pws := c.createWorkspace(t, "Paged")
			var want []string
			for i := range 5 {
				a, _ := c.createAutomation(t, pws.ID, pws.OwnerToken, map[string]any{"name": "job-" + strconv.Itoa(i), "scopes": []string{"automations:read"}})
				want = append(want, a.str("id"))
			}
			pbase := "/v1/workspaces/" + pws.ID + "/automations"
			var got []string
			var sizes []int
			token := ""
			for range 10 {
				q := url.Values{"pageSize": {"2"}}
				if token != "" {
					q.Set("pageToken", token)
				}
				page := c.expect(t, http.StatusOK, "GET", pbase+"?"+q.Encode(), pws.OwnerToken, nil)
				items := page.list("automations")
				sizes = append(sizes, len(items))
				for _, a := range items {
					got = append(got, a.str("id"))
				}
				if token = page.str("nextPageToken"); token == "" {
					break
				}
			}
			if !slices.Equal(sizes, []int{2, 2, 1}) {
				t.Errorf("page sizes %v, want [2 2 1]", sizes)
			}
			if !slices.Equal(got, want) {
				t.Errorf("listed %v, want (oldest first) %v", got, want)
			}
			// A page token is bound to its list.
			first := c.expect(t, http.StatusOK, "GET", pbase+"?pageSize=2", pws.OwnerToken, nil)
			c.expectError(t, 400, codes.InvalidArgument, "GET", "/v1/workspaces/"+ws.ID+"/automations?pageSize=2&pageToken="+url.QueryEscape(first.str("nextPageToken")), ws.OwnerToken, nil)
			c.expectError(t, 400, codes.InvalidArgument, "GET", pbase+"?pageToken=garbage", pws.OwnerToken, nil)
			c.expectError(t, 400, codes.InvalidArgument, "GET", pbase+"?pageSize=-1", pws.OwnerToken, nil)
		})
	})
}

// redactObj renders o for a failure message without credentials.
func redactObj(o obj) string { return redact(fmt.Sprint(map[string]any(o))) }
