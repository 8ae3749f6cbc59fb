package vault_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
	"github.com/backlog/controlplane/services/vault"
)

// TestRunRecordsUseWhileSending: a step's secret.use event (and last-used
// time) is committed while the request is still at the target, not after
// the response: the target holds the request until the event is in the
// audit trail. With the record written after the response, it never is.
// The step then answers with exactly one use event, and a send that fails
// adds a failure event after it.
func TestRunRecordsUseWhileSending(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "api-key", "webhook", newValue("key_"))

	type result struct {
		status int32
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := h.run(ws, owner, "/hold", map[string]string{"X-Api-Key": "{secret:api-key}"})
		done <- result{resp.GetStatusCode(), err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for h.tls.held.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the step never reached the target")
		}
		time.Sleep(2 * time.Millisecond)
	}
	for {
		got := h.auditActions(t, ws, owner, "api-key")
		if len(got) == 2 && got[1] == "secret.use:success" {
			break
		}
		if time.Now().After(deadline) {
			h.tls.unhold()
			t.Fatalf("while the request was at the target, audit = %v: the use was not recorded while sending", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := h.get(t, ws, owner, "api-key"); s.GetLastUsedAt() == nil {
		t.Fatal("last used not set while sending")
	}
	h.tls.unhold()
	r := <-done
	if r.err != nil || r.status != 200 {
		t.Fatalf("step: status %d, %v", r.status, r.err)
	}
	if got := h.auditActions(t, ws, owner, "api-key"); !equal(got, []string{"secret.create:success", "secret.use:success"}) {
		t.Fatalf("audit after the response = %v", got)
	}

	// The target goes away: the use was recorded as the request left, and
	// the failure follows it.
	h.tls.srv.Close()
	_, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:api-key}"})
	if err == nil {
		t.Fatal("a step to a closed server succeeded")
	}
	got := h.auditActions(t, ws, owner, "api-key")
	if !equal(got[len(got)-2:], []string{"secret.use:success", "secret.use:failure"}) {
		t.Fatalf("audit after a failed send = %v", got)
	}
}

// TestRunWithholdsResponseWhenUseNotRecorded: the use's commit fails while
// the request is sent. The target got the request (it left as the commit
// started), but the caller gets no response — STORE_UNAVAILABLE saying it
// was withheld — and the audit trail holds no success that could vanish.
// Once the store commits again, steps answer as before.
func TestRunWithholdsResponseWhenUseNotRecorded(t *testing.T) {
	var db store.Backend
	h := newHarness(t, func(c *vault.Config) {
		open := boltstore.Dir(c.DataDir, zap.NewNop())
		c.Store = func(name string, buckets []store.Bucket) (store.Backend, error) {
			b, err := open(name, buckets)
			db = b
			return b, err
		}
	})
	ws, owner := h.env.NewWorkspace(t, "acme")
	value := newValue("key_")
	h.create(t, ws, owner, "api-key", "webhook", value)

	faults, ok := db.(store.Faults)
	if !ok {
		t.Fatal("the store cannot inject faults")
	}
	faults.SetFault(func() error { return errors.New("injected commit failure") })
	before := h.tls.requests()
	resp, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:api-key}"})
	faults.SetFault(nil)
	wantCode(t, err, codes.Unavailable, "STORE_UNAVAILABLE")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "withheld") || strings.Contains(msg, value) {
		t.Fatalf("message = %q", msg)
	}
	if resp != nil {
		t.Fatalf("a response was returned: %v", resp)
	}
	if h.tls.requests() != before+1 {
		t.Fatalf("the target got %d requests, want 1", h.tls.requests()-before)
	}
	if got := h.auditActions(t, ws, owner, "api-key"); slices.Contains(got, "secret.use:success") {
		t.Fatalf("audit = %v: a use whose commit failed is recorded", got)
	}
	if s := h.get(t, ws, owner, "api-key"); s.GetLastUsedAt() != nil {
		t.Fatal("last used set by a commit that failed")
	}

	if _, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:api-key}"}); err != nil {
		t.Fatalf("after the store recovered: %v", err)
	}
	if got := h.auditActions(t, ws, owner, "api-key"); !slices.Contains(got, "secret.use:success") {
		t.Fatalf("audit after recovery = %v", got)
	}
}
