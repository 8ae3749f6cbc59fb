// Package console is the web console the gateway serves at /console/: plain
// HTML, CSS and JavaScript embedded in the binary (nothing from a CDN, no
// build step), talking to the same REST API as the CLI.
//
// Sessions. A browser signs in by pasting a personal access token, or by
// opening a one-time link printed by `backlog console`. The session is a
// cookie (HttpOnly, SameSite=Strict, Secure under TLS, expiring) holding the
// token sealed with AES-256-GCM under a key derived from the gateway's
// forwarding token, which every gateway replica of a deployment shares: any
// replica can open any session, the gateway keeps no state, and the token is
// never in browser storage nor readable by the page's script. A session ends
// when it expires; when the person signs out (the cookie is dropped and the
// credential service remembers the session's id until it would have
// expired, so that a copy of the cookie stops working on every replica: one
// small read per console request); and at once when its token is revoked or
// its member removed: every call through the console is checked by the
// services like any other.
//
// One-time links. The link's code (256 random bits) travels in the URL's
// fragment, so it never reaches a server log or a Referer. The credential
// service keeps the pending sign-in (ConsoleService) under the code's
// SHA-256, sealed by the gateway, with an expiry; redeeming deletes it in the
// same store transaction, so a code works once through any replica.
//
// Requests. /console/api/… is the REST API under another prefix: the console
// takes the token from the session and forwards the call to the same handler
// the REST routes use. Every state-changing request (anything but GET and
// HEAD) must carry the session's CSRF token in X-CSRF-Token and come from the
// console's own origin. Every response carries a strict Content-Security-
// Policy (no inline script or style), X-Frame-Options: DENY and nosniff.
package console

import (
	"context"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/metadata"

	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
)

//go:embed assets
var assets embed.FS

// Paths the console serves.
const (
	Prefix       = "/console/"
	apiPrefix    = "/console/api"
	assetsPrefix = "/console/assets/"
	// CookieName is the session cookie's name.
	CookieName = "backlog_console"
	// CSRFHeader carries the session's CSRF token on state-changing requests.
	CSRFHeader = "X-CSRF-Token"
)

// Defaults of Config fields left zero.
const (
	DefaultSessionTTL = 8 * time.Hour
	DefaultLinkTTL    = 5 * time.Minute
)

// ContentSecurityPolicy is sent with every console response: scripts,
// styles, images and calls only from the console's own origin, no inline
// script or style, no framing, no plugins, forms only to itself.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Config configures the console.
type Config struct {
	// API serves the REST routes (/v1/…); the console forwards its calls
	// there with the session's token.
	API http.Handler
	// SignIns keeps pending one-time sign-ins (the credential service).
	SignIns consolev1.ConsoleServiceClient
	// Secret is what the session and link keys are derived from: shared by
	// every gateway replica (the forwarding token). Empty: a random key per
	// process, so sessions and links work only on the replica that made
	// them and not across restarts (a warning is logged).
	Secret string
	// SessionTTL is a session's lifetime (DefaultSessionTTL); LinkTTL a
	// one-time link's (DefaultLinkTTL, at most 10 minutes).
	SessionTTL time.Duration
	LinkTTL    time.Duration
	Logger     *zap.Logger
	// Metadata is what the gateway forwards to the services for a request
	// (request id, client IP); the console adds it to its own calls.
	Metadata func(*http.Request) metadata.MD
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Console serves the web console. Build it with New.
type Console struct {
	cfg      Config
	lg       *zap.Logger
	sessions *sealer // session cookies
	links    *sealer // pending sign-ins stored by the credential service
	csrfKey  []byte
	static   http.Handler
	index    []byte
}

// New derives the keys and loads the embedded assets.
func New(cfg Config) (*Console, error) {
	if cfg.API == nil || cfg.SignIns == nil {
		return nil, errors.New("console: API handler and sign-in client are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.LinkTTL <= 0 {
		cfg.LinkTTL = DefaultLinkTTL
	}
	if cfg.LinkTTL > 10*time.Minute {
		return nil, fmt.Errorf("console: link TTL %s is longer than 10 minutes", cfg.LinkTTL)
	}
	lg := cfg.Logger.With(zap.String("component", "console"))
	secret := []byte(cfg.Secret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		lg.Warn("the console's sessions and sign-in links hold only on this gateway process and until it restarts: give the gateway a forwarding token (-forwarding-token-file) shared by every replica")
	}
	key := func(label string) ([]byte, error) {
		return hkdf.Key(sha256.New, secret, nil, "backlog console v1 "+label, 32)
	}
	sk, err := key("session")
	if err != nil {
		return nil, err
	}
	lk, err := key("sign-in link")
	if err != nil {
		return nil, err
	}
	ck, err := key("csrf")
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, lg: lg, csrfKey: ck}
	if c.sessions, err = newSealer(sk); err != nil {
		return nil, err
	}
	if c.links, err = newSealer(lk); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	if c.index, err = fs.ReadFile(sub, "index.html"); err != nil {
		return nil, err
	}
	c.static = http.StripPrefix(assetsPrefix, http.FileServer(http.FS(sub)))
	return c, nil
}

// Owns reports whether the console serves path: /, /console and
// everything under /console/.
func Owns(path string) bool {
	return path == "/" || path == "/console" || len(path) >= len(Prefix) && path[:len(Prefix)] == Prefix
}

// ServeHTTP serves the console's pages, assets, session routes and API.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w.Header())
	p := r.URL.Path
	switch {
	case p == "/" || p == "/console":
		if !readOnly(r.Method) {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		http.Redirect(w, r, Prefix, http.StatusFound)
	case p == apiPrefix || len(p) > len(apiPrefix) && p[:len(apiPrefix)+1] == apiPrefix+"/":
		c.serveAPI(w, r)
	case p == "/console/session":
		c.serveSession(w, r)
	case p == "/console/session/redeem":
		c.serveRedeem(w, r)
	case p == "/console/session/sign-out":
		c.serveSignOut(w, r)
	case p == "/console/sign-in-links":
		c.serveCreateLink(w, r)
	case len(p) > len(assetsPrefix) && p[:len(assetsPrefix)] == assetsPrefix:
		if !readOnly(r.Method) {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		if p == assetsPrefix+"index.html" {
			notFound(w)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		c.static.ServeHTTP(w, r)
	case p == Prefix || p == "/console/sign-in":
		if !readOnly(r.Method) {
			methodNotAllowed(w, "GET, HEAD")
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(c.index)
		}
	default:
		notFound(w)
	}
}

func readOnly(method string) bool { return method == http.MethodGet || method == http.MethodHead }

// securityHeaders are sent with every console response.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
}

// withTimeout bounds the console's own calls to the credential service.
func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 10*time.Second)
}
