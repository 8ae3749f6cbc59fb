package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/proctest"
)

// ---- credentials seen -------------------------------------------------------

// credentialRE matches anything shaped like a Backlog credential string.
var credentialRE = regexp.MustCompile(`blg_[a-z]+_[0-9A-Za-z]+`)

func wellFormed(s string) bool { _, err := credfmt.Parse(s); return err == nil }

func kindOf(s string) string { return string(credfmt.KindOf(s)) }

// credSet collects every raw credential a cluster hands out, so that the
// leak check knows what to look for.
type credSet struct {
	mu   sync.Mutex
	seen map[string]bool
	list []string
}

func newCredSet() *credSet { return &credSet{seen: map[string]bool{}} }

func (s *credSet) add(raw string) {
	if !wellFormed(raw) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.seen[raw] {
		s.seen[raw] = true
		s.list = append(s.list, raw)
	}
}

// scan adds every well-formed credential found in b (a response body).
func (s *credSet) scan(b []byte) {
	for _, m := range credentialRE.FindAll(b, -1) {
		s.add(string(m))
	}
}

func (s *credSet) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.list)
}

func (s *credSet) count(kind credfmt.Kind) int {
	n := 0
	for _, c := range s.all() {
		if credfmt.KindOf(c) == kind {
			n++
		}
	}
	return n
}

// findIn describes (without the credential itself) every collected
// credential found in b, whole or as its body without prefix and checksum:
// an encoding that kept the middle would still be a leak.
func (s *credSet) findIn(b []byte) []string {
	var out []string
	for i, raw := range s.all() {
		p, _ := credfmt.Parse(raw)
		body := p.Body
		switch {
		case bytes.Contains(b, []byte(raw)):
			out = append(out, fmt.Sprintf("issued credential #%d (kind %s)", i, p.Kind))
		case len(body) >= 16 && bytes.Contains(b, []byte(body)):
			out = append(out, fmt.Sprintf("the body of issued credential #%d (kind %s)", i, p.Kind))
		}
	}
	return out
}

// redact hides every collected credential in s, whole or as its body (as
// findIn looks for them), then every credential-shaped string.
func (s *credSet) redact(text string) string {
	for _, raw := range s.all() {
		p, _ := credfmt.Parse(raw)
		text = strings.ReplaceAll(text, raw, "blg_"+string(p.Kind)+"_<redacted>")
		if len(p.Body) >= 16 {
			text = strings.ReplaceAll(text, p.Body, "<redacted>")
		}
	}
	return redact(text)
}

// redact hides every credential-shaped string in s, for failure messages.
func redact(s string) string {
	return credentialRE.ReplaceAllStringFunc(s, func(m string) string {
		return m[:strings.LastIndexByte(m, '_')+1] + "<redacted>"
	})
}

// ---- REST -------------------------------------------------------------------

// reply is an HTTP response, printable (redacted) in failure messages.
type reply struct {
	Method, Path string
	Status       int
	Header       http.Header
	Body         []byte
}

func (r *reply) String() string {
	return fmt.Sprintf("%s %s -> %d %s", r.Method, r.Path, r.Status, redact(strings.TrimSpace(string(r.Body))))
}

// JSON decodes the body as a JSON object.
func (r *reply) JSON(t testing.TB) obj {
	t.Helper()
	var o obj
	if err := json.Unmarshal(r.Body, &o); err != nil {
		t.Fatalf("%s: body is not a JSON object: %v", r, err)
	}
	return o
}

// call sends a request. body may be nil, a string or []byte (sent as is), or
// anything else (sent as JSON). token "" sends no Authorization header.
func (c *cluster) call(t testing.TB, method, path, token string, body any) *reply {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, c.URL(path), rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	r := &reply{Method: method, Path: path, Status: resp.StatusCode, Header: resp.Header, Body: b}
	c.creds.scan(b)
	if r.Status >= 400 {
		for _, what := range c.creds.findIn(b) {
			t.Errorf("%s %s: the error response holds %s", method, path, what)
		}
	}
	return r
}

// expect sends a request and fails the test unless it answers want; it
// returns the decoded body.
func (c *cluster) expect(t testing.TB, want int, method, path, token string, body any) obj {
	t.Helper()
	r := c.call(t, method, path, token, body)
	if r.Status != want {
		t.Fatalf("%s: want status %d", r, want)
	}
	return r.JSON(t)
}

// create is expect for a creating POST: 200 or 201.
func (c *cluster) create(t testing.TB, path, token string, body any) obj {
	t.Helper()
	r := c.call(t, http.MethodPost, path, token, body)
	if r.Status != http.StatusOK && r.Status != http.StatusCreated {
		t.Fatalf("%s: want status 200 or 201", r)
	}
	return r.JSON(t)
}

// expectError sends a request and checks the contract's JSON error: the
// HTTP status, {"code": <grpc code>, "message": non-empty, "details": [...]},
// and WWW-Authenticate on a 401.
func (c *cluster) expectError(t testing.TB, status int, code codes.Code, method, path, token string, body any) obj {
	t.Helper()
	r := c.call(t, method, path, token, body)
	if r.Status != status {
		t.Fatalf("%s: want status %d", r, status)
	}
	checkErrorBody(t, r, code)
	return r.JSON(t)
}

func checkErrorBody(t testing.TB, r *reply, code codes.Code) {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", r, ct)
	}
	var e struct {
		Code    *int              `json:"code"`
		Message *string           `json:"message"`
		Details []json.RawMessage `json:"details"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("%s: error body is not JSON: %v", r, err)
	}
	switch {
	case e.Code == nil || e.Message == nil:
		t.Errorf("%s: error body lacks code or message", r)
	case *e.Code != int(code):
		t.Errorf("%s: code %d (%s), want %d (%s)", r, *e.Code, codes.Code(*e.Code), int(code), code)
	case strings.TrimSpace(*e.Message) == "":
		t.Errorf("%s: empty error message", r)
	}
	if !bytes.Contains(r.Body, []byte(`"details"`)) {
		t.Errorf("%s: error body lacks details", r)
	}
	if r.Status == http.StatusUnauthorized && r.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("%s: a 401 without WWW-Authenticate", r)
	}
}

// obj is a decoded JSON object with dotted-path accessors.
type obj map[string]any

func (o obj) get(path string) any {
	var cur any = map[string]any(o)
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func (o obj) str(path string) string { s, _ := o.get(path).(string); return s }

func (o obj) num(path string) float64 { n, _ := o.get(path).(float64); return n }

func (o obj) boolean(path string) bool { b, _ := o.get(path).(bool); return b }

func (o obj) sub(path string) obj { m, _ := o.get(path).(map[string]any); return obj(m) }

func (o obj) list(path string) []obj {
	var out []obj
	l, _ := o.get(path).([]any)
	for _, v := range l {
		m, _ := v.(map[string]any)
		out = append(out, obj(m))
	}
	return out
}

func (o obj) strs(path string) []string {
	var out []string
	l, _ := o.get(path).([]any)
	for _, v := range l {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

func (o obj) time(t testing.TB, path string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, o.str(path))
	if err != nil {
		t.Fatalf("%s: %q is not an RFC 3339 time", path, o.str(path))
	}
	return ts
}

// ---- scenario helpers ---------------------------------------------------------

// workspace is a workspace with its first owner.
type workspace struct {
	ID, OwnerID, OwnerToken string
}

func (c *cluster) createWorkspace(t testing.TB, name string) workspace {
	t.Helper()
	o := c.create(t, "/v1/workspaces", c.OperatorToken, map[string]any{"name": name})
	ws := workspace{ID: o.str("workspace.id"), OwnerID: o.str("owner.id"), OwnerToken: o.str("token")}
	if ws.ID == "" || ws.OwnerID == "" || kindOf(ws.OwnerToken) != string(credfmt.Personal) {
		t.Fatalf("create workspace %q: incomplete response %s", name, redact(fmt.Sprint(o)))
	}
	return ws
}

// createMember adds a person and returns their member id and token.
func (c *cluster) createMember(t testing.TB, ws workspace, name, role string) (string, string) {
	t.Helper()
	o := c.create(t, "/v1/workspaces/"+ws.ID+"/members", ws.OwnerToken, map[string]any{"name": name, "role": role})
	id, tok := o.str("member.id"), o.str("token")
	if id == "" || kindOf(tok) != string(credfmt.Personal) || o.str("member.role") != role {
		t.Fatalf("create member %q: incomplete response %s", name, redact(fmt.Sprint(o)))
	}
	return id, tok
}

// createAutomation creates an automation and returns it and its secret.
func (c *cluster) createAutomation(t testing.TB, wsID, token string, body map[string]any) (obj, string) {
	t.Helper()
	o := c.create(t, "/v1/workspaces/"+wsID+"/automations", token, body)
	a, secret := o.sub("automation"), o.str("secret")
	if a.str("id") == "" || kindOf(secret) != string(credfmt.Automation) {
		t.Fatalf("create automation: incomplete response %s", redact(fmt.Sprint(o)))
	}
	return a, secret
}

// exchange trades an automation secret for an access token (want 200).
func (c *cluster) exchange(t testing.TB, secret string, body any) obj {
	t.Helper()
	o := c.expect(t, http.StatusOK, http.MethodPost, "/v1/auth/exchange", secret, body)
	if kindOf(o.str("accessToken")) != string(credfmt.AccessToken) {
		t.Fatalf("exchange: no access token in %s", redact(fmt.Sprint(o)))
	}
	return o
}

// ---- gRPC ---------------------------------------------------------------------

// as returns a context sending token as the bearer credential.
func as(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func (c *cluster) automationClient() automationv1.AutomationServiceClient {
	return automationv1.NewAutomationServiceClient(c.Conn(c.Addr(proctest.TargetAutomation)))
}

func (c *cluster) credentialClient() credentialv1.CredentialServiceClient {
	return credentialv1.NewCredentialServiceClient(c.Conn(c.Addr(proctest.TargetCredential)))
}

// track records the credentials a gRPC response carries.
func (c *cluster) track(m proto.Message) {
	if b, err := protojson.Marshal(m); err == nil {
		c.creds.scan(b)
	}
}
