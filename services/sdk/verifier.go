package sdk

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// CacheTTL bounds how long the Verifier serves a verified caller from its
// cache. The credential service waits at most this long (2 s) for every
// revocation watcher to acknowledge before a revoking call returns, and cuts
// off a watcher that is slower: so when the revoking call returns, a cached
// caller was either dropped by the watch or has aged out. It must never be
// longer than the credential service's bound.
const CacheTTL = 2 * time.Second

// Metadata keys of the credential service's internal API.
const (
	serviceTokenKey = "x-backlog-service-token" // the service credential
	clientIPKey     = "x-backlog-client-ip"     // the end client's address, for the audit trail
	requestIDKey    = "x-request-id"
)

const maxCacheEntries = 100_000

// Verifier authenticates the callers of a resource server through the
// credential service, as Backlog's own services do: a bounded cache of
// verified callers that is used only while a revocation watch on every
// credential replica is live and acknowledged, so that a credential revoked
// (or its automation suspended, its secret rotated) is refused on the very
// next request after the revoking call returns.
//
// It is safe for concurrent use. Close it when done.
type Verifier struct {
	replicas []*replica
	lg       *zap.Logger
	ttl      time.Duration
	public   func(fullMethod string) bool

	next atomic.Uint64 // round-robin start

	mu        sync.Mutex
	cache     map[[32]byte]cachedCaller
	bySubject map[string][][32]byte
	epoch     uint64 // bumped by every invalidation and watch change
	live      int    // replicas whose watch is live

	hits, misses, invalidations atomic.Uint64

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type replica struct {
	addr   string
	conn   *grpc.ClientConn
	client credentialv1.CredentialInternalServiceClient
	live   bool // guarded by Verifier.mu
	calls  atomic.Uint64
}

type cachedCaller struct {
	c       *Caller
	expires time.Time
}

// VerifierOption configures NewVerifier.
type VerifierOption func(*verifierConfig)

type verifierConfig struct {
	serviceToken, serviceTokenFile string
	creds                          credentials.TransportCredentials
	insecure                       bool
	lg                             *zap.Logger
	ttl                            time.Duration
	dial                           []grpc.DialOption
	public                         func(string) bool
}

// WithServiceToken gives the deployment's service credential (blg_svc_…):
// the credential service's internal API (Authenticate, WatchRevocations)
// answers only callers that present it. Required, or WithServiceTokenFile.
// It opens every internal RPC of the control plane, not only those two:
// keep it as carefully as the control plane's own processes do.
func WithServiceToken(token string) VerifierOption {
	return func(c *verifierConfig) { c.serviceToken = strings.TrimSpace(token) }
}

// WithServiceTokenFile reads the service credential from a file (backlogd's
// -service-token-file).
func WithServiceTokenFile(path string) VerifierOption {
	return func(c *verifierConfig) { c.serviceTokenFile = path }
}

// WithTransportCredentials dials the credential service with TLS (e.g.
// credentials.NewTLS). Without it, only loopback addresses are dialled in
// plaintext, unless WithInsecure is given.
func WithTransportCredentials(creds credentials.TransportCredentials) VerifierOption {
	return func(c *verifierConfig) { c.creds = creds }
}

// WithInsecure dials non-loopback addresses in plaintext too. The service
// credential then crosses the network in the clear: only on a network you
// trust.
func WithInsecure() VerifierOption { return func(c *verifierConfig) { c.insecure = true } }

// WithLogger sets the logger (default: none). The SDK never logs a
// credential.
func WithLogger(lg *zap.Logger) VerifierOption { return func(c *verifierConfig) { c.lg = lg } }

// WithCacheTTL shortens how long a verified caller is cached (at most
// CacheTTL; zero or less disables the cache).
func WithCacheTTL(d time.Duration) VerifierOption { return func(c *verifierConfig) { c.ttl = d } }

// WithDialOptions adds gRPC dial options for the credential service.
func WithDialOptions(opts ...grpc.DialOption) VerifierOption {
	return func(c *verifierConfig) { c.dial = append(c.dial, opts...) }
}

// WithPublicMethods names the gRPC methods the interceptors let through
// without a credential, besides the health and reflection services.
func WithPublicMethods(public func(fullMethod string) bool) VerifierOption {
	return func(c *verifierConfig) { c.public = public }
}

// SplitAddrs turns address lists into addresses: every element may itself
// be a comma-separated list ("cred-a:9101,cred-b:9101"); blanks and
// duplicates are dropped.
func SplitAddrs(lists ...string) []string {
	var out []string
	for _, l := range lists {
		for _, a := range strings.Split(l, ",") {
			if a = strings.TrimSpace(a); a != "" && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out
}

// NewVerifier connects to the credential service replicas at addrs (each
// element may be a comma-separated list) and starts following their
// revocations. Calls are spread over the replicas and fail over to another
// when one is unreachable; answers are cached only while the revocation
// watch of every replica is live.
func NewVerifier(addrs []string, opts ...VerifierOption) (*Verifier, error) {
	cfg := verifierConfig{ttl: CacheTTL, lg: zap.NewNop()}
	for _, o := range opts {
		o(&cfg)
	}
	list := SplitAddrs(addrs...)
	if len(list) == 0 {
		return nil, errors.New("sdk: no credential service address given")
	}
	tok, err := cfg.token()
	if err != nil {
		return nil, err
	}
	creds := cfg.creds
	if creds == nil {
		for _, a := range list {
			if !cfg.insecure && !loopback(a) {
				return nil, fmt.Errorf("sdk: %s is not a loopback address: give WithTransportCredentials (TLS), or WithInsecure to send the service credential in plaintext", a)
			}
		}
		creds = insecure.NewCredentials()
	}
	if cfg.ttl > CacheTTL {
		cfg.ttl = CacheTTL
	}
	if cfg.lg == nil {
		cfg.lg = zap.NewNop()
	}
	v := &Verifier{
		lg: cfg.lg, ttl: cfg.ttl, public: cfg.public,
		cache: map[[32]byte]cachedCaller{}, bySubject: map[string][][32]byte{},
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(serviceCredentials{token: tok, secure: cfg.creds != nil}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second,
		}, MinConnectTimeout: 5 * time.Second}),
	}, cfg.dial...)
	for _, a := range list {
		conn, err := grpc.NewClient(a, dial...)
		if err != nil {
			v.closeConns()
			return nil, fmt.Errorf("sdk: credential service address %s: %w", a, err)
		}
		v.replicas = append(v.replicas, &replica{addr: a, conn: conn, client: credentialv1.NewCredentialInternalServiceClient(conn)})
	}
	ctx, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	for _, r := range v.replicas {
		v.wg.Go(func() { v.watch(ctx, r) })
	}
	return v, nil
}

func (c *verifierConfig) token() (string, error) {
	tok, from := c.serviceToken, "the service token"
	if tok == "" && c.serviceTokenFile != "" {
		b, err := os.ReadFile(c.serviceTokenFile)
		if err != nil {
			return "", fmt.Errorf("sdk: service token: %w", err)
		}
		tok, from = strings.TrimSpace(string(b)), c.serviceTokenFile
	}
	if tok == "" {
		return "", errors.New("sdk: the credential service's internal API needs the deployment's service credential: give WithServiceToken or WithServiceTokenFile")
	}
	if k, err := ParseCredential(tok); err != nil || k != KindService {
		return "", fmt.Errorf("sdk: %s is not a service credential (blg_svc_…, backlogd's -service-token-file)", from)
	}
	return tok, nil
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// serviceCredentials attaches the service credential to every call.
type serviceCredentials struct {
	token  string
	secure bool
}

func (s serviceCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{serviceTokenKey: s.token}, nil
}

func (s serviceCredentials) RequireTransportSecurity() bool { return s.secure }

// Close stops the revocation watches and closes the connections.
func (v *Verifier) Close() error {
	v.cancel()
	v.wg.Wait()
	return v.closeConns()
}

func (v *Verifier) closeConns() error {
	var errs []error
	for _, r := range v.replicas {
		errs = append(errs, r.conn.Close())
	}
	return errors.Join(errs...)
}

// Caching reports whether verified callers are being cached: the
// revocation watch of every credential replica is live.
func (v *Verifier) Caching() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.caching()
}

func (v *Verifier) caching() bool { return v.ttl > 0 && v.live == len(v.replicas) }

// VerifierStats counts what the Verifier did since it was made.
type VerifierStats struct {
	CacheHits     uint64 // callers served from the cache
	Authenticated uint64 // calls to the credential service's Authenticate
	Invalidations uint64 // revocation events applied
	Replicas      []ReplicaStats
}

// ReplicaStats is one credential replica's part.
type ReplicaStats struct {
	Addr          string
	Authenticated uint64 // Authenticate calls sent to it (answered or not)
	Watching      bool   // its revocation watch is live
}

// Stats returns the Verifier's counters.
func (v *Verifier) Stats() VerifierStats {
	st := VerifierStats{CacheHits: v.hits.Load(), Authenticated: v.misses.Load(), Invalidations: v.invalidations.Load()}
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range v.replicas {
		st.Replicas = append(st.Replicas, ReplicaStats{Addr: r.addr, Authenticated: r.calls.Load(), Watching: r.live})
	}
	return st
}

// forwarded is what a request tells the credential service about its end
// client, for the audit record of a refused credential.
type forwarded struct{ clientIP, requestID string }

type forwardKey struct{}

func withForward(ctx context.Context, f forwarded) context.Context {
	return context.WithValue(ctx, forwardKey{}, f)
}

// Verify authenticates a raw bearer credential: the shape and checksum
// first (a mistyped credential never leaves the process), then the kinds
// that are never bearer credentials (an automation secret must be exchanged
// first), then the cache or the credential service. Errors are gRPC
// statuses with ErrorInfo reasons, safe to show to the caller: use
// WriteError to answer an HTTP request with one.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Caller, error) {
	if raw == "" {
		return nil, Unauthenticated(MsgMissing)
	}
	kind, err := ParseCredential(raw)
	if err != nil {
		return nil, Unauthenticated(err.Error())
	}
	switch kind {
	case KindAutomation:
		return nil, Unauthenticated(MsgExchangeFirst)
	case KindRotationSecret:
		return nil, Unauthenticated(MsgRotationSecret)
	case KindService, KindWebhookSigning:
		return nil, Unauthenticated(MsgInvalid)
	}
	key := sha256.Sum256([]byte(raw))
	sent := time.Now()
	v.mu.Lock()
	if e, ok := v.cache[key]; ok && v.caching() && sent.Before(e.expires) {
		v.mu.Unlock()
		v.hits.Add(1)
		return refuseOperator(e.c.clone())
	}
	epoch, caching := v.epoch, v.caching()
	v.mu.Unlock()

	v.misses.Add(1)
	p, err := v.authenticate(ctx, raw)
	if err != nil {
		return nil, err
	}
	c := callerOf(p)
	if caching {
		exp := sent.Add(v.ttl) // from when we asked: the answer is no fresher
		if !c.ExpiresAt.IsZero() && c.ExpiresAt.Before(exp) {
			exp = c.ExpiresAt
		}
		v.mu.Lock()
		// Only if nothing was invalidated while we asked: the answer may
		// predate a revocation already applied.
		if v.epoch == epoch && v.caching() {
			if len(v.cache) >= maxCacheEntries {
				clear(v.cache)
				clear(v.bySubject)
			}
			if _, had := v.cache[key]; !had {
				v.bySubject[c.SubjectID] = append(v.bySubject[c.SubjectID], key)
			}
			v.cache[key] = cachedCaller{c: c, expires: exp}
		}
		v.mu.Unlock()
	}
	return refuseOperator(c.clone())
}

// refuseOperator: the operator token authenticates, but may only create
// workspaces; a resource server never serves it.
func refuseOperator(c *Caller) (*Caller, error) {
	if c.Kind == CallerOperator {
		return nil, Forbidden(MsgOperator)
	}
	return c, nil
}

// authenticate asks one replica after another (starting at the next in
// turn, reachable ones first) until one answers.
func (v *Verifier) authenticate(ctx context.Context, raw string) (*credentialv1.Principal, error) {
	out := ctx
	if f, ok := ctx.Value(forwardKey{}).(forwarded); ok {
		var kv []string
		if f.clientIP != "" {
			kv = append(kv, clientIPKey, f.clientIP)
		}
		if f.requestID != "" {
			kv = append(kv, requestIDKey, f.requestID)
		}
		if len(kv) > 0 {
			out = metadata.AppendToOutgoingContext(ctx, kv...)
		}
	}
	var lastErr error
	for _, r := range v.order() {
		r.calls.Add(1)
		resp, err := r.client.Authenticate(out, &credentialv1.AuthenticateRequest{Credential: raw})
		if err == nil {
			if resp.GetPrincipal() == nil {
				return nil, v.unavailable(r, errors.New("empty answer"))
			}
			return resp.GetPrincipal(), nil
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		st := status.Convert(err)
		switch st.Code() {
		case codes.Unauthenticated, codes.PermissionDenied:
			if strings.HasPrefix(st.Message(), "internal RPC") {
				// The credential service refused our service credential,
				// not the caller's: do not blame the caller.
				v.lg.Error("the credential service refused the service credential; no caller can be verified",
					zap.String("replica", r.addr), zap.String("error", st.Message()))
				return nil, statusErr(codes.Unavailable, ReasonVerifierMisconfig, "this service cannot verify credentials right now; its operator has been told")
			}
			return nil, err // the credential service's answer about the caller, with its reason
		case codes.Unavailable:
			lastErr = err
			continue // try the next replica
		}
		return nil, v.unavailable(r, err)
	}
	return nil, v.unavailable(nil, lastErr)
}

func (v *Verifier) unavailable(r *replica, err error) error {
	addr := ""
	if r != nil {
		addr = r.addr
	}
	v.lg.Warn("credential service call failed", zap.String("replica", addr), zap.Error(err))
	return statusErr(codes.Unavailable, ReasonVerifyUnavailable, MsgUnavailable)
}

// order is the replicas to try: starting at the next in turn, those that
// are connected or may be first, those known to be failing last.
func (v *Verifier) order() []*replica {
	n := len(v.replicas)
	start := int(v.next.Add(1) % uint64(n))
	var good, bad []*replica
	for i := range n {
		r := v.replicas[(start+i)%n]
		if r.conn.GetState() == connectivity.TransientFailure {
			bad = append(bad, r)
		} else {
			good = append(good, r)
		}
	}
	return append(good, bad...)
}

func (v *Verifier) invalidate(subjects []string, all bool) {
	v.invalidations.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.epoch++
	if all {
		clear(v.cache)
		clear(v.bySubject)
		return
	}
	for _, s := range subjects {
		for _, k := range v.bySubject[s] {
			delete(v.cache, k)
		}
		delete(v.bySubject, s)
	}
}

func (v *Verifier) setLive(r *replica, on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if r.live == on {
		return
	}
	r.live = on
	if on {
		v.live++
	} else {
		v.live--
	}
	v.epoch++
	clear(v.cache)
	clear(v.bySubject)
}

// watch follows one replica's revocation stream until ctx ends,
// reconnecting with backoff. While it is down nothing is cached.
func (v *Verifier) watch(ctx context.Context, r *replica) {
	backoff := 50 * time.Millisecond
	refused := false
	for ctx.Err() == nil {
		opened, err := v.watchOnce(ctx, r)
		v.setLive(r, false)
		if ctx.Err() != nil {
			return
		}
		if opened {
			backoff = 50 * time.Millisecond
		}
		switch c := status.Code(err); {
		case (c == codes.Unauthenticated || c == codes.PermissionDenied) && !opened:
			if !refused {
				v.lg.Error("the credential service refused the revocation watch: check the service credential; caching stays off",
					zap.String("replica", r.addr), zap.String("error", status.Convert(err).Message()))
			}
			refused = true
		default:
			refused = false
			v.lg.Debug("revocation watch interrupted; caching off until it reconnects", zap.String("replica", r.addr), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (v *Verifier) watchOnce(ctx context.Context, r *replica) (opened bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := r.client.WatchRevocations(ctx)
	if err != nil {
		return false, err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return opened, err
		}
		if ev.GetSequence() == 0 {
			// The opening event: this replica's watch is live.
			opened = true
			v.setLive(r, true)
		} else {
			v.invalidate(ev.GetSubjectIds(), ev.GetDropAll())
		}
		if err := stream.Send(&credentialv1.WatchRevocationsRequest{AckSequence: ev.GetSequence()}); err != nil {
			return opened, err
		}
	}
}
