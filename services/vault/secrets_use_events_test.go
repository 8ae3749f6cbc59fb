package vault_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/vault"
)

// suDelivery is one POST an event receiver got.
type suDelivery struct {
	body      []byte
	signature string
	at        time.Time
}

// suReceiver is a local HTTPS endpoint receiving deliveries; the first
// failFirst requests answer 500.
type suReceiver struct {
	srv       *httptest.Server
	mu        sync.Mutex
	got       []suDelivery
	failFirst atomic.Int64
}

func suNewReceiver(t *testing.T) *suReceiver {
	r := &suReceiver{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if r.failFirst.Add(-1) >= 0 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, suDelivery{body: b, signature: req.Header.Get("Backlog-Signature"), at: time.Now()})
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

type suEvent struct {
	ID          string            `json:"id"`
	Type        string            `json:"type"`
	WorkspaceID string            `json:"workspaceId"`
	OccurredAt  string            `json:"occurredAt"`
	Data        map[string]string `json:"data"`
}

func (r *suReceiver) events(t *testing.T) []suEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []suEvent
	for _, d := range r.got {
		var e suEvent
		if err := json.Unmarshal(d.body, &e); err != nil {
			t.Fatalf("delivery body %q: %v", d.body, err)
		}
		out = append(out, e)
	}
	return out
}

// suWait polls cond for up to 10 seconds.
func suWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// suVerify is the verification documented in docs/operations.md: parse
// t and v1, refuse a timestamp more than tolerance away, compare the
// HMAC-SHA256 of "<t>.<body>" in constant time.
func suVerify(secret, header string, body []byte, now time.Time, tolerance time.Duration) bool {
	var ts, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return false
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return false
	}
	want, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	return hmac.Equal(m.Sum(nil), want)
}

func suFast(c *vault.Config) {
	c.EventPoll, c.ReminderInterval, c.DeliveryBackoff, c.DeliveryAttempts = 20*time.Millisecond, 20*time.Millisecond, 30*time.Millisecond, 4
}

func TestSecretsUseEventSubscriptionsSignedDeliveries(t *testing.T) {
	h := newHarness(t, suFast)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, "member")
	rcv := suNewReceiver(t)
	rcv.failFirst.Store(2) // the first two attempts fail: retried with backoff

	sub, err := h.client.CreateEventSubscription(as(bg(), owner), &vaultv1.CreateEventSubscriptionRequest{
		WorkspaceId: ws, Url: rcv.srv.URL + "/hooks", Events: []string{"secret.created", "secret.deleted"},
	})
	if err != nil {
		t.Fatal(err)
	}
	secret := sub.GetSigningSecret()
	if !strings.HasPrefix(secret, "blg_whsec_") {
		t.Fatalf("signing secret %q", secret)
	}
	_, err = h.client.CreateEventSubscription(as(bg(), member), &vaultv1.CreateEventSubscriptionRequest{WorkspaceId: ws, Url: rcv.srv.URL, Events: []string{"*"}})
	wantCode(t, err, codes.PermissionDenied, "")
	for _, bad := range []*vaultv1.CreateEventSubscriptionRequest{
		{Url: strings.Replace(rcv.srv.URL, "https", "http", 1), Events: []string{"*"}},
		{Url: rcv.srv.URL, Events: []string{"secret.exploded"}},
		{Url: rcv.srv.URL},
	} {
		bad.WorkspaceId = ws
		_, err := h.client.CreateEventSubscription(as(bg(), owner), bad)
		wantCode(t, err, codes.InvalidArgument, "")
	}
	got, err := h.client.GetEventSubscription(as(bg(), owner), &vaultv1.GetEventSubscriptionRequest{WorkspaceId: ws, SubscriptionId: sub.GetSubscription().GetId()})
	if err != nil || got.GetSubscription().GetUrl() != rcv.srv.URL+"/hooks" {
		t.Fatalf("get = %v %v", got, err)
	}

	value := newValue("val_")
	h.create(t, ws, owner, "HubSpot API key – production", "integration", value)
	h.update(ws, owner, "HubSpot API key – production", &vaultv1.Secret{Description: "not subscribed"}, "description")
	suWait(t, "the created event", func() bool { return len(rcv.events(t)) == 1 })
	ev := rcv.events(t)[0]
	if ev.Type != "secret.created" || ev.WorkspaceID != ws || ev.Data["name"] != "HubSpot API key – production" || ev.ID == "" || ev.OccurredAt == "" {
		t.Fatalf("event = %+v", ev)
	}
	rcv.mu.Lock()
	d := rcv.got[0]
	rcv.mu.Unlock()
	if strings.Contains(string(d.body), value) {
		t.Fatal("a delivery carried the secret's value")
	}
	// The documented verification accepts it, and refuses forgeries and replays.
	if !suVerify(secret, d.signature, d.body, time.Now(), 5*time.Minute) {
		t.Fatalf("genuine delivery refused: %q", d.signature)
	}
	forged := []byte(strings.Replace(string(d.body), "secret.created", "secret.deleted", 1))
	if suVerify(secret, d.signature, forged, time.Now(), 5*time.Minute) {
		t.Fatal("a forged body verified")
	}
	if suVerify("blg_whsec_not_the_secret", d.signature, d.body, time.Now(), 5*time.Minute) {
		t.Fatal("a wrong secret verified")
	}
	if suVerify(secret, d.signature, d.body, time.Now().Add(10*time.Minute), 5*time.Minute) {
		t.Fatal("a replayed delivery verified")
	}
	if vault.Sign(secret, d.at, d.body) == "" {
		t.Fatal("no signature")
	}
	// The delivery log shows the retries.
	suWait(t, "the delivery log", func() bool {
		l, err := h.client.ListEventDeliveries(as(bg(), owner), &vaultv1.ListEventDeliveriesRequest{WorkspaceId: ws, SubscriptionId: sub.GetSubscription().GetId()})
		return err == nil && len(l.GetDeliveries()) == 1 && l.GetDeliveries()[0].GetStatus() == "delivered" && l.GetDeliveries()[0].GetAttempts() == 3
	})
	// Deleted: no more deliveries.
	if _, err := h.client.DeleteEventSubscription(as(bg(), owner), &vaultv1.DeleteEventSubscriptionRequest{WorkspaceId: ws, SubscriptionId: sub.GetSubscription().GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "HubSpot API key – production"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(rcv.events(t)); n != 1 {
		t.Fatalf("%d deliveries after the subscription was deleted", n)
	}
	if strings.Contains(h.responsesSeen(), value) || strings.Contains(h.logs.String(), secret) || strings.Contains(h.logs.String(), value) {
		t.Fatal("a value or the signing secret leaked")
	}
}

func TestSecretsUseSubscriptionEgressGuard(t *testing.T) {
	h := newHarness(t, func(c *vault.Config) { c.EgressAllowPrivate = false })
	ws, owner := h.env.NewWorkspace(t, "acme")
	for _, u := range []string{"https://127.0.0.1:8443/x", "https://10.1.2.3/x", "https://[::1]/x", "https://169.254.169.254/x", "https://localhost/x"} {
		_, err := h.client.CreateEventSubscription(as(bg(), owner), &vaultv1.CreateEventSubscriptionRequest{WorkspaceId: ws, Url: u, Events: []string{"*"}})
		wantCode(t, err, codes.InvalidArgument, "")
	}
}

// Reminders at 30, 7 and 1 days before expiry and at expiry, each once,
// across a restart; a secret created inside a threshold gets that one.
func TestSecretsUseExpiryRemindersOnceAcrossRestart(t *testing.T) {
	h := newHarness(t, suFast)
	ws, owner := h.env.NewWorkspace(t, "acme")
	rcv := suNewReceiver(t)
	if _, err := h.client.CreateEventSubscription(as(bg(), owner), &vaultv1.CreateEventSubscriptionRequest{
		WorkspaceId: ws, Url: rcv.srv.URL, Events: []string{"secret.expiring", "secret.expired"},
	}); err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	start := h.clock.Now()
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "Rotating key", Kind: "webhook", Value: newValue("r_"), ExpiresAt: ts(start.Add(40 * day))}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "Short lived", Kind: "webhook", Value: newValue("s_"), ExpiresAt: ts(start.Add(5 * day))}); err != nil {
		t.Fatal(err)
	}
	seen := func() []string {
		var out []string
		for _, e := range rcv.events(t) {
			label := e.Data["threshold"]
			if e.Type == "secret.expired" {
				label = "expired"
			}
			out = append(out, e.Data["name"]+"@"+label)
		}
		return out
	}
	has := func(want ...string) func() bool {
		return func() bool {
			got := seen()
			slices.Sort(got)
			slices.Sort(want)
			return equal(got, want)
		}
	}
	// Created inside 7 days: that reminder only, once.
	suWait(t, "the 7d reminder of the short-lived secret", has("Short lived@7d"))
	h.clock.Advance(11 * day) // 29 days left
	suWait(t, "the 30d reminder", has("Short lived@7d", "Short lived@expired", "Rotating key@30d"))
	// A restart raises nothing again.
	h.restart(suFast)
	time.Sleep(300 * time.Millisecond)
	if got := seen(); len(got) != 3 {
		t.Fatalf("after restart: %v", got)
	}
	h.clock.Advance(23 * day) // 6 days left
	suWait(t, "the 7d reminder", has("Short lived@7d", "Short lived@expired", "Rotating key@30d", "Rotating key@7d"))
	h.clock.Advance(5*day + time.Hour) // 23h left
	suWait(t, "the 1d reminder", has("Short lived@7d", "Short lived@expired", "Rotating key@30d", "Rotating key@7d", "Rotating key@1d"))
	h.restart(suFast)
	h.clock.Advance(day)
	suWait(t, "the expired event", has("Short lived@7d", "Short lived@expired", "Rotating key@30d", "Rotating key@7d", "Rotating key@1d", "Rotating key@expired"))
	time.Sleep(300 * time.Millisecond)
	if got := seen(); len(got) != 6 {
		t.Fatalf("a reminder came twice: %v", got)
	}
}

func TestSecretsUseWatchAndPublishEvents(t *testing.T) {
	h := newHarness(t, suFast)
	ws, owner := h.env.NewWorkspace(t, "acme")
	stream, err := h.internal.WatchEvents(bg(), &vaultv1.WatchEventsRequest{WorkspaceId: ws})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	h.create(t, ws, owner, "followed", "webhook", newValue("f_"))
	if _, err := h.internal.PublishEvent(bg(), &vaultv1.PublishEventRequest{WorkspaceId: ws, Type: "agent.key_rotated", Caller: "agent",
		Data: map[string]string{"agentId": "agt_123", "agentName": "Triage bot"}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"secret.created", "agent.key_rotated"} {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetEvent().GetType() != want || m.GetEvent().GetWorkspaceId() != ws {
			t.Fatalf("streamed %v, want %s", m.GetEvent(), want)
		}
	}
	_, err = h.stranger.PublishEvent(bg(), &vaultv1.PublishEventRequest{WorkspaceId: ws, Type: "agent.key_rotated"})
	if err == nil {
		t.Fatal("published without the service credential")
	}
	for _, bad := range []*vaultv1.PublishEventRequest{
		{WorkspaceId: ws, Type: "secret.created"},
		{WorkspaceId: ws, Type: "credential.revoked", Data: map[string]string{"token": credfmt.New(credfmt.Personal)}},
	} {
		_, err := h.internal.PublishEvent(bg(), bad)
		wantCode(t, err, codes.InvalidArgument, "")
	}
}

func TestSecretsUseSubscriptionIdempotencyKey(t *testing.T) {
	h := newHarness(t, suFast)
	ws, owner := h.env.NewWorkspace(t, "acme")
	rcv := suNewReceiver(t)
	ctx := metadata.AppendToOutgoingContext(as(bg(), owner), "idempotency-key", "sub-create-1")
	req := &vaultv1.CreateEventSubscriptionRequest{WorkspaceId: ws, Url: rcv.srv.URL, Events: []string{"*"}}
	first, err := h.client.CreateEventSubscription(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := h.client.CreateEventSubscription(ctx, req)
	if err != nil || again.GetSigningSecret() != first.GetSigningSecret() || again.GetSubscription().GetId() != first.GetSubscription().GetId() {
		t.Fatalf("retry = %v %v", again.GetSubscription(), err)
	}
	l, _ := h.client.ListEventSubscriptions(as(bg(), owner), &vaultv1.ListEventSubscriptionsRequest{WorkspaceId: ws})
	if len(l.GetSubscriptions()) != 1 {
		t.Fatalf("%d subscriptions after a retry", len(l.GetSubscriptions()))
	}
	_, err = h.client.CreateEventSubscription(ctx, &vaultv1.CreateEventSubscriptionRequest{WorkspaceId: ws, Url: rcv.srv.URL, Events: []string{"secret.created"}})
	wantCode(t, err, codes.FailedPrecondition, "IDEMPOTENCY_KEY_REUSED")
	if strings.Contains(h.logs.String(), first.GetSigningSecret()) {
		t.Fatal("the signing secret was logged")
	}
}
