package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// APIError is an error answer of the REST API.
type APIError struct {
	Status     int
	Code       int
	Message    string
	RetryAfter string
	hint       string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%s (HTTP %d)", msg, e.Status)
}

// Hint says what to do about the error, if anything useful is known.
func (e *APIError) Hint() string { return e.hint }

// transportError: the request may or may not have reached the server, and
// no answer came back (a refused or broken connection, a timeout).
type transportError struct{ error }

func (e *transportError) Unwrap() error { return e.error }

// hintError is an error with a suggestion printed on its own line.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }
func (e *hintError) Hint() string  { return e.hint }

// baseURL is --url, else $BACKLOG_URL, else the profile's url, else the default.
func (a *app) baseURL(p *Profile) (string, error) {
	raw := a.urlFlag
	if raw == "" {
		raw = a.env.Getenv("BACKLOG_URL")
	}
	if raw == "" && p != nil {
		raw = p.URL
	}
	if raw == "" {
		raw = DefaultURL
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("invalid API URL %q: want http(s)://host:port", raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

// request is one REST call.
type request struct {
	method string
	path   string
	query  url.Values
	body   any // nil: no body
	token  string
	// header holds extra request headers (Idempotency-Key).
	header map[string]string
}

// send performs r against the API and returns the raw JSON of a 2xx answer.
func (a *app) send(ctx context.Context, p *Profile, r request) ([]byte, error) {
	base, err := a.baseURL(p)
	if err != nil {
		return nil, err
	}
	u := base + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "backlog-cli")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
		a.warnPlainHTTP(req.URL)
	}
	resp, err := a.env.HTTPClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &hintError{
			err:  &transportError{fmt.Errorf("cannot reach the Backlog API at %s: %v", base, unwrapURLError(err))},
			hint: "is the server running? Start it with `make run`, or point the CLI elsewhere with --url or BACKLOG_URL",
		}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &transportError{fmt.Errorf("read answer of %s %s: %w", r.method, r.path, err)}
	}
	if resp.StatusCode/100 == 2 {
		return raw, nil
	}
	return nil, a.apiError(resp, raw, p)
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (a *app) apiError(resp *http.Response, raw []byte, p *Profile) error {
	e := &APIError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	var body struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &body) == nil {
		e.Code, e.Message = body.Code, body.Message
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		if p != nil && effectiveUse(p) == UseAccess {
			e.hint = "an access token stops working when it expires or its automation is suspended, deleted or given a new secret: run " + a.run("auth exchange --save") + " for a new one"
		} else {
			e.hint = "check the credential of profile " + a.profileName + " with " + a.run("auth status --check")
		}
	case http.StatusForbidden:
		e.hint = a.forbiddenHint(p)
	case http.StatusTooManyRequests:
		if e.RetryAfter != "" {
			e.hint = "rate limited: retry after " + e.RetryAfter + " seconds"
		}
	}
	return e
}

// warnPlainHTTP warns once when a credential goes over plain HTTP to a
// host other than this machine.
func (a *app) warnPlainHTTP(u *url.URL) {
	if u.Scheme != "http" {
		return
	}
	host := u.Hostname()
	if host == "localhost" {
		return
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return
	}
	fmt.Fprintf(a.stderr(), "Warning: sending a credential over plain HTTP to %s; use https:// outside this machine\n", host)
}

// bearer picks the credential of p that resource commands send to route
// ("GET /v1/…"). It refuses an automation secret and an expired access token
// before anything is sent.
func (a *app) bearer(p *Profile, route string) (string, error) {
	use := effectiveUse(p)
	switch use {
	case "":
		return "", withExit(ExitAuth, &hintError{
			err:  fmt.Errorf("profile %s holds no credential", a.profileName),
			hint: "run " + a.run("auth set-token") + " with a Backlog credential, or on a fresh server " + a.run("workspaces create NAME --operator-token-file data/operator-token --save"),
		})
	case UseSecret:
		return "", authErrorf("refusing to send a long-lived automation secret to %s: run %s first", route, a.run("auth exchange --save"))
	case UseAccess:
		if p.AccessToken == "" {
			if p.Secret != "" {
				return "", authErrorf("no access token in profile %s: run %s to exchange its automation secret for one", a.profileName, a.run("auth exchange --save"))
			}
			return "", authErrorf("no access token in profile %s: run %s and %s", a.profileName, a.run("auth set-token blg_auto_…"), a.run("auth exchange --save"))
		}
		if p.AccessTokenExpiresAt != nil && !a.env.Now().Before(*p.AccessTokenExpiresAt) {
			return "", authErrorf("the saved access token expired at %s: run %s to get a new one", fmtTime(*p.AccessTokenExpiresAt), a.run("auth exchange --save"))
		}
		return p.AccessToken, nil
	}
	s, ok := slotByUse(use)
	if !ok {
		return "", authErrorf("profile %s uses unknown credential %q: run %s", a.profileName, use, a.run("auth use access|personal|agent|operator"))
	}
	tok := *s.get(p)
	if tok == "" {
		return "", authErrorf("profile %s is set to use its %s but holds none: run %s or %s another one", a.profileName, s.noun, a.run("auth set-token blg_"+string(s.kind)+"_…"), a.run("auth use"))
	}
	return tok, nil
}

// call sends a resource request with the profile's chosen credential. pathf
// is a format whose first %s is the workspace id; args fill the others. The
// credential check comes first, so a refused credential never waits on a
// missing workspace.
func (a *app) call(ctx context.Context, method, pathf string, args []string, query url.Values, body any) ([]byte, *Profile, error) {
	p, err := a.loadProfile()
	if err != nil {
		return nil, nil, err
	}
	ws := a.workspace
	if ws == "" {
		ws = p.WorkspaceID
	}
	parts := make([]any, 0, len(args)+1)
	if ws == "" {
		parts = append(parts, "{ws}")
	} else {
		parts = append(parts, url.PathEscape(ws))
	}
	for _, s := range args {
		parts = append(parts, url.PathEscape(s))
	}
	path := fmt.Sprintf(pathf, parts...)
	token, err := a.bearer(p, method+" "+path)
	if err != nil {
		return nil, p, err
	}
	if ws == "" {
		return nil, p, withExit(ExitUsage, &hintError{
			err:  fmt.Errorf("no workspace: pass --workspace/-w, or let profile %s learn it", a.profileName),
			hint: a.run("auth exchange --save") + " and " + a.run("auth status --check") + " save the credential's workspace in the profile",
		})
	}
	if lb, ok := body.(lazyBody); ok {
		// Only now, with the credential and workspace settled, ask for
		// what goes in the body (a secret value at a prompt).
		b, err := lb()
		if err != nil {
			return nil, p, err
		}
		body = b
	}
	raw, err := a.send(ctx, p, request{method: method, path: path, query: query, body: body, token: token})
	return raw, p, err
}

// lazyBody makes a request body once the request is known to be sendable.
type lazyBody func() (map[string]any, error)

// fmtTime formats t for people and tests alike: RFC 3339, UTC, seconds.
func fmtTime(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format(time.RFC3339)
}

// forbiddenHint says what may help after a 403: another credential of the
// same profile, or asking for more.
func (a *app) forbiddenHint(p *Profile) string {
	if p == nil {
		return ""
	}
	use := effectiveUse(p)
	switch {
	case use != UsePersonal && p.PersonalToken != "":
		return "profile " + a.profileName + " also holds a personal access token, which acts with your role: " + a.run("auth use personal")
	case use == UseAccess || use == UseSecret:
		return "the access token lacks the scope or team this needs (" + a.run("auth status") + " shows its scopes); an owner or admin can widen the automation's scopes, or act as a person with " + a.run("auth set-token blg_pat_…")
	case use == UseAgent:
		return "the agent's role, scopes or team scope do not allow this, or it is suspended or revoked; act as a person with " + a.run("auth set-token blg_pat_…") + " and " + a.run("auth use personal")
	case use == UsePersonal:
		return "your role does not allow this (members read; owners and admins manage): ask an owner or admin"
	}
	return ""
}
