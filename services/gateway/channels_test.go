package gateway

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
)

// countingChannel is a channel of Config.Channels: it counts the calls it
// carries over a plain connection (no interceptors, no credentials of its
// own), so what reaches the service is what the gateway put on the call.
type countingChannel struct {
	cc    *grpc.ClientConn
	calls atomic.Int64
}

func (c *countingChannel) Invoke(ctx context.Context, method string, req, reply any, opts ...grpc.CallOption) error {
	c.calls.Add(1)
	return c.cc.Invoke(ctx, method, req, reply, opts...)
}

func (c *countingChannel) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c.calls.Add(1)
	return c.cc.NewStream(ctx, desc, method, opts...)
}

// TestChannelsCarryAPICalls: a service given a channel gets the API calls
// over it, with the metadata the gateway forwards over a connection and
// nothing else, plus the forwarding credential; /readyz still checks the
// service over its connection.
func TestChannelsCarryAPICalls(t *testing.T) {
	e := newEnv(t, nil)
	cc, err := grpc.NewClient(e.backends["credential"].addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ch := &countingChannel{cc: cc}
	g, err := New(Config{
		CredentialAddr: e.backends["credential"].addr, AutomationAddr: e.backends["automation"].addr,
		AgentAddr: e.backends["agent"].addr, VaultAddr: e.backends["vault"].addr,
		ForwardingToken: "blg_fwd_test", Channels: map[string]grpc.ClientConnInterface{"credential": ch},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	hs := httptest.NewServer(g.Handler())
	defer hs.Close()
	e.url = hs.URL

	r := e.do(t, "POST", "/v1/auth/exchange", strings.NewReader(`{"ttlSeconds":600}`),
		"Authorization", "Bearer blg_auto_secret", "Idempotency-Key", "idem-1", "X-Request-Id", "req-ch",
		"X-Custom-Thing", "do-not-forward", "Grpc-Metadata-Smuggled", "no", "X-Backlog-Client-Ip", "6.6.6.6")
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if n := ch.calls.Load(); n != 1 {
		t.Fatalf("%d calls over the channel, want 1", n)
	}
	md := e.cred.lastMD()
	want := map[string]string{
		"authorization": "Bearer blg_auto_secret", "idempotency-key": "idem-1", "x-request-id": "req-ch",
		clientip.MetadataKey: "127.0.0.1", auth.ForwarderKey: "blg_fwd_test",
	}
	for k, v := range want {
		if got := md.Get(k); len(got) != 1 || got[0] != v {
			t.Errorf("metadata %s = %q, want [%q]", k, got, v)
		}
	}
	transport := map[string]bool{":authority": true, "content-type": true, "user-agent": true, "grpc-accept-encoding": true, "grpc-timeout": true}
	for k := range md {
		if _, ok := want[k]; !ok && !transport[k] {
			t.Errorf("unexpected metadata %s = %q", k, md.Get(k))
		}
	}
	// A handler's header reaches the REST response through the channel.
	r = e.do(t, "GET", "/v1/auth/whoami", nil, "Authorization", "Bearer ratelimit-header")
	if r.status != 429 || r.header.Get("Retry-After") != "12" {
		t.Errorf("whoami: %d Retry-After %q, want 429 12", r.status, r.header.Get("Retry-After"))
	}
	if r := e.do(t, "GET", "/readyz", nil); r.status != 200 {
		t.Fatalf("readyz: %d %s", r.status, r.body)
	}
	if n := ch.calls.Load(); n != 2 {
		t.Fatalf("%d calls over the channel, want 2 (health checks go over the connection)", n)
	}
}
