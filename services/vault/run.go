package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/ratelimit"
	"github.com/backlog/controlplane/services/kit/server"
	"github.com/backlog/controlplane/services/kit/store"
)

const userAgent = "backlog-vault/1"

// resolved is a secret decrypted for one HTTP Request step.
type resolved struct {
	name  string // as stored
	value string
}

// RunHttpRequest runs an HTTP Request step: it validates the step, looks up
// and decrypts every secret its headers reference (any unknown, revoked,
// expired or non-webhook secret fails the step before anything is sent),
// substitutes the values, sends the request itself, and returns the
// response with every echoed value redacted. Each secret used gets a
// secret.use audit event.
func (s *Service) RunHttpRequest(ctx context.Context, req *vaultv1.RunHttpRequestRequest) (resp *vaultv1.RunHttpRequestResponse, err error) {
	sent := false
	defer func() { metrics.VaultEgress.WithLabelValues(egressResult(sent, err)).Inc() }()
	ws := req.GetWorkspaceId()
	if err := validWorkspace(ws); err != nil {
		return nil, err
	}
	st, err := validStep(req)
	if err != nil {
		return nil, err
	}
	if _, err := auth.Require(ctx, ws, auth.SecretsUse); err != nil {
		return nil, err
	}
	host := st.url.Host
	if err := checkHost(st.url, !s.allowPrivate); err != nil {
		if d, ok := isEgressDenied(err); ok {
			err := s.egressErr(host, d)
			s.recordUses(ctx, ws, st.refs, nil, err, st.method, host)
			return nil, err
		}
		return nil, err
	}
	release, err := s.steps.acquire(ws)
	if err != nil {
		s.lg.Warn("http request step refused: too many running in the workspace", zap.String("workspace-id", ws),
			zap.Int("limit", s.steps.max), zap.String("request-id", server.RequestID(ctx)))
		metrics.RateLimited.WithLabelValues("vault_steps_per_workspace").Inc()
		return nil, err
	}
	defer release()

	secrets, err := s.resolveForStep(ctx, ws, st.refs, st.url)
	if err != nil {
		return nil, err
	}
	var used []string
	for _, r := range secrets {
		used = append(used, r.name)
	}

	sent = true
	// The use is recorded durably while the request is on its way, not
	// after it: the commit and the round trip overlap, and no response is
	// returned before its use is in the audit trail. The commit starts
	// first; what the request still needs is built while it is under way.
	var recorded <-chan error
	if len(used) > 0 {
		recorded = s.startUses(ctx, ws, used, st.method, host)
	}
	values := make(map[string]string, len(secrets)) // name key → value
	byName := make(map[string]string, len(secrets)) // stored name → value, for redaction
	for _, r := range secrets {
		values[nameKey(r.name)] = r.value
		byName[r.name] = r.value
	}
	resp, err = s.send(ctx, st, values, newRedactor(byName))
	var recErr error
	if recorded != nil {
		recErr = <-recorded
	}
	if err != nil {
		s.recordUses(ctx, ws, st.refs, used, err, st.method, host)
		return nil, err
	}
	if recErr != nil {
		s.lg.Warn("http request step answered but its secret use could not be recorded: response withheld", zap.String("workspace-id", ws),
			zap.String("host", host), zap.Strings("secrets", used), zap.String("request-id", server.RequestID(ctx)), zap.Error(recErr))
		return nil, fail(store.ErrUnavailable, "the request to %s was sent, but the vault could not record that it used the step's secrets, so the response is withheld; retry when the vault's store is available", host)
	}
	resp.SecretsUsed = used
	if ce := s.lg.Check(zap.InfoLevel, "http request step sent"); ce != nil {
		ce.Write(zap.String("workspace-id", ws), zap.String("method", st.method),
			zap.String("host", host), zap.Int32("status", resp.StatusCode), zap.Strings("secrets", used))
	}
	return resp, nil
}

// DefaultEgressMaxStepsPerWorkspace is how many HTTP Request steps may run
// at once in one workspace unless configured otherwise.
const DefaultEgressMaxStepsPerWorkspace = 16

// reasonTooManySteps is the ErrorInfo reason of a step refused by the
// per-workspace cap (built outside the table: it carries a RetryInfo).
const reasonTooManySteps = "TOO_MANY_HTTP_REQUESTS"

// stepRetryAfter is the wait suggested to a step refused by the cap: a
// running step ends within the egress timeout, most far sooner.
const stepRetryAfter = time.Second

// stepLimiter caps the HTTP Request steps running at once per workspace,
// so that one workspace's slow or hanging targets cannot take every
// connection and goroutine of the vault from the others. In memory, per
// process: each replica enforces it for the steps it runs.
type stepLimiter struct {
	max     int
	mu      sync.Mutex
	running map[string]int // workspace id → steps running; no zero entries
}

func newStepLimiter(n int) *stepLimiter {
	if n <= 0 {
		n = DefaultEgressMaxStepsPerWorkspace
	}
	return &stepLimiter{max: n, running: map[string]int{}}
}

// acquire takes one of ws's slots, or answers ResourceExhausted (429 with
// Retry-After at the gateway) when all are taken. release gives it back.
func (l *stepLimiter) acquire(ws string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running[ws] >= l.max {
		return nil, ratelimit.Exhausted(Domain, reasonTooManySteps, fmt.Sprintf(
			"this workspace already has %d HTTP Request steps running, the most allowed at once; nothing was sent; retry when one has finished", l.max), stepRetryAfter)
	}
	l.running[ws]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.running[ws]--; l.running[ws] <= 0 {
				delete(l.running, ws)
			}
		})
	}, nil
}

// egressResult names a step's outcome for the metrics: refused before
// anything left the vault, failed on the way, or sent (the target answered).
func egressResult(sent bool, err error) string {
	switch {
	case err == nil:
		return "sent"
	case !sent:
		return "refused"
	}
	return "failed"
}

// resolveForStep decrypts the secrets refs names, all in one snapshot.
func (s *Service) resolveForStep(ctx context.Context, ws string, refs []string, u *url.URL) ([]resolved, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	if s.keys.sealed() {
		s.recordUses(ctx, ws, refs, nil, ErrSealed, "", "")
		return nil, ErrSealed
	}
	now := s.now()
	var out []resolved
	var failed string
	err := s.viewKeys(ctx, func(tx store.ReadTx) error {
		out, failed = out[:0], ""
		for _, name := range refs {
			failed = name
			rec, err := getSecret(tx, ws, name)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			if err != nil {
				return fail(ErrNotFound, "secret %q not found in this workspace: the step references it but it does not exist (or was deleted); nothing was sent", name)
			}
			failed = rec.GetName()
			if err := usable(rec, now, KindWebhook, "HTTP Request steps are"); err != nil {
				return err
			}
			if !hostAllowed(rec.GetAllowedHosts(), u) {
				return fail(ErrHostDenied, "secret %q may only be sent to %s, and this step goes to %s; nothing was sent",
					rec.GetName(), strings.Join(rec.GetAllowedHosts(), ", "), u.Host)
			}
			v, err := s.decrypt(tx, ws, nameKey(rec.GetName()), rec.GetVersion(), rec.GetName())
			if err != nil {
				return err
			}
			if !validHeaderText(string(v)) {
				clear(v)
				return fail(ErrBadValue, "secret %q holds line breaks or other control characters, which a header value cannot carry; nothing was sent", rec.GetName())
			}
			out = append(out, resolved{name: rec.GetName(), value: string(v)})
			clear(v)
		}
		return nil
	})
	if err != nil {
		// Only the secret that failed the step is recorded: the others
		// were decrypted but never left the vault.
		s.recordFailure(ctx, ws, actionUse, failed, err, "http-request")
		return nil, err
	}
	return out, nil
}

// send substitutes values into the headers, sends the request and reads
// the (redacted, capped) response.
func (s *Service) send(ctx context.Context, st *httpStep, values map[string]string, red *redactor) (*vaultv1.RunHttpRequestResponse, error) {
	host := st.url.Host
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var body io.Reader
	if st.body != "" {
		body = strings.NewReader(st.body)
	}
	hreq, err := http.NewRequestWithContext(rctx, st.method, st.url.String(), body)
	if err != nil {
		return nil, fail(ErrUpstream, "the request to %s could not be built", host)
	}
	hreq.Header.Set("User-Agent", userAgent)
	for _, h := range st.headers {
		hreq.Header.Set(h.name, render(h.parts, func(name string) string { return values[nameKey(name)] }))
	}
	start := time.Now()
	hresp, err := s.egress.Do(hreq)
	if err != nil {
		return nil, s.sendErr(ctx, rctx, host, err, red)
	}
	defer hresp.Body.Close()

	limit := s.maxResponse + red.longest + 1
	data, err := io.ReadAll(io.LimitReader(hresp.Body, int64(limit)))
	if err != nil {
		return nil, s.sendErr(ctx, rctx, host, err, red)
	}
	out := &vaultv1.RunHttpRequestResponse{StatusCode: int32(hresp.StatusCode), Headers: map[string]string{}}
	for k, vs := range hresp.Header {
		name, ok := red.redact([]byte(k), -1)
		if !ok {
			// A short value somewhere in a header name ("v" in "Server")
			// says nothing; a name made of it ("X-V") may echo it.
			if red.shortToken(k) {
				continue
			}
			name = []byte(k)
		}
		out.Headers[strings.ToValidUTF8(string(name), "\uFFFD")] = strings.ToValidUTF8(red.redactString(strings.Join(vs, ", ")), "\uFFFD")
	}
	out.BodyTruncated = len(data) > s.maxResponse
	withhold := func() {
		// Status and headers are returned; the body could not be checked
		// or redacted without mangling it, so it is not.
		out.Body, out.BodyEncoding, out.BodyWithheld, out.BodyTruncated = "", "withheld", true, false
	}
	switch enc := strings.ToLower(hresp.Header.Get("Content-Encoding")); {
	case len(values) > 0 && !hresp.Uncompressed && enc != "" && enc != "identity":
		// Compressed in a way we did not ask for: we cannot look inside
		// for echoed values, so the body is not returned.
		withhold()
	case len(values) > 0 && compressedMagic(data):
		// Compressed without saying so: same.
		withhold()
	default:
		b, ok := red.redact(data, s.maxResponse)
		switch {
		case !ok:
			withhold()
		case utf8.Valid(b):
			out.Body = string(b)
		default:
			out.Body, out.BodyEncoding = base64.StdEncoding.EncodeToString(b), "base64"
		}
	}
	if ce := s.lg.Check(zap.DebugLevel, "http request step response"); ce != nil {
		ce.Write(zap.String("host", host), zap.Int("status", hresp.StatusCode),
			zap.Int("body-bytes", len(data)), zap.Bool("truncated", out.BodyTruncated), zap.Duration("duration", time.Since(start)))
	}
	return out, nil
}

// sendErr explains a failed send without the URL (it may carry query
// parameters) and with any echoed value redacted.
func (s *Service) sendErr(ctx, rctx context.Context, host string, err error, red *redactor) error {
	if d, ok := isEgressDenied(err); ok {
		return s.egressErr(host, d)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if rctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return fail(ErrUpstreamSlow, "the request to %s did not complete within %s", host, s.timeout)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	why := "it failed"
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	switch {
	case errors.As(err, &dnsErr):
		why = "its host name could not be resolved"
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr):
		why = "the server's TLS certificate is not trusted (operators can add CA certificates with -vault-egress-ca-file)"
	case strings.Contains(err.Error(), "connection refused"):
		why = "the connection was refused"
	default:
		why = "it failed: " + red.redactString(err.Error())
	}
	s.lg.Debug("http request step failed", zap.String("host", host), zap.String("error", red.redactString(err.Error())))
	return fail(ErrUpstream, "the request to %s was not completed: %s", host, why)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *Service) egressErr(host string, d *egressDenied) error {
	return fail(ErrEgressDenied, "%s: %s; HTTP Request steps may only reach public addresses (an operator can allow private ones with -vault-egress-allow-private)", host, d.Error())
}

// recordUses writes one secret.use failure event per secret of a step
// that failed (cause): the secrets it used, or else those it referenced.
func (s *Service) recordUses(ctx context.Context, ws string, refs, used []string, cause error, method, host string) {
	names := used
	if names == nil {
		names = refs
	}
	if len(names) == 0 {
		return
	}
	prefix := "http-request"
	if method != "" {
		prefix = fmt.Sprintf("http-request method=%s host=%s", method, host)
	}
	evs := make([]*auditEvent, 0, len(names))
	for _, name := range names {
		evs = append(evs, s.rec.Event(ctx, ws, actionUse, "secret", name, audit.Failure, failureDetail(cause, prefix)))
	}
	s.recordEvents(ctx, evs...)
}

// startUses starts committing one secret.use success event per secret a
// step is about to send, with the secrets' last-used times, and returns
// where the commit's outcome arrives (nil once every chunk is durable).
// The caller sends the request meanwhile and waits for the outcome before
// it returns the response: a use whose response was returned is in the
// audit trail even if the process dies right after. The event records
// that the values were released to a request to host; the target's
// answer (or the failure to get one: then a failure event follows) is the
// response's and the log's.
func (s *Service) startUses(ctx context.Context, ws string, names []string, method, host string) <-chan error {
	detail := "http-request method=" + method + " host=" + host
	evs := make([]*auditEvent, 0, len(names))
	for _, name := range names {
		evs = append(evs, s.rec.Event(ctx, ws, actionUse, "secret", name, audit.Success, detail))
	}
	now := timestamppb.New(s.now())
	done := make(chan error, 1)
	actx := context.WithoutCancel(ctx)
	go func() {
		actx, cancel := context.WithTimeout(actx, auditTimeout)
		defer cancel()
		// A step may reference more secrets than one update may write (an
		// event and a record each): each chunk records its secrets' events
		// with their last-used times.
		per := s.perUpdate(audit.OpsPerEvent + 1)
		var first error
		for i := 0; i < len(names); i += per {
			j := min(i+per, len(names))
			err := s.db.Update(actx, func(tx store.WriteTx) error {
				for _, ev := range evs[i:j] {
					if err := audit.Put(tx, ev); err != nil {
						return err
					}
				}
				return touch(tx, ws, names[i:j], now)
			})
			if err != nil && first == nil {
				first = err
			}
		}
		done <- first
	}()
	return done
}

// touch sets the last-used time of names that still exist.
func touch(tx store.WriteTx, ws string, names []string, now *timestamppb.Timestamp) error {
	for _, name := range names {
		rec, err := getSecret(tx, ws, name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		rec.LastUsedAt = now
		if err := putSecret(tx, rec); err != nil {
			return err
		}
	}
	return nil
}
