package e2e

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/backlog/controlplane/services/kit/proctest"
)

// TestCredentialRestartSplit restarts the credential process alone, as a
// rolling deploy would, while the gateway and the automation process keep
// running. While it is down nothing is served from a cache (fail closed:
// 503, never a stale 200); once it is back, the same tokens work again
// without restarting anyone else, and revocation is still immediate.
func TestCredentialRestartSplit(t *testing.T) {
	t.Parallel()
	c := startCluster(t, layoutSplit)
	ws := c.createWorkspace(t, "Acme")
	auto, secret := c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{"name": "survivor", "scopes": []string{"automations:read"}})
	path := "/v1/workspaces/" + ws.ID + "/automations/" + auto.str("id")
	at := c.exchange(t, secret, nil).str("accessToken")
	c.expect(t, http.StatusOK, "GET", path, at, nil) // now in the automation process's cache

	cred := c.ProcFor(proctest.TargetCredential)
	start := time.Now()
	if err := cred.Stop(); err != nil {
		// The credential server's graceful stop waits for the sibling's
		// WatchRevocations stream, which only its own Close would end.
		t.Errorf("SIGTERM to a credential process with a connected automation process: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	}

	// Fail closed. The automation process stops caching the moment its
	// revocation watch breaks; allow it a moment to notice.
	deadline := time.Now().Add(3 * time.Second)
	for {
		r := c.call(t, "GET", path, at, nil)
		if r.Status == http.StatusServiceUnavailable {
			checkErrorBody(t, r, codes.Unavailable)
			break
		}
		if r.Status != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("%s: want 503 while the credential service is down", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.expectError(t, http.StatusServiceUnavailable, codes.Unavailable, "GET", "/v1/auth/whoami", at, nil)
	if r := c.call(t, "GET", "/readyz", "", nil); r.Status != http.StatusServiceUnavailable ||
		!slices.Equal(r.JSON(t).strs("notReady"), []string{"credential"}) {
		t.Errorf("%s: want 503 naming only credential", r)
	}

	if err := cred.Start(context.Background()); err != nil {
		c.dumpLogs(t)
		t.Fatalf("restarting the credential process: %v", err)
	}
	// The gateway and the automation process reconnect on their own.
	waitFor(t, 15*time.Second, func() *reply { return c.call(t, "GET", "/readyz", "", nil) })
	waitFor(t, 15*time.Second, func() *reply { return c.call(t, "GET", path, at, nil) })
	c.expect(t, http.StatusOK, "GET", "/v1/auth/whoami", at, nil)

	// Revocation is as immediate as before the restart.
	c.expect(t, http.StatusOK, "PATCH", path, ws.OwnerToken, map[string]any{"suspended": true})
	c.expectError(t, http.StatusForbidden, codes.PermissionDenied, "GET", path, at, nil)
	c.expectError(t, http.StatusForbidden, codes.PermissionDenied, "GET", "/v1/auth/whoami", at, nil)
}

// waitFor polls call until it answers 200, failing after timeout.
func waitFor(t *testing.T, timeout time.Duration, call func() *reply) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := call()
		if r.Status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not 200 after %v", r, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
