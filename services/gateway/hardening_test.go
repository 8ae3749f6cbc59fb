package gateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/clientip"
)

// rawRequest sends req (headers may repeat) and returns the response.
func (e *env) rawRequest(t *testing.T, method, path, body string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == "" {
		req.Body = http.NoBody
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := e.httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func TestTrustedProxiesDefaultToNone(t *testing.T) {
	for name, trusted := range map[string][]netip.Prefix{"nil": nil, "empty": {}} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, trusted)
			e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer ok", "X-Forwarded-For", "198.51.100.7")
			if got := e.cred.lastMD().Get(clientip.MetadataKey); len(got) != 1 || got[0] != "127.0.0.1" {
				t.Errorf("a local process chose its client ip: %q, want [127.0.0.1]", got)
			}
		})
	}
	t.Run("every X-Forwarded-For line", func(t *testing.T) {
		// A trusted proxy that adds its own line: the right-most address
		// is the proxy's word, not the first line the client wrote.
		e := newEnv(t, clientip.Loopback)
		e.rawRequest(t, "GET", "/v1/auth/whoami", "", "Authorization", "Bearer ok",
			"X-Forwarded-For", "6.6.6.6", "X-Forwarded-For", "198.51.100.7")
		if got := e.cred.lastMD().Get(clientip.MetadataKey); len(got) != 1 || got[0] != "198.51.100.7" {
			t.Errorf("client ip %q, want [198.51.100.7]", got)
		}
	})
}

func TestBadInputIs400(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name, method, path, body string
		headers                  []string
		wantMsg                  string
	}{
		{"invalid UTF-8 path segment", "GET", "/v1/workspaces/%ff/audit-events", "", []string{"Authorization", "Bearer ok"}, "path is not valid UTF-8"},
		{"invalid UTF-8 query value", "GET", "/v1/workspaces/ws_1/audit-events?action=%ff%fe", "", []string{"Authorization", "Bearer ok"}, `query parameter "action" is not valid UTF-8`},
		{"invalid UTF-8 query name", "GET", "/v1/workspaces/ws_1/audit-events?%ff=1", "", []string{"Authorization", "Bearer ok"}, "query parameter name is not valid UTF-8"},
		{"trailing object", "POST", "/v1/auth/exchange", `{"ttlSeconds":60} {"ttlSeconds":1}`, []string{"Authorization", "Bearer blg_auto_x"}, "unexpected data after the JSON object"},
		{"trailing garbage", "POST", "/v1/auth/exchange", `{"ttlSeconds":60}garbage`, []string{"Authorization", "Bearer blg_auto_x"}, "unexpected data after the JSON object"},
		{"trailing bracket", "POST", "/v1/auth/exchange", `{"ttlSeconds":60}]`, []string{"Authorization", "Bearer blg_auto_x"}, "unexpected data after the JSON object"},
		{"two Authorization headers", "GET", "/v1/auth/whoami", "", []string{"Authorization", "Bearer ok", "Authorization", "Bearer other"}, "send one Authorization header, not 2"},
		{"non-ASCII Authorization", "GET", "/v1/auth/whoami", "", []string{"Authorization", "Bearer ok\xff"}, "Authorization header may hold printable ASCII"},
		{"two Idempotency-Key headers", "POST", "/v1/auth/exchange", `{}`, []string{"Authorization", "Bearer blg_auto_x", "Idempotency-Key", "a", "Idempotency-Key", "b"}, "send one Idempotency-Key header, not 2"},
		{"non-ASCII Idempotency-Key", "POST", "/v1/auth/exchange", `{}`, []string{"Authorization", "Bearer blg_auto_x", "Idempotency-Key", "kl\xc3\xa9"}, "Idempotency-Key header may hold printable ASCII"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.cred.mu.Lock()
			e.cred.exchange = nil
			e.cred.mu.Unlock()
			m := checkError(t, e.rawRequest(t, c.method, c.path, c.body, c.headers...), 400, codes.InvalidArgument)
			if msg, _ := m["message"].(string); !strings.Contains(msg, c.wantMsg) {
				t.Errorf("message %q, want it to say %q", msg, c.wantMsg)
			}
			e.cred.mu.Lock()
			defer e.cred.mu.Unlock()
			if e.cred.exchange != nil {
				t.Errorf("the service was called with %v", e.cred.exchange)
			}
		})
	}

	// White space after the object is fine; so is valid UTF-8 anywhere.
	r := e.rawRequest(t, "POST", "/v1/auth/exchange", "{\"ttlSeconds\":60} \r\n\t ", "Authorization", "Bearer blg_auto_x")
	if r.status != 200 {
		t.Errorf("trailing white space: %d %s", r.status, r.body)
	}
	r = e.rawRequest(t, "GET", "/v1/workspaces/ws_%C3%A9/audit-events?action=caf%C3%A9", "", "Authorization", "Bearer ok")
	if r.status != 200 {
		t.Errorf("valid UTF-8: %d %s", r.status, r.body)
	}
}

func TestClientEncodingErrorIs400(t *testing.T) {
	e := newEnv(t, nil)
	// Not reachable through checkRequest; the handler's backstop.
	g, err := New(Config{CredentialAddr: e.backends["credential"].addr, AutomationAddr: e.backends["automation"].addr,
		AgentAddr: e.backends["agent"].addr, VaultAddr: e.backends["vault"].addr})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	conn := g.backends[0].conn
	bad := &credentialv1.ExchangeRequest{Scopes: []string{"\xff"}}
	err = conn.Invoke(t.Context(), "/backlog.credential.v1.CredentialService/Exchange", bad, &credentialv1.ExchangeResponse{})
	rec := &headerRecorder{header: http.Header{}}
	req, _ := http.NewRequest("GET", "/x", nil)
	g.errorHandler(t.Context(), nil, nil, rec, req, err)
	if rec.code != 400 || !strings.Contains(rec.body.String(), "not valid UTF-8") {
		t.Errorf("gRPC's encoding error %v answered %d %s, want 400", err, rec.code, rec.body.String())
	}
}

type headerRecorder struct {
	header http.Header
	code   int
	body   strings.Builder
}

func (h *headerRecorder) Header() http.Header         { return h.header }
func (h *headerRecorder) WriteHeader(code int)        { h.code = code }
func (h *headerRecorder) Write(b []byte) (int, error) { return h.body.Write(b) }

func TestEmptyListsOverHTTP(t *testing.T) {
	e := newEnv(t, nil)
	// The fake's whoami has teamIds and no scopes; the audit list is empty.
	r := e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer ok")
	if got := compact(t, r.body); got != `{"kind":"member","workspaceId":"ws_1","subjectId":"mem_1","scopes":[],"teamIds":["t1"]}` {
		t.Errorf("whoami: %s", got)
	}
	r = e.do(t, "GET", "/v1/workspaces/ws_1/audit-events", nil, "Authorization", "Bearer ok")
	if got := compact(t, r.body); got != `{"auditEvents":[],"nextPageToken":"next"}` {
		t.Errorf("audit-events: %s", got)
	}
	r = e.do(t, "GET", "/readyz", nil)
	if m := r.json(t); fmt.Sprint(m["notReady"]) != "[]" {
		t.Errorf("/readyz notReady = %v, want []", m["notReady"])
	}
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return buf.String()
}

func TestWithEmptyLists(t *testing.T) {
	m := newJSONMarshaler(DefaultMaxBodyBytes)
	ts := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	for _, c := range []struct {
		name string
		msg  proto.Message
		want string
	}{
		{"empty list response", &automationv1.ListAutomationsResponse{}, `{"automations":[]}`},
		{"lists inside list elements", &automationv1.ListAutomationsResponse{
			Automations:   []*automationv1.Automation{{Id: "a1", Scopes: []string{"x:y"}, CreatedAt: ts}, {Id: "a2", Suspended: true}},
			NextPageToken: "n",
		}, `{"automations":[{"id":"a1","teamIds":[],"scopes":["x:y"],"createdAt":"2026-01-02T03:04:05Z"},{"id":"a2","teamIds":[],"scopes":[],"suspended":true}],"nextPageToken":"n"}`},
		{"lists inside a message field", &automationv1.GetAutomationResponse{Automation: &automationv1.Automation{Name: "n"}},
			`{"automation":{"name":"n","teamIds":[],"scopes":[]}}`},
		{"unset message stays out", &automationv1.GetAutomationResponse{}, `{}`},
		{"maps", &vaultv1.RunHttpRequestResponse{StatusCode: 204}, `{"statusCode":204,"headers":{},"secretsUsed":[]}`},
		{"present map and list", &vaultv1.RunHttpRequestResponse{Headers: map[string]string{"b": "2", "a": "1"}, SecretsUsed: []string{"s"}},
			`{"headers":{"a":"1","b":"2"},"secretsUsed":["s"]}`},
		{"well-known type", ts, `"2026-01-02T03:04:05Z"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := m.Marshal(c.msg)
			if err != nil {
				t.Fatal(err)
			}
			if got := compact(t, b); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
			// Nothing but the empty collections differs from protojson.
			plain, _ := protojson.Marshal(c.msg)
			if stripEmpty(t, b) != stripEmpty(t, plain) {
				t.Errorf("shape changed beyond empty lists:\n%s\n%s", b, plain)
			}
		})
	}

	t.Run("map of messages, nested", func(t *testing.T) {
		msg := dynamicOuter(t)
		b, err := m.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"byKey":{"k":{"tags":[],"name":"inner"}},"items":[{"tags":["t"]},{"tags":[]}],"nums":[]}`
		if got := compact(t, b); got != want {
			t.Errorf("got  %s\nwant %s", got, want)
		}
	})
}

// stripEmpty decodes JSON and drops every [] and {} value, recursively.
func stripEmpty(t *testing.T, b []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	var strip func(any) any
	strip = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				switch ee := e.(type) {
				case []any:
					if len(ee) == 0 {
						delete(x, k)
						continue
					}
				case map[string]any:
					if len(ee) == 0 {
						delete(x, k)
						continue
					}
				}
				x[k] = strip(e)
			}
		case []any:
			for i := range x {
				x[i] = strip(x[i])
			}
		}
		return v
	}
	out, _ := json.Marshal(strip(v))
	return string(out)
}

// dynamicOuter builds, from a descriptor made here, a message with a map of
// messages, a list of messages, a scalar list and an unset message field.
func dynamicOuter(t *testing.T) *dynamicpb.Message {
	t.Helper()
	s := proto.String
	lbl := func(l descriptorpb.FieldDescriptorProto_Label) *descriptorpb.FieldDescriptorProto_Label { return &l }
	typ := func(x descriptorpb.FieldDescriptorProto_Type) *descriptorpb.FieldDescriptorProto_Type { return &x }
	rep, opt := descriptorpb.FieldDescriptorProto_LABEL_REPEATED, descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL
	str, msg, i32 := descriptorpb.FieldDescriptorProto_TYPE_STRING, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, descriptorpb.FieldDescriptorProto_TYPE_INT32
	fdp := &descriptorpb.FileDescriptorProto{
		Name: s("t.proto"), Package: s("t"), Syntax: s("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: s("Inner"), Field: []*descriptorpb.FieldDescriptorProto{
				{Name: s("tags"), Number: proto.Int32(1), Label: lbl(rep), Type: typ(str), JsonName: s("tags")},
				{Name: s("name"), Number: proto.Int32(2), Label: lbl(opt), Type: typ(str), JsonName: s("name")},
			}},
			{Name: s("Outer"), Field: []*descriptorpb.FieldDescriptorProto{
				{Name: s("by_key"), Number: proto.Int32(1), Label: lbl(rep), Type: typ(msg), TypeName: s(".t.Outer.ByKeyEntry"), JsonName: s("byKey")},
				{Name: s("items"), Number: proto.Int32(2), Label: lbl(rep), Type: typ(msg), TypeName: s(".t.Inner"), JsonName: s("items")},
				{Name: s("one"), Number: proto.Int32(3), Label: lbl(opt), Type: typ(msg), TypeName: s(".t.Inner"), JsonName: s("one")},
				{Name: s("nums"), Number: proto.Int32(4), Label: lbl(rep), Type: typ(i32), JsonName: s("nums")},
			}, NestedType: []*descriptorpb.DescriptorProto{
				{Name: s("ByKeyEntry"), Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)}, Field: []*descriptorpb.FieldDescriptorProto{
					{Name: s("key"), Number: proto.Int32(1), Label: lbl(opt), Type: typ(str), JsonName: s("key")},
					{Name: s("value"), Number: proto.Int32(2), Label: lbl(opt), Type: typ(msg), TypeName: s(".t.Inner"), JsonName: s("value")},
				}},
			}},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		t.Fatal(err)
	}
	outerD, innerD := fd.Messages().ByName("Outer"), fd.Messages().ByName("Inner")
	inner := func(name string, tags ...string) protoreflect.Message {
		m := dynamicpb.NewMessage(innerD)
		if name != "" {
			m.Set(innerD.Fields().ByName("name"), protoreflect.ValueOfString(name))
		}
		l := m.Mutable(innerD.Fields().ByName("tags")).List()
		for _, tg := range tags {
			l.Append(protoreflect.ValueOfString(tg))
		}
		return m
	}
	out := dynamicpb.NewMessage(outerD)
	out.Mutable(outerD.Fields().ByName("by_key")).Map().Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfMessage(inner("inner")))
	items := out.Mutable(outerD.Fields().ByName("items")).List()
	items.Append(protoreflect.ValueOfMessage(inner("", "t")))
	items.Append(protoreflect.ValueOfMessage(inner("")))
	return out
}

func TestServerLimits(t *testing.T) {
	e := newEnv(t, nil)
	g, err := New(Config{
		CredentialAddr: e.backends["credential"].addr, AutomationAddr: e.backends["automation"].addr,
		AgentAddr: e.backends["agent"].addr, VaultAddr: e.backends["vault"].addr,
		ReadHeaderTimeout: 500 * time.Millisecond, BodyTimeout: time.Second, IdleTimeout: 700 * time.Millisecond,
		MaxHeaderBytes: 4 << 10, MaxBodyBytes: 2 << 10, Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := g.Server()
	go hs.Serve(lis)
	defer hs.Close()
	addr := lis.Addr().String()

	t.Run("slow body", func(t *testing.T) {
		c := dialTCP(t, addr)
		fmt.Fprintf(c, "POST /v1/auth/exchange HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer blg_auto_x\r\nContent-Length: 100\r\n\r\n{")
		start := time.Now()
		go func() { // one byte every 100 ms, never finishing in time
			for i := 0; i < 50; i++ {
				time.Sleep(100 * time.Millisecond)
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		_ = c.SetReadDeadline(start.Add(4 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no response to a body that never came in 4s: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		closed := waitClosed(t, c, 3*time.Second)
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "not received in time") {
			t.Errorf("slow body: %d %s, want 408", resp.StatusCode, b)
		}
		if d := closed.Sub(start); d < 900*time.Millisecond || d > 2500*time.Millisecond {
			t.Errorf("slow body connection closed after %v, want about the 1s body timeout", d)
		}
		if e.cred.exchange != nil {
			t.Error("the service was called")
		}
	})
	t.Run("silent connection", func(t *testing.T) {
		c := dialTCP(t, addr)
		start := time.Now()
		if d := waitClosed(t, c, 3*time.Second).Sub(start); d > 1500*time.Millisecond {
			t.Errorf("a connection that sent nothing was closed after %v, want about the 500ms header timeout", d)
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dialTCP(t, addr)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		start := time.Now()
		if d := waitClosedReader(t, c, br, 3*time.Second).Sub(start); d > 1700*time.Millisecond {
			t.Errorf("an idle keep-alive connection was closed after %v, want about the 700ms idle timeout", d)
		}
	})
	t.Run("header cap", func(t *testing.T) {
		c := dialTCP(t, addr)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 16<<10))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("16 KiB of headers over a 4 KiB cap: %d, want 431", resp.StatusCode)
		}
	})
	t.Run("body cap", func(t *testing.T) {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/auth/exchange", strings.NewReader(`{"scopes":["`+strings.Repeat("a", 3<<10)+`"]}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 || !strings.Contains(string(b), "the limit is 2048 bytes") {
			t.Errorf("3 KiB body over a 2 KiB cap: %d %s, want 413", resp.StatusCode, b)
		}
	})
	t.Run("a slow call to a service is not cut short", func(t *testing.T) {
		// The body deadline is lifted once the body is in: a call that
		// takes longer than BodyTimeout still answers.
		e.cred.mu.Lock()
		e.cred.delay = 1500 * time.Millisecond
		e.cred.mu.Unlock()
		defer func() { e.cred.mu.Lock(); e.cred.delay = 0; e.cred.mu.Unlock() }()
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/auth/exchange", strings.NewReader(`{"ttlSeconds":60}`))
		req.Header.Set("Authorization", "Bearer blg_auto_x")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("slow service call: %d %s", resp.StatusCode, b)
		}
	})
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads until the server closes c and returns when it did.
func waitClosed(t *testing.T, c net.Conn, limit time.Duration) time.Time {
	t.Helper()
	return waitClosedReader(t, c, c, limit)
}

func waitClosedReader(t *testing.T, c net.Conn, r io.Reader, limit time.Duration) time.Time {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %v", limit)
	}
	return time.Now()
}
