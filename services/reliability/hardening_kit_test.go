package reliability

// Hardening of the service kit (issue 12), against real backlogd processes:
// whom a service believes about the client IP, page tokens bound to their
// list and caller, names that cannot disguise themselves, and invalid UTF-8
// in a protobuf string answered as InvalidArgument by every service.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/credfmt"
)

// kitServiceToken reads the cluster's shared service credential.
func kitServiceToken(t *testing.T, c *cluster) string {
	t.Helper()
	b, err := os.ReadFile(c.ServiceTokenPath())
	if err != nil {
		t.Fatalf("reading the service token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// kitAuditClientIP is the client IP the automation service recorded in its
// audit event about target.
func kitAuditClientIP(t *testing.T, rc *restClient, ws workspace, target string) string {
	t.Helper()
	o := rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?targetId="+url.QueryEscape(target), ws.OwnerToken, nil)
	for _, ev := range o.list("auditEvents") {
		if ev.str("service") == "automation" {
			return ev.str("clientIp")
		}
	}
	t.Fatalf("no audit event of the automation service about %s", target)
	return ""
}

// TestKitClientIPTrust: a service believes x-backlog-client-ip only from a
// caller presenting the service credential (the gateway in the same
// process); any other local process gets its own peer address recorded,
// whatever it claims.
func TestKitClientIPTrust(t *testing.T) {
	for _, layout := range []string{layoutAll, "split"} {
		t.Run(layout, func(t *testing.T) { kitClientIPTrust(t, layout) })
	}
}

func kitClientIPTrust(t *testing.T, layout string) {
	// The gateway believes X-Forwarded-For from loopback here on purpose:
	// the test is about the services, not the gateway's default. In the
	// split layout the gateway process holds no service token: it presents
	// the forwarding credential derived from it.
	c := startCluster(t, layout, "-trusted-proxies=127.0.0.0/8,::1/128")
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "kit client ip")
	svc := kitServiceToken(t, c)
	client := automationv1.NewAutomationServiceClient(c.Conn(c.Addr("automation")))

	create := func(name string, md ...string) string {
		t.Helper()
		ctx := metadata.AppendToOutgoingContext(context.Background(), append([]string{"authorization", "Bearer " + ws.OwnerToken}, md...)...)
		resp, err := client.CreateAutomation(ctx, &automationv1.CreateAutomationRequest{WorkspaceId: ws.ID, Name: name})
		if err != nil {
			t.Fatalf("CreateAutomation %s: %v", name, err)
		}
		return resp.GetAutomation().GetId()
	}
	cases := []struct {
		name, target, want string
	}{
		{"claim without the service credential", create("claims", clientip.MetadataKey, "203.0.113.66"), "127.0.0.1"},
		{"claim with a wrong service credential", create("wrong credential", clientip.MetadataKey, "203.0.113.67",
			auth.ServiceTokenKey, credfmt.New(credfmt.Service)), "127.0.0.1"},
		{"claim with the service credential", create("vouched", clientip.MetadataKey, "203.0.113.68", auth.ServiceTokenKey, svc), "203.0.113.68"},
		{"claim with the forwarding credential", create("forwarded", clientip.MetadataKey, "203.0.113.69", auth.ForwarderKey, auth.ForwardingToken(svc)), "203.0.113.69"},
		{"claim with a wrong forwarding credential", create("wrong forwarder", clientip.MetadataKey, "203.0.113.70", auth.ForwarderKey, auth.ForwardingToken(svc+"x")), "127.0.0.1"},
	}
	// The forwarding credential vouches for addresses only: it opens no
	// internal method.
	internal := credentialv1.NewCredentialInternalServiceClient(c.Conn(c.Addr("credential")))
	_, err := internal.ListSubjects(metadata.AppendToOutgoingContext(context.Background(), auth.ForwarderKey, auth.ForwardingToken(svc)),
		&credentialv1.ListSubjectsRequest{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("an internal method called with the forwarding credential: %v, want Unauthenticated", err)
	}
	// And through the gateway, which presents the service credential: the
	// address it resolved (X-Forwarded-For from a trusted proxy) counts.
	r := rc.call(t, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken,
		map[string]any{"name": "via gateway"}, "X-Forwarded-For", "198.51.100.23")
	if r.Status != http.StatusOK {
		t.Fatalf("%s", r)
	}
	cases = append(cases, struct{ name, target, want string }{"through the gateway", r.JSON().str("automation.id"), "198.51.100.23"})
	for _, tc := range cases {
		if got := kitAuditClientIP(t, rc, ws, tc.target); got != tc.want {
			t.Errorf("%s: audit trail records client IP %q, want %q", tc.name, got, tc.want)
		}
	}
}

// kitList is a paginated list route of a workspace.
type kitList struct {
	name string
	path func(f *kitPageFixture, ws workspace) string
}

// kitPageFixture is two workspaces with at least two entries in every list.
type kitPageFixture struct {
	rc    *restClient
	a, b  workspace
	inst  map[string]string // workspace id → an installation with two agents
	admin string            // a second caller in a, an admin
}

func newKitPageFixture(t *testing.T, c *cluster) *kitPageFixture {
	t.Helper()
	rc := c.rest()
	f := &kitPageFixture{rc: rc, inst: map[string]string{}}
	f.a = rc.createWorkspace(t, c.OperatorToken, "kit pages a")
	f.b = rc.createWorkspace(t, c.OperatorToken, "kit pages b")
	for _, ws := range []workspace{f.a, f.b} {
		p := "/v1/workspaces/" + ws.ID
		for _, n := range []string{"one", "two"} {
			rc.createAutomation(t, ws.ID, ws.OwnerToken, "automation "+n)
			rc.createMember(t, ws, "member "+n, "member")
			rc.expect(t, http.StatusOK, http.MethodPost, p+"/secrets", ws.OwnerToken, map[string]any{"name": "secret-" + n, "kind": "webhook", "value": "v-" + n})
			o := rc.expect(t, http.StatusOK, http.MethodPost, p+"/installations", ws.OwnerToken, map[string]any{"name": "app " + n})
			f.inst[ws.ID] = o.str("installation.id")
		}
		for _, n := range []string{"one", "two"} {
			rc.expect(t, http.StatusOK, http.MethodPost, p+"/installations/"+f.inst[ws.ID]+"/agents", ws.OwnerToken, map[string]any{"name": "agent " + n, "role": "member"})
		}
	}
	_, f.admin = rc.createMember(t, f.a, "second admin", "admin")
	return f
}

// kitLists is every paginated list route of the REST API.
var kitLists = []kitList{
	{"automations", func(_ *kitPageFixture, ws workspace) string { return "/v1/workspaces/" + ws.ID + "/automations" }},
	{"installations", func(_ *kitPageFixture, ws workspace) string { return "/v1/workspaces/" + ws.ID + "/installations" }},
	{"agents", func(_ *kitPageFixture, ws workspace) string { return "/v1/workspaces/" + ws.ID + "/agents" }},
	{"agents of an installation", func(f *kitPageFixture, ws workspace) string {
		return "/v1/workspaces/" + ws.ID + "/agents?installationId=" + f.inst[ws.ID]
	}},
	{"secrets", func(_ *kitPageFixture, ws workspace) string { return "/v1/workspaces/" + ws.ID + "/secrets" }},
	{"webhook secrets", func(_ *kitPageFixture, ws workspace) string {
		return "/v1/workspaces/" + ws.ID + "/secrets?kind=webhook"
	}},
	{"members", func(_ *kitPageFixture, ws workspace) string { return "/v1/workspaces/" + ws.ID + "/members" }},
	{"audit events", func(_ *kitPageFixture, ws workspace) string { return "/v1/workspaces/" + ws.ID + "/audit-events" }},
}

// kitWithPage adds pageSize=1 and, when set, the page token to path.
func kitWithPage(path, token string) string {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	path += sep + "pageSize=1"
	if token != "" {
		path += "&pageToken=" + url.QueryEscape(token)
	}
	return path
}

// firstToken is the nextPageToken of the first one-entry page.
func (f *kitPageFixture) firstToken(t *testing.T, l kitList, ws workspace, bearer string) string {
	t.Helper()
	o := f.rc.expect(t, http.StatusOK, http.MethodGet, kitWithPage(l.path(f, ws), ""), bearer, nil)
	tok := o.str("nextPageToken")
	if tok == "" {
		t.Fatalf("%s: no nextPageToken on a one-entry page of a longer list", l.name)
	}
	return tok
}

// kitForgeries are tokens nobody issued, made from a real one: its bytes
// changed, the pre-MAC format (a version byte, a hash of the workspace id
// and a cursor anyone could write) pointing outside the workspace, garbage.
func kitForgeries(real, wsID string) map[string]string {
	out := map[string]string{
		"garbage":       "not-a-token",
		"empty cursor":  base64.RawURLEncoding.EncodeToString([]byte{1}),
		"random base64": base64.RawURLEncoding.EncodeToString([]byte("ws_zzzzzzzzzzzzzzzzzzzzzzzzzz/auto_zzzzzzzzzzzz")),
	}
	h := sha256.Sum256([]byte(wsID))
	for name, cursor := range map[string]string{"outside the workspace": "zzzz", "another workspace": "ws_0000000000000000000000/x"} {
		b := append(append([]byte{1}, h[:8]...), cursor...)
		out["unsigned cursor "+name] = base64.RawURLEncoding.EncodeToString(b)
	}
	if b, err := base64.RawURLEncoding.DecodeString(real); err == nil && len(b) > 2 {
		for name, i := range map[string]int{"first": 1, "middle": len(b) / 2, "last": len(b) - 1} {
			m := append([]byte(nil), b...)
			m[i] ^= 0x01
			out["real token, "+name+" byte changed"] = base64.RawURLEncoding.EncodeToString(m)
		}
		out["real token, truncated"] = base64.RawURLEncoding.EncodeToString(b[:len(b)-1])
		out["real token, extended"] = base64.RawURLEncoding.EncodeToString(append(append([]byte(nil), b...), 'x'))
	}
	return out
}

// wantBadPageToken fails unless r is a 400 about pageToken.
func kitWantBadPageToken(t *testing.T, r *reply, what string) {
	t.Helper()
	if r.Status != http.StatusBadRequest || !strings.Contains(r.JSON().str("message"), "pageToken") {
		t.Errorf("%s: want 400 about pageToken, got %s", what, r)
	}
}

// TestKitPageTokensBound: a page token is good only for the list (route,
// workspace, filters) and the caller it was issued to; anything else —
// forged, altered, another workspace's, another list's, another caller's —
// is 400 pageToken, never a 500. In the split layout the audit trail's
// tokens, made by the credential process, are checked by the other three:
// every process of a deployment derives the same key.
func TestKitPageTokensBound(t *testing.T) {
	for _, layout := range []string{layoutAll, layoutSplit} {
		t.Run(layout, func(t *testing.T) { kitPageTokensBound(t, startCluster(t, layout)) })
	}
}

func kitPageTokensBound(t *testing.T, c *cluster) {
	f := newKitPageFixture(t, c)
	rc := f.rc

	tokens := map[string]string{} // list name → a real token of a's list, the owner's
	for _, l := range kitLists {
		tokens[l.name] = f.firstToken(t, l, f.a, f.a.OwnerToken)
	}
	for i, l := range kitLists {
		t.Run(l.name, func(t *testing.T) {
			pathA := l.path(f, f.a)
			real := tokens[l.name]
			// The real token pages on, for its caller, to the end.
			for tok, pages := real, 1; tok != ""; pages++ {
				r := rc.call(t, http.MethodGet, kitWithPage(pathA, tok), f.a.OwnerToken, nil)
				if r.Status != http.StatusOK {
					t.Fatalf("page %d: the issued token does not work: %s", pages+1, r)
				}
				if tok = r.JSON().str("nextPageToken"); pages > 100 {
					t.Fatal("more than 100 one-entry pages")
				}
			}
			kitWantBadPageToken(t, rc.call(t, http.MethodGet, kitWithPage(pathA, f.firstToken(t, l, f.b, f.b.OwnerToken)), f.a.OwnerToken, nil),
				"the same list's token from another workspace")
			other := kitLists[(i+1)%len(kitLists)]
			kitWantBadPageToken(t, rc.call(t, http.MethodGet, kitWithPage(pathA, tokens[other.name]), f.a.OwnerToken, nil),
				"a token of the "+other.name+" list")
			kitWantBadPageToken(t, rc.call(t, http.MethodGet, kitWithPage(pathA, real), f.admin, nil),
				"the owner's token presented by another admin")
			kitWantBadPageToken(t, rc.call(t, http.MethodGet, kitWithPage(pathA, f.firstToken(t, l, f.a, f.admin)), f.a.OwnerToken, nil),
				"another admin's token presented by the owner")
			for name, forged := range kitForgeries(real, f.a.ID) {
				kitWantBadPageToken(t, rc.call(t, http.MethodGet, kitWithPage(pathA, forged), f.a.OwnerToken, nil), "forged: "+name)
			}
		})
	}
	if c.LogsContain("unmapped error") || c.LogsContain(`"code":"Internal"`) {
		t.Error("a page token reached the store and failed there (an unmapped error or Internal in the logs)")
	}
}

// TestKitDisguisingNames: names and descriptions with bidirectional
// controls, line or paragraph separators or invisible format characters
// are 400 wherever a display name or free text is taken; joiners (emoji
// sequences, Persian and Indic scripts) and, in descriptions, line breaks
// are fine.
func TestKitDisguisingNames(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "kit names")
	p := "/v1/workspaces/" + ws.ID
	inst := rc.expect(t, http.StatusOK, http.MethodPost, p+"/installations", ws.OwnerToken, map[string]any{"name": "kit app"}).str("installation.id")

	type route struct {
		name, path, token, field string
		body                     func(v string) map[string]any
	}
	n := 0
	unique := func(v string) string { n++; return v + " " + string(rune('a'+n%26)) + strings.Repeat("x", n/26) }
	routes := []route{
		{"workspace name", "/v1/workspaces", c.OperatorToken, "name", func(v string) map[string]any { return map[string]any{"name": v} }},
		{"first owner's name", "/v1/workspaces", c.OperatorToken, "ownerName", func(v string) map[string]any {
			return map[string]any{"name": unique("ws"), "ownerName": v}
		}},
		{"member name", p + "/members", ws.OwnerToken, "name", func(v string) map[string]any { return map[string]any{"name": v, "role": "member"} }},
		{"automation name", p + "/automations", ws.OwnerToken, "name", func(v string) map[string]any { return map[string]any{"name": v} }},
		{"automation description", p + "/automations", ws.OwnerToken, "description", func(v string) map[string]any {
			return map[string]any{"name": unique("auto"), "description": v}
		}},
		{"installation name", p + "/installations", ws.OwnerToken, "name", func(v string) map[string]any { return map[string]any{"name": v} }},
		{"agent name", p + "/installations/" + inst + "/agents", ws.OwnerToken, "name", func(v string) map[string]any {
			return map[string]any{"name": v, "role": "member"}
		}},
		{"secret description", p + "/secrets", ws.OwnerToken, "description", func(v string) map[string]any {
			return map[string]any{"name": strings.ReplaceAll(unique("secret"), " ", "-"), "kind": "webhook", "value": "x", "description": v}
		}},
	}
	bad := map[string]string{
		"right-to-left override U+202E":     "invoice\u202Etxt.exe",
		"left-to-right embedding U+202A":    "a\u202Ab",
		"pop directional formatting U+202C": "a\u202Cb",
		"first strong isolate U+2068":       "\u2068admin\u2069",
		"right-to-left isolate U+2067":      "a\u2067b",
		"line separator U+2028":             "line\u2028forged",
		"paragraph separator U+2029":        "para\u2029forged",
		"right-to-left mark U+200F":         "a\u200Fb",
		"zero width space U+200B":           "ad\u200Bmin",
		"byte order mark U+FEFF":            "\uFEFFname",
		"tag character U+E0041":             "name\U000E0041",
		"soft hyphen U+00AD":                "ad\u00ADmin",
		"C1 control U+0085":                 "a\u0085b",
	}
	for _, rt := range routes {
		for what, v := range bad {
			r := rc.call(t, http.MethodPost, rt.path, rt.token, rt.body(v))
			if r.Status != http.StatusBadRequest || !strings.Contains(r.JSON().str("message"), rt.field) {
				t.Errorf("%s with a %s: want 400 naming %s, got %s", rt.name, what, rt.field, r)
			}
		}
		// Joiners stay: a ZWJ emoji sequence and a ZWNJ (Persian).
		for _, v := range []string{"deploy 👩\u200D💻", "می\u200Cخواهم"} {
			if r := rc.call(t, http.MethodPost, rt.path, rt.token, rt.body(unique(v))); r.Status != http.StatusOK {
				t.Errorf("%s %q: want 200, got %s", rt.name, v, r)
			}
		}
	}
	for _, rt := range routes {
		if rt.field != "description" {
			continue
		}
		if r := rc.call(t, http.MethodPost, rt.path, rt.token, rt.body("line one\nline two\ttabbed")); r.Status != http.StatusOK {
			t.Errorf("%s with a line break and a tab: want 200, got %s", rt.name, r)
		}
	}
}

// kitRawCodec sends a message's bytes exactly as given.
type kitRawCodec struct{}

type kitRaw struct{ b []byte }

func (kitRawCodec) Marshal(v any) ([]byte, error) {
	if r, ok := v.(*kitRaw); ok {
		return r.b, nil
	}
	return proto.Marshal(v.(proto.Message))
}

func (kitRawCodec) Unmarshal(data []byte, v any) error {
	if r, ok := v.(*kitRaw); ok {
		r.b = append([]byte(nil), data...)
		return nil
	}
	return proto.Unmarshal(data, v.(proto.Message))
}

func (kitRawCodec) Name() string { return "proto" }

// kitString is a protobuf string field holding s, valid UTF-8 or not.
func kitString(num protowire.Number, s string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
}

// TestKitInvalidUTF8OverGRPC: a request whose string field is not UTF-8 is
// InvalidArgument naming the field, on every service, for public,
// health and nested fields alike — never Internal.
func TestKitInvalidUTF8OverGRPC(t *testing.T) {
	c := startCluster(t, layoutAll)
	ws := c.rest().createWorkspace(t, c.OperatorToken, "kit utf8")
	bearer := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+ws.OwnerToken)
	bad := "ws_\xff\xfe"
	nested := protowire.AppendBytes(protowire.AppendTag(kitString(1, ws.ID), 3, protowire.BytesType), kitString(3, "name \xc0"))
	cases := []struct {
		service, method string
		body            []byte
		field           string
	}{
		{"credential", "/backlog.credential.v1.CredentialService/GetWorkspace", kitString(1, bad), "workspaceId"},
		{"credential", "/backlog.credential.v1.CredentialService/UpdateMember", nested, "member.name"},
		{"automation", "/backlog.automation.v1.AutomationService/GetAutomation", kitString(2, bad), "automationId"},
		{"agent", "/backlog.agent.v1.AgentService/ListAgents", kitString(2, bad), "installationId"},
		{"vault", "/backlog.vault.v1.VaultService/ListSecrets", kitString(2, bad), "kind"},
	}
	for _, s := range []string{"credential", "automation", "agent", "vault"} {
		cases = append(cases, struct {
			service, method string
			body            []byte
			field           string
		}{s, "/grpc.health.v1.Health/Check", kitString(1, "\xff"), "service"})
	}
	for _, tc := range cases {
		conn := c.Conn(c.Addr(tc.service))
		err := conn.Invoke(bearer, tc.method, &kitRaw{tc.body}, &kitRaw{}, grpc.ForceCodec(kitRawCodec{}))
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) || !strings.Contains(st.Message(), "UTF-8") {
			t.Errorf("%s %s: got %v %q, want InvalidArgument naming %s and UTF-8", tc.service, tc.method, st.Code(), st.Message(), tc.field)
		}
	}
	// A valid request on the same connection still works.
	if _, err := automationv1.NewAutomationServiceClient(c.Conn(c.Addr("automation"))).ListAutomations(bearer,
		&automationv1.ListAutomationsRequest{WorkspaceId: ws.ID}); err != nil {
		t.Fatalf("a valid call after the invalid ones: %v", err)
	}
}
