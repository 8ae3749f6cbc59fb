package reliability

// Idempotency-Key on the automation and agent services' POSTs that return a
// one-time credential (issue 12, item 7): POST …/automations (the secret),
// POST …/automations/{id}/rotate-secret (the new secret), POST
// …/installations/{id}/agents (the API key and rotation secret) and POST
// …/agents/{id}/rotate-key (the admin rotation's new pair), against real
// backlogd processes through the REST gateway. The same key and body give
// the same JSON with the same secret, and issue or rotate nothing more (a
// second rotation would kill the secret the client has not seen); another
// body under the key is 422; a retry whose first response was lost still
// gets it after the whole control plane restarted; the replayed secrets
// work; and the store files never hold them.

import (
	"bytes"
	"net/http"
	"os"
	"reflect"
	"testing"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

// idemAutoPost sends one POST with an Idempotency-Key and wants 200.
func idemAutoPost(t *testing.T, c *cluster, path, token, key string, body any) obj {
	t.Helper()
	r := c.rest().call(t, http.MethodPost, path, token, body, "Idempotency-Key", key)
	if r.Status != http.StatusOK {
		t.Fatalf("%s: want 200", r)
	}
	return r.JSON()
}

// idemAutoSame wants the retry's JSON to equal the first's, secret and all;
// the secret at path must be of kind.
func idemAutoSame(t *testing.T, what string, first, retry obj, path string, kind credfmt.Kind) {
	t.Helper()
	if kindOf(first.str(path)) != kind {
		t.Fatalf("%s: no %v credential at %s", what, kind, path)
	}
	if !reflect.DeepEqual(first, retry) {
		t.Fatalf("%s: the retry got another response (secret the same: %v)", what, first.str(path) == retry.str(path))
	}
}

// idemAutoReused sends the POST and wants 422 with the contract's error
// shape and reason IDEMPOTENCY_KEY_REUSED.
func idemAutoReused(t *testing.T, c *cluster, what, path, token, key string, body any) {
	t.Helper()
	r := c.rest().call(t, http.MethodPost, path, token, body, "Idempotency-Key", key)
	if r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("%s: %s; want 422", what, r)
	}
	o := r.JSON()
	if code, _ := o.get("code").(float64); code != 9 || o.str("message") == "" {
		t.Fatalf("%s: %s; want code 9 (FailedPrecondition) and a message", what, r)
	}
	for _, d := range o.list("details") {
		if d.str("reason") == "IDEMPOTENCY_KEY_REUSED" {
			return
		}
	}
	t.Fatalf("%s: %s; want an ErrorInfo with reason IDEMPOTENCY_KEY_REUSED", what, r)
}

// idemAutoExchange reports the status of exchanging an automation secret.
func idemAutoExchange(t *testing.T, c *cluster, secret string) int {
	t.Helper()
	return c.rest().call(t, http.MethodPost, "/v1/auth/exchange", secret, map[string]any{}).Status
}

// idemAutoSelf reports the status of GET /v1/agents/self with an API key.
func idemAutoSelf(t *testing.T, c *cluster, apiKey string) int {
	t.Helper()
	return c.rest().call(t, http.MethodGet, "/v1/agents/self", apiKey, nil).Status
}

// idemAutoCount counts the audit events of an action in ws.
func idemAutoCount(t *testing.T, c *cluster, ws workspace, action string) int {
	t.Helper()
	o := c.rest().expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?pageSize=100&action="+action, ws.OwnerToken, nil)
	return len(o.list("auditEvents"))
}

func TestIdemAutomationAndAgentCredentials(t *testing.T) {
	c := startCluster(t, layoutAll)
	ws := c.rest().createWorkspace(t, c.OperatorToken, "Idempotent automations")
	tok := ws.OwnerToken
	autos := "/v1/workspaces/" + ws.ID + "/automations"

	// ---- POST …/automations
	createBody := map[string]any{"name": "nightly-sync", "scopes": []string{"issues:read"}, "credentialLabel": "ci"}
	aFirst := idemAutoPost(t, c, autos, tok, "auto-1f2e", createBody)
	aAgain := idemAutoPost(t, c, autos, tok, "auto-1f2e", createBody)
	idemAutoSame(t, "automation create", aFirst, aAgain, "secret", credfmt.Automation)
	idemAutoReused(t, c, "automation create, same key, other body", autos, tok, "auto-1f2e",
		map[string]any{"name": "weekly-sync", "scopes": []string{"issues:read"}})
	if n := len(c.rest().expect(t, http.StatusOK, http.MethodGet, autos, tok, nil).list("automations")); n != 1 {
		t.Fatalf("%d automations after a create, its retry and a refused reuse; want 1", n)
	}
	autoID := aFirst.str("automation.id")

	// ---- POST …/automations/{id}/rotate-secret
	rotatePath := autos + "/" + autoID + "/rotate-secret"
	rFirst := idemAutoPost(t, c, rotatePath, tok, "rot-9a0b", map[string]any{"credentialLabel": "v2"})
	rAgain := idemAutoPost(t, c, rotatePath, tok, "rot-9a0b", map[string]any{"credentialLabel": "v2"})
	idemAutoSame(t, "rotate-secret", rFirst, rAgain, "secret", credfmt.Automation)
	idemAutoReused(t, c, "rotate-secret, same key, other body", rotatePath, tok, "rot-9a0b", map[string]any{"credentialLabel": "v3"})
	// The retry did not rotate again: the secret it returned is the live one.
	if s := idemAutoExchange(t, c, rFirst.str("secret")); s != http.StatusOK {
		t.Fatalf("exchanging the rotated secret after the retry: %d, want 200", s)
	}
	if s := idemAutoExchange(t, c, aFirst.str("secret")); s != http.StatusUnauthorized {
		t.Fatalf("exchanging the secret from before the rotation: %d, want 401", s)
	}

	// ---- POST …/installations/{id}/agents
	inst := c.rest().expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/installations", tok,
		map[string]any{"name": "Idem app", "appId": "app_idem"}).str("installation.id")
	agents := "/v1/workspaces/" + ws.ID + "/installations/" + inst + "/agents"
	agentBody := map[string]any{"name": "triage-bot", "role": "member", "teamIds": []string{"team-a"}}
	gFirst := idemAutoPost(t, c, agents, tok, "agent-4c5d", agentBody)
	gAgain := idemAutoPost(t, c, agents, tok, "agent-4c5d", agentBody)
	idemAutoSame(t, "agent create", gFirst, gAgain, "apiKey", credfmt.AgentKey)
	if gFirst.str("rotationSecret") == "" || gFirst.str("rotationSecret") != gAgain.str("rotationSecret") {
		t.Fatal("agent create: the retry's rotation secret differs")
	}
	idemAutoReused(t, c, "agent create, same key, other body", agents, tok, "agent-4c5d",
		map[string]any{"name": "triage-bot", "role": "admin", "teamIds": []string{"team-a"}})
	other := c.rest().expect(t, http.StatusOK, http.MethodPost, agents, tok, map[string]any{"name": "other-bot"}).str("agent.id")
	agentID := gFirst.str("agent.id")

	// ---- POST …/agents/{id}/rotate-key (admin rotation)
	keyPath := "/v1/workspaces/" + ws.ID + "/agents/" + agentID + "/rotate-key"
	kFirst := idemAutoPost(t, c, keyPath, tok, "key-6e7f", map[string]any{})
	kAgain := idemAutoPost(t, c, keyPath, tok, "key-6e7f", map[string]any{})
	idemAutoSame(t, "rotate-key", kFirst, kAgain, "apiKey", credfmt.AgentKey)
	idemAutoReused(t, c, "rotate-key, same key, another agent", "/v1/workspaces/"+ws.ID+"/agents/"+other+"/rotate-key", tok, "key-6e7f", map[string]any{})
	if s := idemAutoSelf(t, c, kFirst.str("apiKey")); s != http.StatusOK {
		t.Fatalf("the rotated API key after the retry: %d, want 200", s)
	}
	if s := idemAutoSelf(t, c, gFirst.str("apiKey")); s != http.StatusUnauthorized {
		t.Fatalf("the API key from before the rotation: %d, want 401", s)
	}

	// ---- Responses lost, then the whole control plane restarts before
	// the client retries.
	lostCreate := map[string]any{"name": "lost-create", "scopes": []string{}}
	lostA := idemAutoPost(t, c, autos, tok, "auto-lost-0d1e", lostCreate)
	lostRotatePath := autos + "/" + lostA.str("automation.id") + "/rotate-secret"
	lostR := idemAutoPost(t, c, lostRotatePath, tok, "rot-lost-2f3a", map[string]any{})
	lostG := idemAutoPost(t, c, agents, tok, "agent-lost-4b5c", map[string]any{"name": "lost-bot"})
	lostKeyPath := "/v1/workspaces/" + ws.ID + "/agents/" + lostG.str("agent.id") + "/rotate-key"
	lostK := idemAutoPost(t, c, lostKeyPath, tok, "key-lost-6d7e", map[string]any{})
	c.stop(t)
	c.start(t)
	idemAutoSame(t, "automation create retried after a restart", lostA,
		idemAutoPost(t, c, autos, tok, "auto-lost-0d1e", lostCreate), "secret", credfmt.Automation)
	idemAutoSame(t, "rotate-secret retried after a restart", lostR,
		idemAutoPost(t, c, lostRotatePath, tok, "rot-lost-2f3a", map[string]any{}), "secret", credfmt.Automation)
	idemAutoSame(t, "agent create retried after a restart", lostG,
		idemAutoPost(t, c, agents, tok, "agent-lost-4b5c", map[string]any{"name": "lost-bot"}), "apiKey", credfmt.AgentKey)
	idemAutoSame(t, "rotate-key retried after a restart", lostK,
		idemAutoPost(t, c, lostKeyPath, tok, "key-lost-6d7e", map[string]any{}), "apiKey", credfmt.AgentKey)
	// Keys from before the restart replay too, and 422 still holds.
	idemAutoSame(t, "rotate-secret retried again after a restart", rFirst,
		idemAutoPost(t, c, rotatePath, tok, "rot-9a0b", map[string]any{"credentialLabel": "v2"}), "secret", credfmt.Automation)
	idemAutoReused(t, c, "automation create after a restart, same key, other body", autos, tok, "auto-lost-0d1e",
		map[string]any{"name": "not-lost"})

	// The replayed secrets work: nothing rotated twice.
	for _, s := range []string{rFirst.str("secret"), lostR.str("secret")} {
		if st := idemAutoExchange(t, c, s); st != http.StatusOK {
			t.Fatalf("exchanging a replayed automation secret: %d, want 200", st)
		}
	}
	for _, k := range []string{kFirst.str("apiKey"), lostK.str("apiKey")} {
		if st := idemAutoSelf(t, c, k); st != http.StatusOK {
			t.Fatalf("a replayed API key: %d, want 200", st)
		}
	}
	if n := len(c.rest().expect(t, http.StatusOK, http.MethodGet, autos, tok, nil).list("automations")); n != 2 {
		t.Fatalf("%d automations, want 2", n)
	}
	// The replays are audited as such.
	for action, want := range map[string]int{
		"automation.create_replay": 2, "automation.rotate_secret_replay": 3, "agent.create_replay": 2, "agent.rotate_key_replay": 2,
	} {
		if n := idemAutoCount(t, c, ws, action); n != want {
			t.Errorf("%d %s events, want %d", n, action, want)
		}
	}

	// At rest, the stores hold none of the replayed secrets.
	c.stop(t)
	for service, secrets := range map[string][]string{
		"automation": {aFirst.str("secret"), rFirst.str("secret"), lostA.str("secret"), lostR.str("secret")},
		"agent": {gFirst.str("apiKey"), gFirst.str("rotationSecret"), kFirst.str("apiKey"), kFirst.str("rotationSecret"),
			lostG.str("apiKey"), lostG.str("rotationSecret"), lostK.str("apiKey"), lostK.str("rotationSecret")},
	} {
		b, err := os.ReadFile(c.dbFile(service))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range append(secrets, tok) {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s.db holds a %v credential in plaintext", service, kindOf(s))
			}
		}
		for _, k := range []string{"auto-1f2e", "rot-9a0b", "agent-4c5d", "key-6e7f", "auto-lost-0d1e", "rot-lost-2f3a", "agent-lost-4b5c", "key-lost-6d7e"} {
			if bytes.Contains(b, []byte(k)) {
				t.Errorf("%s.db holds an Idempotency-Key in plaintext", service)
			}
		}
	}
}
