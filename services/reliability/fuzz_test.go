package reliability

// Fuzz targets for the parsers that see outside input and are not fuzzed
// elsewhere: JSON request bodies and query strings through the real gateway
// into the real services, and update masks through gRPC. (Page tokens and
// credential strings are fuzzed in kit: page, credfmt; the vault's secret
// references in vault: FuzzParseTemplate. HTTP Request steps are left out
// here: a fuzzer must not aim requests at the network.)
//
// `go test` runs the seeds; `make soak` fuzzes each target for a while:
//
//	go test -run '^$' -fuzz '^FuzzGatewayJSON$' -fuzztime 3m ./services/reliability

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// fuzzEnv is an in-process stack with a workspace to aim at.
type fuzzEnv struct {
	s              *stack
	rc             *restClient
	ws             workspace
	memberID       string
	automationID   string
	secret         string
	installationID string
	agentID        string
	agentKey       string
	secretName     string
}

func newFuzzEnv(tb testing.TB) *fuzzEnv {
	tb.Helper()
	s := newStack(tb, nil)
	e := &fuzzEnv{s: s, rc: s.rest()}
	e.ws = e.rc.createWorkspace(tb, s.Operator, "fuzz")
	e.memberID, _ = e.rc.createMember(tb, e.ws, "target", "member")
	e.automationID, e.secret = e.rc.createAutomation(tb, e.ws.ID, e.ws.OwnerToken, "target", "automations:read", "issues:write")
	e.rc.createAutomation(tb, e.ws.ID, e.ws.OwnerToken, "other")
	o := e.rc.expect(tb, http.StatusOK, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/installations", e.ws.OwnerToken, map[string]any{"name": "fuzz app"})
	e.installationID = o.str("installation.id")
	o = e.rc.expect(tb, http.StatusOK, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/installations/"+e.installationID+"/agents", e.ws.OwnerToken,
		map[string]any{"name": "target", "role": "member"})
	e.agentID, e.agentKey = o.str("agent.id"), o.str("apiKey")
	e.secretName = "target"
	e.rc.expect(tb, http.StatusOK, http.MethodPost, "/v1/workspaces/"+e.ws.ID+"/secrets", e.ws.OwnerToken,
		map[string]any{"name": e.secretName, "kind": "webhook", "value": "fuzz-value"})
	return e
}

// fuzzRoute is a route the JSON fuzzer aims at: the fuzzed bytes are its
// body, or its query string for a GET.
type fuzzRoute struct {
	method string
	path   func(e *fuzzEnv) string
	token  func(e *fuzzEnv) string
}

var fuzzRoutes = []fuzzRoute{
	{http.MethodPost, func(*fuzzEnv) string { return "/v1/workspaces" }, func(e *fuzzEnv) string { return e.s.Operator }},
	{http.MethodPost, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/members" }, owners},
	{http.MethodPatch, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/members/" + e.memberID }, owners},
	{http.MethodPost, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/automations" }, owners},
	{http.MethodPatch, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/automations/" + e.automationID }, owners},
	{http.MethodPost, func(e *fuzzEnv) string {
		return "/v1/workspaces/" + e.ws.ID + "/automations/" + e.automationID + "/rotate-secret"
	}, owners},
	{http.MethodPost, func(*fuzzEnv) string { return "/v1/auth/exchange" }, func(e *fuzzEnv) string { return e.secret }},
	{http.MethodGet, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/automations" }, owners},
	{http.MethodGet, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/audit-events" }, owners},
	{http.MethodGet, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/members" }, owners},
	{http.MethodPost, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/installations" }, owners},
	{http.MethodPost, func(e *fuzzEnv) string {
		return "/v1/workspaces/" + e.ws.ID + "/installations/" + e.installationID + "/agents"
	}, owners},
	{http.MethodPatch, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/agents/" + e.agentID }, owners},
	{http.MethodPost, func(*fuzzEnv) string { return "/v1/agents/self/rotate-key" }, func(e *fuzzEnv) string { return e.agentKey }},
	{http.MethodGet, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/agents" }, owners},
	{http.MethodPost, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/secrets" }, owners},
	{http.MethodPatch, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/secrets/" + e.secretName }, owners},
	{http.MethodGet, func(e *fuzzEnv) string { return "/v1/workspaces/" + e.ws.ID + "/secrets" }, owners},
}

func owners(e *fuzzEnv) string { return e.ws.OwnerToken }

// FuzzGatewayJSON sends arbitrary bytes as the body (or query) of the REST
// routes that parse them, through the real gateway into the real services:
// never a 5xx, never a panic, always the contract's JSON error.
func FuzzGatewayJSON(f *testing.F) {
	bodies := []string{
		``, `{}`, `null`, `[]`, `"x"`, `{`, `{"name":`, `{"name":"ok"}`, `{"name":"a","scopes":["automations:read"],"teamIds":["t1"]}`,
		`{"name":"\u0000"}`, `{"name":"` + strings.Repeat("é", 200) + `"}`, `{"name":1}`, `{"name":null}`, `{"name":"x","name":"y"}`,
		`{"unknownField":true}`, `{"scopes":"automations:read"}`, `{"scopes":[1,2]}`, `{"scopes":["BAD SCOPE"]}`,
		`{"suspended":"yes"}`, `{"suspended":true}`, `{"description":"` + strings.Repeat("d", 2000) + `"}`,
		`{"ttlSeconds":-1}`, `{"ttlSeconds":99999999999999999999}`, `{"ttlSeconds":1.5}`, `{"ttlSeconds":"60"}`, `{"scopes":["issues:write"]}`,
		`{"role":"owner","name":"o"}`, `{"role":"god","name":"g"}`, `{"email":"not an email","name":"e"}`, `{"email":"a@b.example","name":"e"}`,
		`{"updateMask":"name"}`, `{"credentialLabel":"` + strings.Repeat("l", 200) + `"}`, `{"credential":{"id":"x"}}`, `{"id":"auto_x"}`,
		`{"workspaceId":"ws_other"}`, `{"createdAt":"not a time"}`, `{"createdAt":"2024-01-01T00:00:00Z"}`, `{"teamIds":[""]}`,
		`{"a":` + strings.Repeat(`[`, 200) + strings.Repeat(`]`, 200) + `}`, "\xff\xfe", `{"name":"\ud800"}`,
		`pageSize=5`, `pageSize=-1`, `pageSize=abc`, `pageToken=zzz`, `pageToken=`, `startTime=2024-01-01T00:00:00Z`, `startTime=yesterday`,
		`action=automation.create&targetId=x`, `pageSize=99999999999`, `a=%zz`, `pageSize=1&pageSize=2`, `localOnly=true`,
		`{"name":"s1","kind":"webhook","value":"v"}`, `{"name":"s2","kind":"integration","value":"v","expiresAt":"2020-01-01T00:00:00Z"}`,
		`{"name":"../x","kind":"webhook","value":"v"}`, `{"name":"s3","kind":"bogus","value":"v"}`, `{"value":""}`, `{"value":"new"}`,
		`{"expiresAt":"9999-12-31T23:59:59Z"}`, `{"state":"active","version":7}`, `{"role":"admin","name":"ag"}`, `{"role":"owner","name":"ag2"}`,
		`{"teamIds":["a","a"],"name":"ag3","role":"member"}`, `{"appId":"` + strings.Repeat("x", 300) + `"}`, `{"rotationSecret":""}`,
		`{"rotationSecret":"blg_rot_0"}`, `{"rotationSecret":1}`, `kind=webhook`, `kind=bogus`, `expiringWithin=604800s`,
		`expiringWithin=-1s`, `expiringWithin=1e400s`, `expiringWithin=abc`, `installationId=inst_x`,
	}
	for i := range fuzzRoutes {
		for _, b := range bodies {
			f.Add(uint8(i), []byte(b))
		}
	}
	e := newFuzzEnv(f)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		path := rt.path(e)
		var payload any = body
		if rt.method == http.MethodGet {
			path += "?" + requestLineSafe(body)
			payload = nil
		}
		r, err := e.rc.do(context.Background(), rt.method, path, rt.token(e), payload)
		if err != nil {
			if rt.method == http.MethodGet {
				return // not a URL the client can send
			}
			t.Fatalf("%s %s: %v", rt.method, rt.path(e), err)
		}
		if r.Status >= 500 {
			t.Errorf("%s %s with %q: %d %s", rt.method, rt.path(e), redact(string(body)), r.Status, redact(string(r.Body)))
		}
		if r.Status >= 400 {
			checkErrorShape(t, r)
		}
	})
}

// maskFields splits a fuzzed comma list ("" is no element).
func maskFields(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzUpdateAutomationMask calls UpdateAutomation over gRPC with arbitrary
// mask paths and values: never Internal (or Unknown), and only the fields
// the mask names change; a refused update changes nothing.
func FuzzUpdateAutomationMask(f *testing.F) {
	for _, s := range []struct {
		paths, name, desc, teams, scopes string
		suspended                        bool
	}{
		{"name", "renamed", "", "", "", false},
		{"description", "", "desc", "", "", false},
		{"team_ids,teamIds", "", "", "a,b", "", false},
		{"scopes", "", "", "", "automations:read,issues:write", false},
		{"suspended", "", "", "", "", true},
		{"name,description,team_ids,scopes,suspended", "all", "all", "t", "audit:read", true},
		{"", "x", "", "", "", false},
		{"*", "x", "", "", "", false},
		{"name.first", "x", "", "", "", false},
		{"credential", "", "", "", "", false},
		{"credential.id", "", "", "", "", false},
		{"id", "", "", "", "", false},
		{"workspace_id", "", "", "", "", false},
		{"created_at", "", "", "", "", false},
		{"name,name", "dup", "", "", "", false},
		{"name", "other", "", "", "", false},
		{"name", "OTHER", "", "", "", false},
		{"name", "", "", "", "", false},
		{"name", strings.Repeat("n", 101), "", "", "", false},
		{"scopes", "", "", "", "BAD", false},
		{"team_ids", "", "", "", "", false},
		{"\x00", "", "", "", "", false},
		{strings.Repeat("p", 5000), "", "", "", "", false},
		{"Name", "x", "", "", "", false},
		{"team_ids", "", "", strings.Repeat("t,", 150), "", false},
	} {
		f.Add(s.paths, s.name, s.desc, s.teams, s.scopes, s.suspended)
	}
	e := newFuzzEnv(f)
	ctx := as(e.ws.OwnerToken)
	get := func(t *testing.T) *automationv1.Automation {
		resp, err := e.s.AutoClient.GetAutomation(ctx, &automationv1.GetAutomationRequest{WorkspaceId: e.ws.ID, AutomationId: e.automationID})
		if err != nil {
			t.Fatalf("GetAutomation: %v", err)
		}
		return resp.GetAutomation()
	}
	f.Fuzz(func(t *testing.T, paths, name, desc, teams, scopes string, suspended bool) {
		if !validUTF8(paths, name, desc, teams, scopes) {
			t.Skip("a gRPC client cannot marshal invalid UTF-8 in a string field")
		}
		before := get(t)
		mask := maskFields(paths)
		_, err := e.s.AutoClient.UpdateAutomation(ctx, &automationv1.UpdateAutomationRequest{
			WorkspaceId: e.ws.ID, AutomationId: e.automationID,
			Automation: &automationv1.Automation{Name: name, Description: desc, TeamIds: maskFields(teams), Scopes: maskFields(scopes), Suspended: suspended},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: mask},
		})
		switch status.Code(err) {
		case codes.Internal, codes.Unknown, codes.DataLoss:
			t.Fatalf("UpdateAutomation(mask %q): %v", paths, err)
		}
		after := get(t)
		named := func(field ...string) bool {
			for _, p := range mask {
				if slices.Contains(field, p) {
					return true
				}
			}
			return false
		}
		if err != nil {
			named = func(...string) bool { return false } // a refused update changes nothing
		}
		if !named("name") && after.GetName() != before.GetName() {
			t.Errorf("mask %q (err %v) changed the name", paths, err)
		}
		if !named("description") && after.GetDescription() != before.GetDescription() {
			t.Errorf("mask %q (err %v) changed the description", paths, err)
		}
		if !named("team_ids", "teamIds") && !slices.Equal(after.GetTeamIds(), before.GetTeamIds()) {
			t.Errorf("mask %q (err %v) changed the team ids", paths, err)
		}
		if !named("scopes") && !slices.Equal(after.GetScopes(), before.GetScopes()) {
			t.Errorf("mask %q (err %v) changed the scopes", paths, err)
		}
		if !named("suspended") && after.GetSuspended() != before.GetSuspended() {
			t.Errorf("mask %q (err %v) changed suspended", paths, err)
		}
		if !proto.Equal(after.GetCredential(), before.GetCredential()) || after.GetId() != before.GetId() || after.GetWorkspaceId() != before.GetWorkspaceId() ||
			!proto.Equal(after.GetCreatedAt(), before.GetCreatedAt()) {
			t.Errorf("mask %q (err %v) changed a field no update may change", paths, err)
		}
	})
}

// FuzzUpdateMemberMask does the same for UpdateMember (credential service).
func FuzzUpdateMemberMask(f *testing.F) {
	for _, s := range [][4]string{
		{"name", "renamed", "", ""}, {"email", "", "m@example.com", ""}, {"role", "", "", "admin"}, {"role", "", "", "owner"},
		{"role", "", "", "member"}, {"role", "", "", ""}, {"role", "", "", "root"}, {"name,email,role", "n", "n@example.com", "admin"},
		{"", "x", "", ""}, {"*", "x", "", ""}, {"id", "", "", ""}, {"workspace_id", "", "", ""}, {"workspaceId", "", "", ""},
		{"created_at", "", "", ""}, {"Name", "x", "", ""}, {"NAME", "x", "", ""}, {"email", "", "bad", ""}, {"email", "", "", ""},
		{"name", "", "", ""}, {"name.first", "x", "", ""}, {"\x00", "", "", ""}, {"ÉMAIL", "", "", ""}, {strings.Repeat("r", 3000), "", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	e := newFuzzEnv(f)
	ctx := as(e.ws.OwnerToken)
	get := func(t *testing.T) *credentialv1.Member {
		resp, err := e.s.CredClient.ListMembers(ctx, &credentialv1.ListMembersRequest{WorkspaceId: e.ws.ID, PageSize: 100})
		if err != nil {
			t.Fatalf("ListMembers: %v", err)
		}
		for _, m := range resp.GetMembers() {
			if m.GetId() == e.memberID {
				return m
			}
		}
		t.Fatalf("the target member is gone")
		return nil
	}
	f.Fuzz(func(t *testing.T, paths, name, email, role string) {
		if !validUTF8(paths, name, email, role) {
			t.Skip("a gRPC client cannot marshal invalid UTF-8 in a string field")
		}
		before := get(t)
		mask := maskFields(paths)
		_, err := e.s.CredClient.UpdateMember(ctx, &credentialv1.UpdateMemberRequest{
			WorkspaceId: e.ws.ID, MemberId: e.memberID,
			Member:     &credentialv1.Member{Name: name, Email: email, Role: role},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: mask},
		})
		switch status.Code(err) {
		case codes.Internal, codes.Unknown, codes.DataLoss:
			t.Fatalf("UpdateMember(mask %q): %v", paths, err)
		}
		after := get(t)
		// The credential service reads a path in either form: snake_case, or
		// lowerCamelCase turned into it (Name → name).
		named := func(field string) bool {
			for _, p := range mask {
				if err == nil && snakeCase(p) == field {
					return true
				}
			}
			return false
		}
		if !named("name") && after.GetName() != before.GetName() {
			t.Errorf("mask %q (err %v) changed the name", paths, err)
		}
		if !named("email") && after.GetEmail() != before.GetEmail() {
			t.Errorf("mask %q (err %v) changed the email", paths, err)
		}
		if !named("role") && after.GetRole() != before.GetRole() {
			t.Errorf("mask %q (err %v) changed the role", paths, err)
		}
		if after.GetId() != before.GetId() || after.GetWorkspaceId() != before.GetWorkspaceId() || !proto.Equal(after.GetCreatedAt(), before.GetCreatedAt()) {
			t.Errorf("mask %q (err %v) changed a field no update may change", paths, err)
		}
	})
}

// snakeCase turns lowerCamelCase into snake_case the way the credential
// service reads update-mask paths.
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// requestLineSafe percent-encodes the bytes that cannot stand in an HTTP
// request line (and '#'), and keeps everything else as the fuzzer made it,
// '%', '&' and '=' included: the query parser sees the rest unchanged.
func requestLineSafe(b []byte) string {
	const hexDigits = "0123456789ABCDEF"
	var out strings.Builder
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || c == '#' {
			out.WriteByte('%')
			out.WriteByte(hexDigits[c>>4])
			out.WriteByte(hexDigits[c&15])
			continue
		}
		out.WriteByte(c)
	}
	return out.String()
}

// validUTF8 reports whether every s is valid UTF-8: the Go gRPC client
// refuses to marshal anything else into a proto3 string field (and so does
// any conforming client), so such inputs never reach the server.
func validUTF8(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
