package reliability

// The authorization matrix: every REST route of the OpenAPI document × every
// kind of caller, each cell asserting the exact HTTP status. The route list
// is read from the OpenAPI document (gen.OpenAPI), so a route added to the
// protos without a row here fails TestAuthorizationMatrix.
//
// Expected statuses are written as rules (one per kind of route), each a
// switch over every caller: the rules are the table. They follow
// PRODUCT.md: 401 missing/invalid credential (and an automation secret
// anywhere but exchange), 403 authenticated but not allowed (or suspended or
// revoked), 404 for another workspace's resources.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backlog/controlplane/gen"
	"github.com/backlog/controlplane/services/kit/credfmt"
)

// who is a kind of caller: a column of the matrix.
type who string

const (
	anonymous       who = "anonymous"
	garbage         who = "garbage token"
	badChecksum     who = "bad-checksum token"
	unknownToken    who = "well-formed unknown token"
	operator        who = "operator"
	owner           who = "owner"
	admin           who = "admin"
	member          who = "member"
	deletedMember   who = "deleted member"
	otherOwner      who = "other workspace's owner"
	atNone          who = "access token, no control-plane scope"
	atAutoRead      who = "access token automations:read"
	atAutoWrite     who = "access token automations:write"
	atAgentsRead    who = "access token agents:read"
	atAgentsWrite   who = "access token agents:write"
	atAgentsGrant   who = "access token agents:write + member scopes"
	atSecretsRead   who = "access token secrets:read"
	atSecretsWrite  who = "access token secrets:write"
	atSecretsUse    who = "access token secrets:use"
	atAuditRead     who = "access token audit:read"
	atSuspended     who = "suspended automation's access token"
	atRotated       who = "access token of a rotated secret"
	atDeleted       who = "deleted automation's access token"
	autoSecret      who = "raw automation secret"
	autoSecretSusp  who = "suspended automation's raw secret"
	agentMember     who = "agent key, role member"
	agentAdmin      who = "agent key, role admin"
	agentSuspended  who = "suspended agent's key"
	agentRevoked    who = "revoked agent's key"
	rotationSecret  who = "agent rotation secret as bearer"
	serviceCredBare who = "service credential as bearer"
)

// callers are the columns, in order; agentCallers need the agent service to
// mint their credentials.
var callers = []who{
	anonymous, garbage, badChecksum, unknownToken, operator, owner, admin, member, deletedMember, otherOwner,
	atNone, atAutoRead, atAutoWrite, atAgentsRead, atAgentsWrite, atAgentsGrant, atSecretsRead, atSecretsWrite, atSecretsUse, atAuditRead,
	atSuspended, atRotated, atDeleted, autoSecret, autoSecretSusp,
	agentMember, agentAdmin, agentSuspended, agentRevoked, rotationSecret, serviceCredBare,
}

var agentCallers = []who{agentMember, agentAdmin, agentSuspended, agentRevoked, rotationSecret}

// scopesOf is the control-plane scopes a caller's principal carries.
func scopesOf(c who) []string {
	all := []string{"automations:read", "automations:write", "agents:read", "agents:write", "secrets:read", "secrets:write", "secrets:use", "audit:read"}
	memberScopes := []string{"automations:read", "agents:read", "secrets:read"}
	switch c {
	case owner, admin, agentAdmin:
		return all
	case member, agentMember:
		return memberScopes
	case atAutoRead:
		return []string{"automations:read"}
	case atAutoWrite:
		return []string{"automations:write"}
	case atAgentsRead:
		return []string{"agents:read"}
	case atAgentsWrite:
		return []string{"agents:write"}
	case atAgentsGrant:
		return append([]string{"agents:write"}, memberScopes...)
	case atSecretsRead:
		return []string{"secrets:read"}
	case atSecretsWrite:
		return []string{"secrets:write"}
	case atSecretsUse:
		return []string{"secrets:use"}
	case atAuditRead:
		return []string{"audit:read"}
	}
	return nil
}

func isAccessToken(c who) bool { return strings.HasPrefix(string(c), "access token") }

func hasRole(c who) bool {
	return c == owner || c == admin || c == member || c == agentMember || c == agentAdmin
}

// rule gives the exact status of a route for every caller.
type rule func(c who) int

// gate is what authentication answers, whatever the route (except exchange
// and agent self-rotation, which read their own credential): 401 for no,
// malformed, unknown or dead credentials and for credentials that are never
// bearer tokens; 403 for suspended or revoked subjects.
func gate(c who) (int, bool) {
	switch c {
	case anonymous, garbage, badChecksum, unknownToken, deletedMember, atRotated, atDeleted,
		autoSecret, autoSecretSusp, rotationSecret, serviceCredBare:
		return http.StatusUnauthorized, true
	case atSuspended, agentSuspended, agentRevoked:
		return http.StatusForbidden, true
	}
	return 0, false
}

// inWorkspace is a route under /v1/workspaces/{ws}: the operator is 403, a
// caller of another workspace 404, then scope (if any) decides.
func inWorkspace(scope string, grant ...string) rule {
	return func(c who) int {
		if st, ok := gate(c); ok {
			return st
		}
		switch c {
		case operator:
			return http.StatusForbidden
		case otherOwner:
			return http.StatusNotFound
		}
		if scope != "" && !slices.Contains(scopesOf(c), scope) {
			return http.StatusForbidden
		}
		// A scope-bound caller may not grant more than it holds.
		if isAccessToken(c) {
			for _, g := range grant {
				if !slices.Contains(scopesOf(c), g) {
					return http.StatusForbidden
				}
			}
		}
		return http.StatusOK
	}
}

// adminRole is a route for people who are owners or admins: managing
// members and event subscriptions. An agent's role sets its control-plane
// scopes only; neither is a scope, so an agent of role admin is refused.
func adminRole(c who) int {
	if st, ok := gate(c); ok {
		return st
	}
	switch c {
	case operator:
		return http.StatusForbidden
	case otherOwner:
		return http.StatusNotFound
	case owner, admin:
		return http.StatusOK
	}
	return http.StatusForbidden
}

// operatorOnly: only the operator token creates workspaces.
func operatorOnly(c who) int {
	if st, ok := gate(c); ok {
		return st
	}
	if c == operator {
		return http.StatusOK
	}
	return http.StatusForbidden
}

// anyPrincipal: whoever is authenticated.
func anyPrincipal(c who) int {
	if st, ok := gate(c); ok {
		return st
	}
	return http.StatusOK
}

// exchangeRule: only a live automation secret exchanges; a suspended
// automation's secret is 403; every other credential is 401.
func exchangeRule(c who) int {
	switch c {
	case autoSecret:
		return http.StatusOK
	case autoSecretSusp:
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// agentSelf: GET /v1/agents/self takes an agent API key; any other
// principal is authenticated but not an agent (403).
func agentSelf(c who) int {
	if st, ok := gate(c); ok {
		return st
	}
	if c == agentMember || c == agentAdmin {
		return http.StatusOK
	}
	return http.StatusForbidden
}

// agentSelfRotate: POST /v1/agents/self/rotate-key with the caller's own
// rotation secret in the body: 401 unless the bearer is an agent API key
// (PRODUCT.md: "401 invalid API key"); 403 for a revoked or suspended agent.
func agentSelfRotate(c who) int {
	switch c {
	case agentMember, agentAdmin:
		return http.StatusOK
	case agentSuspended, agentRevoked:
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// matrixFixture is the workspace, credentials and targets the cells use.
type matrixFixture struct {
	c     *cluster
	rc    *restClient
	ws    workspace
	other workspace

	tokens   map[who]string
	rotation map[who]string // each agent caller's rotation secret

	automationID   string
	installationID string
	agentID        string
	secretName     string
	httpTarget     string
	// The "secrets in use" targets: a connection (to integrationSecret),
	// an action (a step to hookTarget, an HTTPS endpoint, using
	// secretName) and an event subscription (to hookTarget too).
	integrationSecret string
	connectionID      string
	actionID          string
	hookTarget        string
	subscriptionID    string

	n  atomic.Int64
	ip atomic.Int64
}

func (f *matrixFixture) unique(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, f.n.Add(1))
}

func (f *matrixFixture) wsPath(rest string) string { return "/v1/workspaces/" + f.ws.ID + rest }

// prep returns the path and body of a cell; fresh targets for routes that
// change or destroy what they act on, so that every cell sees the same world.
type prep func(t *testing.T, f *matrixFixture, c who) (path string, body any)

type route struct {
	service string // owning service: its routes answer 501 until it is built
	rule    rule
	prep    prep
}

func fixed(path string, body any) prep {
	return func(*testing.T, *matrixFixture, who) (string, any) { return path, body }
}

func matrixRoutes() map[string]route {
	wsp := func(rest string, body func(f *matrixFixture) any) prep {
		return func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
			var b any
			if body != nil {
				b = body(f)
			}
			return f.wsPath(rest), b
		}
	}
	freshMember := func(rest string, body any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			id, _ := f.rc.createMember(t, f.ws, f.unique("target"), "member")
			return f.wsPath("/members/" + id + rest), body
		}
	}
	freshAutomation := func(rest string, body any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			id, _ := f.rc.createAutomation(t, f.ws.ID, f.ws.OwnerToken, f.unique("target"))
			return f.wsPath("/automations/" + id + rest), body
		}
	}
	freshAgent := func(rest string, body func(f *matrixFixture) any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			id, _, _ := f.createAgent(t, "member")
			return f.wsPath("/agents/" + id + rest), body(f)
		}
	}
	empty := func(*matrixFixture) any { return map[string]any{} }
	freshSecret := func(rest string, body any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			name := f.createSecret(t)
			return f.wsPath("/secrets/" + name + rest), body
		}
	}
	freshConnection := func(rest string, body any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			return f.wsPath("/connections/" + f.createConnection(t) + rest), body
		}
	}
	freshAction := func(rest string, body any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			return f.wsPath("/actions/" + f.createAction(t) + rest), body
		}
	}
	// A workspace keeps at most 20 subscriptions: each cell's fresh one
	// goes when the cell ends, whoever the caller was.
	freshSubscription := func(rest string, body any) prep {
		return func(t *testing.T, f *matrixFixture, _ who) (string, any) {
			id := f.createSubscription(t)
			t.Cleanup(func() {
				if r := f.rc.call(t, http.MethodDelete, f.wsPath("/event-subscriptions/"+id), f.ws.OwnerToken, nil); r.Status != http.StatusOK && r.Status != http.StatusNotFound {
					t.Errorf("cleaning up subscription %s: %s", id, r)
				}
			})
			return f.wsPath("/event-subscriptions/" + id + rest), body
		}
	}
	standing := func(rest func(f *matrixFixture) string, body any) prep {
		return func(_ *testing.T, f *matrixFixture, _ who) (string, any) { return f.wsPath(rest(f)), body }
	}
	return map[string]route{
		// credential service
		"POST /v1/auth/exchange": {"credential", exchangeRule, fixed("/v1/auth/exchange", map[string]any{})},
		"GET /v1/auth/whoami":    {"credential", anyPrincipal, fixed("/v1/auth/whoami", nil)},
		"POST /v1/workspaces": {"credential", operatorOnly, func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
			return "/v1/workspaces", map[string]any{"name": f.unique("ws")}
		}},
		"GET /v1/workspaces/{workspaceId}":         {"credential", inWorkspace(""), wsp("", nil)},
		"GET /v1/workspaces/{workspaceId}/members": {"credential", adminRole, wsp("/members", nil)},
		"POST /v1/workspaces/{workspaceId}/members": {"credential", adminRole, wsp("/members", func(f *matrixFixture) any {
			return map[string]any{"name": f.unique("m"), "role": "member"}
		})},
		"PATCH /v1/workspaces/{workspaceId}/members/{memberId}":  {"credential", adminRole, freshMember("", map[string]any{"name": "renamed"})},
		"DELETE /v1/workspaces/{workspaceId}/members/{memberId}": {"credential", adminRole, freshMember("", nil)},
		"GET /v1/workspaces/{workspaceId}/audit-events":          {"credential", inWorkspace("audit:read"), wsp("/audit-events", nil)},

		// automation service
		"GET /v1/workspaces/{workspaceId}/automations": {"automation", inWorkspace("automations:read"), wsp("/automations", nil)},
		"POST /v1/workspaces/{workspaceId}/automations": {"automation", inWorkspace("automations:write"), wsp("/automations", func(f *matrixFixture) any {
			return map[string]any{"name": f.unique("a"), "scopes": []string{}}
		})},
		"GET /v1/workspaces/{workspaceId}/automations/{automationId}": {"automation", inWorkspace("automations:read"), func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
			return f.wsPath("/automations/" + f.automationID), nil
		}},
		"PATCH /v1/workspaces/{workspaceId}/automations/{automationId}":              {"automation", inWorkspace("automations:write"), freshAutomation("", map[string]any{"description": "changed"})},
		"DELETE /v1/workspaces/{workspaceId}/automations/{automationId}":             {"automation", inWorkspace("automations:write"), freshAutomation("", nil)},
		"POST /v1/workspaces/{workspaceId}/automations/{automationId}/rotate-secret": {"automation", inWorkspace("automations:write"), freshAutomation("/rotate-secret", map[string]any{})},

		// agent service
		"GET /v1/workspaces/{workspaceId}/installations": {"agent", inWorkspace("agents:read"), wsp("/installations", nil)},
		"POST /v1/workspaces/{workspaceId}/installations": {"agent", inWorkspace("agents:write"), wsp("/installations", func(f *matrixFixture) any {
			return map[string]any{"name": f.unique("inst")}
		})},
		"GET /v1/workspaces/{workspaceId}/agents": {"agent", inWorkspace("agents:read"), wsp("/agents", nil)},
		"POST /v1/workspaces/{workspaceId}/installations/{installationId}/agents": {"agent", inWorkspace("agents:write", "automations:read", "agents:read", "secrets:read"),
			func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
				return f.wsPath("/installations/" + f.installationID + "/agents"), map[string]any{"name": f.unique("agent"), "role": "member"}
			}},
		"GET /v1/workspaces/{workspaceId}/agents/{agentId}": {"agent", inWorkspace("agents:read"), func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
			return f.wsPath("/agents/" + f.agentID), nil
		}},
		"PATCH /v1/workspaces/{workspaceId}/agents/{agentId}": {"agent", inWorkspace("agents:write", "automations:read", "agents:read", "secrets:read"), freshAgent("", func(f *matrixFixture) any {
			return map[string]any{"name": f.unique("renamed")}
		})},
		"POST /v1/workspaces/{workspaceId}/agents/{agentId}/rotate-key": {"agent", inWorkspace("agents:write", "automations:read", "agents:read", "secrets:read"), freshAgent("/rotate-key", empty)},
		"POST /v1/workspaces/{workspaceId}/agents/{agentId}/revoke":     {"agent", inWorkspace("agents:write", "automations:read", "agents:read", "secrets:read"), freshAgent("/revoke", empty)},
		"GET /v1/agents/self": {"agent", agentSelf, fixed("/v1/agents/self", nil)},
		"POST /v1/agents/self/rotate-key": {"agent", agentSelfRotate, func(_ *testing.T, f *matrixFixture, c who) (string, any) {
			secret := f.rotation[c]
			if secret == "" {
				secret = credfmt.New(credfmt.RotationSecret) // well-formed, never issued
			}
			return "/v1/agents/self/rotate-key", map[string]any{"rotationSecret": secret}
		}},

		// vault service
		"GET /v1/workspaces/{workspaceId}/secrets": {"vault", inWorkspace("secrets:read"), wsp("/secrets", nil)},
		"POST /v1/workspaces/{workspaceId}/secrets": {"vault", inWorkspace("secrets:write"), wsp("/secrets", func(f *matrixFixture) any {
			return map[string]any{"name": f.unique("s"), "kind": "webhook", "value": "matrix-value-" + f.unique("v")}
		})},
		"GET /v1/workspaces/{workspaceId}/secrets/{name}": {"vault", inWorkspace("secrets:read"), func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
			return f.wsPath("/secrets/" + f.secretName), nil
		}},
		"PATCH /v1/workspaces/{workspaceId}/secrets/{name}":       {"vault", inWorkspace("secrets:write"), freshSecret("", map[string]any{"description": "changed"})},
		"POST /v1/workspaces/{workspaceId}/secrets/{name}/revoke": {"vault", inWorkspace("secrets:write"), freshSecret("/revoke", map[string]any{})},
		"DELETE /v1/workspaces/{workspaceId}/secrets/{name}":      {"vault", inWorkspace("secrets:write"), freshSecret("", nil)},
		"POST /v1/workspaces/{workspaceId}/http-requests": {"vault", inWorkspace("secrets:use"), func(_ *testing.T, f *matrixFixture, _ who) (string, any) {
			return f.wsPath("/http-requests"), map[string]any{"method": "GET", "url": f.httpTarget + "/ping", "headers": map[string]string{"X-Matrix": "1"}}
		}},

		// vault service: secrets in use. Connections and actions are
		// written with secrets:write (owners, admins) and read with
		// secrets:read (members too); running an action is secrets:use;
		// event subscriptions are for people who are owners or admins.
		"GET /v1/workspaces/{workspaceId}/secrets/{name}/versions": {"vault", inWorkspace("secrets:read"), standing(func(f *matrixFixture) string {
			return "/secrets/" + f.secretName + "/versions"
		}, nil)},
		"POST /v1/workspaces/{workspaceId}/secrets/{name}/rollback": {"vault", inWorkspace("secrets:write"), freshSecret("/rollback", map[string]any{"version": 1})},
		"GET /v1/workspaces/{workspaceId}/connections":              {"vault", inWorkspace("secrets:read"), wsp("/connections", nil)},
		"POST /v1/workspaces/{workspaceId}/connections": {"vault", inWorkspace("secrets:write"), wsp("/connections", func(f *matrixFixture) any {
			return map[string]any{"name": f.unique("conn"), "integration": "hubspot", "secretName": f.integrationSecret}
		})},
		"GET /v1/workspaces/{workspaceId}/connections/{connectionId}": {"vault", inWorkspace("secrets:read"), standing(func(f *matrixFixture) string {
			return "/connections/" + f.connectionID
		}, nil)},
		"PATCH /v1/workspaces/{workspaceId}/connections/{connectionId}":  {"vault", inWorkspace("secrets:write"), freshConnection("", map[string]any{"description": "changed"})},
		"DELETE /v1/workspaces/{workspaceId}/connections/{connectionId}": {"vault", inWorkspace("secrets:write"), freshConnection("", nil)},
		"GET /v1/workspaces/{workspaceId}/actions":                       {"vault", inWorkspace("secrets:read"), wsp("/actions", nil)},
		"POST /v1/workspaces/{workspaceId}/actions": {"vault", inWorkspace("secrets:write"), wsp("/actions", func(f *matrixFixture) any {
			return f.actionBody()
		})},
		"GET /v1/workspaces/{workspaceId}/actions/{actionId}": {"vault", inWorkspace("secrets:read"), standing(func(f *matrixFixture) string {
			return "/actions/" + f.actionID
		}, nil)},
		"PATCH /v1/workspaces/{workspaceId}/actions/{actionId}":  {"vault", inWorkspace("secrets:write"), freshAction("", map[string]any{"description": "changed"})},
		"DELETE /v1/workspaces/{workspaceId}/actions/{actionId}": {"vault", inWorkspace("secrets:write"), freshAction("", nil)},
		"POST /v1/workspaces/{workspaceId}/actions/{actionId}/run": {"vault", inWorkspace("secrets:use"), standing(func(f *matrixFixture) string {
			return "/actions/" + f.actionID + "/run"
		}, map[string]any{})},
		"GET /v1/workspaces/{workspaceId}/event-subscriptions": {"vault", adminRole, wsp("/event-subscriptions", nil)},
		"POST /v1/workspaces/{workspaceId}/event-subscriptions": {"vault", adminRole, wsp("/event-subscriptions", func(f *matrixFixture) any {
			return f.subscriptionBody()
		})},
		"GET /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}": {"vault", adminRole, standing(func(f *matrixFixture) string {
			return "/event-subscriptions/" + f.subscriptionID
		}, nil)},
		"DELETE /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}": {"vault", adminRole, freshSubscription("", nil)},
		"GET /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}/deliveries": {"vault", adminRole, standing(func(f *matrixFixture) string {
			return "/event-subscriptions/" + f.subscriptionID + "/deliveries"
		}, nil)},
	}
}

// openAPIRoutes lists "METHOD /path" for every operation of gen.OpenAPI.
func openAPIRoutes(t *testing.T) []string {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(gen.OpenAPI, &doc); err != nil {
		t.Fatalf("gen.OpenAPI: %v", err)
	}
	var out []string
	for path, ops := range doc.Paths {
		for method := range ops {
			switch m := strings.ToUpper(method); m {
			case "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS":
				out = append(out, m+" "+path)
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestMatrixCoversEveryRoute(t *testing.T) {
	documented := openAPIRoutes(t)
	table := matrixRoutes()
	for _, r := range documented {
		if _, ok := table[r]; !ok {
			t.Errorf("route %s is in the OpenAPI document but not in the authorization matrix: add a row (matrixRoutes)", r)
		}
	}
	for r := range table {
		if !slices.Contains(documented, r) {
			t.Errorf("the authorization matrix has a row for %s, which the OpenAPI document does not have", r)
		}
	}
	if len(documented) == 0 {
		t.Fatal("no routes in the OpenAPI document")
	}
}

func TestAuthorizationMatrix(t *testing.T) {
	start := time.Now()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("pong"))
	}))
	defer target.Close()
	// An HTTPS endpoint (trusted through -vault-egress-ca-file): actions
	// send a secret, so they go over HTTPS; event subscriptions point there
	// too, for an event the matrix never raises.
	hook := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer hook.Close()
	// The cells send X-Forwarded-For from loopback: the gateway believes
	// it only from proxies it is told to trust (none by default).
	c := startCluster(t, layoutAll, "-vault-egress-allow-private=true", "-vault-egress-ca-file="+suWriteCA(t, hook), "-trusted-proxies=127.0.0.0/8,::1/128")
	f := newMatrixFixture(t, c, target.URL, hook.URL)

	// The served document is the one the table is checked against.
	if r := f.rc.call(t, http.MethodGet, "/openapi.json", "", nil); r.Status != http.StatusOK || string(r.Body) != string(gen.OpenAPI) {
		t.Errorf("GET /openapi.json: status %d, and the body differs from gen.OpenAPI: %v", r.Status, string(r.Body) != string(gen.OpenAPI))
	}

	table := matrixRoutes()
	var cells atomic.Int64
	t.Run("routes", func(t *testing.T) {
		for _, key := range openAPIRoutes(t) {
			rt, ok := table[key]
			if !ok {
				continue // TestMatrixCoversEveryRoute reports it
			}
			t.Run(key, func(t *testing.T) {
				t.Parallel()
				method, _, _ := strings.Cut(key, " ")
				for _, c := range callers {
					t.Run(string(c), func(t *testing.T) {
						token := f.tokenFor(t, key, c)
						path, body := rt.prep(t, f, c)
						// A distinct client IP per cell, so that per-IP
						// rate limits never decide a cell.
						ip := f.ip.Add(1)
						r := f.rc.call(t, method, path, token, body, "X-Forwarded-For", fmt.Sprintf("198.18.%d.%d", ip/250, ip%250+1))
						cells.Add(1)
						want := rt.rule(c)
						if r.Status != want {
							t.Errorf("%s as %s: got %d, want %d: %s", key, c, r.Status, want, redact(strings.TrimSpace(string(r.Body))))
						}
						checkErrorShape(t, r)
					})
				}
			})
		}
	})
	if want := int64(len(table) * len(callers)); cells.Load() != want && !t.Failed() {
		t.Errorf("asserted %d cells, want every one of %d routes × %d callers = %d", cells.Load(), len(table), len(callers), want)
	}
	t.Logf("authorization matrix: %d routes × %d callers; %d cells asserted, in %s",
		len(table), len(callers), cells.Load(), time.Since(start).Round(time.Millisecond))
}

// checkErrorShape checks the contract's JSON error on a non-2xx answer.
func checkErrorShape(t *testing.T, r *reply) {
	t.Helper()
	if r.Status < 400 {
		return
	}
	var e struct {
		Code    *int              `json:"code"`
		Message *string           `json:"message"`
		Details []json.RawMessage `json:"details"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil || e.Code == nil || e.Message == nil || e.Details == nil {
		t.Errorf("%s: not the contract's JSON error", r)
	}
	if r.Status == http.StatusUnauthorized && r.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("%s: 401 without WWW-Authenticate", r)
	}
	if credentialRE.Match(r.Body) {
		t.Errorf("%s: an error answer holds a credential-shaped string", r)
	}
}

// tokenFor returns the bearer credential of caller c for a cell. Self
// rotation consumes the caller's key, so those cells get a fresh agent.
func (f *matrixFixture) tokenFor(t *testing.T, route string, c who) string {
	t.Helper()
	if route == "POST /v1/agents/self/rotate-key" && slices.Contains([]who{agentMember, agentAdmin}, c) {
		role := "member"
		if c == agentAdmin {
			role = "admin"
		}
		_, key, rot := f.createAgent(t, role)
		f.setRotation(c, rot)
		return key
	}
	return f.tokens[c]
}

func (f *matrixFixture) setRotation(c who, rot string) {
	// Only the self-rotation route's cells read it, one at a time.
	f.rotation[c] = rot
}

func newMatrixFixture(t *testing.T, c *cluster, httpTarget, hookTarget string) *matrixFixture {
	t.Helper()
	f := &matrixFixture{c: c, rc: c.rest(), tokens: map[who]string{}, rotation: map[who]string{}, httpTarget: httpTarget, hookTarget: hookTarget}
	rc := f.rc

	f.ws = rc.createWorkspace(t, c.OperatorToken, "matrix")
	f.other = rc.createWorkspace(t, c.OperatorToken, "elsewhere")
	f.tokens[operator] = c.OperatorToken
	f.tokens[owner] = f.ws.OwnerToken
	f.tokens[otherOwner] = f.other.OwnerToken
	_, f.tokens[admin] = rc.createMember(t, f.ws, "an admin", "admin")
	_, f.tokens[member] = rc.createMember(t, f.ws, "a member", "member")
	goneID, gone := rc.createMember(t, f.ws, "gone", "member")
	rc.expect(t, http.StatusOK, http.MethodDelete, f.wsPath("/members/"+goneID), f.ws.OwnerToken, nil)
	f.tokens[deletedMember] = gone
	f.tokens[garbage] = "not-a-token"
	good := f.ws.OwnerToken
	last := good[len(good)-1]
	swapped := byte('A')
	if last == 'A' {
		swapped = 'B'
	}
	f.tokens[badChecksum] = good[:len(good)-1] + string(swapped)
	f.tokens[unknownToken] = credfmt.New(credfmt.Personal)
	f.tokens[serviceCredBare] = credfmt.New(credfmt.Service)

	accessToken := func(name string, scopes ...string) (id, secret, token string) {
		id, secret = rc.createAutomation(t, f.ws.ID, f.ws.OwnerToken, name, scopes...)
		return id, secret, rc.exchange(t, secret)
	}
	for c, scopes := range map[who][]string{
		atNone: {"issues:write"}, atAutoRead: scopesOf(atAutoRead), atAutoWrite: scopesOf(atAutoWrite),
		atAgentsRead: scopesOf(atAgentsRead), atAgentsWrite: scopesOf(atAgentsWrite), atAgentsGrant: scopesOf(atAgentsGrant),
		atSecretsRead: scopesOf(atSecretsRead), atSecretsWrite: scopesOf(atSecretsWrite), atSecretsUse: scopesOf(atSecretsUse),
		atAuditRead: scopesOf(atAuditRead),
	} {
		_, _, f.tokens[c] = accessToken(f.unique("scoped"), scopes...)
	}
	all := scopesOf(owner)
	f.automationID, f.tokens[autoSecret], _ = accessToken("full", all...)
	suspID, suspSecret, suspToken := accessToken("suspended", all...)
	rc.expect(t, http.StatusOK, http.MethodPatch, f.wsPath("/automations/"+suspID), f.ws.OwnerToken, map[string]any{"suspended": true})
	f.tokens[atSuspended], f.tokens[autoSecretSusp] = suspToken, suspSecret
	rotID, _, rotToken := accessToken("rotated", all...)
	rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/automations/"+rotID+"/rotate-secret"), f.ws.OwnerToken, map[string]any{})
	f.tokens[atRotated] = rotToken
	delID, _, delToken := accessToken("deleted", all...)
	rc.expect(t, http.StatusOK, http.MethodDelete, f.wsPath("/automations/"+delID), f.ws.OwnerToken, nil)
	f.tokens[atDeleted] = delToken

	{
		o := rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/installations"), f.ws.OwnerToken, map[string]any{"name": "matrix app"})
		f.installationID = o.str("installation.id")
		var rot string
		f.agentID, f.tokens[agentMember], rot = f.createAgent(t, "member")
		f.rotation[agentMember] = rot
		f.tokens[rotationSecret] = rot
		_, f.tokens[agentAdmin], f.rotation[agentAdmin] = f.createAgent(t, "admin")
		var suspID string
		suspID, f.tokens[agentSuspended], f.rotation[agentSuspended] = f.createAgent(t, "member")
		rc.expect(t, http.StatusOK, http.MethodPatch, f.wsPath("/agents/"+suspID), f.ws.OwnerToken, map[string]any{"suspended": true})
		var revID string
		revID, f.tokens[agentRevoked], f.rotation[agentRevoked] = f.createAgent(t, "member")
		rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/agents/"+revID+"/revoke"), f.ws.OwnerToken, map[string]any{})
	}
	f.secretName = f.createSecret(t)
	f.integrationSecret = f.unique("integration")
	rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/secrets"), f.ws.OwnerToken,
		map[string]any{"name": f.integrationSecret, "kind": "integration", "value": "matrix-" + f.unique("value")})
	f.connectionID = f.createConnection(t)
	f.actionID = f.createAction(t)
	f.subscriptionID = f.createSubscription(t)
	return f
}

// createConnection saves a connection using the fixture's integration
// secret and returns its id.
func (f *matrixFixture) createConnection(t *testing.T) string {
	t.Helper()
	o := f.rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/connections"), f.ws.OwnerToken,
		map[string]any{"name": f.unique("connection"), "integration": "hubspot", "secretName": f.integrationSecret})
	id := o.str("connection.id")
	if id == "" {
		t.Fatalf("create connection: no id in %v", o)
	}
	return id
}

// actionBody is a step to the HTTPS hook target that sends the fixture's
// webhook secret in a header.
func (f *matrixFixture) actionBody() map[string]any {
	return map[string]any{"name": f.unique("action"), "method": "GET", "url": f.hookTarget + "/ping",
		"headers": map[string]string{"X-Matrix": "{secret:" + f.secretName + "}"}}
}

// createAction saves an action (actionBody) and returns its id.
func (f *matrixFixture) createAction(t *testing.T) string {
	t.Helper()
	o := f.rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/actions"), f.ws.OwnerToken, f.actionBody())
	id := o.str("action.id")
	if id == "" {
		t.Fatalf("create action: no id in %v", o)
	}
	return id
}

// subscriptionBody subscribes the HTTPS hook target to secret.expired,
// which no secret of the matrix ever raises.
func (f *matrixFixture) subscriptionBody() map[string]any {
	return map[string]any{"url": f.hookTarget + "/matrix", "events": []string{"secret.expired"}}
}

// createSubscription subscribes (subscriptionBody) and returns its id.
func (f *matrixFixture) createSubscription(t *testing.T) string {
	t.Helper()
	o := f.rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/event-subscriptions"), f.ws.OwnerToken, f.subscriptionBody())
	id := o.str("subscription.id")
	if id == "" {
		t.Fatalf("create event subscription: no id in %s", redact(fmt.Sprint(o)))
	}
	return id
}

// createAgent registers an agent under the fixture's installation.
func (f *matrixFixture) createAgent(t *testing.T, role string) (id, apiKey, rotation string) {
	t.Helper()
	o := f.rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/installations/"+f.installationID+"/agents"), f.ws.OwnerToken,
		map[string]any{"name": f.unique("agent"), "role": role})
	id, apiKey, rotation = o.str("agent.id"), o.str("apiKey"), o.str("rotationSecret")
	if id == "" || kindOf(apiKey) != credfmt.AgentKey || kindOf(rotation) != credfmt.RotationSecret {
		t.Fatalf("create agent: incomplete response %s", redact(fmt.Sprint(o)))
	}
	return id, apiKey, rotation
}

// createSecret stores a webhook secret and returns its name.
func (f *matrixFixture) createSecret(t *testing.T) string {
	t.Helper()
	name := f.unique("secret")
	f.rc.expect(t, http.StatusOK, http.MethodPost, f.wsPath("/secrets"), f.ws.OwnerToken,
		map[string]any{"name": name, "kind": "webhook", "value": "matrix-" + f.unique("value")})
	return name
}
