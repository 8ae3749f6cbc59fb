package reliability

// Hardening of the vault's egress (issue 12, item 5 and the step cap of
// item 4), through the real gateway and real backlogd processes: every way
// of writing a forbidden address into an HTTP Request step's URL is refused
// before anything is sent, and one workspace's slow targets cannot take the
// vault from the others.

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// vaultEgressTarget is an HTTPS server on loopback that counts what
// reaches it; requests to /hold wait until unhold (or until the caller
// gives up), any other path answers at once.
type vaultEgressTarget struct {
	srv      *httptest.Server
	caFile   string
	requests atomic.Int64
	held     atomic.Int64
	release  chan struct{}
	once     sync.Once
}

func newVaultEgressTarget(t *testing.T) *vaultEgressTarget {
	t.Helper()
	tg := &vaultEgressTarget{release: make(chan struct{})}
	tg.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/hold" {
			tg.held.Add(1)
			select {
			case <-tg.release:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "ok "+r.URL.Path)
	}))
	t.Cleanup(tg.srv.Close)
	t.Cleanup(tg.unhold) // runs before Close
	tg.caFile = filepath.Join(t.TempDir(), "target-ca.pem")
	if err := os.WriteFile(tg.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tg.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tg
}

func (tg *vaultEgressTarget) unhold() { tg.once.Do(func() { close(tg.release) }) }

// port is ":<port>" of the target.
func (tg *vaultEgressTarget) port() string {
	return tg.srv.URL[strings.LastIndexByte(tg.srv.URL, ':'):]
}

// vaultEgressStep is the body of POST …/http-requests: url, with a header
// that references the workspace's secret "hook-key".
func vaultEgressStep(url string) map[string]any {
	return map[string]any{"method": "POST", "url": url, "headers": map[string]string{"X-Api-Key": "{secret:hook-key}"}, "body": "{}"}
}

func vaultEgressWorkspace(t *testing.T, c *cluster, rc *restClient, name string) workspace {
	t.Helper()
	ws := rc.createWorkspace(t, c.OperatorToken, name)
	rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/secrets", ws.OwnerToken,
		map[string]any{"name": "hook-key", "kind": "webhook", "value": randomValue(name + "-")})
	return ws
}

// TestHardeningVaultEgressDenyList: with the SSRF guard on (the default),
// HTTP Request steps aimed at a loopback HTTPS server — which is up and
// would answer — through every spelling of a non-public address are
// refused with 403 EGRESS_DENIED (or 400 when the URL is ambiguous or
// carries userinfo), and the server receives nothing.
func TestHardeningVaultEgressDenyList(t *testing.T) {
	target := newVaultEgressTarget(t)
	c := startCluster(t, layoutAll, "-vault-egress-ca-file="+target.caFile)
	rc := c.rest()
	ws := vaultEgressWorkspace(t, c, rc, "ssrf")
	path := "/v1/workspaces/" + ws.ID + "/http-requests"
	port := target.port()

	denied := []string{
		target.srv.URL,             // the literal 127.0.0.1
		"https://localhost" + port, // a name resolving to loopback: judged at dial time
		// IPv4 as inet_aton and WHATWG URL parsers read it.
		"https://2130706433" + port,
		"https://2130706433." + port,
		"https://0x7f000001" + port,
		"https://017700000001" + port,
		"https://0177.0.0.1" + port,
		"https://0x7f.0.0.1" + port,
		"https://127.1" + port,
		"https://127.0.1" + port,
		"https://127.000.000.001" + port,
		"https://127.0.0.1." + port, // trailing dot
		"https://0" + port,          // 0.0.0.0 reaches this host
		"https://１２７.０.０.１" + port,  // fullwidth digits and dots, which IDNA maps
		"https://127。0。0。1" + port,
		// IPv6 with an embedded IPv4 address, and zone ids.
		"https://[::1]" + port,
		"https://[::ffff:127.0.0.1]" + port,               // IPv4-mapped
		"https://[::ffff:7f00:1]" + port,                  // the same, in hex
		"https://[::127.0.0.1]" + port,                    // IPv4-compatible ::/96
		"https://[::ffff:0:127.0.0.1]" + port,             // IPv4-translated
		"https://[64:ff9b::127.0.0.1]" + port,             // NAT64 well-known prefix
		"https://[64:ff9b::a9fe:a9fe]/",                   // NAT64 of 169.254.169.254
		"https://[64:ff9b:1::8.8.8.8]/",                   // local-use NAT64
		"https://[2002:7f00:1::1]" + port,                 // 6to4 of 127.0.0.1
		"https://[2002:808:808::1]/",                      // 6to4, deprecated
		"https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", // Teredo
		"https://[fe80::1%25lo]" + port,                   // zone id
		"https://[fe80::1%25eth0]/",
		"https://[::1%25lo]" + port,
		// Cloud metadata, private, shared, documentation, benchmarking.
		"https://169.254.169.254/latest/meta-data/",
		"https://0xa9fea9fe/latest/meta-data/",
		"https://10.0.0.1/", "https://172.16.0.1/", "https://192.168.0.1/", "https://100.64.0.1/",
		"https://192.0.2.1/", "https://198.51.100.1/", "https://203.0.113.1/", "https://[2001:db8::1]/", "https://[3fff::1]/",
		"https://198.18.0.1/", "https://[2001:2::1]/",
		"https://192.0.0.8/", "https://240.0.0.1/", "https://255.255.255.255/", "https://224.0.0.1/",
		"https://[fc00::1]/", "https://[fec0::1]/", "https://[100::1]/", "https://[ff02::1]/",
	}
	for _, u := range denied {
		r := rc.call(t, http.MethodPost, path, ws.OwnerToken, vaultEgressStep(u))
		checkErrorShape(t, r)
		if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "EGRESS_DENIED") {
			t.Errorf("%s: %s; want 403 EGRESS_DENIED", u, r)
		}
	}

	invalid := []string{
		"https://public.example@127.0.0.1" + port, // userinfo: the host is 127.0.0.1
		"https://public.example:443@127.0.0.1" + port,
		"https://127.0.0.1\\@public.example/",
		"https://134744072/", // 8.8.8.8 written as a number: ambiguous
		"https://8.8.8.8./",
		"https://010.8.8.8/",
		"https://1.2.3.4.5/",
		"https://example.123/",
		"https://[127.0.0.1]" + port,
		"https://[fe80::1%eth0]/", // an unescaped zone
	}
	for _, u := range invalid {
		r := rc.call(t, http.MethodPost, path, ws.OwnerToken, vaultEgressStep(u))
		checkErrorShape(t, r)
		if r.Status != http.StatusBadRequest {
			t.Errorf("%s: %s; want 400", u, r)
		}
	}
	if n := target.requests.Load(); n != 0 {
		t.Fatalf("the loopback target received %d requests; the guard must refuse every one before sending", n)
	}

	// Every refused step that got as far as the guard is in the audit
	// trail as a failed use of the secret, without the value.
	events := rc.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?action=secret.use&pageSize=1000", ws.OwnerToken, nil).list("auditEvents")
	refused := 0
	for _, e := range events {
		if e.str("action") == "secret.use" && strings.Contains(e.str("detail"), "egress refused") {
			refused++
		}
	}
	if refused != len(denied) {
		t.Errorf("%d secret.use events record an egress refusal, want %d", refused, len(denied))
	}
}

// TestHardeningVaultStepCap: with -vault-max-steps-per-workspace=3, three
// steps held by a slow loopback HTTPS target fill the workspace; a fourth
// is answered 429 with Retry-After at once and sends nothing, while
// another workspace's steps go through; when the slow ones end, the
// workspace runs steps again.
func TestHardeningVaultStepCap(t *testing.T) {
	const limit = 3
	target := newVaultEgressTarget(t)
	c := startCluster(t, layoutAll, "-vault-egress-allow-private=true", "-vault-egress-ca-file="+target.caFile,
		fmt.Sprintf("-vault-max-steps-per-workspace=%d", limit))
	rc := c.rest()
	busy := vaultEgressWorkspace(t, c, rc, "busy")
	calm := vaultEgressWorkspace(t, c, rc, "calm")
	busyPath, calmPath := "/v1/workspaces/"+busy.ID+"/http-requests", "/v1/workspaces/"+calm.ID+"/http-requests"

	var wg sync.WaitGroup
	results := make(chan string, limit)
	for range limit {
		wg.Go(func() {
			r, err := rc.do(context.Background(), http.MethodPost, busyPath, busy.OwnerToken, vaultEgressStep(target.srv.URL+"/hold"))
			switch {
			case err != nil:
				results <- err.Error()
			case r.Status != http.StatusOK || r.JSON().str("body") != "ok /hold":
				results <- r.String()
			default:
				results <- ""
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for target.held.Load() < limit {
		if time.Now().After(deadline) {
			target.unhold()
			t.Fatalf("only %d of %d slow steps reached the target", target.held.Load(), limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sent := target.requests.Load()

	start := time.Now()
	r := rc.call(t, http.MethodPost, busyPath, busy.OwnerToken, vaultEgressStep(target.srv.URL+"/fast"))
	checkErrorShape(t, r)
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" || !strings.Contains(string(r.Body), "TOO_MANY_HTTP_REQUESTS") {
		t.Errorf("a step beyond the cap: %s (Retry-After %q); want 429 TOO_MANY_HTTP_REQUESTS with Retry-After", r, r.Header.Get("Retry-After"))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the refusal took %s; it must not wait for a slot", d)
	}
	if n := target.requests.Load(); n != sent {
		t.Errorf("the refused step reached the target (%d requests, want %d)", n, sent)
	}

	// Another workspace is unaffected: more steps than the cap, one after
	// another and at once, all answered while the busy workspace is full.
	for range limit + 1 {
		r := rc.call(t, http.MethodPost, calmPath, calm.OwnerToken, vaultEgressStep(target.srv.URL+"/calm"))
		if r.Status != http.StatusOK {
			t.Errorf("another workspace's step while the first is full: %s", r)
		}
	}
	var calmWG sync.WaitGroup
	var calmFailed atomic.Int64
	for range limit {
		calmWG.Go(func() {
			r, err := rc.do(context.Background(), http.MethodPost, calmPath, calm.OwnerToken, vaultEgressStep(target.srv.URL+"/calm"))
			if err != nil || r.Status != http.StatusOK {
				calmFailed.Add(1)
			}
		})
	}
	calmWG.Wait()
	if n := calmFailed.Load(); n != 0 {
		t.Errorf("%d of %d concurrent steps of another workspace failed while the first was full", n, limit)
	}
	if n := target.held.Load(); n != limit {
		t.Fatalf("the slow steps ended early (%d held, want %d): the test proved nothing", n, limit)
	}

	target.unhold()
	wg.Wait()
	close(results)
	for res := range results {
		if res != "" {
			t.Errorf("a slow step: %s", res)
		}
	}
	r = rc.call(t, http.MethodPost, busyPath, busy.OwnerToken, vaultEgressStep(target.srv.URL+"/after"))
	if r.Status != http.StatusOK {
		t.Errorf("after the slow steps ended: %s; want 200", r)
	}
}
