package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// Token is a short-lived access token (blg_at_…) and what it grants. A
// TokenSource hands the same Token to every caller: do not modify it.
type Token struct {
	AccessToken  string
	ExpiresAt    time.Time     // as the credential service says
	ExpiresIn    time.Duration // its lifetime when issued
	AutomationID string
	WorkspaceID  string
	Scopes       []string
	TeamIDs      []string
}

// ExchangeRequest is what an exchange may ask for: a lifetime shorter than
// the default (0: the default) and a subset of the automation's scopes
// (none: all of them).
type ExchangeRequest struct {
	TTL    time.Duration
	Scopes []string
}

// Exchanger trades an automation secret for an access token: GRPCExchanger
// over the credential service's gRPC API, HTTPExchanger over the REST
// gateway (POST /v1/auth/exchange). A refusal is a gRPC status error.
type Exchanger interface {
	Exchange(ctx context.Context, secret string, req ExchangeRequest) (*Token, error)
}

// GRPCExchanger exchanges over gRPC on Conn (a connection to the credential
// service; use TLS anywhere but loopback: the secret travels on it).
type GRPCExchanger struct {
	Conn grpc.ClientConnInterface
}

// Exchange implements Exchanger.
func (g GRPCExchanger) Exchange(ctx context.Context, secret string, req ExchangeRequest) (*Token, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
	resp, err := credentialv1.NewCredentialServiceClient(g.Conn).Exchange(ctx, &credentialv1.ExchangeRequest{
		TtlSeconds: int32(req.TTL / time.Second), Scopes: req.Scopes,
	})
	if err != nil {
		return nil, err
	}
	return tokenOf(resp), nil
}

// HTTPExchanger exchanges over the REST gateway at BaseURL (e.g.
// https://backlog.example.com). Plain http:// is refused except to a
// loopback host, unless AllowInsecure.
type HTTPExchanger struct {
	BaseURL       string
	Client        *http.Client // default http.DefaultClient
	AllowInsecure bool
}

// Exchange implements Exchanger.
func (h HTTPExchanger) Exchange(ctx context.Context, secret string, req ExchangeRequest) (*Token, error) {
	u, err := url.Parse(strings.TrimRight(h.BaseURL, "/") + "/v1/auth/exchange")
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, status.Error(codes.InvalidArgument, "sdk: the exchange base URL must be http(s)://host[:port]")
	}
	if err := checkScheme(u, h.AllowInsecure); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	body := map[string]any{}
	if req.TTL > 0 {
		body["ttlSeconds"] = int64(req.TTL / time.Second)
	}
	if len(req.Scopes) > 0 {
		body["scopes"] = req.Scopes
	}
	b, _ := json.Marshal(body)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(b))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "sdk: bad exchange URL")
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+secret)
	c := h.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(hr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Unavailable, "the exchange endpoint could not be reached: "+redactURLError(err))
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, status.Error(codes.Unavailable, "reading the exchange response failed")
	}
	if resp.StatusCode != http.StatusOK {
		return nil, httpErrorStatus(resp.StatusCode, rb)
	}
	out := &credentialv1.ExchangeResponse{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(rb, out); err != nil || out.GetAccessToken() == "" {
		return nil, status.Error(codes.Unavailable, "the exchange endpoint answered something that is not an exchange response")
	}
	return tokenOf(out), nil
}

// redactURLError keeps a transport error's cause without the URL.
func redactURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// httpErrorStatus rebuilds the gRPC status of the contract's JSON error.
func httpErrorStatus(httpCode int, body []byte) error {
	var e struct {
		Code    int               `json:"code"`
		Message string            `json:"message"`
		Details []json.RawMessage `json:"details"`
	}
	if json.Unmarshal(body, &e) != nil || e.Code <= 0 || e.Code > 16 {
		code := codes.Unavailable
		switch httpCode {
		case http.StatusUnauthorized:
			code = codes.Unauthenticated
		case http.StatusForbidden:
			code = codes.PermissionDenied
		case http.StatusBadRequest:
			code = codes.InvalidArgument
		}
		return status.Error(code, fmt.Sprintf("exchange answered HTTP %d", httpCode))
	}
	st := status.New(codes.Code(e.Code), e.Message)
	for _, d := range e.Details {
		var ei struct {
			Type   string `json:"@type"`
			Reason string `json:"reason"`
			Domain string `json:"domain"`
		}
		if json.Unmarshal(d, &ei) == nil && strings.HasSuffix(ei.Type, "google.rpc.ErrorInfo") {
			if ds, err := st.WithDetails(&errdetails.ErrorInfo{Reason: ei.Reason, Domain: ei.Domain}); err == nil {
				st = ds
			}
		}
	}
	return st.Err()
}

func tokenOf(r *credentialv1.ExchangeResponse) *Token {
	t := &Token{
		AccessToken: r.GetAccessToken(), ExpiresIn: time.Duration(r.GetExpiresIn()) * time.Second,
		AutomationID: r.GetAutomationId(), WorkspaceID: r.GetWorkspaceId(),
		Scopes: slices.Clone(r.GetScopes()), TeamIDs: slices.Clone(r.GetTeamIds()),
	}
	if r.GetExpiresAt() != nil {
		t.ExpiresAt = r.GetExpiresAt().AsTime()
	}
	if t.ExpiresIn <= 0 && !t.ExpiresAt.IsZero() {
		t.ExpiresIn = time.Until(t.ExpiresAt)
	}
	return t
}

// Why a TokenSource could not get a token. Match them with errors.Is.
var (
	// ErrSecretRefused: the credential service does not know the
	// automation secret (any more): it was rotated, the automation was
	// deleted, or it was mistyped. Retrying cannot help: the TokenSource
	// does not try again.
	ErrSecretRefused = errors.New("the automation secret was refused: it was rotated, its automation deleted, or it is mistyped; get the current secret from a workspace owner or admin")
	// ErrAutomationSuspended: the automation is suspended. The TokenSource
	// tries again once its hold-off (default one minute) has passed.
	ErrAutomationSuspended = errors.New("the automation is suspended; an owner or admin can resume it")
	// ErrExchangeRefused: the exchange request itself was refused (a ttl
	// above the maximum, a scope the automation does not hold). Fix the
	// TokenSource's options: it does not try again.
	ErrExchangeRefused = errors.New("the exchange request was refused")
	// ErrExchangeUnavailable: the exchange could not be done now (network,
	// credential service unavailable). The TokenSource tries again with
	// backoff, never more often than that.
	ErrExchangeUnavailable = errors.New("the exchange could not be done now")
)

// ExchangeError is a failed exchange: Kind is one of the Err… above.
type ExchangeError struct {
	Kind    error
	Code    codes.Code // of the credential service's answer
	Reason  string     // its ErrorInfo reason, if any
	Message string     // its message (never contains the secret)
	// RetryAt is when the TokenSource will exchange again; zero: never.
	RetryAt time.Time
}

func (e *ExchangeError) Error() string {
	s := "backlog token source: " + e.Kind.Error()
	if e.Message != "" {
		s += " (credential service: " + e.Message + ")"
	}
	switch {
	case e.RetryAt.IsZero():
		s += "; not retrying"
	default:
		s += "; next attempt after " + e.RetryAt.Format(time.RFC3339)
	}
	return s
}

// Unwrap makes errors.Is(err, ErrSecretRefused) etc. work.
func (e *ExchangeError) Unwrap() error { return e.Kind }

// GRPCStatus lets gRPC report the failure with a fitting code when the
// TokenSource is a call's PerRPCCredentials.
func (e *ExchangeError) GRPCStatus() *status.Status {
	code := codes.Unavailable
	switch e.Kind {
	case ErrSecretRefused, ErrExchangeRefused:
		code = codes.Unauthenticated
	case ErrAutomationSuspended:
		code = codes.PermissionDenied
	}
	return status.New(code, e.Error())
}

// TokenSource keeps a fresh access token for an automation secret: it
// exchanges on first use, re-exchanges before expiry (after 70–80% of the
// token's lifetime, the jitter spreading a fleet's exchanges), once for
// all goroutines at a time, and keeps serving the current token while a
// re-exchange is under way. A token is never served in the last second of
// its life. It is a grpc PerRPCCredentials (for
// grpc.WithPerRPCCredentials) and makes http.RoundTrippers (Transport).
//
// A refused secret (rotated, deleted) or exchange request stops it for
// good, a suspension for a hold-off, an outage for a backoff: it never
// retries in a loop.
type TokenSource struct {
	secret   string
	ex       Exchanger
	req      ExchangeRequest
	lg       *zap.Logger
	insecure bool
	holdoff  time.Duration

	mu        sync.Mutex
	tok       *Token
	obtained  time.Time // local time the current token's exchange was sent
	refreshAt time.Time
	expiresAt time.Time // local: obtained + lifetime
	inflight  *exchangeCall
	fail      *ExchangeError // the last failure, until RetryAt (forever if zero)
	backoff   time.Duration
}

type exchangeCall struct {
	done chan struct{}
	tok  *Token
	err  error
}

// TokenOption configures NewTokenSource.
type TokenOption func(*TokenSource)

// WithTTL asks for tokens that live d (whole seconds, at most the
// credential service's maximum) instead of the default (one hour).
func WithTTL(d time.Duration) TokenOption { return func(t *TokenSource) { t.req.TTL = d } }

// WithScopes asks for tokens narrowed to a subset of the automation's
// scopes.
func WithScopes(scopes ...string) TokenOption {
	return func(t *TokenSource) { t.req.Scopes = slices.Clone(scopes) }
}

// WithTokenLogger sets the logger (default: none). Neither the secret nor
// a token is ever logged.
func WithTokenLogger(lg *zap.Logger) TokenOption { return func(t *TokenSource) { t.lg = lg } }

// WithInsecureTransport lets tokens travel without TLS: over a plaintext
// gRPC connection, or an http:// URL to a host that is not loopback.
func WithInsecureTransport() TokenOption { return func(t *TokenSource) { t.insecure = true } }

// WithSuspendedHoldoff sets how long a suspension is believed before the
// next exchange attempt (default one minute).
func WithSuspendedHoldoff(d time.Duration) TokenOption {
	return func(t *TokenSource) { t.holdoff = d }
}

// Timings of the TokenSource.
const (
	exchangeTimeout  = 30 * time.Second
	minBackoff       = time.Second
	maxBackoff       = time.Minute
	defaultHoldoff   = time.Minute
	minTokenAgeForRe = 5 * time.Second // Expire never re-exchanges more often
)

// NewTokenSource returns a TokenSource for an automation secret
// (blg_auto_…). It exchanges lazily, on the first Token.
func NewTokenSource(secret string, ex Exchanger, opts ...TokenOption) (*TokenSource, error) {
	secret = strings.TrimSpace(secret)
	kind, err := ParseCredential(secret)
	switch {
	case err != nil:
		return nil, fmt.Errorf("sdk: the automation secret: %w", err)
	case kind == KindAccessToken:
		return nil, errors.New("sdk: this is already an access token (blg_at_…): a TokenSource takes the automation secret (blg_auto_…)")
	case kind != KindAutomation:
		return nil, fmt.Errorf("sdk: a TokenSource takes an automation secret (blg_auto_…), not a credential of kind %q", kind)
	}
	if ex == nil {
		return nil, errors.New("sdk: a TokenSource needs an Exchanger (HTTPExchanger or GRPCExchanger)")
	}
	t := &TokenSource{secret: secret, ex: ex, lg: zap.NewNop(), holdoff: defaultHoldoff}
	for _, o := range opts {
		o(t)
	}
	if t.req.TTL < 0 || t.req.TTL%time.Second != 0 || t.req.TTL > (1<<31-1)*time.Second {
		return nil, fmt.Errorf("sdk: WithTTL(%v): want a positive whole number of seconds", t.req.TTL)
	}
	if t.lg == nil {
		t.lg = zap.NewNop()
	}
	return t, nil
}

// Token returns a valid access token, exchanging the secret if there is
// none or the current one has expired (all concurrent callers wait for the
// same exchange). In the last 20–30% of a token's life it returns the
// current token and re-exchanges in the background.
func (t *TokenSource) Token(ctx context.Context) (*Token, error) {
	t.mu.Lock()
	now := time.Now()
	if t.fail != nil && (t.fail.RetryAt.IsZero() || now.Before(t.fail.RetryAt)) && (t.tok == nil || !now.Before(t.expiresAt)) {
		err := t.fail
		t.mu.Unlock()
		return nil, err
	}
	if t.tok != nil && now.Before(t.expiresAt) {
		tok := t.tok
		if !now.Before(t.refreshAt) && t.inflight == nil && (t.fail == nil || !now.Before(t.fail.RetryAt) && !t.fail.RetryAt.IsZero()) {
			t.start()
		}
		t.mu.Unlock()
		return tok, nil
	}
	call := t.inflight
	if call == nil {
		call = t.start()
	}
	t.mu.Unlock()
	select {
	case <-call.done:
		return call.tok, call.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// start begins an exchange (t.mu held); it runs on its own deadline, not a
// caller's, since every waiting caller shares it.
func (t *TokenSource) start() *exchangeCall {
	c := &exchangeCall{done: make(chan struct{})}
	t.inflight = c
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), exchangeTimeout)
		defer cancel()
		sent := time.Now()
		tok, err := t.ex.Exchange(ctx, t.secret, t.req)
		t.finish(c, sent, tok, err)
	}()
	return c
}

func (t *TokenSource) finish(c *exchangeCall, sent time.Time, tok *Token, err error) {
	t.mu.Lock()
	defer func() {
		t.inflight = nil
		t.mu.Unlock()
		close(c.done)
	}()
	if err == nil && (tok == nil || tok.AccessToken == "" || tok.ExpiresIn <= 0) {
		err = status.Error(codes.Unavailable, "the exchange answered no usable token")
	}
	if err == nil {
		// The credential service counts a token's life from the start of
		// the second it was minted in, so up to a second of ExpiresIn may
		// be gone already; measured from when we asked (never from its
		// ExpiresAt, which another host's clock wrote), the rest is no
		// later than the real expiry.
		life := tok.ExpiresIn - time.Second
		if tok.ExpiresIn <= 2*time.Second {
			life = tok.ExpiresIn / 2
		}
		t.tok, t.obtained, t.fail, t.backoff = tok, sent, nil, 0
		t.expiresAt = sent.Add(life)
		t.refreshAt = sent.Add(time.Duration(float64(life) * (0.70 + 0.10*rand.Float64())))
		c.tok = tok
		t.lg.Debug("access token obtained", zap.String("automation-id", tok.AutomationID), zap.Duration("lifetime", life))
		return
	}
	ee := t.classify(err)
	switch ee.Kind {
	case ErrSecretRefused, ErrAutomationSuspended, ErrExchangeRefused:
		// The current token is dead too (its secret is), or would be
		// refused (suspension applies to tokens).
		t.tok = nil
		t.lg.Warn("automation secret exchange refused", zap.String("code", ee.Code.String()), zap.String("reason", ee.Reason), zap.Bool("retrying", !ee.RetryAt.IsZero()))
	default:
		t.lg.Info("automation secret exchange failed; will retry", zap.String("code", ee.Code.String()), zap.Time("retry-at", ee.RetryAt))
	}
	t.fail = ee
	c.err = ee
}

// classify turns an exchange failure into an ExchangeError with its retry
// time (t.mu held).
func (t *TokenSource) classify(err error) *ExchangeError {
	st := status.Convert(err)
	ee := &ExchangeError{Code: st.Code(), Message: st.Message(), Reason: Reason(err)}
	now := time.Now()
	switch st.Code() {
	case codes.Unauthenticated:
		ee.Kind = ErrSecretRefused
	case codes.PermissionDenied:
		ee.Kind = ErrAutomationSuspended
		ee.RetryAt = now.Add(t.holdoff)
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		ee.Kind = ErrExchangeRefused
	default:
		ee.Kind = ErrExchangeUnavailable
		if t.backoff < minBackoff {
			t.backoff = minBackoff
		} else if t.backoff *= 2; t.backoff > maxBackoff {
			t.backoff = maxBackoff
		}
		// Up to 20% more, so that a fleet does not come back in step.
		ee.RetryAt = now.Add(t.backoff + time.Duration(rand.Float64()*0.2*float64(t.backoff)))
	}
	return ee
}

// Expire tells the TokenSource that an API refused token (401): if it is
// the current token, the next Token exchanges again — though never sooner
// than five seconds after the token was obtained, so that an API that
// refuses every token cannot drive a loop of exchanges.
func (t *TokenSource) Expire(token string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok == nil || t.tok.AccessToken != token {
		return
	}
	at := t.obtained.Add(minTokenAgeForRe)
	if now := time.Now(); at.Before(now) {
		at = now
	}
	if at.Before(t.expiresAt) {
		t.expiresAt, t.refreshAt = at, at
	}
}

// GetRequestMetadata implements credentials.PerRPCCredentials: every call
// carries "authorization: Bearer <access token>".
func (t *TokenSource) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := t.Token(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + tok.AccessToken}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials: true
// unless WithInsecureTransport.
func (t *TokenSource) RequireTransportSecurity() bool { return !t.insecure }

var _ credentials.PerRPCCredentials = (*TokenSource)(nil)

// Transport returns an http.RoundTripper that sends every request through
// base (http.DefaultTransport if nil) with "Authorization: Bearer <access
// token>". A 401 answer expires the token it was sent with (see Expire).
// Requests to http:// URLs of hosts other than loopback are refused unless
// WithInsecureTransport.
func (t *TokenSource) Transport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &tokenTransport{ts: t, base: base}
}

type tokenTransport struct {
	ts   *TokenSource
	base http.RoundTripper
}

func (tt *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	fail := func(err error) (*http.Response, error) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	if err := checkScheme(req.URL, tt.ts.insecure); err != nil {
		return fail(err)
	}
	tok, err := tt.ts.Token(req.Context())
	if err != nil {
		return fail(err)
	}
	r2 := req.Clone(req.Context())
	r2.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := tt.base.RoundTrip(r2)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		tt.ts.Expire(tok.AccessToken)
	}
	return resp, err
}

// checkScheme refuses to send a credential over plain http to a host that
// is not loopback, unless allowed.
func checkScheme(u *url.URL, allowInsecure bool) error {
	if u.Scheme == "https" || allowInsecure {
		return nil
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("sdk: refusing to send a Backlog credential over plain %s to %s: use https (or WithInsecureTransport / AllowInsecure on a network you trust)", u.Scheme, host)
}
