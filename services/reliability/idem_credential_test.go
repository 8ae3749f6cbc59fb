package reliability

// Idempotency-Key on the credential service's creates that return a
// one-time credential (issue 12, item 7): POST /v1/workspaces (the first
// owner's token) and POST /v1/workspaces/{ws}/members (the member's token),
// against real backlogd processes through the REST gateway. The same key
// and body give the same JSON with the same token, and create nothing more;
// another body under the same key is 422; a retry whose first response was
// lost still gets it after the whole control plane restarted; and the store
// files never hold the tokens the replays return.

import (
	"bytes"
	"net/http"
	"os"
	"reflect"
	"testing"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

// idemCredPost sends one POST with an Idempotency-Key.
func idemCredPost(t *testing.T, c *cluster, path, token, key string, body any) *reply {
	t.Helper()
	return c.rest().call(t, http.MethodPost, path, token, body, "Idempotency-Key", key)
}

// idemCredOK wants 200 and returns the decoded body.
func idemCredOK(t *testing.T, r *reply) obj {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: want 200", r)
	}
	return r.JSON()
}

// idemCredSame wants the retry's JSON to equal the first's, token and all.
func idemCredSame(t *testing.T, what string, first, retry obj, tokenPath string) {
	t.Helper()
	if kindOf(first.str(tokenPath)) != credfmt.Personal {
		t.Fatalf("%s: no personal token at %s", what, tokenPath)
	}
	if !reflect.DeepEqual(first, retry) {
		t.Fatalf("%s: the retry got another response (token the same: %v)", what, first.str(tokenPath) == retry.str(tokenPath))
	}
}

// idemCredReused wants 422 with the contract's error shape and the reason.
func idemCredReused(t *testing.T, what string, r *reply) {
	t.Helper()
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

// idemCredMembers lists the member ids of ws.
func idemCredMembers(t *testing.T, c *cluster, ws workspace) []string {
	t.Helper()
	var ids []string
	for _, m := range c.rest().expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/members?pageSize=100", ws.OwnerToken, nil).list("members") {
		ids = append(ids, m.str("id"))
	}
	return ids
}

func TestIdemCredentialCreates(t *testing.T) {
	c := startCluster(t, layoutAll)

	// ---- POST /v1/workspaces (operator)
	wsBody := map[string]any{"name": "Idempotent", "ownerName": "Ada", "ownerEmail": "ada@example.com"}
	first := idemCredOK(t, idemCredPost(t, c, "/v1/workspaces", c.OperatorToken, "ws-7d1c", wsBody))
	again := idemCredOK(t, idemCredPost(t, c, "/v1/workspaces", c.OperatorToken, "ws-7d1c", wsBody))
	idemCredSame(t, "workspace", first, again, "token")
	ws := workspace{ID: first.str("workspace.id"), OwnerID: first.str("owner.id"), OwnerToken: first.str("token")}
	if got := idemCredMembers(t, c, ws); len(got) != 1 || got[0] != ws.OwnerID {
		t.Fatalf("members of the workspace after a create and its retry: %v, want only the owner", got)
	}
	idemCredReused(t, "workspace, same key, other body",
		idemCredPost(t, c, "/v1/workspaces", c.OperatorToken, "ws-7d1c", map[string]any{"name": "Someone else's"}))

	// ---- POST /v1/workspaces/{ws}/members (owner)
	membersPath := "/v1/workspaces/" + ws.ID + "/members"
	memBody := map[string]any{"name": "Bob", "email": "bob@example.com", "role": "admin"}
	mFirst := idemCredOK(t, idemCredPost(t, c, membersPath, ws.OwnerToken, "mem-3b9e", memBody))
	mAgain := idemCredOK(t, idemCredPost(t, c, membersPath, ws.OwnerToken, "mem-3b9e", memBody))
	idemCredSame(t, "member", mFirst, mAgain, "token")
	idemCredReused(t, "member, same key, other body",
		idemCredPost(t, c, membersPath, ws.OwnerToken, "mem-3b9e", map[string]any{"name": "Carol", "role": "member"}))

	// A create whose response is lost (the client sees nothing), then the
	// whole control plane restarts before the client retries.
	lostBody := map[string]any{"name": "Dan", "email": "dan@example.com", "role": "member"}
	lost := idemCredOK(t, idemCredPost(t, c, membersPath, ws.OwnerToken, "mem-lost-51aa", lostBody))
	c.stop(t)
	c.start(t)
	retry := idemCredOK(t, idemCredPost(t, c, membersPath, ws.OwnerToken, "mem-lost-51aa", lostBody))
	idemCredSame(t, "member retried after a restart", lost, retry, "token")
	wsRetry := idemCredOK(t, idemCredPost(t, c, "/v1/workspaces", c.OperatorToken, "ws-7d1c", wsBody))
	idemCredSame(t, "workspace retried after a restart", first, wsRetry, "token")

	// The replayed tokens work, and nothing was created twice.
	for _, tok := range []string{retry.str("token"), mAgain.str("token"), wsRetry.str("token")} {
		c.rest().expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID, tok, nil)
	}
	if got := idemCredMembers(t, c, ws); len(got) != 3 {
		t.Fatalf("%d members (%v), want 3: the owner, Bob and Dan, once each", len(got), got)
	}
	// The replays are audited as such.
	audit := c.rest().expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?action=member.create_replay", ws.OwnerToken, nil)
	if n := len(audit.list("auditEvents")); n != 2 {
		t.Errorf("%d member.create_replay events, want 2", n)
	}

	// At rest, the credential store holds none of the replayed tokens.
	c.stop(t)
	b, err := os.ReadFile(c.dbFile("credential"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{ws.OwnerToken, mFirst.str("token"), lost.str("token")} {
		if bytes.Contains(b, []byte(tok)) {
			t.Errorf("credential.db holds a replayed %s token in plaintext", kindOf(tok))
		}
	}
}
