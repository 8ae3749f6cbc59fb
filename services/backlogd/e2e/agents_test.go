package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// TestAgentSeedWorkflows drives the visible-agent seed workflows through the
// real gateway, in both layouts: create an installation and an agent, rotate
// its key three times with the current pair (the seed's curl call), get 429
// with Retry-After on the fourth, while an admin rotation still works;
// suspension and revocation refuse the agent everywhere at once; every
// rotation is in the audit trail, with no key.
func TestAgentSeedWorkflows(t *testing.T) {
	metricsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := metricsLis.Addr().String()
	metricsLis.Close()
	forEachLayout(t, func(t *testing.T, c *cluster) {
		ws := c.create(t, "/v1/workspaces", c.OperatorToken, map[string]any{"name": "Acme"})
		owner := ws.get("token").(string)
		base := "/v1/workspaces/" + ws.get("workspace.id").(string)
		inst := c.create(t, base+"/installations", owner, map[string]any{"name": "GitHub", "appId": "gh-1"}).get("installation.id").(string)
		created := c.create(t, base+"/installations/"+inst+"/agents", owner, map[string]any{"name": "Triage bot", "teamIds": []string{"core"}, "role": "member"})
		agentID := created.get("agent.id").(string)
		key, rot := created.get("apiKey").(string), created.get("rotationSecret").(string)

		c.expect(t, 200, "GET", base+"/agents?installationId="+inst, owner, nil)
		if self := c.expect(t, 200, "GET", "/v1/agents/self", key, nil); self.get("agent.id") != agentID {
			t.Fatalf("GET /v1/agents/self: %v", self)
		}
		c.expectError(t, 400, 3, "POST", "/v1/agents/self/rotate-key", key, map[string]any{})
		for i := 0; i < 3; i++ {
			r := c.expect(t, 200, "POST", "/v1/agents/self/rotate-key", key, map[string]any{"rotationSecret": rot})
			if r.get("message") != "API key and rotation secret rotated successfully. Save both — they will not be shown again." ||
				r.get("agentId") != agentID || r.get("agentName") != "Triage bot" {
				t.Fatalf("rotation %d: %v", i+1, redact(string(mustJSON(r))))
			}
			c.expectError(t, 401, 16, "GET", "/v1/agents/self", key, nil) // the old key died at once
			key, rot = r.get("apiKey").(string), r.get("rotationSecret").(string)
		}
		fourth := c.call(t, "POST", "/v1/agents/self/rotate-key", key, map[string]any{"rotationSecret": rot})
		if fourth.Status != 429 {
			t.Fatalf("fourth self-rotation within 15 minutes: %s", fourth)
		}
		if s, err := strconv.Atoi(fourth.Header.Get("Retry-After")); err != nil || s <= 0 || s > 900 {
			t.Fatalf("429 without a usable Retry-After: %q", fourth.Header.Get("Retry-After"))
		}
		admin := c.expect(t, 200, "POST", base+"/agents/"+agentID+"/rotate-key", owner, map[string]any{})
		key = admin.get("apiKey").(string)
		c.expect(t, 200, "GET", "/v1/agents/self", key, nil)

		c.expect(t, 200, "PATCH", base+"/agents/"+agentID, owner, map[string]any{"suspended": true})
		c.expectError(t, 403, 7, "GET", "/v1/agents/self", key, nil)
		c.expectError(t, 403, 7, "GET", base+"/automations", key, nil)
		c.expect(t, 200, "PATCH", base+"/agents/"+agentID, owner, map[string]any{"suspended": false})
		c.expect(t, 200, "GET", base+"/automations", key, nil) // role member reads automations
		c.expect(t, 200, "POST", base+"/agents/"+agentID+"/revoke", owner, map[string]any{})
		c.expectError(t, 403, 7, "GET", "/v1/agents/self", key, nil)
		c.expectError(t, 403, 7, "GET", base+"/secrets", key, nil)

		audit := c.expect(t, 200, "GET", base+"/audit-events?targetId="+agentID+"&pageSize=100", owner, nil)
		counts := map[string]int{}
		for _, e := range audit.get("auditEvents").([]any) {
			ev := e.(map[string]any)
			counts[ev["action"].(string)+"/"+ev["outcome"].(string)]++
		}
		if counts["agent.rotate_key_self/success"] != 3 || counts["agent.rotate_key/success"] != 1 || counts["agent.revoke/success"] != 1 {
			t.Fatalf("audit trail of the agent: %v", counts)
		}
	})
	// The rate-limit refusal is counted in the metrics (one process, -target=all).
	c := startCluster(t, layoutAll, "-metrics-addr="+metricsAddr)
	ws := c.create(t, "/v1/workspaces", c.OperatorToken, map[string]any{"name": "Acme"})
	owner := ws.get("token").(string)
	base := "/v1/workspaces/" + ws.get("workspace.id").(string)
	inst := c.create(t, base+"/installations", owner, map[string]any{"name": "GitHub"}).get("installation.id").(string)
	created := c.create(t, base+"/installations/"+inst+"/agents", owner, map[string]any{"name": "bot"})
	key, rot := created.get("apiKey").(string), created.get("rotationSecret").(string)
	for i := 0; i < 4; i++ {
		r := c.call(t, "POST", "/v1/agents/self/rotate-key", key, map[string]any{"rotationSecret": rot})
		if r.Status == 200 {
			o := r.JSON(t)
			key, rot = o.get("apiKey").(string), o.get("rotationSecret").(string)
		}
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `backlog_rate_limited_total{limiter="agent_self_rotation_per_ip"} 1`) {
		t.Fatal("the refused rotation is not counted in backlog_rate_limited_total")
	}
}

func mustJSON(o obj) []byte {
	b, _ := json.Marshal(o)
	return b
}
