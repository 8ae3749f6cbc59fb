package reliability

// Hardening of the agent service (issue 12, items 1, 2 and 6, the agent
// parts), against real backlogd processes through the REST gateway:
// made-up API keys do not spend an address's self-rotation budget; a holder
// of a leaked API key alone cannot lock the holder of both credentials out
// of self-rotation; a team-bound agent registers and manages agents only
// inside its teams, like a team-bound access token; and every self-rotation
// refused to a known agent is in its workspace's audit trail.
//
// The cluster believes X-Forwarded-For from loopback (-trusted-proxies), so
// that each test can speak from several client addresses.

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

const agentHardRotate = "/v1/agents/self/rotate-key"

// agentHardFixture is a workspace with an installation, and a client that
// can speak from any address.
type agentHardFixture struct {
	rc   *restClient
	ws   workspace
	inst string
}

func newAgentHardFixture(t *testing.T, name string) *agentHardFixture {
	t.Helper()
	c := startCluster(t, layoutAll, "-trusted-proxies=127.0.0.0/8")
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, name)
	inst := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/installations", ws.OwnerToken,
		map[string]any{"name": "app"}).str("installation.id")
	return &agentHardFixture{rc: rc, ws: ws, inst: inst}
}

// agentHardPair is an agent's id and current credentials.
type agentHardPair struct{ id, key, secret string }

// agent registers an agent (as the owner) and returns its pair.
func (f *agentHardFixture) agent(t *testing.T, name, role string, teams ...string) agentHardPair {
	t.Helper()
	if teams == nil {
		teams = []string{}
	}
	o := f.rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+f.ws.ID+"/installations/"+f.inst+"/agents", f.ws.OwnerToken,
		map[string]any{"name": name, "role": role, "teamIds": teams})
	p := agentHardPair{o.str("agent.id"), o.str("apiKey"), o.str("rotationSecret")}
	if p.id == "" || kindOf(p.key) != credfmt.AgentKey || kindOf(p.secret) != credfmt.RotationSecret {
		t.Fatalf("create agent %s: incomplete response", name)
	}
	return p
}

// rotate sends one self-rotation from client address ip.
func (f *agentHardFixture) rotate(t *testing.T, ip, key, secret string) *reply {
	t.Helper()
	return f.rc.call(t, http.MethodPost, agentHardRotate, key, map[string]any{"rotationSecret": secret}, "X-Forwarded-For", ip)
}

// rotateOK is rotate that wants 200 and returns the new pair.
func (f *agentHardFixture) rotateOK(t *testing.T, ip string, p agentHardPair) agentHardPair {
	t.Helper()
	r := f.rotate(t, ip, p.key, p.secret)
	if r.Status != http.StatusOK {
		t.Fatalf("self-rotation from %s with both correct credentials: %s; want 200", ip, r)
	}
	o := r.JSON()
	n := agentHardPair{p.id, o.str("apiKey"), o.str("rotationSecret")}
	if kindOf(n.key) != credfmt.AgentKey || kindOf(n.secret) != credfmt.RotationSecret || o.str("agentId") != p.id {
		t.Fatalf("self-rotation: incomplete response %s", r)
	}
	return n
}

// agentHardWant checks a status, the ErrorInfo reason (when given) and, for
// 429, a usable Retry-After.
func agentHardWant(t *testing.T, r *reply, status int, reason string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("%s: want %d %s", r, status, reason)
	}
	if reason != "" && !strings.Contains(string(r.Body), `"reason":"`+reason+`"`) {
		t.Fatalf("%s: want reason %s", r, reason)
	}
	if status == http.StatusTooManyRequests {
		if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s < 1 || s > 900 {
			t.Fatalf("%s: 429 without a usable Retry-After (%q)", r, r.Header.Get("Retry-After"))
		}
	}
}

// madeUpKey is a well-formed agent API key that was never issued.
func agentHardMadeUpKey() string { return credfmt.New(credfmt.AgentKey) }

// events lists the workspace's audit events about target, with action
// unless it is "".
func (f *agentHardFixture) events(t *testing.T, action, target string) []obj {
	t.Helper()
	q := url.Values{"pageSize": {"1000"}, "targetId": {target}}
	if action != "" {
		q.Set("action", action)
	}
	r := f.rc.call(t, http.MethodGet, "/v1/workspaces/"+f.ws.ID+"/audit-events?"+q.Encode(), f.ws.OwnerToken, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("%s: want 200", r)
	}
	if m := credentialRE.FindString(string(r.Body)); m != "" {
		t.Fatalf("the audit trail holds a credential-shaped string: %s", redact(m))
	}
	return r.JSON().list("auditEvents")
}

// TestAgentHardeningRotationBudget: only attempts with a valid API key
// spend an address's budget of 3 self-rotations per 15 minutes (PRODUCT.md);
// made-up keys spend a separate, larger budget of 30 failures per address
// and 15 minutes, and do not touch the real agent's rotations.
func TestAgentHardeningRotationBudget(t *testing.T) {
	f := newAgentHardFixture(t, "agent budget")
	bot := f.agent(t, "bot", "member")
	const shared, flooded, elsewhere = "203.0.113.10", "203.0.113.11", "203.0.113.12"

	// An attacker at the agent's address sends made-up keys: each is 401,
	// and the real agent's budget there is untouched.
	for range 5 {
		agentHardWant(t, f.rotate(t, shared, agentHardMadeUpKey(), credfmt.New(credfmt.RotationSecret)), http.StatusUnauthorized, "")
	}
	for range 3 {
		bot = f.rotateOK(t, shared, bot)
	}
	// The fourth with a valid key within 15 minutes: 429 (the contract).
	agentHardWant(t, f.rotate(t, shared, bot.key, bot.secret), http.StatusTooManyRequests, "ROTATION_RATE_LIMITED")

	// 30 unauthenticated failures from one address are answered 401; the
	// 31st attempt from there is refused before the key is even looked at.
	for i := range 30 {
		r := f.rotate(t, flooded, agentHardMadeUpKey(), credfmt.New(credfmt.RotationSecret))
		if r.Status != http.StatusUnauthorized {
			t.Fatalf("made-up key %d from one address: %s; want 401 (30 unauthenticated failures per 15 minutes are allowed)", i+1, r)
		}
	}
	agentHardWant(t, f.rotate(t, flooded, agentHardMadeUpKey(), credfmt.New(credfmt.RotationSecret)), http.StatusTooManyRequests, "ROTATION_FAILURES_RATE_LIMITED")
	agentHardWant(t, f.rotate(t, flooded, bot.key, bot.secret), http.StatusTooManyRequests, "ROTATION_FAILURES_RATE_LIMITED")
	// Other addresses are not affected.
	bot = f.rotateOK(t, elsewhere, bot)
	if got := len(f.events(t, "agent.rotate_key_self", bot.id)); got < 4 {
		t.Fatalf("%d self-rotation events, want the 4 rotations and the refusal", got)
	}
}

// TestAgentHardeningLockoutPerPair: someone holding only a leaked API key
// sends wrong rotation secrets from several addresses — more than the five
// that used to lock the agent — and the holder of both credentials still
// rotates from its own address. The guesser is held to its own addresses'
// budgets.
func TestAgentHardeningLockoutPerPair(t *testing.T) {
	f := newAgentHardFixture(t, "agent lockout")
	bot := f.agent(t, "bot", "member")
	const home = "198.51.100.7"

	for round := range 2 {
		// Three wrong secrets from each of three addresses: nine guesses.
		for a := range 3 {
			ip := fmt.Sprintf("192.0.2.%d", 10*round+a+1)
			for range 3 {
				agentHardWant(t, f.rotate(t, ip, bot.key, credfmt.New(credfmt.RotationSecret)), http.StatusUnauthorized, "INVALID_ROTATION_SECRET")
			}
			// Each address has spent its budget with the key: its next
			// guess is refused, counted or not.
			agentHardWant(t, f.rotate(t, ip, bot.key, credfmt.New(credfmt.RotationSecret)), http.StatusTooManyRequests, "")
		}
		// The holder of both credentials is not locked out.
		bot = f.rotateOK(t, home, bot)
	}
	// Every wrong secret is in the trail, with the address it came from.
	fails := 0
	for _, e := range f.events(t, "agent.rotate_key_self", bot.id) {
		if e.str("outcome") == "failure" && strings.Contains(e.str("detail"), "INVALID_ROTATION_SECRET") {
			if !strings.HasPrefix(e.str("clientIp"), "192.0.2.") {
				t.Fatalf("wrong-secret event without the guesser's address: %v", e)
			}
			fails++
		}
	}
	if fails != 18 {
		t.Fatalf("%d wrong-secret events in the trail, want 18", fails)
	}
}

// TestAgentHardeningTeamBoundAgents: an admin agent bounded to team A
// registers, changes, rotates and revokes agents only inside team A, like an
// access token bounded to team A; an agent without a team boundary is not
// held to one.
func TestAgentHardeningTeamBoundAgents(t *testing.T) {
	f := newAgentHardFixture(t, "agent teams")
	rc, wsp := f.rc, "/v1/workspaces/"+f.ws.ID
	agents := wsp + "/installations/" + f.inst + "/agents"
	bound := f.agent(t, "bound admin", "admin", "team-a")
	free := f.agent(t, "free admin", "admin")
	unbounded := f.agent(t, "unbounded", "member")
	teamB := f.agent(t, "team b", "member", "team-b")
	// The comparison: an access token bounded to team A with what it takes
	// to register member agents.
	o := rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/automations", f.ws.OwnerToken, map[string]any{
		"name": "bounded token", "teamIds": []string{"team-a"},
		"scopes": []string{"agents:write", "agents:read", "automations:read", "secrets:read"},
	})
	tok := rc.exchange(t, o.str("secret"))

	for _, who := range []struct{ name, token string }{{"access token", tok}, {"team-bound agent", bound.key}} {
		mine := rc.expect(t, http.StatusOK, http.MethodPost, agents, who.token,
			map[string]any{"name": "in team a by " + who.name, "role": "member", "teamIds": []string{"team-a"}}).str("agent.id")
		refusals := []struct {
			name, method, path string
			body               map[string]any
		}{
			{"register without a team boundary", http.MethodPost, agents, map[string]any{"name": "x1 " + who.name, "role": "member"}},
			{"register for another team", http.MethodPost, agents, map[string]any{"name": "x2 " + who.name, "role": "member", "teamIds": []string{"team-b"}}},
			{"register for its team and another", http.MethodPost, agents, map[string]any{"name": "x3 " + who.name, "role": "member", "teamIds": []string{"team-a", "team-b"}}},
			{"lift the boundary of its own team's agent", http.MethodPatch, wsp + "/agents/" + mine, map[string]any{"teamIds": []string{}}},
			{"move its own team's agent to another team", http.MethodPatch, wsp + "/agents/" + mine, map[string]any{"teamIds": []string{"team-b"}}},
			{"change an unbounded agent", http.MethodPatch, wsp + "/agents/" + unbounded.id, map[string]any{"name": "mine now " + who.name}},
			{"change another team's agent", http.MethodPatch, wsp + "/agents/" + teamB.id, map[string]any{"teamIds": []string{"team-a"}}},
			{"rotate an unbounded agent's key", http.MethodPost, wsp + "/agents/" + unbounded.id + "/rotate-key", map[string]any{}},
			{"revoke another team's agent", http.MethodPost, wsp + "/agents/" + teamB.id + "/revoke", map[string]any{}},
		}
		for _, r := range refusals {
			t.Run(who.name+" may not "+r.name, func(t *testing.T) {
				got := rc.call(t, r.method, r.path, who.token, r.body)
				if got.Status != http.StatusForbidden || !strings.Contains(strings.ToLower(got.JSON().str("message")), "team") {
					t.Fatalf("%s: want 403 naming the team boundary", got)
				}
			})
		}
		// Inside its team it manages agents as before.
		rc.expect(t, http.StatusOK, http.MethodPatch, wsp+"/agents/"+mine, who.token, map[string]any{"name": "renamed by " + who.name})
		rc.expect(t, http.StatusOK, http.MethodPost, wsp+"/agents/"+mine+"/rotate-key", who.token, map[string]any{})
	}
	// Nothing outside team A changed.
	for _, a := range []agentHardPair{unbounded, teamB} {
		g := rc.expect(t, http.StatusOK, http.MethodGet, wsp+"/agents/"+a.id, f.ws.OwnerToken, nil)
		if g.boolean("agent.revoked") || strings.HasPrefix(g.str("agent.name"), "mine now") {
			t.Fatalf("agent %s was changed by a caller bounded to another team: %v", a.id, g)
		}
	}
	// An admin agent acts by role: it may register an admin agent in its
	// team; one without a team boundary registers anywhere.
	rc.expect(t, http.StatusOK, http.MethodPost, agents, bound.key, map[string]any{"name": "admin in a", "role": "admin", "teamIds": []string{"team-a"}})
	rc.expect(t, http.StatusOK, http.MethodPost, agents, free.key, map[string]any{"name": "anywhere", "role": "admin"})
	rc.expect(t, http.StatusOK, http.MethodPatch, wsp+"/agents/"+teamB.id, free.key, map[string]any{"name": "team b renamed"})
}

// TestAgentHardeningRefusalsAudited: a self-rotation refused to a known
// agent — 429 for its address's budget (refused before authentication
// until now, and so unrecorded), 401 for a wrong rotation secret, 403 for a
// suspended or revoked agent — is in the agent's audit trail: failure, the
// reason, the end client's IP; never a credential. (The 403s are refused
// when the credential service authenticates the key, and recorded there as
// auth.authenticate, at most once a minute per key.)
func TestAgentHardeningRefusalsAudited(t *testing.T) {
	f := newAgentHardFixture(t, "agent refusals")
	bot := f.agent(t, "bot", "member")
	const ip = "203.0.113.40"

	old := bot
	bot = f.rotateOK(t, ip, bot)
	agentHardWant(t, f.rotate(t, ip, bot.key, old.secret), http.StatusUnauthorized, "INVALID_ROTATION_SECRET")
	bot = f.rotateOK(t, ip, bot)
	agentHardWant(t, f.rotate(t, ip, bot.key, bot.secret), http.StatusTooManyRequests, "ROTATION_RATE_LIMITED")

	want := map[string]bool{"INVALID_ROTATION_SECRET": false, "ROTATION_RATE_LIMITED": false}
	for _, e := range f.events(t, "agent.rotate_key_self", bot.id) {
		if e.str("outcome") != "failure" {
			continue
		}
		for reason := range want {
			if strings.Contains(e.str("detail"), reason) {
				if e.str("clientIp") != ip || e.str("actorKind") != "agent" || e.str("actorId") != bot.id || e.str("targetKind") != "agent" {
					t.Fatalf("refusal %s: want actor and target agent %s and client IP %s; got %v", reason, bot.id, ip, e)
				}
				want[reason] = true
			}
		}
	}
	for reason, seen := range want {
		if !seen {
			t.Errorf("no failure event with reason %s in the agent's trail", reason)
		}
	}

	// 403: suspended, then revoked.
	sleepy := f.agent(t, "sleepy", "member")
	gone := f.agent(t, "gone", "member")
	wsp := "/v1/workspaces/" + f.ws.ID + "/agents/"
	f.rc.expect(t, http.StatusOK, http.MethodPatch, wsp+sleepy.id, f.ws.OwnerToken, map[string]any{"suspended": true})
	f.rc.expect(t, http.StatusOK, http.MethodPost, wsp+gone.id+"/revoke", f.ws.OwnerToken, map[string]any{})
	for _, c := range []struct {
		p    agentHardPair
		word string
	}{{sleepy, "suspended"}, {gone, "revoked"}} {
		agentHardWant(t, f.rotate(t, ip, c.p.key, c.p.secret), http.StatusForbidden, "")
		found := false
		for _, e := range f.events(t, "", c.p.id) {
			if e.str("outcome") == "failure" && strings.Contains(e.str("detail"), c.word) {
				if e.str("clientIp") != ip || e.str("actorId") != c.p.id {
					t.Fatalf("refusal of the %s agent: want actor %s and client IP %s; got %v", c.word, c.p.id, ip, e)
				}
				found = true
			}
		}
		if !found {
			t.Errorf("the self-rotation refused to the %s agent is not in its trail", c.word)
		}
	}
}
