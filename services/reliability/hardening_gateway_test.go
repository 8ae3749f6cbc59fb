package reliability

// Hardening of the REST gateway (issue 12: items 1, 3, 4 and 8 as far as
// the gateway goes), over real backlogd processes:
//   - X-Forwarded-For is believed from no one unless -trusted-proxies
//     says so;
//   - bad input (invalid UTF-8 in any path segment or query value of every
//     documented route, trailing data after a JSON body, two Authorization
//     headers) is 400, never 500;
//   - slow and greedy clients (a body sent byte by byte, many silent
//     connections, idle keep-alives, huge headers or bodies) are cut off
//     within the configured limits while everyone else is answered;
//   - every empty list is [] in every response, and nothing else changes shape.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backlog/controlplane/gen"
)

// ---- the OpenAPI document -----------------------------------------------------

// gwOp is one documented operation.
type gwOp struct {
	Method, Path string
	PathParams   []string
	QueryParams  []string
	HasBody      bool
	Response     string // definition name of the 200 response
}

// gwSchemaRef prefixes a $ref to a schema of the OpenAPI 3 document.
const gwSchemaRef = "#/components/schemas/"

// gwSchema is the subset of an OpenAPI schema the checks read.
type gwSchema struct {
	Ref        string               `json:"$ref"`
	Type       string               `json:"type"`
	Items      *gwSchema            `json:"items"`
	Properties map[string]*gwSchema `json:"properties"`
	// AdditionalProperties is a schema for a map's values (or true, for
	// an open object such as protobufAny).
	AdditionalProperties json.RawMessage `json:"additionalProperties"`
}

// isMap reports whether s is a protobuf map: an object whose values have a
// schema.
func (s *gwSchema) isMap() bool {
	return len(s.AdditionalProperties) > 0 && s.AdditionalProperties[0] == '{'
}

type gwDoc struct {
	Paths map[string]map[string]struct {
		Parameters []struct {
			Name string `json:"name"`
			In   string `json:"in"`
		} `json:"parameters"`
		RequestBody json.RawMessage `json:"requestBody"`
		Responses   map[string]struct {
			Content map[string]struct {
				Schema gwSchema `json:"schema"`
			} `json:"content"`
		} `json:"responses"`
	} `json:"paths"`
	Components struct {
		Schemas map[string]*gwSchema `json:"schemas"`
	} `json:"components"`
	// Definitions are Components.Schemas (the OpenAPI 3 document's).
	Definitions map[string]*gwSchema `json:"-"`
}

func gwOpenAPI(t *testing.T) (gwDoc, []gwOp) {
	t.Helper()
	var doc gwDoc
	if err := json.Unmarshal(gen.OpenAPI, &doc); err != nil {
		t.Fatalf("gen.OpenAPI: %v", err)
	}
	doc.Definitions = doc.Components.Schemas
	var ops []gwOp
	for path, methods := range doc.Paths {
		for method, op := range methods {
			o := gwOp{Method: strings.ToUpper(method), Path: path,
				Response: strings.TrimPrefix(op.Responses["200"].Content["application/json"].Schema.Ref, gwSchemaRef),
				HasBody:  len(op.RequestBody) > 0}
			for _, p := range op.Parameters {
				switch p.In {
				case "path":
					o.PathParams = append(o.PathParams, p.Name)
				case "query":
					o.QueryParams = append(o.QueryParams, p.Name)
				}
			}
			ops = append(ops, o)
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].Method+ops[i].Path < ops[j].Method+ops[j].Path })
	if len(ops) == 0 {
		t.Fatal("no operations in the OpenAPI document")
	}
	return doc, ops
}

// gwFill puts concrete values in a path template: the workspace id for
// {workspaceId}, "x" for every other parameter.
func gwFill(template, wsID string) string {
	segs := strings.Split(template, "/")
	for i, s := range segs {
		switch {
		case s == "{workspaceId}":
			segs[i] = wsID
		case strings.HasPrefix(s, "{"):
			segs[i] = "x"
		}
	}
	return strings.Join(segs, "/")
}

// ---- raw requests -------------------------------------------------------------

// gwRequest sends one request whose headers are name, value pairs added in
// order (a name may repeat) and whose body is sent as is.
func gwRequest(t *testing.T, c *cluster, method, path, body string, headers ...string) *reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.URL(path), rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	r := &reply{Method: method, Path: path, Sent: time.Now()}
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	r.Body, _ = io.ReadAll(resp.Body)
	r.Received, r.Status, r.Header = time.Now(), resp.StatusCode, resp.Header
	return r
}

// gwErrorMessage checks the contract's error shape and returns its message.
func gwErrorMessage(t *testing.T, r *reply) string {
	t.Helper()
	var e struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
		Details []any  `json:"details"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil || e.Code == nil || e.Details == nil {
		t.Errorf("%s: not the contract's JSON error", r)
	}
	return e.Message
}

// ---- 1. client IP: X-Forwarded-For believed from no one by default --------------

// gwClientIPOf creates an automation sending X-Forwarded-For and returns the
// client IP its audit event recorded.
func gwClientIPOf(t *testing.T, c *cluster, forwardedFor string) string {
	t.Helper()
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "gw-ip")
	r := gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", `{"name":"ip-probe"}`,
		"Authorization", "Bearer "+ws.OwnerToken, "X-Forwarded-For", forwardedFor)
	if r.Status != http.StatusOK {
		t.Fatalf("%s: want 200", r)
	}
	id := r.JSON().str("automation.id")
	o := rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?action=automation.create&targetId="+id, ws.OwnerToken, nil)
	events := o.list("auditEvents")
	if len(events) != 1 {
		t.Fatalf("want one automation.create event for %s, got %v", id, events)
	}
	return events[0].str("clientIp")
}

func TestGatewayHardeningClientIP(t *testing.T) {
	t.Run("default: no one is trusted", func(t *testing.T) {
		c := startCluster(t, layoutAll)
		if ip := gwClientIPOf(t, c, "203.0.113.77"); ip != "127.0.0.1" {
			t.Errorf("a local process chose its client address with X-Forwarded-For: audited %q, want 127.0.0.1", ip)
		}
	})
	t.Run("-trusted-proxies", func(t *testing.T) {
		c := startCluster(t, layoutAll, "-trusted-proxies=127.0.0.0/8")
		if ip := gwClientIPOf(t, c, "198.51.100.1, 203.0.113.77"); ip != "203.0.113.77" {
			t.Errorf("behind a trusted proxy: audited %q, want the right-most untrusted address 203.0.113.77", ip)
		}
	})
}

// ---- 3. bad input is 400, never 500 ---------------------------------------------

func TestGatewayHardeningBadInput(t *testing.T) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "gw-bad-input")
	auth := []string{"Authorization", "Bearer " + ws.OwnerToken}
	_, ops := gwOpenAPI(t)

	var probes atomic.Int64
	expect400 := func(t *testing.T, r *reply, wantMsg string) {
		t.Helper()
		probes.Add(1)
		if r.Status != http.StatusBadRequest {
			t.Errorf("%s: want 400", r)
			return
		}
		if msg := gwErrorMessage(t, r); !strings.Contains(msg, wantMsg) {
			t.Errorf("%s: the message should say %q", r, wantMsg)
		}
	}
	bodyFor := func(op gwOp) string {
		if op.HasBody {
			return `{}`
		}
		return ""
	}

	for _, op := range ops {
		t.Run(op.Method+" "+op.Path, func(t *testing.T) {
			base := gwFill(op.Path, ws.ID)
			// %ff in each path segment in turn.
			segs := strings.Split(base, "/")
			for i := range segs {
				if segs[i] == "" {
					continue
				}
				bad := append([]string(nil), segs...)
				bad[i] = "%ff"
				expect400(t, gwRequest(t, c, op.Method, strings.Join(bad, "/"), bodyFor(op), auth...), "not valid UTF-8")
			}
			// %ff in each documented query value, and in an undocumented one.
			for _, q := range append(op.QueryParams, "other") {
				expect400(t, gwRequest(t, c, op.Method, base+"?"+q+"=%ff", bodyFor(op), auth...), "not valid UTF-8")
			}
			// Two credentials.
			expect400(t, gwRequest(t, c, op.Method, base, bodyFor(op), "Authorization", "Bearer "+ws.OwnerToken, "Authorization", "Bearer "+c.OperatorToken),
				"send one Authorization header")
			// Trailing data after the JSON body.
			if op.HasBody {
				for _, body := range []string{`{} {"name":"smuggled"}`, `{}]`, `{}x`} {
					expect400(t, gwRequest(t, c, op.Method, base, body, auth...), "unexpected data after the JSON object")
				}
			}
		})
	}

	// The refused requests changed nothing: a create with trailing data
	// did not create (before, the first object was acted on).
	for _, r := range []*reply{
		gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", `{"name":"first","scopes":[]} {"name":"second"}`, auth...),
		gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", "{\"name\":\"first\"}\n{\"name\":\"second\"}\n", auth...),
	} {
		expect400(t, r, "unexpected data after the JSON object")
	}
	if o := rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken, nil); len(o.list("automations")) != 0 {
		t.Errorf("a body refused for trailing data still created %v", o.list("automations"))
	}
	// Non-ASCII credentials or idempotency keys are refused, not dropped.
	expect400(t, gwRequest(t, c, http.MethodGet, "/v1/auth/whoami", "", "Authorization", "Bearer "+ws.OwnerToken+"\xc3\xa9"), "printable ASCII")
	expect400(t, gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", `{"name":"k"}`,
		"Authorization", "Bearer "+ws.OwnerToken, "Idempotency-Key", "cl\xc3\xa9"), "printable ASCII")
	expect400(t, gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", `{"name":"k"}`,
		"Authorization", "Bearer "+ws.OwnerToken, "Idempotency-Key", "a", "Idempotency-Key", "b"), "send one Idempotency-Key header")

	// What is valid still works: UTF-8 in a path, white space after a body.
	if r := gwRequest(t, c, http.MethodGet, "/v1/workspaces/"+ws.ID+"/secrets/caf%C3%A9", "", auth...); r.Status != http.StatusNotFound {
		t.Errorf("%s: want 404 (valid UTF-8, no such secret)", r)
	}
	if r := gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", "{\"name\":\"caf\u00e9\"} \r\n\t", auth...); r.Status != http.StatusOK {
		t.Errorf("%s: want 200 (white space after the object)", r)
	}
	if c.LogsContain("panic") {
		t.Error("a process logged a panic")
	}
	t.Logf("%d bad requests sent over %d operations", probes.Load(), len(ops))
}

// ---- 4. slow and greedy clients ----------------------------------------------------

const (
	gwHeaderTimeout = time.Second
	gwBodyTimeout   = 2 * time.Second
	gwIdleTimeout   = 2 * time.Second
)

func TestGatewayHardeningSlowClients(t *testing.T) {
	c := startCluster(t, layoutAll,
		"-http-read-header-timeout="+gwHeaderTimeout.String(), "-http-body-timeout="+gwBodyTimeout.String(),
		"-http-idle-timeout="+gwIdleTimeout.String(), "-http-max-header-bytes=8192", "-http-max-body-bytes=65536")
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "gw-slow")
	addr := strings.TrimPrefix(c.URL(""), "http://")
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: every writer stops with ctx
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The measured slow client: headers at once, then the body one byte
	// every 100 ms (at most 80, far from the 1000 announced).
	slow := gwDial(t, addr)
	fmt.Fprintf(slow, "POST /v1/workspaces/%s/automations HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":\"slow\"",
		ws.ID, addr, ws.OwnerToken)
	slowStart := time.Now()
	gwTrickle(ctx, &wg, slow, 80, 100*time.Millisecond)
	slowDone := make(chan gwSlowResult, 1)
	go func() { slowDone <- gwReadUntilClosed(slow, slowStart.Add(gwBodyTimeout+5*time.Second)) }()

	// More of the same, and a greedy client that keeps up to 200 silent
	// connections open (re-opening those the server closes) and slowloris
	// connections that send their headers a byte at a time.
	var silentOpened, silentClosedByServer atomic.Int64
	for i := 0; i < 10; i++ {
		conn := gwDial(t, addr)
		fmt.Fprintf(conn, "POST /v1/auth/exchange HTTP/1.1\r\nHost: %s\r\nContent-Length: 500\r\n\r\n{", addr)
		gwTrickle(ctx, &wg, conn, 80, 100*time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		conn := gwDial(t, addr)
		wg.Go(func() {
			for j := 0; j < 60 && ctx.Err() == nil; j++ {
				if _, err := conn.Write([]byte("G")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	greedyCtx, stopGreedy := context.WithCancel(ctx)
	defer stopGreedy()
	for i := 0; i < 200; i++ {
		wg.Go(func() {
			for n := 0; n < 10 && greedyCtx.Err() == nil; n++ {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				silentOpened.Add(1)
				stop := context.AfterFunc(greedyCtx, func() { conn.Close() })
				_ = conn.SetReadDeadline(time.Now().Add(gwHeaderTimeout + 3*time.Second))
				_, err = conn.Read(make([]byte, 1))
				if !stop() {
					return // closed by us: the test is over
				}
				conn.Close()
				var ne net.Error
				if !(errors.As(err, &ne) && ne.Timeout()) {
					silentClosedByServer.Add(1)
				}
			}
		})
	}

	// Everyone else is answered promptly while that goes on.
	var answered int
	var worst time.Duration
	for time.Since(slowStart) < gwBodyTimeout+time.Second {
		for _, r := range []*reply{
			rc.call(t, http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken, nil),
			rc.call(t, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken, map[string]any{"name": fmt.Sprintf("ok-%d", answered)}),
		} {
			if r.Status != http.StatusOK {
				t.Errorf("%s: want 200 while slow clients hold connections", r)
			}
			if d := r.Received.Sub(r.Sent); d > worst {
				worst = d
			}
			answered++
		}
		time.Sleep(50 * time.Millisecond)
	}
	if worst > 2*time.Second {
		t.Errorf("the slowest answer to a well-behaved client took %v", worst)
	}
	t.Logf("%d requests answered while slow and greedy clients held connections; slowest %v", answered, worst.Round(time.Millisecond))

	// The measured slow connection got 408 and was closed by the server
	// within the body timeout.
	res := <-slowDone
	if res.err != nil {
		t.Fatalf("the slow-body connection: %v", res.err)
	}
	if res.status != http.StatusRequestTimeout || !bytes.Contains(res.body, []byte("not received in time")) {
		t.Errorf("slow body: %d %s, want 408 saying the body was not received in time", res.status, res.body)
	}
	if d := res.closed.Sub(slowStart); d < gwBodyTimeout-200*time.Millisecond || d > gwBodyTimeout+1500*time.Millisecond {
		t.Errorf("the slow-body connection was closed %v after its headers, want about the %v body timeout", d, gwBodyTimeout)
	} else {
		t.Logf("slow-body connection answered 408 and closed by the server %v after its headers (body timeout %v)", d.Round(time.Millisecond), gwBodyTimeout)
	}

	stopGreedy()
	if silentClosedByServer.Load() < 200 {
		t.Errorf("of %d silent connections the server closed %d, want every one of the first 200 closed within %v", silentOpened.Load(), silentClosedByServer.Load(), gwHeaderTimeout+3*time.Second)
	}
	t.Logf("%d silent connections opened, %d closed by the server", silentOpened.Load(), silentClosedByServer.Load())

	// An idle keep-alive connection is closed after the idle timeout.
	idle := gwDial(t, addr)
	fmt.Fprintf(idle, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("keep-alive /healthz: %v", err)
	} else {
		_, _ = io.Copy(io.Discard, resp.Body)
	}
	idleStart := time.Now()
	if d := gwWaitClosed(t, idle, ibr).Sub(idleStart); d > gwIdleTimeout+2*time.Second {
		t.Errorf("an idle keep-alive connection was closed after %v, want about %v", d, gwIdleTimeout)
	}

	// Size caps.
	r := gwRequest(t, c, http.MethodGet, "/v1/auth/whoami", "", "Authorization", "Bearer "+ws.OwnerToken, "X-Padding", strings.Repeat("p", 16<<10))
	if r.Status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("16 KiB of headers over an 8 KiB cap: %d, want 431", r.Status)
	}
	r = gwRequest(t, c, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", `{"name":"big","description":"`+strings.Repeat("d", 100<<10)+`"}`,
		"Authorization", "Bearer "+ws.OwnerToken)
	if r.Status != http.StatusRequestEntityTooLarge || !strings.Contains(gwErrorMessage(t, r), "the limit is 65536 bytes") {
		t.Errorf("%s: want 413 naming the 65536-byte cap", r)
	}

	// Nothing the slow clients sent was acted on.
	for _, a := range rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations?pageSize=100", ws.OwnerToken, nil).list("automations") {
		if a.str("name") == "slow" {
			t.Error("the slow body's automation was created")
		}
	}
}

// gwSlowResult is what a slow client saw: the answer, and when the server
// closed the connection.
type gwSlowResult struct {
	status int
	body   []byte
	closed time.Time
	err    error
}

// gwReadUntilClosed reads one response from conn, then reads until the server
// closes it, all before deadline.
func gwReadUntilClosed(conn net.Conn, deadline time.Time) gwSlowResult {
	_ = conn.SetReadDeadline(deadline)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return gwSlowResult{err: fmt.Errorf("no answer: %w", err)}
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_, err = io.Copy(io.Discard, br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return gwSlowResult{err: errors.New("the server kept the connection open after answering")}
	}
	return gwSlowResult{status: resp.StatusCode, body: b, closed: time.Now()}
}

func gwDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// gwTrickle writes one space every interval, n times at most, until a write
// fails or ctx ends.
func gwTrickle(ctx context.Context, wg *sync.WaitGroup, conn net.Conn, n int, interval time.Duration) {
	wg.Go(func() {
		for i := 0; i < n && ctx.Err() == nil; i++ {
			time.Sleep(interval)
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	})
}

// gwWaitClosed reads r until the server closes conn (within 5 s).
func gwWaitClosed(t *testing.T, conn net.Conn, r io.Reader) time.Time {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept the connection open")
	}
	return time.Now()
}

// ---- 8. empty lists are [] -------------------------------------------------------------

// gwShape checks a response against its OpenAPI definition: every array and
// map property is present (an empty one as [] or {}), at every depth; no
// property is undocumented; no scalar is present with its zero value (the
// encoding leaves those out, and must go on doing so).
func gwShape(doc gwDoc, def string, v any, at string) []string {
	s := doc.Definitions[def]
	if s == nil {
		return []string{fmt.Sprintf("%s: no definition %q", at, def)}
	}
	return gwShapeOf(doc, s, v, at)
}

func gwShapeOf(doc gwDoc, s *gwSchema, v any, at string) []string {
	if s.Ref != "" {
		return gwShape(doc, strings.TrimPrefix(s.Ref, gwSchemaRef), v, at)
	}
	var problems []string
	switch {
	case s.Type == "array":
		l, ok := v.([]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v is not an array", at, v)}
		}
		for i, e := range l {
			if s.Items != nil {
				problems = append(problems, gwShapeOf(doc, s.Items, e, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	case s.isMap():
		if _, ok := v.(map[string]any); !ok {
			return []string{fmt.Sprintf("%s: %v is not an object", at, v)}
		}
	case s.Properties != nil || s.Type == "object":
		o, ok := v.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v is not an object", at, v)}
		}
		for k := range o {
			if _, ok := s.Properties[k]; !ok {
				problems = append(problems, fmt.Sprintf("%s.%s: not a documented field", at, k))
			}
		}
		for k, p := range s.Properties {
			pv, present := o[k]
			ps := p
			if ps.Ref != "" {
				ps = doc.Definitions[strings.TrimPrefix(ps.Ref, gwSchemaRef)]
			}
			collection := ps != nil && (ps.Type == "array" || ps.isMap())
			switch {
			case !present && collection:
				problems = append(problems, fmt.Sprintf("%s.%s: missing; an empty list must be []", at, k))
			case !present:
			case pv == nil || pv == "" || pv == false || pv == float64(0):
				problems = append(problems, fmt.Sprintf("%s.%s: zero value %#v written out", at, k, pv))
			default:
				problems = append(problems, gwShapeOf(doc, p, pv, at+"."+k)...)
			}
		}
	}
	return problems
}

func TestGatewayHardeningEmptyLists(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer target.Close()
	// Event deliveries go over HTTPS only: to hook, trusted through
	// -vault-egress-ca-file.
	hook := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer hook.Close()
	c := startCluster(t, layoutAll, "-vault-egress-allow-private=true", "-vault-egress-ca-file="+suWriteCA(t, hook))
	rc := c.rest()
	doc, ops := gwOpenAPI(t)
	respDef := map[string]string{}
	for _, op := range ops {
		respDef[op.Method+" "+op.Path] = op.Response
	}
	checked := map[string]bool{}
	// call sends a request of the documented route key and checks the
	// answer's shape; it returns the decoded body.
	call := func(key, path, token string, body any) obj {
		t.Helper()
		method, _, _ := strings.Cut(key, " ")
		def, ok := respDef[key]
		if !ok {
			t.Fatalf("%s is not a documented route", key)
		}
		r := rc.call(t, method, path, token, body)
		if r.Status != http.StatusOK {
			t.Fatalf("%s: want 200", r)
		}
		var v any
		if err := json.Unmarshal(r.Body, &v); err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		for _, p := range gwShape(doc, def, v, key) {
			t.Errorf("%s\n  in %s", p, redact(string(r.Body)))
		}
		checked[key] = true
		return r.JSON()
	}
	// exact asserts the compact body of an empty list.
	exact := func(path, token, want string) {
		t.Helper()
		r := rc.call(t, http.MethodGet, path, token, nil)
		var buf bytes.Buffer
		_ = json.Compact(&buf, r.Body)
		if r.Status != http.StatusOK || buf.String() != want {
			t.Errorf("%s: want %s", r, want)
		}
	}

	o := call("POST /v1/workspaces", "/v1/workspaces", c.OperatorToken, map[string]any{"name": "gw-empty"})
	wsID, owner := o.str("workspace.id"), o.str("token")
	ws := "/v1/workspaces/" + wsID

	// An empty workspace: every list is [].
	exact(ws+"/automations", owner, `{"automations":[]}`)
	exact(ws+"/agents", owner, `{"agents":[]}`)
	exact(ws+"/installations", owner, `{"installations":[]}`)
	exact(ws+"/secrets", owner, `{"secrets":[]}`)
	exact(ws+"/audit-events?action=nothing.happened", owner, `{"auditEvents":[]}`)
	exact(ws+"/connections", owner, `{"connections":[]}`)
	exact(ws+"/actions", owner, `{"actions":[]}`)
	exact(ws+"/event-subscriptions", owner, `{"subscriptions":[]}`)
	call("GET /v1/workspaces/{workspaceId}/automations", ws+"/automations", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/agents", ws+"/agents", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/installations", ws+"/installations", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/secrets", ws+"/secrets?kind=webhook", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/audit-events", ws+"/audit-events?action=nothing.happened", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/connections", ws+"/connections", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/actions", ws+"/actions", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/event-subscriptions", ws+"/event-subscriptions", owner, nil)

	// Objects with empty repeated fields: scopes, teamIds, secretsUsed, …
	call("GET /v1/workspaces/{workspaceId}", ws, owner, nil)
	call("GET /v1/auth/whoami", "/v1/auth/whoami", owner, nil) // an owner has no teamIds
	call("GET /v1/workspaces/{workspaceId}/members", ws+"/members", owner, nil)
	m := call("POST /v1/workspaces/{workspaceId}/members", ws+"/members", owner, map[string]any{"name": "Mem", "role": "member"})
	call("PATCH /v1/workspaces/{workspaceId}/members/{memberId}", ws+"/members/"+m.str("member.id"), owner, map[string]any{"name": "Mem2"})

	a := call("POST /v1/workspaces/{workspaceId}/automations", ws+"/automations", owner, map[string]any{"name": "bare"})
	if got := fmt.Sprint(a.get("automation.scopes"), a.get("automation.teamIds")); got != "[] []" {
		t.Errorf("a new automation without scopes or teams: scopes, teamIds = %s, want [] []", got)
	}
	autoID, secret := a.str("automation.id"), a.str("secret")
	call("GET /v1/workspaces/{workspaceId}/automations/{automationId}", ws+"/automations/"+autoID, owner, nil)
	call("PATCH /v1/workspaces/{workspaceId}/automations/{automationId}", ws+"/automations/"+autoID, owner, map[string]any{"description": "d"})
	call("GET /v1/workspaces/{workspaceId}/automations", ws+"/automations", owner, nil)
	ex := call("POST /v1/auth/exchange", "/v1/auth/exchange", secret, map[string]any{})
	if got := fmt.Sprint(ex.get("scopes"), ex.get("teamIds")); got != "[] []" {
		t.Errorf("exchange of a scope-less automation: scopes, teamIds = %s, want [] []", got)
	}
	who := call("GET /v1/auth/whoami", "/v1/auth/whoami", ex.str("accessToken"), nil)
	if got := fmt.Sprint(who.get("scopes"), who.get("teamIds")); got != "[] []" {
		t.Errorf("whoami of a scope-less access token: scopes, teamIds = %s, want [] []", got)
	}
	call("POST /v1/workspaces/{workspaceId}/automations/{automationId}/rotate-secret", ws+"/automations/"+autoID+"/rotate-secret", owner, map[string]any{})

	inst := call("POST /v1/workspaces/{workspaceId}/installations", ws+"/installations", owner, map[string]any{"name": "inst"})
	instID := inst.str("installation.id")
	call("GET /v1/workspaces/{workspaceId}/installations", ws+"/installations", owner, nil)
	ag := call("POST /v1/workspaces/{workspaceId}/installations/{installationId}/agents", ws+"/installations/"+instID+"/agents", owner, map[string]any{"name": "ag", "role": "member"})
	if got := fmt.Sprint(ag.get("agent.teamIds")); got != "[]" {
		t.Errorf("a new agent without teams: teamIds = %s, want []", got)
	}
	agentID := ag.str("agent.id")
	call("GET /v1/workspaces/{workspaceId}/agents/{agentId}", ws+"/agents/"+agentID, owner, nil)
	call("GET /v1/workspaces/{workspaceId}/agents", ws+"/agents?installationId="+url.QueryEscape(instID), owner, nil)
	call("PATCH /v1/workspaces/{workspaceId}/agents/{agentId}", ws+"/agents/"+agentID, owner, map[string]any{"name": "ag2"})
	call("GET /v1/agents/self", "/v1/agents/self", ag.str("apiKey"), nil)
	call("GET /v1/auth/whoami", "/v1/auth/whoami", ag.str("apiKey"), nil)

	call("POST /v1/workspaces/{workspaceId}/secrets", ws+"/secrets", owner, map[string]any{"name": "hook", "kind": "webhook", "value": "gw-empty-value"})
	call("GET /v1/workspaces/{workspaceId}/secrets/{name}", ws+"/secrets/hook", owner, nil)
	call("GET /v1/workspaces/{workspaceId}/secrets", ws+"/secrets", owner, nil)
	run := call("POST /v1/workspaces/{workspaceId}/http-requests", ws+"/http-requests", owner, map[string]any{"method": "GET", "url": target.URL + "/x"})
	if got := fmt.Sprint(run.get("secretsUsed")); got != "[]" {
		t.Errorf("an HTTP Request step that used no secret: secretsUsed = %s, want []", got)
	}
	call("GET /v1/workspaces/{workspaceId}/audit-events", ws+"/audit-events", owner, nil)
	call("DELETE /v1/workspaces/{workspaceId}/automations/{automationId}", ws+"/automations/"+autoID, owner, nil)

	// Secrets in use. A secret nothing uses: usedBy is [], versions lists
	// one; after a rollback, two.
	if got := fmt.Sprint(call("GET /v1/workspaces/{workspaceId}/secrets/{name}", ws+"/secrets/hook", owner, nil).get("secret.usedBy")); got != "[]" {
		t.Errorf("a secret nothing uses: usedBy = %s, want []", got)
	}
	call("GET /v1/workspaces/{workspaceId}/secrets/{name}/versions", ws+"/secrets/hook/versions", owner, nil)
	call("POST /v1/workspaces/{workspaceId}/secrets/{name}/rollback", ws+"/secrets/hook/rollback", owner, map[string]any{"version": 1})
	if n := len(call("GET /v1/workspaces/{workspaceId}/secrets/{name}/versions", ws+"/secrets/hook/versions", owner, nil).list("versions")); n != 2 {
		t.Errorf("versions after a rollback: %d, want 2", n)
	}

	// An event subscription with no deliveries yet; then one delivered
	// (the integration secret created next raises secret.created).
	sub := call("POST /v1/workspaces/{workspaceId}/event-subscriptions", ws+"/event-subscriptions", owner, map[string]any{"url": hook.URL + "/events", "events": []string{"secret.created"}})
	subID := sub.str("subscription.id")
	call("GET /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}", ws+"/event-subscriptions/"+subID, owner, nil)
	call("GET /v1/workspaces/{workspaceId}/event-subscriptions", ws+"/event-subscriptions", owner, nil)
	exact(ws+"/event-subscriptions/"+subID+"/deliveries", owner, `{"deliveries":[]}`)
	call("GET /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}/deliveries", ws+"/event-subscriptions/"+subID+"/deliveries", owner, nil)

	call("POST /v1/workspaces/{workspaceId}/secrets", ws+"/secrets", owner, map[string]any{"name": "crm", "kind": "integration", "value": "gw-empty-crm-value"})
	conn := call("POST /v1/workspaces/{workspaceId}/connections", ws+"/connections", owner, map[string]any{"name": "CRM", "integration": "hubspot", "secretName": "crm"})
	connID := conn.str("connection.id")
	call("GET /v1/workspaces/{workspaceId}/connections/{connectionId}", ws+"/connections/"+connID, owner, nil)
	call("PATCH /v1/workspaces/{workspaceId}/connections/{connectionId}", ws+"/connections/"+connID, owner, map[string]any{"description": "d"})
	call("GET /v1/workspaces/{workspaceId}/connections", ws+"/connections", owner, nil)

	// An action without headers: headers {} and secretNames [].
	act := call("POST /v1/workspaces/{workspaceId}/actions", ws+"/actions", owner, map[string]any{"name": "ping", "method": "GET", "url": target.URL + "/y"})
	if got := fmt.Sprint(act.get("action.headers"), act.get("action.secretNames")); got != "map[] []" {
		t.Errorf("an action without headers: headers, secretNames = %s, want map[] []", got)
	}
	actID := act.str("action.id")
	call("GET /v1/workspaces/{workspaceId}/actions/{actionId}", ws+"/actions/"+actID, owner, nil)
	call("PATCH /v1/workspaces/{workspaceId}/actions/{actionId}", ws+"/actions/"+actID, owner, map[string]any{"description": "d"})
	call("GET /v1/workspaces/{workspaceId}/actions", ws+"/actions", owner, nil)
	ran := call("POST /v1/workspaces/{workspaceId}/actions/{actionId}/run", ws+"/actions/"+actID+"/run", owner, map[string]any{})
	if got := fmt.Sprint(ran.get("secretsUsed")); got != "[]" {
		t.Errorf("an action that used no secret: secretsUsed = %s, want []", got)
	}

	var delivered bool
	for deadline := time.Now().Add(15 * time.Second); !delivered && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, d := range rc.expect(t, http.StatusOK, http.MethodGet, ws+"/event-subscriptions/"+subID+"/deliveries", owner, nil).list("deliveries") {
			delivered = delivered || d.str("status") == "delivered"
		}
	}
	if !delivered {
		t.Error("the secret.created delivery was not delivered within 15 s")
	}
	call("GET /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}/deliveries", ws+"/event-subscriptions/"+subID+"/deliveries", owner, nil)

	call("DELETE /v1/workspaces/{workspaceId}/actions/{actionId}", ws+"/actions/"+actID, owner, nil)
	call("DELETE /v1/workspaces/{workspaceId}/connections/{connectionId}", ws+"/connections/"+connID, owner, nil)
	call("DELETE /v1/workspaces/{workspaceId}/event-subscriptions/{subscriptionId}", ws+"/event-subscriptions/"+subID, owner, nil)

	var keys []string
	for _, op := range ops {
		if op.Method == http.MethodGet && !checked[op.Method+" "+op.Path] {
			keys = append(keys, op.Method+" "+op.Path)
		}
	}
	if len(keys) > 0 {
		t.Errorf("GET routes whose answers were not checked: %v", keys)
	}
	t.Logf("%d routes' answers checked against their OpenAPI shapes", len(checked))
}
