package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/vault"
)

// The web console, driven in a real browser (Debian's chromium, headless)
// through a real backlogd: every click goes through the gateway's console to
// the services. Controls are found by their visible labels and roles, as a
// person finds them, never by CSS.
//
// The browser talks to the gateway through a recording proxy, so that every
// response the browser ever received can be scanned for secret values:
// a typed secret value must never come back, and a one-time credential must
// appear in exactly one response, the one that issued it.
//
// Without chromium the test skips, unless BACKLOG_REQUIRE_CHROMIUM=1 (set by
// CI), where it fails. BACKLOG_CONSOLE_SCREENSHOTS=DIR writes screenshots
// of the main screens to DIR (docs/console is made that way).

// consoleStepTimeout bounds each browser step.
const consoleStepTimeout = 20 * time.Second

// consoleChromium finds the browser, or skips (fails when it is required).
func consoleChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("BACKLOG_REQUIRE_CHROMIUM") == "1" {
		t.Fatal("chromium is not installed but BACKLOG_REQUIRE_CHROMIUM=1: apt-get install -y chromium")
	}
	t.Skip("chromium is not installed (apt-get install -y chromium); set BACKLOG_REQUIRE_CHROMIUM=1 to fail instead")
	return ""
}

// consoleBrowser starts one headless browser for the whole test.
func consoleBrowser(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// Record Content-Security-Policy violations from the first script on.
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.__csp = []; document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));`,
	}); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// consoleExchange is one response the browser received.
type consoleExchange struct {
	Method, Path string
	Status       int
	Body         []byte
}

// consoleRecorder is a reverse proxy in front of the gateway that keeps
// every response.
type consoleRecorder struct {
	mu   sync.Mutex
	seen []consoleExchange
	base string // the proxy's URL, what the browser opens
}

func consoleProxy(t *testing.T, c *cluster) *consoleRecorder {
	t.Helper()
	target, err := url.Parse(c.URL(""))
	if err != nil {
		t.Fatal(err)
	}
	rec := &consoleRecorder{}
	p := httputil.NewSingleHostReverseProxy(target)
	p.ModifyResponse = func(resp *http.Response) error {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		c.creds.scan(b) // a one-time credential the browser got joins the leak check
		rec.mu.Lock()
		rec.seen = append(rec.seen, consoleExchange{resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, b})
		rec.mu.Unlock()
		return nil
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	rec.base = srv.URL
	return rec
}

func (r *consoleRecorder) all() []consoleExchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]consoleExchange(nil), r.seen...)
}

// containing lists the responses whose body holds s.
func (r *consoleRecorder) containing(s string) []string {
	var out []string
	for _, e := range r.all() {
		if bytes.Contains(e.Body, []byte(s)) {
			out = append(out, fmt.Sprintf("%s %s (%d)", e.Method, e.Path, e.Status))
		}
	}
	return out
}

// consoleB is the browser with the helpers the scenarios use.
type consoleB struct {
	t   *testing.T
	ctx context.Context
	rec *consoleRecorder
	c   *cluster
	// shots, when set, is where screenshots go.
	shots string
}

func (b *consoleB) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, consoleStepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.fail(what, err)
	}
}

func (b *consoleB) fail(what string, err error) {
	b.t.Helper()
	b.t.Fatalf("%s: %v\npage text:\n%s", what, err, b.c.creds.redact(b.text()))
}

// get runs an action that returns a value.
func consoleGet[T any](b *consoleB, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, consoleStepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.fail(what, err)
	}
	return v
}

// poll waits until the expression is truthy.
func (b *consoleB) poll(what, expr string) {
	b.t.Helper()
	consoleGet(b, what, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(consoleStepTimeout-time.Second)))
}

// text is the page's visible text.
func (b *consoleB) text() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
	return s
}

func consoleJS(s string) string { b, _ := json.Marshal(s); return string(b) }

// xpath literal of s (labels hold no double quote).
func consoleX(s string) string { return `"` + s + `"` }

func (b *consoleB) open(path string) {
	b.t.Helper()
	b.run("open "+path, chromedp.Navigate(b.rec.base+path))
}

// consoleFind is a script that marks the first visible element matched by
// an XPath with data-e2e=mark and reports whether it found one.
func consoleFind(xpath, mark string) string {
	return fmt.Sprintf(`(() => {
		const r = document.evaluate(%s, document, null, XPathResult.ORDERED_NODE_SNAPSHOT_TYPE, null);
		for (let i = 0; i < r.snapshotLength; i++) {
			const e = r.snapshotItem(i);
			if (e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden' && !e.disabled) { e.setAttribute('data-e2e', %s); return true; }
		}
		return false;
	})()`, consoleJS(xpath), consoleJS(mark))
}

var consoleMarks int

// mark waits for a visible element matching xpath and returns a CSS
// selector for it.
func (b *consoleB) mark(what, xpath string) string {
	b.t.Helper()
	consoleMarks++
	m := fmt.Sprint(consoleMarks)
	b.poll(what, consoleFind(xpath, m))
	return `[data-e2e="` + m + `"]`
}

func consoleControl(label string) string {
	return fmt.Sprintf(`//*[self::button or self::a or @role="tab"][normalize-space(.)=%s or @aria-label=%s]`, consoleX(label), consoleX(label))
}

func consoleField(label string) string {
	return fmt.Sprintf(`//*[self::input or self::textarea or self::select][@id=//label[normalize-space(.)=%s]/@for]`, consoleX(label))
}

// onMarked finds the first visible element matching xpath and runs f on
// it. A page that re-renders between finding and acting moves the element
// away: it is found again, up to three times.
func (b *consoleB) onMarked(what, xpath string, f func(ctx context.Context, sel chromedp.CSS) error) {
	b.t.Helper()
	for attempt := 1; ; attempt++ {
		sel := b.mark("find "+what, xpath)
		ctx, cancel := context.WithTimeout(b.ctx, 3*time.Second)
		err := f(ctx, chromedp.CSS(sel))
		cancel()
		if err == nil {
			return
		}
		if attempt == 3 {
			b.fail(what, err)
		}
	}
}

// click clicks (with the mouse) the first visible button, link or tab whose
// text or aria-label is label.
func (b *consoleB) click(label string) {
	b.t.Helper()
	b.onMarked("click "+label, consoleControl(label), func(ctx context.Context, sel chromedp.CSS) error {
		return chromedp.Do(ctx, chromedp.Click(sel))
	})
}

// fill sets the visible form control labelled label.
func (b *consoleB) fill(label, value string) {
	b.t.Helper()
	b.onMarked("fill "+label, consoleField(label), func(ctx context.Context, sel chromedp.CSS) error {
		return chromedp.Do(ctx, chromedp.SetValue(sel, value))
	})
}

// dialog answers the open confirmation dialog and returns its text.
func (b *consoleB) dialog(button string) string {
	b.t.Helper()
	b.run("dialog", chromedp.WaitVisible(chromedp.CSS(`dialog[open]`)))
	s := consoleGet(b, "dialog text", chromedp.Text(chromedp.CSS(`dialog[open]`)))
	sel := b.mark("find "+button, fmt.Sprintf(`//dialog[@open]//button[normalize-space(.)=%s]`, consoleX(button)))
	b.run("click "+button, chromedp.Click(chromedp.CSS(sel)))
	b.run("dialog closes", chromedp.WaitNotPresent(chromedp.CSS(`dialog[open]`)))
	return s
}

// openTab goes to Secrets and opens one of its tabs, and waits until that
// tab's list has loaded (not an earlier page still on screen).
func (b *consoleB) openTab(tab string) {
	b.t.Helper()
	settled := func(hash, tab string) string {
		return `location.hash === ` + consoleJS(hash) + ` && (document.querySelector('[role=tab][aria-selected=true]') || {}).innerText === ` + consoleJS(tab) +
			` && !document.body.innerText.includes('Loading…')`
	}
	b.click("Secrets")
	b.poll("secrets page", settled("#/secrets/integration", "Integration Secrets"))
	if tab != "Integration Secrets" {
		b.click(tab)
		b.poll(tab, settled("#/secrets/webhook", tab))
	}
}

// wait waits until the page shows text.
func (b *consoleB) wait(text string) {
	b.t.Helper()
	b.poll("wait for "+text, `document.body && document.body.innerText.includes(`+consoleJS(text)+`)`)
}

// gone waits until the page no longer shows text.
func (b *consoleB) gone(text string) {
	b.t.Helper()
	b.poll("wait for no "+text, `document.body && !document.body.innerText.includes(`+consoleJS(text)+`)`)
}

// has reports whether a visible control labelled label is on the page.
func (b *consoleB) has(label string) bool {
	b.t.Helper()
	return consoleGet(b, "look for "+label, chromedp.Evaluate[bool](consoleFind(consoleControl(label), "probe")))
}

// value reads the visible form control labelled label.
func (b *consoleB) value(label string) string {
	b.t.Helper()
	var v string
	b.onMarked("read "+label, consoleField(label), func(ctx context.Context, sel chromedp.CSS) error {
		var err error
		v, err = chromedp.Run(ctx, chromedp.Value(sel))
		return err
	})
	return v
}

// eval runs a script (a promise is awaited) and decodes its result.
func (b *consoleB) eval(what, js string, out any) {
	b.t.Helper()
	await := true
	raw := consoleGet(b, what, chromedp.Evaluate[json.RawMessage](js, func(p *cdpruntime.EvaluateParams) { p.AwaitPromise = &await }))
	if err := json.Unmarshal(raw, out); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// everything is all the page holds: its markup, every form control's
// value, and what its script can reach in cookies and storage.
func (b *consoleB) everything() string {
	b.t.Helper()
	return consoleGet(b, "read the page", chromedp.Evaluate[string](`document.documentElement.outerHTML + '\n' +
		Array.from(document.querySelectorAll('input, textarea, select')).map((e) => e.value).join('\n') + '\n' +
		'cookie:' + document.cookie + '\n' + JSON.stringify(Object.assign({}, localStorage)) + JSON.stringify(Object.assign({}, sessionStorage))`))
}

// noneOf fails when the page holds any of values (and when the page broke
// its Content-Security-Policy so far).
func (b *consoleB) noneOf(where string, values map[string]string) {
	b.t.Helper()
	if v := b.cspViolations(); len(v) > 0 {
		b.t.Errorf("%s: the page broke its Content-Security-Policy: %v", where, v)
	}
	all := b.everything()
	for what, v := range values {
		if v != "" && strings.Contains(all, v) {
			b.t.Errorf("%s: the page holds %s", where, what)
		}
	}
}

func (b *consoleB) shot(name string) {
	b.t.Helper()
	if b.shots == "" {
		return
	}
	// Pictures for the docs show a credential's kind, never a usable one.
	b.run("settle", chromedp.Sleep(150*time.Millisecond),
		chromedp.Evaluate[chromedp.Void](`document.querySelectorAll('input').forEach((e) => { e.value = e.value.replace(/(blg_[a-z]+_)[0-9A-Za-z]+/g, '$1' + '•'.repeat(24)); })`))
	png := consoleGet(b, "screenshot "+name, chromedp.CaptureScreenshot())
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// cookies are the browser's cookies for the console.
func (b *consoleB) cookies() []*network.Cookie {
	b.t.Helper()
	res, err := chromedp.Call(b.ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{b.rec.base + "/console/"}})
	if err != nil {
		b.fail("cookies", err)
	}
	return res.Cookies
}

// cspViolations returns what the page's policy blocked so far.
func (b *consoleB) cspViolations() []string {
	var v []string
	b.eval("read CSP violations", `window.__csp || []`, &v)
	return v
}

// consoleSecret checks a secret's state through the REST API.
func consoleSecret(t *testing.T, c *cluster, ws workspace, name string) (int, obj) {
	t.Helper()
	r := c.call(t, http.MethodGet, "/v1/workspaces/"+ws.ID+"/secrets/"+url.PathEscape(name), ws.OwnerToken, nil)
	if r.Status != http.StatusOK {
		return r.Status, nil
	}
	return r.Status, r.JSON(t).sub("secret")
}

var consoleRand = regexp.MustCompile(`[^a-z0-9]`)

// consoleValue makes a recognisable secret value.
func consoleValue(what string) string {
	return "console-" + consoleRand.ReplaceAllString(strings.ToLower(what), "") + "-" + fmt.Sprint(time.Now().UnixNano())
}

// consoleSecretLifecycle is seed 004 in one tab: add, view, edit, revoke,
// delete, each through the console, each checked through the REST API.
func consoleSecretLifecycle(t *testing.T, b *consoleB, ws workspace, tab, kind, name string, typed map[string]string) {
	c := b.c
	first, second := consoleValue(name+"one"), consoleValue(name+"two")
	typed[name+" value 1"], typed[name+" value 2"] = first, second

	// "In the left sidebar, click Settings. Under Integrations, select
	// Secrets, then open the … tab. Click Add Secret."
	b.click("Settings")
	b.wait("Integrations")
	b.openTab(tab)
	b.click("Add Secret")
	b.fill("Secret name", name)
	b.fill("Description", "Used by the "+kind+" seed")
	b.fill("Secret value", first)
	b.fill("Expiration date", "2031-01-31")
	if kind == "webhook" {
		b.fill("Allowed hosts", "hooks.example.com, api.example.com:8443")
	}
	if kind == "webhook" {
		b.shot("add-secret")
	}
	b.click("Create Secret")
	b.wait(name)
	b.mark("row", fmt.Sprintf(`//table//a[normalize-space(.)=%s]`, consoleX(name)))
	if kind == "integration" {
		b.shot("secrets")
	}
	st, sec := consoleSecret(t, c, ws, name)
	if st != http.StatusOK || sec.str("kind") != kind || sec.str("state") != "active" || !strings.HasPrefix(sec.str("expiresAt"), "2031-01-31T23:59:59") {
		t.Fatalf("after Create Secret: %d %v", st, sec)
	}
	if hosts := sec.strs("allowedHosts"); kind == "webhook" && (len(hosts) != 2 || !slices.Contains(hosts, "hooks.example.com") || !slices.Contains(hosts, "api.example.com:8443")) {
		t.Errorf("allowed hosts %v", sec.strs("allowedHosts"))
	}
	b.noneOf("the secrets list", map[string]string{"the typed value": first})

	// A duplicate name: the API's 409 in words.
	b.click("Add Secret")
	b.fill("Secret name", name)
	b.fill("Secret value", "dup-"+first)
	typed[name+" duplicate"] = "dup-" + first
	b.click("Create Secret")
	b.wait("Conflict:")
	if v := b.value("Secret value"); v != "" {
		t.Errorf("the Secret value field kept the value after a refused create")
	}
	b.click("Cancel")

	// View.
	b.click(name)
	b.wait("Current version")
	txt := b.text()
	for _, want := range []string{"active", "2031-01-31", "Last used", "Current version", "Used by", "Used by the " + kind + " seed"} {
		if !strings.Contains(txt, want) {
			t.Errorf("details of %q lack %q", name, want)
		}
	}
	if kind == "webhook" && !strings.Contains(txt, "hooks.example.com") {
		t.Errorf("details lack the allowed hosts")
	}
	if kind == "integration" {
		b.shot("secret-details")
	}
	b.noneOf("the secret's details", map[string]string{"the typed value": first})

	// Edit Secret → Update Secret: a new value and description.
	b.click("Edit Secret")
	b.fill("Description", "Rotated by the "+kind+" seed")
	b.fill("Secret value", second)
	b.click("Update Secret")
	b.wait("Rotated by the " + kind + " seed")
	if _, sec = consoleSecret(t, c, ws, name); sec.str("description") != "Rotated by the "+kind+" seed" || consoleVersion(sec) < 2 {
		t.Errorf("after Update Secret: %v", sec)
	}
	b.noneOf("the details after the update", map[string]string{"the first value": first, "the second value": second})
	if kind == "integration" {
		// Version 1's value back, as version 3.
		b.click("Roll back to version 1")
		b.dialog("OK")
		b.wait("restored from 1")
		if _, sec = consoleSecret(t, c, ws, name); consoleVersion(sec) != 3 {
			t.Errorf("after Roll back: version %d, want 3", consoleVersion(sec))
		}
	}

	// Seed 004's webhook secret is used by an action: a saved HTTP Request
	// step that names it, built on the Actions page.
	dependent := "Nothing references this secret"
	if kind == "webhook" {
		b.click("Actions")
		b.wait("No actions yet")
		b.fill("Name", "Notify Zapier")
		b.fill("Method", "POST")
		b.fill("URL", "https://hooks.example.com/catch")
		b.fill("Headers", "Authorization: Bearer {secret:"+name+"}")
		b.click("Add action")
		b.mark("action row", `//table//td[normalize-space(.)="Notify Zapier"]`)
		b.noneOf("the actions list", map[string]string{"the value": second})
		dependent = "Action “Notify Zapier”"
		b.openTab(tab)
		b.click(name)
		b.wait(dependent)
	}

	// Revoke (row action), with its confirmation: Cancel first, then OK.
	b.openTab(tab)
	b.click("Revoke " + name)
	if d := b.dialog("Cancel"); !strings.Contains(d, name) || !strings.Contains(d, dependent) {
		t.Errorf("revoke dialog: %q, want it to name %q", d, dependent)
	}
	if _, sec = consoleSecret(t, c, ws, name); sec.str("state") != "active" {
		t.Fatalf("Cancel revoked the secret: %v", sec)
	}
	b.click("Revoke " + name)
	b.dialog("OK")
	b.poll("revoked row", `!document.querySelector(`+consoleJS(`button[aria-label="Revoke `+name+`"]`)+`)`)
	if _, sec = consoleSecret(t, c, ws, name); sec.str("state") != "revoked" {
		t.Fatalf("after Revoke: %v", sec)
	}

	// Delete (row action).
	b.click("Delete " + name)
	b.dialog("OK")
	b.poll("deleted row", `!document.querySelector(`+consoleJS(`button[aria-label="Delete `+name+`"]`)+`)`)
	if st, _ := consoleSecret(t, c, ws, name); st != http.StatusNotFound {
		t.Fatalf("after Delete: GET answers %d, want 404", st)
	}
}

func TestConsoleBrowser(t *testing.T) {
	exe := consoleChromium(t)
	kek := filepath.Join(t.TempDir(), "vault.kek")
	if err := vault.GenerateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, layoutAll, "-vault-kek-file="+kek)
	ws := c.createWorkspace(t, "Console")
	_, memberTok := c.createMember(t, ws, "Mia Member", "member")
	rec := consoleProxy(t, c)
	b := &consoleB{t: t, ctx: consoleBrowser(t, exe), rec: rec, c: c, shots: os.Getenv("BACKLOG_CONSOLE_SCREENSHOTS")}
	if b.shots != "" {
		if !filepath.IsAbs(b.shots) { // relative to the repository root
			root, err := proctest.RepoRoot()
			if err != nil {
				t.Fatal(err)
			}
			b.shots = filepath.Join(root, b.shots)
		}
		if err := os.MkdirAll(b.shots, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	typed := map[string]string{}   // secret values typed into the console: never sent back
	oneTime := map[string]string{} // credentials the console showed once
	// sub runs a scenario with the browser bound to its own t.
	sub := func(name string, f func(t *testing.T)) {
		if !t.Run(name, func(t *testing.T) { b.t = t; f(t) }) {
			b.t = t
			t.FailNow()
		}
		b.t = t
	}

	sub("headers", func(t *testing.T) {
		noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := noRedirect.Get(c.URL("/"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/console/" {
			t.Errorf("GET /: %d Location %q, want 302 to /console/", resp.StatusCode, resp.Header.Get("Location"))
		}
		for _, p := range []string{"/console/", "/console/assets/app.js", "/console/session", "/console/api/v1/auth/whoami"} {
			r := c.call(t, http.MethodGet, p, "", nil)
			csp := r.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("%s: Content-Security-Policy %q lacks %q", p, csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
				t.Errorf("%s: Content-Security-Policy allows inline or eval: %q", p, csp)
			}
			if r.Header.Get("X-Frame-Options") != "DENY" || r.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("%s: X-Frame-Options %q, X-Content-Type-Options %q", p, r.Header.Get("X-Frame-Options"), r.Header.Get("X-Content-Type-Options"))
			}
		}
		// The page has no inline script, handler or style for the policy to
		// have to allow.
		html := string(c.call(t, http.MethodGet, "/console/", "", nil).Body)
		if regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`).MatchString(html) || regexp.MustCompile(`\son[a-z]+=|\sstyle=`).MatchString(html) {
			t.Errorf("index.html has inline script, handlers or styles")
		}
		// Signed out, the API under /console/api answers 401.
		c.expectError(t, http.StatusUnauthorized, 16, http.MethodGet, "/console/api/v1/workspaces/"+ws.ID+"/secrets", "", nil)
	})

	sub("sign in with a personal access token", func(t *testing.T) {
		b.open("/")
		b.wait("Sign in to Backlog")
		b.shot("sign-in")
		// An automation-style or mistyped token is refused in words.
		b.fill("Personal access token", "blg_auto_nottherightkind")
		b.click("Sign in")
		b.wait("Check the form:")
		b.fill("Personal access token", ws.OwnerToken)
		b.click("Sign in")
		b.wait("Settings")
		b.wait("Integration Secrets")
		b.noneOf("the console after sign-in", map[string]string{"the owner's token": ws.OwnerToken})
		cookies := b.cookies()
		if len(cookies) != 1 {
			t.Fatalf("%d cookies, want the one session cookie", len(cookies))
		}
		ck := cookies[0]
		if !ck.HTTPOnly || ck.SameSite != network.CookieSameSiteStrict || ck.Session || ck.Expires <= float64(time.Now().Unix()) || ck.Path != "/console/" {
			t.Errorf("session cookie: httpOnly %v sameSite %v session %v expires %v path %q", ck.HTTPOnly, ck.SameSite, ck.Session, ck.Expires, ck.Path)
		}
		if strings.Contains(ck.Value, ws.OwnerToken) || strings.Contains(ck.Value, strings.TrimPrefix(ws.OwnerToken, "blg_pat_")) {
			t.Errorf("the session cookie holds the token in the clear")
		}
	})

	sub("seed 004 integration secret", func(t *testing.T) {
		consoleSecretLifecycle(t, b, ws, "Integration Secrets", "integration", "stripe-restricted-key", typed)
	})
	sub("seed 004 webhook secret", func(t *testing.T) {
		consoleSecretLifecycle(t, b, ws, "Webhook Secrets", "webhook", "zapier-signing-secret", typed)
	})

	sub("seed 003 add update delete", func(t *testing.T) {
		name := consoleSeed003Name
		v1, v2 := consoleValue("hubspot1"), consoleValue("hubspot2")
		typed["hubspot 1"], typed["hubspot 2"] = v1, v2
		b.openTab("Integration Secrets")
		b.click("Add Secret")
		b.fill("Secret name", name)
		b.fill("Description", "HubSpot private app token")
		b.fill("Secret value", v1)
		b.click("Create Secret")
		b.mark("row", fmt.Sprintf(`//table//a[normalize-space(.)=%s]`, consoleX(name)))
		// Connect the tool by the secret's name: nobody handles the key.
		b.click("Connections")
		b.wait("No connections yet")
		b.fill("Name", "HubSpot CRM")
		b.fill("Integration", "hubspot")
		b.fill("Secret name", name)
		b.click("Add connection")
		b.mark("connection row", `//table//td[normalize-space(.)="HubSpot CRM"]`)
		b.click(name)
		b.wait("HubSpot private app token")
		b.wait("Connection “HubSpot CRM”")
		b.click("Edit Secret")
		b.fill("Secret value", v2)
		b.click("Update Secret")
		b.wait("Current version")
		if _, sec := consoleSecret(t, c, ws, name); consoleVersion(sec) < 2 {
			t.Errorf("after the update: %v", sec)
		}
		// The secret's own page offers Delete too; its dialog names the
		// connection that would break.
		b.click("Delete")
		if d := b.dialog("OK"); !strings.Contains(d, "Connection “HubSpot CRM”") {
			t.Errorf("the delete dialog does not list the dependent connection: %q", d)
		}
		b.wait("No integration secrets yet")
		if st, _ := consoleSecret(t, c, ws, name); st != http.StatusNotFound {
			t.Errorf("after Delete: %d", st)
		}
	})

	sub("keyboard only", func(t *testing.T) {
		b.open("/console/#/secrets/integration")
		b.wait("No integration secrets yet")
		// Tab to Add Secret and press Enter.
		for i := 0; ; i++ {
			if i == 40 {
				t.Fatal("Add Secret is not reachable with Tab")
			}
			b.run("tab", chromedp.KeyEvent(kb.Tab))
			if consoleGet(b, "focus", chromedp.Evaluate[string](`document.activeElement ? document.activeElement.innerText || '' : ''`)) == "Add Secret" {
				break
			}
		}
		b.run("enter", chromedp.KeyEvent(kb.Enter))
		b.wait("Create Secret")
		v := consoleValue("keyboard")
		typed["keyboard"] = v
		// The form opens with Secret name focused; Tab moves field to field,
		// Enter submits.
		b.run("type", chromedp.KeyEvent("keyboard-made"), chromedp.KeyEvent(kb.Tab), chromedp.KeyEvent("Typed, not clicked"),
			chromedp.KeyEvent(kb.Tab), chromedp.KeyEvent(v), chromedp.KeyEvent(kb.Enter))
		b.mark("row", `//table//a[normalize-space(.)="keyboard-made"]`)
		if _, sec := consoleSecret(t, c, ws, "keyboard-made"); sec.str("description") != "Typed, not clicked" {
			t.Errorf("made by keyboard: %v", sec)
		}
		// Arrow keys move between the tabs.
		b.run("focus tab", chromedp.Focus(chromedp.CSS(b.mark("tab", `//*[@role="tab"][normalize-space(.)="Integration Secrets"]`))), chromedp.KeyEvent(kb.ArrowRight))
		b.mark("webhook tab", `//*[@role="tab"][normalize-space(.)="Webhook Secrets"][@aria-selected="true"]`)
		b.poll("webhook tab focused", `document.activeElement && document.activeElement.innerText === 'Webhook Secrets'`)
		c.expect(t, http.StatusOK, http.MethodDelete, "/v1/workspaces/"+ws.ID+"/secrets/keyboard-made", ws.OwnerToken, nil)
	})

	var autoID string
	sub("automation create and rotate", func(t *testing.T) {
		b.click("Automations")
		b.wait("No automations yet")
		b.click("Create automation")
		b.fill("Name", "deploy-bot")
		b.fill("Description", "Deploys from CI")
		b.fill("Scopes", "automations:read, issues:write")
		b.fill("Team boundaries", "team_platform")
		b.click("Create automation")
		b.wait("it will not be shown again")
		secret := b.value("Automation secret")
		if kindOf(secret) != "auto" {
			t.Fatalf("the automation secret shown is %q", redact(secret))
		}
		oneTime["automation secret"] = secret
		if !b.has("Copy Automation secret") {
			t.Errorf("no Copy button next to the secret")
		}
		b.click("Copy Automation secret")
		b.wait("copied") // "copied to the clipboard" or "Copying was refused … select"
		b.shot("automation-created")
		ex := c.exchange(t, secret, nil)
		autoID = ex.str("automationId")
		// The secret is gone once the page changes.
		b.click("Back to Automations")
		b.wait("deploy-bot")
		b.noneOf("the automations list", map[string]string{"the automation secret": secret})

		b.click("deploy-bot")
		b.wait("Team boundaries")
		b.click("Rotate secret")
		b.dialog("OK")
		b.wait("it will not be shown again")
		rotated := b.value("Automation secret")
		if kindOf(rotated) != "auto" || rotated == secret {
			t.Fatalf("rotation showed %q", redact(rotated))
		}
		oneTime["rotated automation secret"] = rotated
		c.expectError(t, http.StatusUnauthorized, 16, http.MethodPost, "/v1/auth/exchange", secret, nil)
		c.exchange(t, rotated, nil)

		// Update: description, scopes, suspended.
		b.fill("Description", "Deploys from CI, suspended")
		b.run("suspend", chromedp.Click(chromedp.CSS(b.mark("find Suspended", consoleField("Suspended")))))
		b.click("Update automation")
		b.wait("Deploys from CI, suspended")
		a := c.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations/"+autoID, ws.OwnerToken, nil)
		if !a.boolean("automation.suspended") || a.str("automation.description") != "Deploys from CI, suspended" {
			t.Errorf("after Update automation: %v", a)
		}
		b.noneOf("the automation after rotation", map[string]string{"the first secret": secret})
	})

	sub("agent create and dashboard rotation", func(t *testing.T) {
		b.click("Agents")
		b.wait("No app installations yet")
		b.fill("Installation name", "Triage app")
		b.click("Add installation")
		b.wait("Triage app")
		b.click("Create agent")
		b.fill("Name", "triage-agent")
		b.fill("Team scope", "team_support")
		b.click("Create agent")
		b.wait("it will not be shown again")
		key, rot := b.value("API key"), b.value("Rotation secret")
		if kindOf(key) != "agk" || kindOf(rot) != "rot" {
			t.Fatalf("shown: %q %q", redact(key), redact(rot))
		}
		oneTime["agent key"], oneTime["rotation secret"] = key, rot
		self := c.expect(t, http.StatusOK, http.MethodGet, "/v1/agents/self", key, nil)

		b.click("Open “triage-agent”")
		b.wait("Key rotated")
		// Seed 002: both leaked; the owner rotates from the dashboard.
		b.click("Rotate key")
		b.dialog("OK")
		b.wait("it will not be shown again")
		key2, rot2 := b.value("API key"), b.value("Rotation secret")
		if kindOf(key2) != "agk" || key2 == key || kindOf(rot2) != "rot" || rot2 == rot {
			t.Fatalf("rotation showed %q %q", redact(key2), redact(rot2))
		}
		oneTime["rotated agent key"], oneTime["rotated rotation secret"] = key2, rot2
		c.expectError(t, http.StatusUnauthorized, 16, http.MethodGet, "/v1/agents/self", key, nil)
		c.expect(t, http.StatusOK, http.MethodGet, "/v1/agents/self", key2, nil)
		b.shot("agent-rotated")
		b.click("Agents")
		b.wait("triage-agent")
		b.noneOf("the agents list", map[string]string{"the key": key2, "the rotation secret": rot2})
		b.shot("agents")

		// Revoke another agent from its page.
		other := c.create(t, "/v1/workspaces/"+ws.ID+"/installations/"+self.str("agent.installationId")+"/agents", ws.OwnerToken, map[string]any{"name": "retired-agent", "role": "member"})
		otherKey := other.str("apiKey")
		b.open("/console/#/settings")
		b.click("Agents")
		b.click("retired-agent")
		b.wait("Key rotated")
		b.click("Revoke")
		if d := b.dialog("OK"); !strings.Contains(d, "retired-agent") {
			t.Errorf("revoke dialog %q", d)
		}
		b.poll("revoked", `!!document.querySelector('.state.revoked')`)
		if b.has("Rotate key") {
			t.Errorf("a revoked agent still offers Rotate key")
		}
		got := c.expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/agents/"+other.str("agent.id"), ws.OwnerToken, nil)
		if !got.boolean("agent.revoked") {
			t.Errorf("after Revoke: %v", got)
		}
		if r := c.call(t, http.MethodGet, "/v1/agents/self", otherKey, nil); r.Status != http.StatusUnauthorized && r.Status != http.StatusForbidden {
			t.Errorf("a revoked agent's key: %d", r.Status)
		}
	})

	sub("long lists page", func(t *testing.T) {
		for i := range 21 {
			c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{"name": fmt.Sprintf("paged-%02d", i), "scopes": []string{"automations:read"}})
		}
		b.click("Automations")
		b.wait("paged-00")
		b.wait("Page 1")
		b.click("Next page")
		b.wait("Page 2")
		b.click("Previous page")
		b.wait("Page 1")
	})

	sub("audit log and members", func(t *testing.T) {
		b.click("Audit log")
		b.wait("Apply filters")
		b.fill("Action", "automation.rotate_secret")
		b.click("Apply filters")
		b.poll("filtered rows", `(() => { const cells = Array.from(document.querySelectorAll('tbody tr td:nth-child(2)')).map((e) => e.innerText); return cells.length > 0 && cells.every((s) => s === 'automation.rotate_secret'); })()`)
		b.shot("audit-log")
		b.fill("Action", "no.such.action")
		b.click("Apply filters")
		b.wait("No events match these filters")

		b.click("Members")
		b.wait("Mia Member")
		b.fill("Display name", "Ola Admin")
		b.fill("Role", "admin")
		b.click("Add member")
		b.wait("it will not be shown again")
		tok := b.value("Personal access token of Ola Admin")
		if kindOf(tok) != "pat" {
			t.Fatalf("member token %q", redact(tok))
		}
		oneTime["new member's token"] = tok
		who := c.expect(t, http.StatusOK, http.MethodGet, "/v1/auth/whoami", tok, nil)
		if who.str("role") != "admin" {
			t.Errorf("new member: %v", who)
		}
		// Change the role in the row, then remove the member.
		sel := b.mark("role select", `//select[@aria-label="Role of Ola Admin"]`)
		b.run("change role", chromedp.SetValue(chromedp.CSS(sel), "member"),
			chromedp.Evaluate[chromedp.Void](`document.querySelector(`+consoleJS(sel)+`).dispatchEvent(new Event('change'))`))
		b.wait("Ola Admin is now member")
		if who := c.expect(t, http.StatusOK, http.MethodGet, "/v1/auth/whoami", tok, nil); who.str("role") != "member" {
			t.Errorf("after the role change: %v", who)
		}
		b.click("Remove Ola Admin")
		b.dialog("OK")
		b.poll("row removed", `!document.querySelector('button[aria-label="Remove Ola Admin"]')`)
		c.expectError(t, http.StatusUnauthorized, 16, http.MethodGet, "/v1/auth/whoami", tok, nil)
	})

	sub("csrf", func(t *testing.T) {
		b.open("/console/#/secrets/integration")
		b.wait("Integration Secrets")
		// From the console's own page, but without or with a wrong CSRF token.
		var statuses []int
		b.eval("forge", `(async () => {
			const body = JSON.stringify({name: 'csrf-probe', kind: 'integration', value: 'csrf-probe-value'});
			const path = '/console/api/v1/workspaces/`+ws.ID+`/secrets';
			const a = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
			const b = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'wrong'}, body});
			const s = await (await fetch('/console/session')).json();
			const c = await fetch('/console/api/v1/workspaces/`+ws.ID+`/automations', {headers: {'X-CSRF-Token': s.csrfToken}});
			return [a.status, b.status, c.status];
		})()`, &statuses)
		if len(statuses) != 3 || statuses[0] != 403 || statuses[1] != 403 || statuses[2] != 200 {
			t.Errorf("missing/wrong CSRF token, then a read: %v, want [403 403 200]", statuses)
		}
		// With the session cookie and a valid CSRF token, but from another origin.
		cookies := b.cookies()
		var csrf string
		b.eval("csrf token", `fetch('/console/session').then((r) => r.json()).then((s) => s.csrfToken)`, &csrf)
		req, _ := http.NewRequest(http.MethodPost, rec.base+"/console/api/v1/workspaces/"+ws.ID+"/secrets", strings.NewReader(`{"name":"csrf-probe","kind":"integration","value":"csrf-probe-value"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", "http://evil.example")
		req.Header.Set("X-CSRF-Token", csrf)
		for _, ck := range cookies {
			req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a request from another origin: %d, want 403", resp.StatusCode)
		}
		// A real cross-site page that posts a form to the console.
		evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<form method="POST" enctype="text/plain" action="%s/console/api/v1/workspaces/%s/secrets"><input name='{"name":"csrf-probe","kind":"integration","value":"csrf-probe-value","x":"' value='"}'></form><script>document.forms[0].submit()</script>`, rec.base, ws.ID)
		}))
		defer evil.Close()
		evilURL := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
		b.run("cross-site form", chromedp.Navigate(evilURL), chromedp.Sleep(time.Second))
		b.poll("cross-site result", `document.body && /"code"/.test(document.body.innerText)`)
		if st, _ := consoleSecret(t, c, ws, "csrf-probe"); st != http.StatusNotFound {
			t.Errorf("a forged request created a secret: GET answers %d", st)
		}
	})

	sub("csp", func(t *testing.T) {
		b.open("/console/#/settings")
		b.wait("Integrations")
		if v := b.cspViolations(); len(v) != 0 {
			t.Errorf("the console itself broke its policy: %v", v)
		}
		// Markup injected into the page cannot run script.
		var ran bool
		b.eval("inject", `new Promise((resolve) => {
			document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.__pwned = true"><script>window.__pwned = true<\/script>');
			setTimeout(() => resolve(window.__pwned === true), 500);
		})`, &ran)
		if ran {
			t.Errorf("an inline handler ran despite the Content-Security-Policy")
		}
		if v := b.cspViolations(); len(v) == 0 {
			t.Errorf("no violation reported for the injected inline script")
		}
		b.run("reload", chromedp.Reload()) // a fresh document for the next steps
		b.wait("Integrations")
	})

	sub("sign out", func(t *testing.T) {
		b.open("/console/#/settings")
		kept := b.cookies() // a copy of the cookie, as a thief would keep it
		b.click("Sign out")
		b.wait("You are signed out")
		var st int
		b.eval("after sign-out", `fetch('/console/api/v1/auth/whoami').then((r) => r.status)`, &st)
		if st != http.StatusUnauthorized {
			t.Errorf("the API after sign-out: %d, want 401", st)
		}
		req, _ := http.NewRequest(http.MethodGet, rec.base+"/console/api/v1/auth/whoami", nil)
		for _, ck := range kept {
			req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if len(kept) != 1 || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("a copy of the signed-out cookie: %d, want 401", resp.StatusCode)
		}
	})

	sub("member signs in with a one-time link and sees no write controls", func(t *testing.T) {
		cfg := t.TempDir()
		mustCLI(t, backlogSh(t, c, cfg, "auth", "set-token", memberTok), "auth set-token")
		out := backlogSh(t, c, cfg, "console")
		mustCLI(t, out, "console")
		link := strings.TrimSpace(out.stdout)
		if !strings.HasPrefix(link, c.URL("/console/sign-in#code=")) || strings.Contains(link, memberTok) {
			t.Fatalf("./backlog.sh console printed %q", redact(link))
		}
		if !strings.Contains(out.stderr, "works once") {
			t.Errorf("stderr does not say the link works once: %q", out.stderr)
		}
		link = rec.base + strings.TrimPrefix(link, c.URL(""))
		consoleCreateSecret(t, c, ws, "read-only-probe", "integration", typed)
		b.run("open link", chromedp.Navigate(link))
		b.wait("Mia Member")
		b.wait("Integration Secrets")
		addr := consoleGet(b, "address", chromedp.Location())
		if strings.Contains(addr, "code=") {
			t.Errorf("the code stays in the address bar: %q", addr)
		}
		// A member reads names and descriptions, with no write control.
		b.wait("read-only-probe")
		b.shot("member-secrets")
		for _, label := range []string{"Add Secret", "Revoke read-only-probe", "Delete read-only-probe"} {
			if b.has(label) {
				t.Errorf("a member sees %q", label)
			}
		}
		b.click("read-only-probe")
		b.wait("Current version")
		if b.has("Edit Secret") || b.has("Revoke") || b.has("Delete") {
			t.Errorf("a member sees write controls on a secret's page")
		}
		b.click("Automations")
		b.wait("deploy-bot")
		if b.has("Create automation") {
			t.Errorf("a member sees Create automation")
		}
		b.click("deploy-bot")
		b.wait("Team boundaries")
		if b.has("Rotate secret") || b.has("Update automation") {
			t.Errorf("a member sees Rotate secret or Update automation")
		}
		b.click("Agents")
		b.wait("triage-agent")
		b.click("triage-agent")
		b.wait("Key rotated")
		if b.has("Rotate key") || b.has("Revoke") {
			t.Errorf("a member sees Rotate key or Revoke")
		}
		// A forged request, with a valid session and CSRF token, is refused
		// by the API itself.
		var res []any
		b.eval("forged writes", `(async () => {
			const s = await (await fetch('/console/session')).json();
			const h = {'Content-Type': 'application/json', 'X-CSRF-Token': s.csrfToken};
			const ws = '/console/api/v1/workspaces/`+ws.ID+`';
			const a = await fetch(ws + '/secrets', {method: 'POST', headers: h, body: JSON.stringify({name: 'member-forged', kind: 'integration', value: 'member-forged-value'})});
			const b = await fetch(ws + '/automations/`+autoID+`/rotate-secret', {method: 'POST', headers: h, body: '{}'});
			const c = await fetch(ws + '/secrets/' + encodeURIComponent('read-only-probe'), {method: 'DELETE', headers: h});
			return [a.status, b.status, c.status, (await a.json()).message];
		})()`, &res)
		if len(res) != 4 || res[0] != float64(403) || res[1] != float64(403) || res[2] != float64(403) {
			t.Errorf("a member's forged writes: %v, want 403 each", res)
		}
		if st, _ := consoleSecret(t, c, ws, "member-forged"); st != http.StatusNotFound {
			t.Errorf("a member's forged create went through")
		}
		if st, _ := consoleSecret(t, c, ws, "read-only-probe"); st != http.StatusOK {
			t.Errorf("a member's forged delete went through")
		}
		// The link works once.
		b.click("Sign out")
		b.run("reuse link", chromedp.Navigate(link))
		b.wait("already used or expired")
		b.mark("still signed out", consoleField("Personal access token"))
	})

	sub("no secret in any response, page, log or store", func(t *testing.T) {
		for what, v := range typed {
			if where := rec.containing(v); len(where) > 0 {
				t.Errorf("a typed secret value (%s) came back in %v", what, where)
			}
		}
		for what, v := range oneTime {
			if where := rec.containing(v); len(where) != 1 {
				t.Errorf("the %s appears in %d responses (%v), want exactly the one that issued it", what, len(where), where)
			}
		}
		for what, v := range map[string]string{"the owner's token": ws.OwnerToken, "the member's token": memberTok} {
			if where := rec.containing(v); len(where) > 0 {
				t.Errorf("%s appears in %v", what, where)
			}
		}
		if len(rec.all()) < 50 {
			t.Errorf("only %d responses recorded: the proxy did not see the console's traffic", len(rec.all()))
		}
		c.stop(t)
		c.checkLeaks(t)
		for name, log := range c.Logs() {
			for what, v := range typed {
				if bytes.Contains(log, []byte(v)) {
					t.Errorf("the %s process log holds a typed secret value (%s)", name, what)
				}
			}
		}
		for name, db := range c.dbFiles(t) {
			for what, v := range typed {
				if bytes.Contains(db, []byte(v)) {
					t.Errorf("%s holds a typed secret value (%s) in the clear", name, what)
				}
			}
		}
	})
}

// consoleCreateSecret adds a secret through the REST API.
func consoleCreateSecret(t *testing.T, c *cluster, ws workspace, name, kind string, typed map[string]string) {
	t.Helper()
	v := consoleValue(name)
	typed[name] = v
	c.create(t, "/v1/workspaces/"+ws.ID+"/secrets", ws.OwnerToken, map[string]any{"name": name, "kind": kind, "value": v, "description": "made over REST"})
}

// consoleSeed003Name is seed 003's secret, a readable name.
const consoleSeed003Name = "HubSpot API key – production"

// consoleVersion reads a secret's version (an int64: a string in JSON).
func consoleVersion(sec obj) int {
	var n int
	switch v := sec.get("version").(type) {
	case string:
		fmt.Sscan(v, &n)
	case float64:
		n = int(v)
	}
	return n
}

// TestConsoleReplicas runs two gateways (a second, gateway-only process
// beside an all-in-one one, sharing the service token file as replicas do):
// a sign-in link made through one is redeemed through the other, exactly
// once across both, and a session made by one is honoured by the other.
func TestConsoleReplicas(t *testing.T) {
	if binary == "" {
		t.Skip("end-to-end tests need the backlogd binary (not built in -short mode)")
	}
	kek := filepath.Join(t.TempDir(), "vault.kek")
	if err := vault.GenerateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	all := []string{proctest.TargetCredential, proctest.TargetAutomation, proctest.TargetAgent, proctest.TargetVault, proctest.TargetGateway}
	pc, err := proctest.NewCluster(proctest.Config{
		Binary: binary, Dir: t.TempDir(), ReadyTimeout: readyTimeout, StopTimeout: stopTimeout, Logf: t.Logf,
		Layout: proctest.Layout{Name: "two-gateways", Procs: []proctest.ProcSpec{
			{Name: "all", Targets: all},
			{Name: "gateway-2", Targets: []string{proctest.TargetGateway}},
		}},
		Flags: []string{"-vault-kek-file=" + kek},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{Cluster: pc, layout: "two-gateways", creds: newCredSet(), http: &http.Client{Timeout: 10 * time.Second}}
	t.Cleanup(func() {
		c.stop(t)
		if !c.leaksChecked {
			c.checkLeaks(t)
		}
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	c.start(t)
	if c.OperatorToken, err = c.ReadOperatorToken(); err != nil {
		t.Fatal(err)
	}
	c.creds.add(c.OperatorToken)
	ws := c.createWorkspace(t, "Replicas")
	gw1, gw2 := "http://"+pc.Proc("all").Addr(proctest.TargetGateway), "http://"+pc.Proc("gateway-2").Addr(proctest.TargetGateway)

	post := func(base, path, origin string, hdr map[string]string, body string, cookies ...*http.Cookie) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		for _, ck := range cookies {
			req.AddCookie(ck)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(b))
		if bytes.Contains(b, []byte(ws.OwnerToken)) {
			t.Errorf("POST %s%s: the response holds the owner's token", base, path)
		}
		return resp
	}
	// A link made through gateway 1 (as ./backlog.sh console does).
	r := post(gw1, "/console/sign-in-links", "", map[string]string{"Authorization": "Bearer " + ws.OwnerToken}, "")
	if r.StatusCode != http.StatusOK {
		t.Fatalf("make a link: %d", r.StatusCode)
	}
	var link struct{ Path, ExpiresAt string }
	json.NewDecoder(r.Body).Decode(&link)
	code := strings.TrimPrefix(link.Path, "/console/sign-in#code=")
	if code == link.Path || len(code) < 40 {
		t.Fatalf("link path %q", link.Path)
	}
	if exp, err := time.Parse(time.RFC3339, link.ExpiresAt); err != nil || time.Until(exp) > 10*time.Minute || time.Until(exp) < time.Minute {
		t.Errorf("link expires at %q: want a few minutes from now", link.ExpiresAt)
	}
	// Only a personal access token makes one.
	if r := post(gw1, "/console/sign-in-links", "", map[string]string{"Authorization": "Bearer " + c.OperatorToken}, ""); r.StatusCode != http.StatusBadRequest {
		t.Errorf("a link for the operator token: %d, want 400", r.StatusCode)
	}
	if r := post(gw1, "/console/sign-in-links", "", nil, ""); r.StatusCode != http.StatusUnauthorized {
		t.Errorf("a link without a token: %d, want 401", r.StatusCode)
	}

	// Redeemed through gateway 2, from its own page.
	r = post(gw2, "/console/session/redeem", gw2, nil, `{"code":"`+code+`"}`)
	if r.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(r.Body)
		t.Fatalf("redeem through the other gateway: %d %s", r.StatusCode, b)
	}
	var session *http.Cookie
	for _, ck := range r.Cookies() {
		if ck.Name == "backlog_console" {
			session = ck
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.MaxAge <= 0 {
		t.Fatalf("session cookie %+v", session)
	}
	var info struct{ CSRFToken, Role string }
	json.NewDecoder(r.Body).Decode(&info)
	if info.Role != "owner" || info.CSRFToken == "" {
		t.Fatalf("session %+v", info)
	}
	// Once: neither gateway takes it again.
	for _, gw := range []string{gw1, gw2} {
		if r := post(gw, "/console/session/redeem", gw, nil, `{"code":"`+code+`"}`); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("the link redeemed a second time through %s: %d, want 401", gw, r.StatusCode)
		}
	}
	// A redemption from another site is refused before the code is spent.
	r = post(gw1, "/console/sign-in-links", "", map[string]string{"Authorization": "Bearer " + ws.OwnerToken}, "")
	json.NewDecoder(r.Body).Decode(&link)
	code2 := strings.TrimPrefix(link.Path, "/console/sign-in#code=")
	if r := post(gw1, "/console/session/redeem", "http://evil.example", nil, `{"code":"`+code2+`"}`); r.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-site redemption: %d, want 403", r.StatusCode)
	}
	if r := post(gw1, "/console/session/redeem", gw1, nil, `{"code":"`+code2+`"}`); r.StatusCode != http.StatusOK {
		t.Errorf("the link after a refused cross-site try: %d, want 200", r.StatusCode)
	}

	// The session made by gateway 2 works on gateway 1, for reads and, with
	// its CSRF token, for writes.
	get := func(base, path string, ck *http.Cookie) int {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if ck != nil {
			req.AddCookie(ck)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get(gw1, "/console/api/v1/workspaces/"+ws.ID+"/secrets", session); st != http.StatusOK {
		t.Errorf("gateway 1 with gateway 2's session: %d", st)
	}
	body := `{"name":"replica-made","kind":"integration","value":"replica-value-0123456789"}`
	if r := post(gw1, "/console/api/v1/workspaces/"+ws.ID+"/secrets", gw1, map[string]string{"X-CSRF-Token": info.CSRFToken}, body, session); r.StatusCode != http.StatusOK {
		t.Errorf("a write through gateway 1 with gateway 2's session: %d", r.StatusCode)
	}
	// Signing out through gateway 2 ends the session on gateway 1 too.
	r = post(gw2, "/console/session/redeem", gw2, nil, `{"code":"`+code2+`"}`)
	if r.StatusCode != http.StatusUnauthorized {
		t.Errorf("code2 redeemed twice: %d", r.StatusCode)
	}
	if r := post(gw2, "/console/session/sign-out", gw2, map[string]string{"X-CSRF-Token": "wrong"}, "", session); r.StatusCode != http.StatusForbidden {
		t.Errorf("sign-out without the CSRF token: %d, want 403", r.StatusCode)
	}
	if r := post(gw2, "/console/session/sign-out", gw2, map[string]string{"X-CSRF-Token": info.CSRFToken}, "", session); r.StatusCode != http.StatusNoContent {
		t.Errorf("sign-out: %d, want 204", r.StatusCode)
	}
	for _, gw := range []string{gw1, gw2} {
		if st := get(gw, "/console/api/v1/workspaces/"+ws.ID+"/secrets", session); st != http.StatusUnauthorized {
			t.Errorf("%s: the signed-out session answers %d, want 401", gw, st)
		}
	}

	// A tampered cookie is no session.
	bad := *session
	bad.Value = session.Value[:len(session.Value)-2] + "AA"
	if st := get(gw1, "/console/api/v1/workspaces/"+ws.ID+"/secrets", &bad); st != http.StatusUnauthorized {
		t.Errorf("a tampered session cookie: %d, want 401", st)
	}
	// Removing the member ends the session at once, on every gateway.
	memberID, memberTok := c.createMember(t, ws, "Leaving", "admin")
	r = post(gw1, "/console/session", gw1, nil, `{"token":"`+memberTok+`"}`)
	var leaving *http.Cookie
	for _, ck := range r.Cookies() {
		if ck.Name == "backlog_console" {
			leaving = ck
		}
	}
	if r.StatusCode != http.StatusOK || leaving == nil {
		t.Fatalf("sign in with a pasted token: %d", r.StatusCode)
	}
	c.expect(t, http.StatusOK, http.MethodDelete, "/v1/workspaces/"+ws.ID+"/members/"+memberID, ws.OwnerToken, nil)
	for _, gw := range []string{gw1, gw2} {
		if st := get(gw, "/console/session", leaving); st != http.StatusUnauthorized {
			t.Errorf("%s: a removed member's session answers %d, want 401", gw, st)
		}
	}
}
