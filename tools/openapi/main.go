// Command openapi turns the Swagger 2.0 document that protoc-gen-openapiv2
// writes (gen/openapi/backlog.swagger.json) into the OpenAPI 3.0 document the
// gateway serves at /openapi.json: converted with kin-openapi's openapi2conv,
// then completed with what the protos cannot say — the product's title,
// version and description, the bearer security scheme, every error response
// with the error schema, enums, readOnly/writeOnly fields, the Idempotency-Key
// header, examples of the seed calls — and stripped of internal parameters.
// The result is validated with kin-openapi before it is written.
//
//	go run . -in ../../gen/openapi/backlog.swagger.json -out ../../gen/openapi/openapi.json
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
)

func main() {
	in := flag.String("in", "", "Swagger 2.0 document written by protoc-gen-openapiv2")
	out := flag.String("out", "", "where to write the OpenAPI 3 document")
	rmIn := flag.Bool("rm-in", false, "remove -in once -out is written (it is an intermediate)")
	flag.Parse()
	if *in == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: openapi -in SWAGGER.json -out OPENAPI.json [-rm-in]")
		os.Exit(2)
	}
	if err := run(*in, *out, *rmIn); err != nil {
		fmt.Fprintln(os.Stderr, "openapi:", err)
		os.Exit(1)
	}
}

func run(in, out string, rmIn bool) error {
	src, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	doc, err := Convert(src)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if err := os.WriteFile(out, doc, 0o644); err != nil {
		return err
	}
	if rmIn {
		return os.Remove(in)
	}
	return nil
}

// Version is the API's version in info.version. Raise the minor version when
// routes or fields are added, the major one never within /v1.
const Version = "1.1.0"

const description = `The REST API of the Backlog identity and secrets control plane: workspaces and
members, automations and their short-lived access tokens, visible agents, and the
secret vault with its HTTP Request steps.

**Authentication.** Every route takes ` + "`Authorization: Bearer <token>`" + `: a member's
personal access token (` + "`blg_pat_…`" + `), an access token (` + "`blg_at_…`" + `) minted by
` + "`POST /v1/auth/exchange`" + ` from an automation secret (` + "`blg_auto_…`" + `, accepted by that
route only), or a visible agent's API key (` + "`blg_agk_…`" + `). Raw credentials are shown
exactly once, in the response that issues them.

**Errors.** Every error is JSON ` + "`{\"code\": <gRPC code>, \"message\": \"…\", \"details\": […]}`" + `
with the HTTP status that matches: 400 invalid input, 401 missing or invalid
credential, 403 authenticated but not allowed (or suspended, revoked), 404 not found
(also for another workspace's resources), 409 conflict, 422 Idempotency-Key reused
with a different body, 429 rate limited (with ` + "`Retry-After`" + `), 503 unavailable
(with reason ` + "`VAULT_SEALED`" + ` while the vault has no key-encryption key). ` + "`details`" + `
holds a ` + "`google.rpc.ErrorInfo`" + ` whose ` + "`reason`" + ` names the cause.

**Idempotent creates.** A POST that returns a one-time credential honours an
` + "`Idempotency-Key`" + ` header: the same key and body within 24 hours return the first
response again.

**Pagination.** Lists take ` + "`pageSize`" + ` and ` + "`pageToken`" + ` and return ` + "`nextPageToken`" + ` (empty
on the last page).`

// Convert returns the OpenAPI 3 document for a Swagger 2.0 one.
func Convert(swagger []byte) ([]byte, error) {
	var doc2 openapi2.T
	if err := json.Unmarshal(swagger, &doc2); err != nil {
		return nil, fmt.Errorf("parse Swagger 2.0: %w", err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("convert to OpenAPI 3: %w", err)
	}
	raw, err := json.Marshal(doc3)
	if err != nil {
		return nil, err
	}
	var d obj
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, err
	}
	if err := complete(d); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	// The result must be a valid OpenAPI 3 document, examples included.
	loader := openapi3.NewLoader()
	check, err := loader.LoadFromData(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("load the result: %w", err)
	}
	if err := check.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		return nil, fmt.Errorf("the result is not valid OpenAPI 3: %w", err)
	}
	return buf.Bytes(), nil
}

type obj = map[string]any

func o(v any) obj      { m, _ := v.(obj); return m }
func arr(v any) []any  { a, _ := v.([]any); return a }
func str(v any) string { s, _ := v.(string); return s }

// internalParams are query parameters the services use among themselves;
// the gateway refuses or ignores them, so they are not part of the API.
var internalParams = []string{"localOnly"}

// tagDescriptions name each gRPC service's routes for people.
var tagDescriptions = map[string]string{
	"CredentialService": "Workspaces, members, the automation-secret exchange and whoami (credential service).",
	"AuditService":      "The workspace's audit trail across every service.",
	"AutomationService": "Automations: scripts and integrations holding a long-lived secret (automation service).",
	"AgentService":      "App installations and the visible agents under them, including self-rotation (agent service).",
	"VaultService":      "Workspace secrets (values write-only, encrypted at rest) and HTTP Request steps (secret vault service).",
}

func complete(d obj) error {
	d["info"] = obj{
		"title":       "Backlog control plane API",
		"version":     Version,
		"description": description,
	}
	d["servers"] = []any{obj{"url": "http://127.0.0.1:8080", "description": "make run on a laptop (plain HTTP on loopback); deployments serve HTTPS"}}
	comps := o(d["components"])
	if comps == nil {
		comps = obj{}
		d["components"] = comps
	}
	schemas := o(comps["schemas"])
	renameSchemas(d, schemas)
	schemas = o(comps["schemas"])
	comps["securitySchemes"] = obj{"bearerAuth": obj{
		"type": "http", "scheme": "bearer",
		"description": "A personal access token (blg_pat_…), an access token (blg_at_…), an agent API key (blg_agk_…), the operator token, or — for POST /v1/auth/exchange only — an automation secret (blg_auto_…).",
	}}
	d["security"] = []any{obj{"bearerAuth": []any{}}}
	schemas["Error"] = errorSchema()
	delete(schemas, "Any")
	comps["responses"] = errorResponses()
	comps["parameters"] = obj{"IdempotencyKey": obj{
		"name": "Idempotency-Key", "in": "header", "required": false,
		"description": "Makes a retry safe: the same key and body within 24 hours return the first response again; the same key with a different body is 422.",
		"schema":      obj{"type": "string", "maxLength": 255},
		"example":     "5f0c6a1e-3b1f-4c55-9d0e-2f5e8d0f6a11",
	}}

	requestOnly := map[string]bool{}
	used := map[string]bool{}
	paths := o(d["paths"])
	for _, p := range sortedKeys(paths) {
		item := o(paths[p])
		for _, m := range sortedKeys(item) {
			op := o(item[m])
			if op == nil {
				continue
			}
			for _, t := range arr(op["tags"]) {
				used[str(t)] = true
			}
			if err := completeOperation(p, m, op, schemas); err != nil {
				return fmt.Errorf("%s %s: %w", strings.ToUpper(m), p, err)
			}
			if m == "post" {
				if ref := bodyRef(op); ref != "" {
					requestOnly[ref] = true
				}
			}
		}
	}
	var tags []any
	for _, t := range arr(d["tags"]) {
		name := str(o(t)["name"])
		if !used[name] {
			continue // gRPC-only services (admin, internal) have no routes
		}
		desc := tagDescriptions[name]
		if desc == "" {
			desc = "Routes of " + name + "."
		}
		tags = append(tags, obj{"name": name, "description": desc})
	}
	d["tags"] = tags
	for name, s := range schemas {
		annotateSchema(name, o(s), requestOnly[name])
	}
	return addExamples(paths)
}

// renameSchemas drops protoc-gen-openapiv2's package prefixes (v1Agent →
// Agent) where the short name is free, and names the error schema Error.
func renameSchemas(d obj, schemas obj) {
	renames := map[string]string{"rpcStatus": "Error", "protobufAny": "Any"}
	taken := map[string]bool{}
	for name := range schemas {
		taken[name] = true
	}
	re := regexp.MustCompile(`^v[0-9]+([A-Z].*)$`)
	for _, name := range sortedKeys(schemas) {
		if m := re.FindStringSubmatch(name); m != nil && !taken[m[1]] {
			renames[name] = m[1]
			taken[m[1]] = true
		}
	}
	out := obj{}
	for name, s := range schemas {
		if n, ok := renames[name]; ok {
			name = n
		}
		out[name] = s
	}
	o(d["components"])["schemas"] = out
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case obj:
			if ref, ok := x["$ref"].(string); ok {
				const pre = "#/components/schemas/"
				if n, ok := renames[strings.TrimPrefix(ref, pre)]; ok && strings.HasPrefix(ref, pre) {
					x["$ref"] = pre + n
				}
				// OpenAPI 3.0 ignores a $ref's siblings: keep the $ref alone.
				for k := range x {
					if k != "$ref" {
						delete(x, k)
					}
				}
				return
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(d)
}

func errorSchema() obj {
	return obj{
		"type":        "object",
		"description": "Every error: the gRPC status code, a message a person can act on, and details (a google.rpc.ErrorInfo whose reason names the cause, e.g. VAULT_SEALED, SECRET_REVOKED).",
		"required":    []any{"code", "message"},
		"properties": obj{
			"code":    obj{"type": "integer", "format": "int32", "description": "The gRPC status code (3 invalid argument, 5 not found, 7 permission denied, 14 unavailable, 16 unauthenticated, …)."},
			"message": obj{"type": "string", "description": "What went wrong; never a credential or secret value."},
			"details": obj{"type": "array", "items": obj{
				"type":                 "object",
				"description":          "A google.protobuf.Any in its JSON form: @type names the message.",
				"properties":           obj{"@type": obj{"type": "string"}},
				"additionalProperties": obj{},
			}},
		},
		"example": obj{"code": 14, "message": "vault is sealed: no key-encryption key loaded (-vault-kek-file)", "details": []any{obj{
			"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "VAULT_SEALED", "domain": "vault.backlog",
		}}},
	}
}

// errorStatuses are the error responses, by HTTP status.
var errorStatuses = []struct{ code, name, desc string }{
	{"400", "BadRequest", "Invalid input: a missing or malformed field, an unknown update mask path, a malformed scope."},
	{"401", "Unauthorized", "Missing, malformed, unknown, expired or rotated credential (an automation secret anywhere but /v1/auth/exchange)."},
	{"403", "Forbidden", "Authenticated but not allowed: role or scope too narrow, or the caller is suspended or revoked."},
	{"404", "NotFound", "No such resource in this workspace (also for another workspace's resources)."},
	{"409", "Conflict", "Conflict: a duplicate name, a stale update, or dependents that still use the resource."},
	{"422", "UnprocessableEntity", "The Idempotency-Key was used before with a different body."},
	{"429", "TooManyRequests", "Rate limited: retry after the Retry-After header's seconds."},
	{"503", "ServiceUnavailable", "A service is unavailable, or the vault is sealed (reason VAULT_SEALED: it was started without its key-encryption key)."},
}

func errorResponses() obj {
	out := obj{}
	for _, s := range errorStatuses {
		r := obj{
			"description": s.desc,
			"content":     obj{"application/json": obj{"schema": obj{"$ref": "#/components/schemas/Error"}}},
		}
		if s.code == "429" {
			r["headers"] = obj{"Retry-After": obj{
				"description": "Seconds to wait before retrying.",
				"schema":      obj{"type": "integer"},
			}}
		}
		out[s.name] = r
	}
	return out
}

// oneTimeFields are response fields that carry a credential shown once: a
// POST returning one honours Idempotency-Key (except the exchange, whose
// tokens are cheap to mint again).
var oneTimeFields = []string{"secret", "apiKey", "rotationSecret", "token", "personalToken", "signingSecret"}

func completeOperation(path, method string, op obj, schemas obj) error {
	// Internal parameters out.
	var params []any
	for _, p := range arr(op["parameters"]) {
		name := str(o(p)["name"])
		if slices.Contains(internalParams, name) {
			continue
		}
		if str(o(p)["in"]) == "query" && name == "kind" && strings.HasSuffix(path, "/secrets") {
			o(o(p)["schema"])["enum"] = []any{"integration", "webhook"}
		}
		params = append(params, p)
	}
	resp := o(op["responses"])
	ok := o(resp["200"])
	if ok == nil {
		return errors.New("no 200 response")
	}
	idempotent := method == "post" && path != "/v1/auth/exchange" && carriesOneTime(ok, schemas)
	if idempotent {
		params = append(params, obj{"$ref": "#/components/parameters/IdempotencyKey"})
	}
	if len(params) > 0 {
		op["parameters"] = params
	} else {
		delete(op, "parameters")
	}
	if ok["description"] == "A successful response." {
		ok["description"] = "OK"
	}

	// Error responses, as the route can answer them.
	delete(resp, "default")
	codes := []string{"400", "401", "403", "503"}
	if strings.Contains(path, "{") {
		codes = append(codes, "404")
	}
	action := path[strings.LastIndex(path, "/")+1:]
	switch method {
	case "patch", "delete":
		codes = append(codes, "409")
	case "post":
		if path != "/v1/auth/exchange" && action != "http-requests" && action != "run" && !strings.HasPrefix(path, "/v1/agents/self") {
			codes = append(codes, "409")
		}
	}
	if idempotent {
		codes = append(codes, "422")
	}
	if action == "http-requests" || action == "run" || path == "/v1/agents/self/rotate-key" {
		codes = append(codes, "429")
	}
	for _, s := range errorStatuses {
		if slices.Contains(codes, s.code) {
			resp[s.code] = obj{"$ref": "#/components/responses/" + s.name}
		}
	}
	return nil
}

// carriesOneTime reports whether a 200 response's schema has a one-time
// credential field.
func carriesOneTime(ok obj, schemas obj) bool {
	s := o(o(o(o(ok["content"])["application/json"])["schema"]))
	if ref := str(s["$ref"]); ref != "" {
		s = o(schemas[strings.TrimPrefix(ref, "#/components/schemas/")])
	}
	props := o(s["properties"])
	for _, f := range oneTimeFields {
		// A string: CreateSecretResponse's "secret" is the metadata object.
		if p := o(props[f]); p != nil && str(p["type"]) == "string" {
			return true
		}
	}
	return false
}

// bodyRef names the schema of an operation's request body, if a $ref.
func bodyRef(op obj) string {
	s := o(o(o(o(op["requestBody"])["content"])["application/json"])["schema"])
	return strings.TrimPrefix(str(s["$ref"]), "#/components/schemas/")
}

// enums are the closed sets of string fields, by property name; schema
// picks the schemas (by name) the set applies to, the first match wins.
var enums = []struct {
	schema *regexp.Regexp
	prop   string
	values []string
}{
	{regexp.MustCompile(`^SecretUsage$|UsedBy|Dependent`), "kind", []string{"action", "connection"}},
	{regexp.MustCompile(`^(Member|CreateMember|UpdateMember|CredentialService.*Member.*|WhoAmIResponse)`), "role", []string{"owner", "admin", "member"}},
	{regexp.MustCompile(`^(Agent|AgentService.*Agent.*|CreateAgent.*)$`), "role", []string{"member", "admin"}},
	{regexp.MustCompile(`Secret`), "kind", []string{"integration", "webhook"}},
	{regexp.MustCompile(`Secret`), "state", []string{"active", "revoked", "expired"}},
	{regexp.MustCompile(`^WhoAmIResponse$`), "kind", []string{"operator", "member", "access_token", "agent"}},
	{regexp.MustCompile(`^AuditEvent$`), "outcome", []string{"success", "failure"}},
	{regexp.MustCompile(`^AuditEvent$`), "service", []string{"credential", "automation", "agent", "vault"}},
	{regexp.MustCompile(`HttpRequest|Action`), "method", []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}},
	{regexp.MustCompile(`^UsedBy|SecretUse|Dependent`), "kind", []string{"action", "connection"}},
}

// readOnlyProps are set by the server only; a body that carries them (a
// PATCH sends the resource) has them ignored.
var readOnlyProps = []string{"id", "workspaceId", "createdAt", "updatedAt", "lastUsedAt", "revokedAt", "keyRotatedAt",
	"state", "revoked", "credential", "usedBy", "versions", "createdBy"}

func annotateSchema(name string, s obj, requestOnly bool) {
	props := o(s["properties"])
	for pname, pv := range props {
		p := o(pv)
		if p == nil || p["$ref"] != nil {
			continue // a $ref may carry nothing else in OpenAPI 3.0
		}
		for _, e := range enums {
			if e.prop == pname && e.schema.MatchString(name) && str(p["type"]) == "string" {
				vals := make([]any, len(e.values))
				for i, v := range e.values {
					vals[i] = v
				}
				p["enum"] = vals
				break
			}
		}
		// A response-only field: never in a create body; in an update body
		// (the resource) the server ignores it.
		if !requestOnly && slices.Contains(readOnlyProps, pname) {
			p["readOnly"] = true
		}
		// Secret values go in, never come out.
		if pname == "value" && strings.Contains(name, "Secret") && !strings.HasSuffix(name, "Response") {
			p["writeOnly"] = true
		}
	}
}

// examples are the seed calls, by operationId: a request body and the 200
// response. Each must name an operation of the document.
var examples = map[string]struct{ request, response any }{
	"CredentialService_Exchange": {
		request: obj{"ttlSeconds": 900, "scopes": []any{"automations:read"}},
		response: obj{
			"accessToken": "blg_at_2Qm9x7LwzX1bYc4dKe8fGh0jRs3tVu5w_0a1b2c", "tokenType": "Bearer",
			"expiresAt": "2026-03-01T12:15:00Z", "expiresIn": 900, "automationId": "aut_01HZX3K9Q2V7",
			"workspaceId": "ws_01HZX3F0A1B2", "scopes": []any{"automations:read"}, "teamIds": []any{"team-platform"},
		},
	},
	"AutomationService_CreateAutomation": {
		request: obj{"name": "nightly-sync", "description": "Syncs issues to the data warehouse", "teamIds": []any{"team-platform"},
			"scopes": []any{"automations:read", "issues:write"}, "credentialLabel": "ci"},
	},
	"VaultService_CreateSecret": {
		request: obj{"name": "HubSpot API key – production", "kind": "integration", "description": "Used by the CRM sync",
			"value": "pat-na1-00000000-0000-0000-0000-000000000000", "expiresAt": "2026-12-31T00:00:00Z"},
	},
	"AgentService_RotateSelfKey": {
		request: obj{"rotationSecret": "blg_rot_Zk3pQ8sT1uV6wX9yA2bC5dE7fG0hJ4kL_9f8e7d"},
	},
	"VaultService_RunHttpRequest": {
		request: obj{"method": "POST", "url": "https://api.example.com/v1/hooks",
			"headers": obj{"Authorization": "Bearer {{secret:deploy-webhook}}", "Content-Type": "application/json"},
			"body":    `{"event":"deploy"}`},
	},
}

func addExamples(paths obj) error {
	found := map[string]bool{}
	for _, p := range paths {
		for _, opv := range o(p) {
			op := o(opv)
			id := str(op["operationId"])
			ex, ok := examples[id]
			if !ok {
				continue
			}
			found[id] = true
			if ex.request != nil {
				media := o(o(o(op["requestBody"])["content"])["application/json"])
				if media == nil {
					return fmt.Errorf("%s has no JSON request body for its example", id)
				}
				media["example"] = ex.request
			}
			if ex.response != nil {
				media := o(o(o(o(op["responses"])["200"])["content"])["application/json"])
				if media == nil {
					return fmt.Errorf("%s has no JSON 200 response for its example", id)
				}
				media["example"] = ex.response
			}
		}
	}
	for id := range examples {
		if !found[id] {
			return fmt.Errorf("an example names operation %s, which the document does not have", id)
		}
	}
	return nil
}

func sortedKeys(m obj) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
