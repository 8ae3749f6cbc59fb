package reliability

// REST helpers shared by the process and in-process suites.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

// credentialRE matches anything shaped like a Backlog credential string.
var credentialRE = regexp.MustCompile(`blg_[a-z]+_[0-9A-Za-z]+`)

func wellFormed(s string) bool { _, err := credfmt.Parse(s); return err == nil }

func kindOf(s string) credfmt.Kind { return credfmt.KindOf(s) }

// redact hides every credential-shaped string, for failure messages.
func redact(s string) string {
	return credentialRE.ReplaceAllStringFunc(s, func(m string) string {
		return m[:strings.LastIndexByte(m, '_')+1] + "<redacted>"
	})
}

// reply is an HTTP response, printable (redacted) in failure messages.
type reply struct {
	Method, Path string
	Status       int
	Header       http.Header
	Body         []byte
	// Sent and Received bracket the exchange on the client's clock.
	Sent, Received time.Time
}

func (r *reply) String() string {
	return fmt.Sprintf("%s %s -> %d %s", r.Method, r.Path, r.Status, redact(strings.TrimSpace(string(r.Body))))
}

// JSON decodes the body as an object (nil when it is not one).
func (r *reply) JSON() obj {
	var o obj
	_ = json.Unmarshal(r.Body, &o)
	return o
}

// restClient sends REST requests to one base URL.
type restClient struct {
	base string
	http *http.Client
	// onResponse, when set, sees every response.
	onResponse func(*reply)
}

func (c *cluster) rest() *restClient {
	return &restClient{base: c.URL(""), http: c.http, onResponse: c.onResponse}
}

// encodeBody turns nil, a string, []byte or any JSON-marshalable value into
// a request body.
func encodeBody(body any) (io.Reader, error) {
	switch b := body.(type) {
	case nil:
		return nil, nil
	case string:
		return strings.NewReader(b), nil
	case []byte:
		return bytes.NewReader(b), nil
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		return bytes.NewReader(buf), nil
	}
}

// do sends one request; token "" sends no Authorization header; headers
// are extra name, value pairs. A transport error is returned as is.
func (rc *restClient) do(ctx context.Context, method, path, token string, body any, headers ...string) (*reply, error) {
	rd, err := encodeBody(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, rc.base+path, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	r := &reply{Method: method, Path: path, Sent: time.Now()}
	resp, err := rc.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	r.Received = time.Now()
	if err != nil {
		return nil, err
	}
	r.Status, r.Header, r.Body = resp.StatusCode, resp.Header, b
	if rc.onResponse != nil {
		rc.onResponse(r)
	}
	return r, nil
}

// call is do that fails the test on a transport error.
func (rc *restClient) call(t testing.TB, method, path, token string, body any, headers ...string) *reply {
	t.Helper()
	r, err := rc.do(context.Background(), method, path, token, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// expect is call that fails the test unless the status is want; it returns
// the decoded body.
func (rc *restClient) expect(t testing.TB, want int, method, path, token string, body any) obj {
	t.Helper()
	r := rc.call(t, method, path, token, body)
	if r.Status != want {
		t.Fatalf("%s: want status %d", r, want)
	}
	return r.JSON()
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

func (o obj) boolean(path string) bool { b, _ := o.get(path).(bool); return b }

func (o obj) list(path string) []obj {
	var out []obj
	l, _ := o.get(path).([]any)
	for _, v := range l {
		m, _ := v.(map[string]any)
		out = append(out, obj(m))
	}
	return out
}

// ---- fixtures ----------------------------------------------------------------

// workspace is a workspace with its first owner.
type workspace struct {
	ID, OwnerID, OwnerToken string
}

func (rc *restClient) createWorkspace(t testing.TB, operator, name string) workspace {
	t.Helper()
	o := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces", operator, map[string]any{"name": name})
	ws := workspace{ID: o.str("workspace.id"), OwnerID: o.str("owner.id"), OwnerToken: o.str("token")}
	if ws.ID == "" || kindOf(ws.OwnerToken) != credfmt.Personal {
		t.Fatalf("create workspace: incomplete response %s", redact(fmt.Sprint(o)))
	}
	return ws
}

// createMember adds a person and returns their member id and token.
func (rc *restClient) createMember(t testing.TB, ws workspace, name, role string) (string, string) {
	t.Helper()
	o := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/members", ws.OwnerToken, map[string]any{"name": name, "role": role})
	id, tok := o.str("member.id"), o.str("token")
	if id == "" || kindOf(tok) != credfmt.Personal {
		t.Fatalf("create member: incomplete response %s", redact(fmt.Sprint(o)))
	}
	return id, tok
}

// createAutomation creates an automation and returns its id and secret.
func (rc *restClient) createAutomation(t testing.TB, wsID, token, name string, scopes ...string) (string, string) {
	t.Helper()
	if scopes == nil {
		scopes = []string{}
	}
	o := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+wsID+"/automations", token, map[string]any{"name": name, "scopes": scopes})
	id, secret := o.str("automation.id"), o.str("secret")
	if id == "" || kindOf(secret) != credfmt.Automation {
		t.Fatalf("create automation: incomplete response %s", redact(fmt.Sprint(o)))
	}
	return id, secret
}

// exchange trades an automation secret for an access token.
func (rc *restClient) exchange(t testing.TB, secret string) string {
	t.Helper()
	o := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/auth/exchange", secret, map[string]any{})
	tok := o.str("accessToken")
	if kindOf(tok) != credfmt.AccessToken {
		t.Fatalf("exchange: no access token in %s", redact(fmt.Sprint(o)))
	}
	return tok
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}
