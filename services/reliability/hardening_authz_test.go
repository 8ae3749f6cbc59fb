package reliability

// Authorization gaps and unaudited refusals (issue 12, items 2 and 6, the
// credential and automation parts), against real backlogd processes through
// the REST gateway: only owners manage owners; a short-lived access token
// cannot turn itself into a long-lived automation secret; a team-bound agent
// is held to its teams like a team-bound access token; and every refusal of
// a known credential is in the audit trail, at most once a minute per
// credential however hard it is hammered.

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// authzEvents lists the workspace's audit events filtered by action and
// target (either may be empty).
func authzEvents(t *testing.T, rc *restClient, ws workspace, action, target string) []obj {
	t.Helper()
	q := url.Values{"pageSize": {"1000"}}
	if action != "" {
		q.Set("action", action)
	}
	if target != "" {
		q.Set("targetId", target)
	}
	r := rc.call(t, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?"+q.Encode(), ws.OwnerToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("%s: want 200", r)
	}
	if m := credentialRE.FindString(string(r.Body)); m != "" {
		t.Fatalf("the audit trail holds a credential-shaped string: %s", redact(m))
	}
	return r.JSON().list("auditEvents")
}

// authzFailures keeps the failure events among evs.
func authzFailures(evs []obj) []obj {
	var out []obj
	for _, e := range evs {
		if e.str("outcome") == "failure" {
			out = append(out, e)
		}
	}
	return out
}

// authzWant checks a status and that the error message says what to do.
func authzWant(t *testing.T, r *reply, status int, msgHas ...string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("%s: want %d", r, status)
	}
	msg := strings.ToLower(r.JSON().str("message"))
	for _, s := range msgHas {
		if !strings.Contains(msg, strings.ToLower(s)) {
			t.Fatalf("%s: the message should mention %q", r, s)
		}
	}
}

// TestAuthzOnlyOwnersManageOwners: an admin may not change an owner's
// member record (name, email); an owner may.
func TestAuthzOnlyOwnersManageOwners(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "authz owners")
	_, admin := rc.createMember(t, ws, "Ada Admin", "admin")
	memberID, _ := rc.createMember(t, ws, "Mo Member", "member")
	owner2ID, owner2 := rc.createMember(t, ws, "Otto Owner", "owner")
	member := func(id string) string { return "/v1/workspaces/" + ws.ID + "/members/" + id }

	for _, body := range []map[string]any{{"name": "Mallory"}, {"email": "mallory@example.com"}, {"name": "M", "email": "m@example.com"}} {
		authzWant(t, rc.call(t, http.MethodPatch, member(ws.OwnerID), admin, body), http.StatusForbidden, "owner")
		authzWant(t, rc.call(t, http.MethodPatch, member(owner2ID), admin, body), http.StatusForbidden, "owner")
	}
	// Nothing changed.
	for _, m := range rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/members?pageSize=100", ws.OwnerToken, nil).list("members") {
		if n := m.str("name"); n == "Mallory" || n == "M" || strings.Contains(m.str("email"), "example.com") {
			t.Fatalf("an admin changed an owner: %v", m)
		}
	}
	// An admin still manages non-owners; owners manage owners.
	rc.expect(t, http.StatusOK, http.MethodPatch, member(memberID), admin, map[string]any{"name": "Mo"})
	o := rc.expect(t, http.StatusOK, http.MethodPatch, member(owner2ID), ws.OwnerToken, map[string]any{"name": "Otto", "email": "otto@example.com"})
	if o.str("member.name") != "Otto" || o.str("member.email") != "otto@example.com" {
		t.Fatalf("owner editing an owner: %v", o)
	}
	rc.expect(t, http.StatusOK, http.MethodPatch, member(ws.OwnerID), owner2, map[string]any{"name": "First Owner"})
}

// TestAuthzAccessTokenCannotMintItself: an access token never rotates the
// secret of its own automation, and never creates, widens or rotates an
// automation whose secret could do that for it (one holding
// automations:write); within those rules and its own grant it still manages.
func TestAuthzAccessTokenCannotMintItself(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "authz tokens")
	p := "/v1/workspaces/" + ws.ID + "/automations"
	selfID, selfSecret := rc.createAutomation(t, ws.ID, ws.OwnerToken, "self", "automations:read", "automations:write", "issues:read")
	tok := rc.exchange(t, selfSecret)
	managerID, _ := rc.createAutomation(t, ws.ID, ws.OwnerToken, "manager", "automations:write")
	plainID, _ := rc.createAutomation(t, ws.ID, ws.OwnerToken, "plain", "issues:read")

	// Its own secret: refused, saying who can; the secret still works.
	authzWant(t, rc.call(t, http.MethodPost, p+"/"+selfID+"/rotate-secret", tok, map[string]any{}), http.StatusForbidden, "a person", "another credential")
	rc.exchange(t, selfSecret)
	// A narrowed token of the same automation is the same automation.
	narrow := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/auth/exchange", selfSecret,
		map[string]any{"scopes": []string{"automations:write"}}).str("accessToken")
	authzWant(t, rc.call(t, http.MethodPost, p+"/"+selfID+"/rotate-secret", narrow, map[string]any{}), http.StatusForbidden, "a person")

	// A secret that could rotate its automation for it: refused.
	authzWant(t, rc.call(t, http.MethodPost, p, tok, map[string]any{"name": "clone", "scopes": []string{"automations:write", "issues:read"}}),
		http.StatusForbidden, "automations:write")
	authzWant(t, rc.call(t, http.MethodPost, p+"/"+managerID+"/rotate-secret", tok, map[string]any{}), http.StatusForbidden, "automations:write")
	authzWant(t, rc.call(t, http.MethodPatch, p+"/"+plainID, tok, map[string]any{"scopes": []string{"issues:read", "automations:write"}}),
		http.StatusForbidden, "automations:write")
	// Broader than itself: refused, as before.
	authzWant(t, rc.call(t, http.MethodPost, p, tok, map[string]any{"name": "wide", "scopes": []string{"secrets:use"}}), http.StatusForbidden)

	// Within the rules it manages: a narrower automation, rotations of it.
	o := rc.expect(t, http.StatusOK, http.MethodPost, p, tok, map[string]any{"name": "narrow", "scopes": []string{"issues:read"}})
	rc.expect(t, http.StatusOK, http.MethodPost, p+"/"+o.str("automation.id")+"/rotate-secret", tok, map[string]any{})
	rc.expect(t, http.StatusOK, http.MethodPost, p+"/"+plainID+"/rotate-secret", tok, map[string]any{})
	rc.expect(t, http.StatusOK, http.MethodPatch, p+"/"+selfID, tok, map[string]any{"description": "still mine to describe"})
	// A person rotates it, and every refusal above is in the trail.
	rc.expect(t, http.StatusOK, http.MethodPost, p+"/"+selfID+"/rotate-secret", ws.OwnerToken, map[string]any{})
	if f := authzFailures(authzEvents(t, rc, ws, "automation.rotate_secret", selfID)); len(f) != 2 {
		t.Fatalf("want the 2 refused self-rotations in the audit trail, got %v", f)
	}
}

// TestAuthzTeamBoundAgentHeldToItsTeams: an admin agent bounded to team A
// may create and manage automations only inside team A, like a team-bound
// access token, and may not grant scopes it does not hold.
func TestAuthzTeamBoundAgentHeldToItsTeams(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "authz agents")
	wsp := "/v1/workspaces/" + ws.ID
	inst := rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/installations", ws.OwnerToken, map[string]any{"name": "app"}).str("installation.id")
	agent := func(name string, teams ...string) string {
		if teams == nil {
			teams = []string{}
		}
		o := rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/installations/"+inst+"/agents", ws.OwnerToken,
			map[string]any{"name": name, "role": "admin", "teamIds": teams})
		return o.str("apiKey")
	}
	bound, free := agent("bound", "team-a"), agent("free")
	// The comparison: a token bounded to team A.
	_, autoSecret := func() (string, string) {
		o := rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/automations", ws.OwnerToken,
			map[string]any{"name": "bounded token", "teamIds": []string{"team-a"}, "scopes": []string{"automations:write", "issues:read"}})
		return o.str("automation.id"), o.str("secret")
	}()
	tok := rc.exchange(t, autoSecret)
	unbounded, _ := rc.createAutomation(t, ws.ID, ws.OwnerToken, "unbounded")
	teamB := rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/automations", ws.OwnerToken,
		map[string]any{"name": "team b", "teamIds": []string{"team-b"}}).str("automation.id")

	refusals := []struct {
		name         string
		method, path string
		body         map[string]any
	}{
		{"create without a team boundary", http.MethodPost, "/automations", map[string]any{"name": "x1"}},
		{"create for another team", http.MethodPost, "/automations", map[string]any{"name": "x2", "teamIds": []string{"team-b"}}},
		{"create for its team and another", http.MethodPost, "/automations", map[string]any{"name": "x3", "teamIds": []string{"team-a", "team-b"}}},
		{"take an automation out of its team", http.MethodPatch, "", map[string]any{"teamIds": []string{}}},
		{"rotate an unbounded automation", http.MethodPost, "/automations/" + unbounded + "/rotate-secret", map[string]any{}},
		{"change another team's automation", http.MethodPatch, "/automations/" + teamB, map[string]any{"description": "mine now"}},
	}
	for _, who := range []struct{ name, token string }{{"access token", tok}, {"agent key", bound}} {
		mine := rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/automations", who.token,
			map[string]any{"name": "in team a by " + who.name, "teamIds": []string{"team-a"}}).str("automation.id")
		for _, r := range refusals {
			path := r.path
			if path == "" {
				path = "/automations/" + mine
			}
			t.Run(who.name+" "+r.name, func(t *testing.T) {
				authzWant(t, rc.call(t, r.method, wsp+path, who.token, r.body), http.StatusForbidden, "team")
			})
		}
		rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/automations/"+mine+"/rotate-secret", who.token, map[string]any{})
	}
	// An agent, like a token, grants only scopes it holds.
	authzWant(t, rc.call(t, http.MethodPost, wsp+"/automations", bound,
		map[string]any{"name": "issues", "teamIds": []string{"team-a"}, "scopes": []string{"issues:write"}}), http.StatusForbidden, "issues:write")
	// An agent without a team scope is not team-bound.
	rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/automations", free, map[string]any{"name": "anywhere", "scopes": []string{"automations:read"}})
}

// TestAuthzRefusalsAudited: exchanges refused for a too-long ttl or an
// ungranted scope, and requests refused for a suspended or revoked
// credential, are in the audit trail (actor, target, client IP, failure,
// reason; never the credential) — once per credential and minute however
// often the credential is tried.
func TestAuthzRefusalsAudited(t *testing.T) {
	// The gateway believes X-Forwarded-For from loopback here, so that the
	// client IP of a refusal is not merely the loopback every process shares.
	c := startCluster(t, layoutAll, "-trusted-proxies=127.0.0.0/8,::1/128")
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "authz audit")
	const clientIP = "203.0.113.77"
	send := func(method, path, token string, body any) *reply {
		return rc.call(t, method, path, token, body, "X-Forwarded-For", clientIP)
	}
	autoID, secret := rc.createAutomation(t, ws.ID, ws.OwnerToken, "audited", "automations:read")
	automations := "/v1/workspaces/" + ws.ID + "/automations"

	// Exchanges refused for a too-long ttl and for an ungranted scope.
	authzWant(t, send(http.MethodPost, "/v1/auth/exchange", secret, map[string]any{"ttlSeconds": 10 * 86400}), http.StatusBadRequest, "ttlSeconds")
	authzWant(t, send(http.MethodPost, "/v1/auth/exchange", secret, map[string]any{"scopes": []string{"secrets:use"}}), http.StatusBadRequest, "secrets:use")
	ex := authzFailures(authzEvents(t, rc, ws, "auth.exchange", autoID))
	if len(ex) != 2 {
		t.Fatalf("want 2 refused exchanges in the trail, got %v", ex)
	}
	for i, want := range []string{"ttl", "secrets:use"} {
		e := ex[i]
		if e.str("actorKind") != "automation" || e.str("actorId") != autoID || e.str("targetKind") != "automation" ||
			e.str("clientIp") != clientIP || !strings.Contains(e.str("detail"), want) {
			t.Fatalf("refused exchange %d: want actor and target automation %s, client IP %s, a reason naming %q; got %v", i, autoID, clientIP, want, e)
		}
	}

	// A suspended automation's token, hammered on two services' routes:
	// every request refused, one record.
	tok := rc.exchange(t, secret)
	rc.expect(t, http.StatusOK, http.MethodPatch, automations+"/"+autoID, ws.OwnerToken, map[string]any{"suspended": true})
	for i := 0; i < 25; i++ {
		authzWant(t, send(http.MethodGet, automations, tok, nil), http.StatusForbidden, "suspended")
		authzWant(t, send(http.MethodGet, "/v1/auth/whoami", tok, nil), http.StatusForbidden, "suspended")
	}
	refused := authzFailures(authzEvents(t, rc, ws, "auth.authenticate", autoID))
	if len(refused) != 1 {
		t.Fatalf("50 refusals of one suspended credential: want exactly 1 audit record within the minute, got %d: %v", len(refused), refused)
	}
	if e := refused[0]; e.str("actorKind") != "automation" || e.str("actorId") != autoID || e.str("targetKind") != "automation" ||
		e.str("clientIp") == "" || !strings.Contains(e.str("detail"), "suspended") {
		t.Fatalf("refusal record: want actor and target automation %s, a client IP and the reason; got %v", autoID, e)
	}

	// A revoked credential: a deleted member's token, on the credential
	// service's own routes (the client IP is the end client's).
	goneID, gone := rc.createMember(t, ws, "Gone", "member")
	rc.expect(t, http.StatusOK, http.MethodDelete, "/v1/workspaces/"+ws.ID+"/members/"+goneID, ws.OwnerToken, nil)
	for i := 0; i < 20; i++ {
		authzWant(t, send(http.MethodGet, "/v1/workspaces/"+ws.ID, gone, nil), http.StatusUnauthorized)
	}
	refused = authzFailures(authzEvents(t, rc, ws, "auth.authenticate", goneID))
	if len(refused) != 1 {
		t.Fatalf("20 refusals of one revoked credential: want exactly 1 audit record, got %d: %v", len(refused), refused)
	}
	if e := refused[0]; e.str("actorKind") != "member" || e.str("actorId") != goneID || e.str("targetKind") != "member" ||
		e.str("clientIp") != clientIP || !strings.Contains(e.str("detail"), "revoked") {
		t.Fatalf("refusal record: want actor and target member %s, client IP %s and the reason; got %v", goneID, clientIP, e)
	}

	// A rotated secret, hammered at the exchange: one record too.
	rotID, oldSecret := rc.createAutomation(t, ws.ID, ws.OwnerToken, "rotated")
	rc.expect(t, http.StatusOK, http.MethodPost, automations+"/"+rotID+"/rotate-secret", ws.OwnerToken, map[string]any{})
	for i := 0; i < 20; i++ {
		authzWant(t, send(http.MethodPost, "/v1/auth/exchange", oldSecret, map[string]any{}), http.StatusUnauthorized)
	}
	if f := authzFailures(authzEvents(t, rc, ws, "auth.exchange", rotID)); len(f) != 1 || !strings.Contains(f[0].str("detail"), "revoked") {
		t.Fatalf("20 exchanges of a rotated secret: want exactly 1 audit record naming the reason, got %v", f)
	}
}
