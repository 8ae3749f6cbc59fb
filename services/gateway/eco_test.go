package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestEcoReadyzNamesTheReason: a sealed vault (NOT_SERVING, with the sealed
// marker registered) makes /readyz 503 saying it is sealed; another
// service that is not serving gets a reason of its own.
func TestEcoReadyzNamesTheReason(t *testing.T) {
	e := newEnv(t, nil)
	vaultHealth := e.backends["vault"].health
	vaultHealth.SetServingStatus(vaultSealedHealth, healthpb.HealthCheckResponse_NOT_SERVING)
	vaultHealth.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	e.backends["agent"].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)

	r := e.do(t, "GET", "/readyz", nil)
	if r.status != 503 {
		t.Fatalf("/readyz with a sealed vault: %d %s", r.status, r.body)
	}
	m := r.json(t)
	reasons, _ := m["reasons"].(map[string]any)
	if v, _ := reasons["vault"].(string); !strings.HasPrefix(v, "sealed:") || !strings.Contains(v, "-vault-kek-file") {
		t.Errorf("vault reason %q, want it to say sealed and what to do", v)
	}
	if a, _ := reasons["agent"].(string); a == "" || strings.HasPrefix(a, "sealed") {
		t.Errorf("agent reason %q", a)
	}
	if nr := fmt.Sprint(m["notReady"]); nr != "[agent vault]" {
		t.Errorf("notReady %s", nr)
	}

	// Not sealed, just not serving: no "sealed" reason.
	e2 := newEnv(t, nil)
	e2.backends["vault"].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	m = e2.do(t, "GET", "/readyz", nil).json(t)
	if v := fmt.Sprint(m["reasons"].(map[string]any)["vault"]); strings.HasPrefix(v, "sealed") {
		t.Errorf("a vault that is only not serving is reported %q", v)
	}
	if r := e2.do(t, "GET", "/readyz", nil); r.status != 503 {
		t.Errorf("status %d", r.status)
	}
	e2.backends["vault"].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if r := e2.do(t, "GET", "/readyz", nil); r.status != 200 || bytes.Contains(r.body, []byte("reasons")) {
		t.Errorf("ready: %d %s", r.status, r.body)
	}
}

// TestEcoAccessLog: one info line per request, with the route template
// (never the path or query), and never a token, whatever the outcome.
func TestEcoAccessLog(t *testing.T) {
	e := newEnv(t, nil)
	const token = "blg_pat_eco0access0log0token"
	reqs := []struct {
		method, path, route string
		status              int64
	}{
		{"POST", "/v1/auth/exchange?access_token=" + token, "/v1/auth/exchange", 200},
		{"GET", "/v1/workspaces/ws_" + token + "/automations", "/v1/workspaces/{workspaceId}/automations", 0},
		{"GET", "/v1/nope/" + token, "unmatched", 404},
		{"GET", "/readyz", "/readyz", 200},
	}
	for i, r := range reqs {
		e.do(t, r.method, r.path, strings.NewReader(`{"scopes":["`+token+`"]}`),
			"Authorization", "Bearer "+token, "X-Request-Id", fmt.Sprintf("eco-%d", i), "Idempotency-Key", token)
	}
	seen := map[string]int{}
	for _, entry := range e.logs.All() {
		var buf bytes.Buffer
		fmt.Fprint(&buf, entry.Message, entry.ContextMap())
		if strings.Contains(buf.String(), "eco0access0log0token") {
			t.Errorf("a log line holds the token: %s", buf.String())
		}
		if entry.Message != "http request" {
			continue
		}
		cm := entry.ContextMap()
		id, _ := cm["request-id"].(string)
		seen[id]++
		var i int
		if _, err := fmt.Sscanf(id, "eco-%d", &i); err != nil {
			continue
		}
		r := reqs[i]
		if entry.Level != zapcore.InfoLevel || cm["method"] != r.method || cm["route"] != r.route {
			t.Errorf("%s %s: line %v at %v, want route %q at info", r.method, r.path, cm, entry.Level, r.route)
		}
		if r.status != 0 && cm["status"] != r.status {
			t.Errorf("%s %s: status %v, want %d", r.method, r.path, cm["status"], r.status)
		}
		if _, ok := cm["duration"]; !ok {
			t.Errorf("%s %s: no duration", r.method, r.path)
		}
		if _, ok := cm["path"]; ok {
			t.Errorf("%s %s: the raw path is logged at info", r.method, r.path)
		}
	}
	for i := range reqs {
		if n := seen[fmt.Sprintf("eco-%d", i)]; n != 1 {
			t.Errorf("request eco-%d: %d access log lines, want 1", i, n)
		}
	}
}

// TestEcoOpenAPIDocument: the served document is OpenAPI 3 with the
// product's title, the bearer scheme, the error schema on every operation's
// error responses, and no internal parameter.
func TestEcoOpenAPIDocument(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do(t, "GET", "/openapi.json", nil)
	if r.status != 200 {
		t.Fatalf("/openapi.json: %d", r.status)
	}
	if bytes.Contains(r.body, []byte("localOnly")) {
		t.Error("the document exposes the internal localOnly parameter")
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Info    struct {
			Title, Version string
		} `json:"info"`
		Security   []map[string][]string `json:"security"`
		Components struct {
			SecuritySchemes map[string]struct{ Type, Scheme string } `json:"securitySchemes"`
			Responses       map[string]struct {
				Content map[string]struct {
					Schema struct {
						Ref string `json:"$ref"`
					} `json:"schema"`
				} `json:"content"`
			} `json:"responses"`
		} `json:"components"`
		Paths map[string]map[string]struct {
			OperationID string `json:"operationId"`
			Responses   map[string]struct {
				Ref string `json:"$ref"`
			} `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(r.body, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") || doc.Info.Title != "Backlog control plane API" || doc.Info.Version == "version not set" {
		t.Errorf("openapi %q, info %+v", doc.OpenAPI, doc.Info)
	}
	if s := doc.Components.SecuritySchemes["bearerAuth"]; s.Type != "http" || s.Scheme != "bearer" || len(doc.Security) != 1 {
		t.Errorf("security: %+v %v", s, doc.Security)
	}
	for name, resp := range doc.Components.Responses {
		if resp.Content["application/json"].Schema.Ref != "#/components/schemas/Error" {
			t.Errorf("response %s does not use the error schema", name)
		}
	}
	n := 0
	for path, ops := range doc.Paths {
		for method, op := range ops {
			n++
			for _, code := range []string{"400", "401", "403", "503"} {
				if !strings.HasPrefix(op.Responses[code].Ref, "#/components/responses/") {
					t.Errorf("%s %s (%s) has no %s error response", method, path, op.OperationID, code)
				}
			}
			if _, ok := op.Responses["default"]; ok {
				t.Errorf("%s %s keeps protoc-gen-openapiv2's default response", method, path)
			}
		}
	}
	if n < 30 {
		t.Errorf("only %d operations", n)
	}
}
