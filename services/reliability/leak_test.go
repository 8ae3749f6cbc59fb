package reliability

// The leak scan: every flow that exists, at debug log level, collecting every
// credential and secret value created; then none of them may appear in any
// process log, in any response but the one that issued it, in the audit
// trail, or in the raw bytes of any *.db file.

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
)

// issuingRoutes are the routes whose 200 answer hands out a credential once.
var issuingRoutes = []*regexp.Regexp{
	regexp.MustCompile(`^POST /v1/workspaces$`),
	regexp.MustCompile(`^POST /v1/workspaces/[^/]+/members$`),
	regexp.MustCompile(`^POST /v1/workspaces/[^/]+/automations$`),
	regexp.MustCompile(`^POST /v1/workspaces/[^/]+/automations/[^/]+/rotate-secret$`),
	regexp.MustCompile(`^POST /v1/auth/exchange$`),
	regexp.MustCompile(`^POST /v1/workspaces/[^/]+/installations/[^/]+/agents$`),
	regexp.MustCompile(`^POST /v1/workspaces/[^/]+/agents/[^/]+/rotate-key$`),
	regexp.MustCompile(`^POST /v1/agents/self/rotate-key$`),
}

// leakScan collects every response and every secret the test makes.
type leakScan struct {
	mu        sync.Mutex
	responses []*reply
	// issuer maps each credential to the index of the response that issued
	// it (-1: it came from a file, and no response may hold it).
	issuer map[string]int
	// values are secret values stored in the vault: no response may hold them.
	values []string
	// keys are key material from files (the vault's key-encryption key).
	keys [][]byte
	// leaks found while collecting (a credential first seen in a response
	// that does not issue credentials).
	early []string
}

func newLeakScan() *leakScan { return &leakScan{issuer: map[string]int{}} }

func (l *leakScan) onResponse(r *reply) {
	l.mu.Lock()
	defer l.mu.Unlock()
	idx := len(l.responses)
	l.responses = append(l.responses, r)
	issuing := false
	key := r.Method + " " + strings.SplitN(r.Path, "?", 2)[0]
	for _, re := range issuingRoutes {
		if re.MatchString(key) && r.Status == http.StatusOK {
			issuing = true
		}
	}
	for _, m := range credentialRE.FindAll(r.Body, -1) {
		raw := string(m)
		if !wellFormed(raw) {
			continue
		}
		if _, seen := l.issuer[raw]; seen {
			continue // found again by the scan below
		}
		if !issuing {
			l.early = append(l.early, fmt.Sprintf("a %s credential first appeared in the answer to %s (%d), which issues none", kindOf(raw), key, r.Status))
		}
		l.issuer[raw] = idx
	}
}

func (l *leakScan) addFileCredential(raw string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.issuer[raw] = -1
}

func (l *leakScan) addKey(k []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, k)
}

func (l *leakScan) addValue(v string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.values = append(l.values, v)
}

// needle is one form of a secret to search for.
type needle struct {
	what string // description, never the secret
	b    []byte
}

// needles returns every form each collected secret is searched in: the
// credential itself, its body without prefix and checksum, and its decoded
// payload raw, in hex and in base64; a secret value as is, in hex and in
// base64. An encoding that kept any of them would still be a leak.
func (l *leakScan) needles() (creds map[string][]needle, values [][]needle) {
	l.mu.Lock()
	defer l.mu.Unlock()
	creds = map[string][]needle{}
	for raw := range l.issuer {
		p, _ := credfmt.Parse(raw)
		what := fmt.Sprintf("a %s credential", p.Kind)
		ns := []needle{{what, []byte(raw)}}
		if len(p.Body) >= 16 {
			ns = append(ns, needle{what + " (its body)", []byte(p.Body)})
		}
		if payload, err := p.Payload(); err == nil && len(payload) >= 16 {
			ns = append(ns,
				needle{what + " (its raw payload)", payload},
				needle{what + " (its payload in hex)", []byte(hex.EncodeToString(payload))},
				needle{what + " (its payload in base64)", []byte(base64.StdEncoding.EncodeToString(payload)[:20])},
				needle{what + " (its payload in base64url)", []byte(base64.RawURLEncoding.EncodeToString(payload)[:20])},
			)
		}
		creds[raw] = ns
	}
	for _, k := range l.keys {
		values = append(values, []needle{
			{"the vault's key-encryption key", k},
			{"the vault's key-encryption key in hex", []byte(hex.EncodeToString(k))},
			{"the vault's key-encryption key in base64", []byte(base64.StdEncoding.EncodeToString(k))},
		})
	}
	for _, v := range l.values {
		values = append(values, []needle{
			{"a secret value", []byte(v)},
			{"a secret value in hex", []byte(hex.EncodeToString([]byte(v)))},
			{"a secret value in base64", []byte(base64.StdEncoding.EncodeToString([]byte(v)))},
		})
	}
	return creds, values
}

// find reports which needles occur in b.
func find(b []byte, ns []needle) []string {
	var out []string
	for _, n := range ns {
		if bytes.Contains(b, n.b) {
			out = append(out, n.what)
		}
	}
	return out
}

func randomValue(prefix string) string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

func TestLeakScan(t *testing.T) {
	for _, layout := range []string{layoutAll, layoutSplit} {
		t.Run(layout, func(t *testing.T) {
			t.Parallel()
			runLeakScan(t, layout)
		})
	}
}

func runLeakScan(t *testing.T, layout string) {
	// An HTTPS target for HTTP Request steps: it records what it received
	// (to prove substitution happened) and echoes nothing back.
	var gotMu sync.Mutex
	var received []string
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotMu.Lock()
		received = append(received, r.Header.Get("X-Api-Key"))
		gotMu.Unlock()
		_, _ = w.Write([]byte("ok"))
	}))
	defer target.Close()
	caFile := filepath.Join(t.TempDir(), "target-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: target.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	c := newCluster(t, layout, "-vault-egress-allow-private=true", "-vault-egress-ca-file="+caFile)
	scan := newLeakScan()
	c.onResponse = scan.onResponse
	c.start(t)
	scan.addFileCredential(c.OperatorToken)
	svcTok, err := os.ReadFile(c.ServiceTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	scan.addFileCredential(strings.TrimSpace(string(svcTok)))
	scan.addKey(c.kek)
	rc := c.rest()
	flows := runLeakFlows(t, c, rc, scan, target.URL, func() []string {
		gotMu.Lock()
		defer gotMu.Unlock()
		return append([]string(nil), received...)
	})

	// The audit trail of every workspace, every page.
	var audit [][]byte
	for _, ws := range flows.workspaces {
		for page, next := 0, ""; page == 0 || next != ""; page++ {
			r := rc.call(t, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?pageSize=7&pageToken="+url.QueryEscape(next), ws.OwnerToken, nil)
			if r.Status != http.StatusOK {
				t.Fatalf("%s: want 200", r)
			}
			audit = append(audit, r.Body)
			flows.auditEvents += len(r.JSON().list("auditEvents"))
			next = r.JSON().str("nextPageToken")
		}
	}

	c.stop(t) // flush: the stores as they rest
	creds, values := scan.needles()
	if len(scan.early) > 0 {
		for _, e := range scan.early {
			t.Errorf("%s layout: %s", layout, e)
		}
	}
	hits := 0
	report := func(where string, found []string) {
		for _, what := range found {
			hits++
			t.Errorf("%s layout: %s appears in %s", layout, what, where)
		}
	}
	// 1. Process logs: none of them, nor any well-formed credential at all.
	logBytes := 0
	for name, b := range c.Logs() {
		logBytes += len(b)
		for _, ns := range creds {
			report("the log of the "+name+" process", find(b, ns))
		}
		for _, ns := range values {
			report("the log of the "+name+" process", find(b, ns))
		}
		for _, m := range credentialRE.FindAll(b, -1) {
			if wellFormed(string(m)) {
				report("the log of the "+name+" process", []string{"a well-formed " + string(kindOf(string(m))) + " credential"})
			}
		}
	}
	// 2. Every response but the issuing one.
	scan.mu.Lock()
	responses := scan.responses
	scan.mu.Unlock()
	for i, r := range responses {
		where := fmt.Sprintf("the answer to %s %s (%d, response #%d)", r.Method, strings.SplitN(r.Path, "?", 2)[0], r.Status, i)
		for raw, ns := range creds {
			if scan.issuer[raw] != i {
				report(where, find(r.Body, ns))
			}
		}
		for _, ns := range values {
			report(where, find(r.Body, ns))
		}
	}
	// 3. The audit trail.
	for _, b := range audit {
		for _, ns := range creds {
			report("the audit trail", find(b, ns))
		}
		for _, ns := range values {
			report("the audit trail", find(b, ns))
		}
	}
	// 4. The raw bytes of every store.
	dbBytes := 0
	for _, p := range c.dbPaths(t) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dbBytes += len(b)
		rel, _ := filepath.Rel(c.Dir(), p)
		for _, ns := range creds {
			report(rel, find(b, ns))
		}
		for _, ns := range values {
			report(rel, find(b, ns))
		}
	}
	kinds := map[string]int{}
	for raw := range creds {
		kinds[string(kindOf(raw))]++
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(ks)
	t.Logf("%s layout: flows %s; searched %d credentials (%s) and %d secret values and keys, each in up to 6 encodings, through %d log bytes, %d responses, %d audit events, %d store bytes: %d hits",
		layout, strings.Join(flows.ran, ", "), len(creds), strings.Join(ks, " "), len(values), logBytes, len(responses), flows.auditEvents, dbBytes, hits)
	if len(creds) < 10 {
		t.Errorf("only %d credentials were collected: the flows did not run", len(creds))
	}
}

type leakFlows struct {
	workspaces  []workspace
	ran         []string
	auditEvents int
}

// runLeakFlows runs every flow that exists, through REST, as a user would.
func runLeakFlows(t *testing.T, c *cluster, rc *restClient, scan *leakScan, targetURL string, received func() []string) *leakFlows {
	t.Helper()
	out := &leakFlows{}
	ok := func(method, path, token string, body any) obj {
		t.Helper()
		return rc.expect(t, http.StatusOK, method, path, token, body)
	}
	status := func(want int, method, path, token string, body any) {
		t.Helper()
		if r := rc.call(t, method, path, token, body); r.Status != want {
			t.Errorf("%s: want %d", r, want)
		}
	}

	// Workspaces and members.
	ws := rc.createWorkspace(t, c.OperatorToken, "leaky")
	other := rc.createWorkspace(t, c.OperatorToken, "neighbour")
	out.workspaces = []workspace{ws, other}
	p := "/v1/workspaces/" + ws.ID
	ok(http.MethodGet, "/v1/auth/whoami", ws.OwnerToken, nil)
	ok(http.MethodGet, p, ws.OwnerToken, nil)
	_, adminTok := rc.createMember(t, ws, "Ada Admin", "admin")
	memberID, memberTok := rc.createMember(t, ws, "Mo Member", "member")
	ok(http.MethodGet, p+"/members?pageSize=2", adminTok, nil)
	ok(http.MethodPatch, p+"/members/"+memberID, adminTok, map[string]any{"name": "Mo M."})
	ok(http.MethodPatch, p+"/members/"+memberID, ws.OwnerToken, map[string]any{"role": "admin"})
	ok(http.MethodPatch, p+"/members/"+memberID, ws.OwnerToken, map[string]any{"role": "member"})
	goneID, goneTok := rc.createMember(t, ws, "Gone Soon", "member")
	ok(http.MethodDelete, p+"/members/"+goneID, ws.OwnerToken, nil)
	status(http.StatusUnauthorized, http.MethodGet, "/v1/auth/whoami", goneTok, nil)
	status(http.StatusForbidden, http.MethodGet, p+"/members", memberTok, nil)
	status(http.StatusNotFound, http.MethodGet, p, other.OwnerToken, nil)
	// Credentials that fail: garbage, a mistyped one (most of the owner's
	// token with a wrong checksum), and one sent with the wrong scheme.
	status(http.StatusUnauthorized, http.MethodGet, "/v1/auth/whoami", "garbage", nil)
	mangled := ws.OwnerToken[:len(ws.OwnerToken)-1] + "A"
	if strings.HasSuffix(ws.OwnerToken, "A") {
		mangled = ws.OwnerToken[:len(ws.OwnerToken)-1] + "B"
	}
	status(http.StatusUnauthorized, http.MethodGet, "/v1/auth/whoami", mangled, nil)
	status(http.StatusUnauthorized, http.MethodGet, p, "", nil)
	out.ran = append(out.ran, "workspace+members")

	// Automations.
	autoID, secret := rc.createAutomation(t, ws.ID, adminTok, "deploy-bot", "automations:read", "automations:write", "audit:read", "issues:write")
	ap := p + "/automations/" + autoID
	ok(http.MethodGet, ap, memberTok, nil)
	ok(http.MethodGet, p+"/automations", memberTok, nil)
	ok(http.MethodPatch, ap, adminTok, map[string]any{"description": "ships things", "teamIds": []string{"core"}})
	at := rc.exchange(t, secret)
	narrow := ok(http.MethodPost, "/v1/auth/exchange", secret, map[string]any{"ttlSeconds": 120, "scopes": []string{"automations:read"}}).str("accessToken")
	ok(http.MethodGet, ap, narrow, nil)
	ok(http.MethodGet, "/v1/auth/whoami", at, nil)
	ok(http.MethodGet, p+"/automations", at, nil)
	ok(http.MethodGet, p+"/audit-events", at, nil)
	child := ok(http.MethodPost, p+"/automations", at, map[string]any{"name": "child", "scopes": []string{"automations:read"}, "teamIds": []string{"core"}})
	status(http.StatusUnauthorized, http.MethodGet, ap, secret, nil) // a raw secret is never a bearer
	rot := ok(http.MethodPost, ap+"/rotate-secret", ws.OwnerToken, map[string]any{"credentialLabel": "second"})
	status(http.StatusUnauthorized, http.MethodPost, "/v1/auth/exchange", secret, map[string]any{}) // old secret: dead
	status(http.StatusUnauthorized, http.MethodGet, ap, at, nil)                                    // its token: dead
	secret2 := rot.str("secret")
	at2 := rc.exchange(t, secret2)
	ok(http.MethodPatch, ap, ws.OwnerToken, map[string]any{"suspended": true})
	status(http.StatusForbidden, http.MethodGet, ap, at2, nil)
	status(http.StatusForbidden, http.MethodPost, "/v1/auth/exchange", secret2, map[string]any{})
	ok(http.MethodPatch, ap, ws.OwnerToken, map[string]any{"suspended": false})
	ok(http.MethodGet, ap, at2, nil)
	ok(http.MethodDelete, p+"/automations/"+child.str("automation.id"), ws.OwnerToken, nil)
	ok(http.MethodDelete, ap, ws.OwnerToken, nil)
	status(http.StatusUnauthorized, http.MethodGet, ap, at2, nil)
	status(http.StatusUnauthorized, http.MethodPost, "/v1/auth/exchange", secret2, map[string]any{})
	out.ran = append(out.ran, "automations create/read/update/exchange/rotate/suspend/resume/delete")

	{
		inst := ok(http.MethodPost, p+"/installations", ws.OwnerToken, map[string]any{"name": "Helper App", "appId": "app-123"}).str("installation.id")
		ok(http.MethodGet, p+"/installations", memberTok, nil)
		ag := ok(http.MethodPost, p+"/installations/"+inst+"/agents", adminTok, map[string]any{"name": "Triage Agent", "role": "member", "teamIds": []string{"core"}})
		agentID, key, rotSecret := ag.str("agent.id"), ag.str("apiKey"), ag.str("rotationSecret")
		agp := p + "/agents/" + agentID
		ok(http.MethodGet, "/v1/agents/self", key, nil)
		ok(http.MethodGet, p+"/agents", key, nil)
		ok(http.MethodGet, agp, memberTok, nil)
		status(http.StatusUnauthorized, http.MethodGet, "/v1/agents/self", rotSecret, nil) // a rotation secret is never a bearer
		self := ok(http.MethodPost, "/v1/agents/self/rotate-key", key, map[string]any{"rotationSecret": rotSecret})
		key2, rot2 := self.str("apiKey"), self.str("rotationSecret")
		status(http.StatusUnauthorized, http.MethodGet, "/v1/agents/self", key, nil)
		status(http.StatusUnauthorized, http.MethodPost, "/v1/agents/self/rotate-key", key2, map[string]any{"rotationSecret": rotSecret}) // the old one
		byAdmin := ok(http.MethodPost, agp+"/rotate-key", adminTok, map[string]any{})
		key3 := byAdmin.str("apiKey")
		status(http.StatusUnauthorized, http.MethodGet, "/v1/agents/self", key2, nil)
		status(http.StatusUnauthorized, http.MethodPost, "/v1/agents/self/rotate-key", key2, map[string]any{"rotationSecret": rot2}) // the pair the admin replaced
		ok(http.MethodPatch, agp, ws.OwnerToken, map[string]any{"name": "Triage Agent 2"})
		ok(http.MethodPatch, agp, ws.OwnerToken, map[string]any{"suspended": true})
		status(http.StatusForbidden, http.MethodGet, "/v1/agents/self", key3, nil)
		ok(http.MethodPatch, agp, ws.OwnerToken, map[string]any{"suspended": false})
		ok(http.MethodGet, "/v1/agents/self", key3, nil)
		ok(http.MethodPost, agp+"/revoke", ws.OwnerToken, map[string]any{})
		status(http.StatusForbidden, http.MethodGet, "/v1/agents/self", key3, nil)
		out.ran = append(out.ran, "agents register/self/self-rotate/admin-rotate/update/suspend/revoke")
	}

	{
		v1, v2 := randomValue("sv1-"), randomValue("sv2-")
		scan.addValue(v1)
		scan.addValue(v2)
		sp := p + "/secrets/hook-key"
		ok(http.MethodPost, p+"/secrets", adminTok, map[string]any{"name": "hook-key", "kind": "webhook", "description": "partner webhook", "value": v1,
			"expiresAt": time.Now().Add(30 * 24 * time.Hour).UTC().Format(time.RFC3339)})
		ok(http.MethodGet, sp, memberTok, nil)
		ok(http.MethodGet, p+"/secrets?expiringWithin=3600000s", memberTok, nil)
		run := map[string]any{"method": "POST", "url": targetURL + "/hook", "headers": map[string]string{"X-Api-Key": "{secret:hook-key}"}, "body": "{}"}
		ok(http.MethodPost, p+"/http-requests", adminTok, run)
		ok(http.MethodPatch, sp, adminTok, map[string]any{"value": v2})
		run["headers"] = map[string]string{"X-Api-Key": "{{secret:hook-key}}"}
		ok(http.MethodPost, p+"/http-requests", adminTok, run)
		got := received()
		if len(got) != 2 || got[0] != v1 || got[1] != v2 {
			t.Errorf("the HTTP Request target received %d substitutions, not the stored values in order", len(got))
		}
		ok(http.MethodPost, sp+"/revoke", adminTok, map[string]any{})
		if r := rc.call(t, http.MethodPost, p+"/http-requests", adminTok, run); r.Status == http.StatusOK {
			t.Errorf("%s: a revoked secret was used", r)
		}
		ok(http.MethodDelete, sp, adminTok, nil)
		if r := rc.call(t, http.MethodPost, p+"/http-requests", adminTok, run); r.Status == http.StatusOK {
			t.Errorf("%s: a deleted secret was used", r)
		}
		out.ran = append(out.ran, "secrets create/read/list/use/rotate/revoke/delete")
	}
	ok(http.MethodGet, p+"/audit-events?action=automation.rotate_secret", ws.OwnerToken, nil)
	out.ran = append(out.ran, "audit")
	return out
}

// TestLeakScannerFindsPlantedSecrets proves the scan would see a leak in
// each of the encodings it searches (a scan that finds nothing proves
// nothing unless it can find something).
func TestLeakScannerFindsPlantedSecrets(t *testing.T) {
	scan := newLeakScan()
	raw := credfmt.New(credfmt.Automation)
	scan.addFileCredential(raw)
	value := randomValue("planted-")
	scan.addValue(value)
	creds, values := scan.needles()
	p, _ := credfmt.Parse(raw)
	payload, _ := p.Payload()
	for name, blob := range map[string]string{
		"raw":            `{"msg":"x","token":"` + raw + `"}`,
		"body":           "Bearer blg_auto_" + p.Body + "XXXXXX",
		"payload":        "\x00\x01" + string(payload) + "\x02",
		"payload hex":    hex.EncodeToString(payload),
		"payload base64": "k=" + base64.StdEncoding.EncodeToString(payload),
		"payload b64url": base64.RawURLEncoding.EncodeToString(payload),
		"value":          "header: " + value,
		"value hex":      hex.EncodeToString([]byte(value)),
		"value base64":   base64.StdEncoding.EncodeToString([]byte(value)),
	} {
		found := find([]byte(blob), creds[raw])
		for _, ns := range values {
			found = append(found, find([]byte(blob), ns)...)
		}
		if len(found) == 0 {
			t.Errorf("the scanner missed a planted %s", name)
		}
	}
}
