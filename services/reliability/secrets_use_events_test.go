package reliability

// Event subscriptions and expiry reminders (issue 14) through the real
// gateway and a real backlogd: signed deliveries to a local HTTPS
// receiver, verified with the snippet of docs/operations.md (forged and
// replayed deliveries fail it), and reminders that reach the receiver
// exactly once per threshold across a restart, counted in the metrics.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// suReceiver is an HTTPS endpoint on loopback that keeps every delivery.
type suReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []suDelivery
}

type suDelivery struct {
	Body      []byte
	Signature string
	Event     struct {
		ID          string            `json:"id"`
		Type        string            `json:"type"`
		WorkspaceID string            `json:"workspaceId"`
		OccurredAt  string            `json:"occurredAt"`
		Data        map[string]string `json:"data"`
	}
}

func suNewReceiver(t *testing.T) *suReceiver {
	r := &suReceiver{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		d := suDelivery{Body: b, Signature: req.Header.Get("Backlog-Signature")}
		_ = json.Unmarshal(b, &d.Event)
		r.mu.Lock()
		r.got = append(r.got, d)
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *suReceiver) deliveries() []suDelivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]suDelivery(nil), r.got...)
}

// suCount counts deliveries of type (and threshold, for secret.expiring).
func (r *suReceiver) suCount(typ, threshold string) int {
	n := 0
	for _, d := range r.deliveries() {
		if d.Event.Type == typ && (threshold == "" || d.Event.Data["threshold"] == threshold) {
			n++
		}
	}
	return n
}

// verifyBacklogSignature is the snippet of docs/operations.md, verbatim.
func verifyBacklogSignature(secret, header string, body []byte, now time.Time) bool {
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
	if err != nil || now.Sub(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return false // malformed, or too old: a replay
	}
	want, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return hmac.Equal(mac.Sum(nil), want)
}

func suWaitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func suFreeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func suMetric(t *testing.T, addr, line string) bool {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), line)
}

func TestSecretsUseEventsAndRemindersREST(t *testing.T) {
	rcv := suNewReceiver(t)
	tg := &suTarget{srv: rcv.srv}
	tg.caFile = suWriteCA(t, rcv.srv)
	metricsAddr := suFreeAddr(t)
	c, rc, seen := suCluster(t, tg, "-vault-reminder-interval=100ms", "-vault-event-poll=100ms", "-metrics-addr="+metricsAddr)
	ws := rc.createWorkspace(t, c.OperatorToken, "acme")
	base := "/v1/workspaces/" + ws.ID

	// Bad subscriptions.
	suExpectError(t, rc.call(t, http.MethodPost, base+"/event-subscriptions", ws.OwnerToken, map[string]any{"url": "http://example.com/hook", "events": []string{"*"}}), http.StatusBadRequest, "https")
	suExpectError(t, rc.call(t, http.MethodPost, base+"/event-subscriptions", ws.OwnerToken, map[string]any{"url": rcv.srv.URL, "events": []string{"secret.nope"}}), http.StatusBadRequest, "secret.nope")

	o := rc.expect(t, http.StatusOK, http.MethodPost, base+"/event-subscriptions", ws.OwnerToken, map[string]any{"url": rcv.srv.URL + "/backlog", "events": []string{"*"}})
	secret, subID := o.str("signingSecret"), o.str("subscription.id")
	if !strings.HasPrefix(secret, "blg_whsec_") || subID == "" {
		t.Fatalf("subscription = %v", redact(string(rc.call(t, http.MethodGet, base+"/event-subscriptions/"+subID, ws.OwnerToken, nil).Body)))
	}
	if g := rc.call(t, http.MethodGet, base+"/event-subscriptions/"+subID, ws.OwnerToken, nil); g.Status != 200 || strings.Contains(string(g.Body), secret) {
		t.Fatalf("get subscription: %s", g)
	}

	// A secret expiring in 4 seconds: inside the 1-day threshold at once
	// (that reminder only), then expired.
	value := randomValue("exp-")
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/secrets", ws.OwnerToken, map[string]any{
		"name": "Short-lived token", "kind": "webhook", "value": value, "expiresAt": time.Now().Add(4 * time.Second).UTC().Format(time.RFC3339Nano),
	})
	suWaitFor(t, "secret.created and the 1d reminder", 10*time.Second, func() bool {
		return rcv.suCount("secret.created", "") == 1 && rcv.suCount("secret.expiring", "1d") == 1
	})
	suWaitFor(t, "the reminder metric", 5*time.Second, func() bool {
		return suMetric(t, metricsAddr, `backlog_vault_expiry_reminders_total{threshold="1d"} 1`)
	})
	// Restart before the expiry: nothing is raised twice.
	c.stop(t)
	c.start(t)
	suWaitFor(t, "secret.expired", 15*time.Second, func() bool { return rcv.suCount("secret.expired", "") == 1 })
	time.Sleep(time.Second)
	if rcv.suCount("secret.expiring", "") != 1 || rcv.suCount("secret.expired", "") != 1 || rcv.suCount("secret.created", "") != 1 {
		t.Fatalf("deliveries: %v", rcv.deliveries())
	}
	if !suMetric(t, metricsAddr, `backlog_vault_expiry_reminders_total{threshold="expired"} 1`) || suMetric(t, metricsAddr, `threshold="1d"} 1`) {
		t.Fatal("reminder metrics after the restart: want expired 1, no second 1d")
	}
	for _, d := range rcv.deliveries() {
		if d.Event.ID == "" || d.Event.WorkspaceID != ws.ID || d.Event.OccurredAt == "" || d.Event.Data["name"] != "Short-lived token" {
			t.Fatalf("delivery %s", d.Body)
		}
		if !verifyBacklogSignature(secret, d.Signature, d.Body, time.Now()) {
			t.Fatalf("a genuine delivery failed verification: %s", d.Signature)
		}
		if strings.Contains(string(d.Body), value) {
			t.Fatal("a delivery carried the value")
		}
	}
	// Forged or replayed deliveries fail the documented verification.
	d := rcv.deliveries()[0]
	forged := []byte(strings.Replace(string(d.Body), `"Short-lived token"`, `"Other"`, 1))
	if verifyBacklogSignature(secret, d.Signature, forged, time.Now()) {
		t.Fatal("a forged body verified")
	}
	if verifyBacklogSignature(secret, d.Signature, d.Body, time.Now().Add(6*time.Minute)) {
		t.Fatal("a replayed delivery verified")
	}
	if verifyBacklogSignature("blg_whsec_guess", d.Signature, d.Body, time.Now()) {
		t.Fatal("a guessed secret verified")
	}

	// The delivery log.
	log := rc.expect(t, http.StatusOK, http.MethodGet, base+"/event-subscriptions/"+subID+"/deliveries", ws.OwnerToken, nil).list("deliveries")
	if len(log) != 3 || log[0].str("status") != "delivered" || log[0].get("lastStatusCode") != float64(204) {
		t.Fatalf("delivery log = %v", log)
	}
	rc.expect(t, http.StatusOK, http.MethodDelete, base+"/event-subscriptions/"+subID, ws.OwnerToken, nil)
	if strings.Contains(seen.String(), value) || c.LogsContain(value) || c.LogsContain(secret) {
		t.Fatal("a value or the signing secret appeared in a later response or a log line")
	}
}

// TestSecretsUseSiblingEventsREST: rotations and revocations made in the
// automation and agent services reach the workspace's subscription, signed.
func TestSecretsUseSiblingEventsREST(t *testing.T) {
	rcv := suNewReceiver(t)
	tg := &suTarget{srv: rcv.srv, caFile: suWriteCA(t, rcv.srv)}
	c, rc, _ := suCluster(t, tg, "-vault-event-poll=100ms")
	ws := rc.createWorkspace(t, c.OperatorToken, "acme")
	base := "/v1/workspaces/" + ws.ID
	subBody := map[string]any{"url": rcv.srv.URL, "events": []string{"automation.secret_rotated", "agent.key_rotated", "credential.revoked"}}
	first := rc.call(t, http.MethodPost, base+"/event-subscriptions", ws.OwnerToken, subBody, "Idempotency-Key", "su-sub-1")
	again := rc.call(t, http.MethodPost, base+"/event-subscriptions", ws.OwnerToken, subBody, "Idempotency-Key", "su-sub-1")
	o := first.JSON()
	secret := o.str("signingSecret")
	if first.Status != 200 || again.Status != 200 || again.JSON().str("signingSecret") != secret || again.JSON().str("subscription.id") != o.str("subscription.id") {
		t.Fatalf("a retry with the same Idempotency-Key: %s / %s", first, again)
	}
	if r := rc.call(t, http.MethodPost, base+"/event-subscriptions", ws.OwnerToken, map[string]any{"url": rcv.srv.URL, "events": []string{"*"}}, "Idempotency-Key", "su-sub-1"); r.Status != 422 {
		t.Fatalf("the same key with another body: %s", r)
	}

	autoID, _ := rc.createAutomation(t, ws.ID, ws.OwnerToken, "ci", "automations:read")
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/automations/"+autoID+"/rotate-secret", ws.OwnerToken, map[string]any{})
	inst := rc.expect(t, http.StatusOK, http.MethodPost, base+"/installations", ws.OwnerToken, map[string]any{"name": "Triage app"})
	ag := rc.expect(t, http.StatusOK, http.MethodPost, base+"/installations/"+inst.str("installation.id")+"/agents", ws.OwnerToken,
		map[string]any{"name": "Triage bot", "role": "member"})
	agentID := ag.str("agent.id")
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/agents/"+agentID+"/rotate-key", ws.OwnerToken, map[string]any{})
	rc.expect(t, http.StatusOK, http.MethodPost, base+"/agents/"+agentID+"/revoke", ws.OwnerToken, map[string]any{})

	suWaitFor(t, "the three events", 10*time.Second, func() bool {
		return rcv.suCount("automation.secret_rotated", "") == 1 && rcv.suCount("agent.key_rotated", "") == 1 && rcv.suCount("credential.revoked", "") == 1
	})
	for _, d := range rcv.deliveries() {
		if !verifyBacklogSignature(secret, d.Signature, d.Body, time.Now()) || d.Event.WorkspaceID != ws.ID {
			t.Fatalf("delivery %s", d.Body)
		}
		switch d.Event.Type {
		case "automation.secret_rotated":
			if d.Event.Data["automationId"] != autoID {
				t.Fatalf("automation event %s", d.Body)
			}
		case "agent.key_rotated", "credential.revoked":
			if d.Event.Data["subjectId"] != agentID {
				t.Fatalf("agent event %s", d.Body)
			}
		}
		if credentialRE.Match(d.Body) {
			t.Fatalf("a delivery carried a credential: %s", redact(string(d.Body)))
		}
	}
}
