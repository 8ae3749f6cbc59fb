// Package gateway is the REST facade of the control plane: a grpc-gateway v2
// mux that turns the documented JSON routes into gRPC calls to the credential,
// automation, agent and vault services, plus /healthz, /readyz and
// /openapi.json.
//
// The gateway forwards only what the services need: the Authorization header,
// a request id, the end client's IP (X-Forwarded-For is believed only from
// trusted proxies, none by default) and the Idempotency-Key header. It never
// logs credentials or bodies. Server builds the HTTP server with the
// timeouts and size caps that keep slow or greedy clients from holding it.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/gateway/console"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/replicas"
	"github.com/backlog/controlplane/services/kit/server"
)

// Defaults of the HTTP server's limits (Config fields left zero).
const (
	// DefaultMaxBodyBytes is the largest request body accepted (1 MiB).
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxHeaderBytes caps the request line and headers (32 KiB).
	DefaultMaxHeaderBytes = 32 << 10
	// DefaultReadHeaderTimeout bounds the wait for a request's headers,
	// including the first request of a new connection.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds the wait for a request's body, from the end
	// of its headers to its last byte.
	DefaultBodyTimeout = 30 * time.Second
	// DefaultIdleTimeout closes a keep-alive connection idle this long.
	DefaultIdleTimeout = 60 * time.Second
)

// IdempotencyKey is the gRPC metadata key the Idempotency-Key header is
// forwarded in.
const IdempotencyKey = "idempotency-key"

// readyTimeout bounds each service's health check in /readyz.
const readyTimeout = time.Second

// Config configures the gateway.
type Config struct {
	// gRPC host:port of each service. All four are required.
	CredentialAddr, AutomationAddr, AgentAddr, VaultAddr string
	// TrustedProxies are the peers whose X-Forwarded-For is believed; nil
	// or empty trusts no one: the client IP is the TCP peer's address.
	TrustedProxies []netip.Prefix
	// Logger receives the access log (one info line per request: method,
	// route template, status, duration, request id); nil logs nothing.
	Logger *zap.Logger
	// TransportCredentials secure the connections to the services (mTLS);
	// nil dials in plaintext.
	TransportCredentials credentials.TransportCredentials
	// ForwardingToken, when set, is presented to the services on every call
	// (auth.ForwarderCredentials): a service believes the client IP the
	// gateway forwards only from a caller presenting it (or the service
	// credential it is derived from, which the gateway never holds).
	// Without it the services count the gateway's own address as every
	// client's.
	ForwardingToken string
	// Dialer, when set, opens the connections to the services instead of
	// TCP (backlogd -target=all: in memory to the services of its own
	// process); it is given each service address.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Channels, when set, carry the gateway's API calls to a service — keyed
	// by its name: "credential", "automation", "agent", "vault" — instead of
	// its connection (backlogd -target=all: as function calls to the
	// services of its own process). The gateway treats a channel as it does
	// a connection: only the metadata it forwards leaves it, and the
	// ForwardingToken is presented. The service is still dialled: /readyz
	// checks its health over the connection.
	Channels map[string]grpc.ClientConnInterface

	// Limits of the HTTP server (Server) and the handler; zero means the
	// Default… constant of the same name.
	MaxBodyBytes      int64
	MaxHeaderBytes    int
	ReadHeaderTimeout time.Duration
	BodyTimeout       time.Duration
	IdleTimeout       time.Duration
}

// withDefaults fills the zero limits.
func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.BodyTimeout <= 0 {
		c.BodyTimeout = DefaultBodyTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	return c
}

// Gateway is the REST facade. Build it with New, serve Handler, then Close.
type Gateway struct {
	cfg     Config
	lg      *zap.Logger
	ips     clientip.Resolver
	mux     *runtime.ServeMux
	handler http.Handler
	console *console.Console
	conns   []*grpc.ClientConn
	// backends are checked by /readyz, in this order.
	backends []backend
}

type backend struct {
	name string
	addr string
	conn *grpc.ClientConn
	// api carries the API calls: conn, or the service's channel
	// (Config.Channels).
	api grpc.ClientConnInterface
}

// forwardedMetadata is every gRPC metadata key the gateway sends to a
// service; anything else is dropped before the call leaves the gateway.
var forwardedMetadata = []string{"authorization", server.RequestIDKey, clientip.MetadataKey, IdempotencyKey}

// New dials the services (lazily, with grpc.NewClient over insecure loopback
// transport) and builds the REST handler.
func New(cfg Config) (*Gateway, error) {
	cfg = cfg.withDefaults()
	addrs := []struct{ name, addr string }{
		{"credential", cfg.CredentialAddr},
		{"automation", cfg.AutomationAddr},
		{"agent", cfg.AgentAddr},
		{"vault", cfg.VaultAddr},
	}
	for _, a := range addrs {
		if a.addr == "" {
			return nil, fmt.Errorf("gateway: no address for the %s service", a.name)
		}
	}

	g := &Gateway{
		cfg: cfg,
		lg:  cfg.Logger.With(zap.String("service", "gateway")),
		ips: clientip.Resolver{Trusted: cfg.TrustedProxies},
	}
	g.mux = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newJSONMarshaler(cfg.MaxBodyBytes)),
		runtime.WithIncomingHeaderMatcher(incomingHeaderMatcher),
		runtime.WithOutgoingHeaderMatcher(dropHeader),
		runtime.WithOutgoingTrailerMatcher(dropHeader),
		runtime.WithMetadata(g.annotate),
		runtime.WithErrorHandler(g.errorHandler),
		runtime.WithRoutingErrorHandler(g.routingErrorHandler),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithDisablePathLengthFallback(),
	)

	// One connection per distinct address: the credential address serves
	// both CredentialService and AuditService.
	byAddr := map[string]*grpc.ClientConn{}
	for _, a := range addrs {
		conn, ok := byAddr[a.addr]
		if !ok {
			var err error
			conn, err = dial(a.addr, cfg.TransportCredentials, cfg.ForwardingToken, cfg.Dialer)
			if err != nil {
				g.Close()
				return nil, fmt.Errorf("gateway: %s service at %q: %w", a.name, a.addr, err)
			}
			byAddr[a.addr] = conn
			g.conns = append(g.conns, conn)
		}
		var api grpc.ClientConnInterface = conn
		if ch := cfg.Channels[a.name]; ch != nil {
			api = channel{cc: ch, forwardingToken: cfg.ForwardingToken}
		}
		g.backends = append(g.backends, backend{name: a.name, addr: a.addr, conn: conn, api: api})
	}
	conn := func(name string) grpc.ClientConnInterface {
		for _, b := range g.backends {
			if b.name == name {
				return b.api
			}
		}
		panic("unknown backend " + name)
	}

	// The registration context only scopes the handlers' lifetime; the
	// connections are closed by Close.
	ctx := context.Background()
	regs := []error{
		credentialv1.RegisterCredentialServiceHandlerClient(ctx, g.mux, credentialv1.NewCredentialServiceClient(conn("credential"))),
		// The credential service fronts the merged audit trail.
		auditv1.RegisterAuditServiceHandlerClient(ctx, g.mux, auditv1.NewAuditServiceClient(conn("credential"))),
		automationv1.RegisterAutomationServiceHandlerClient(ctx, g.mux, automationv1.NewAutomationServiceClient(conn("automation"))),
		agentv1.RegisterAgentServiceHandlerClient(ctx, g.mux, agentv1.NewAgentServiceClient(conn("agent"))),
		vaultv1.RegisterVaultServiceHandlerClient(ctx, g.mux, vaultv1.NewVaultServiceClient(conn("vault"))),
	}
	if err := errors.Join(regs...); err != nil {
		g.Close()
		return nil, fmt.Errorf("gateway: register handlers: %w", err)
	}

	// The web console (/, /console/…): its own package, over the same mux.
	var err error
	if g.console, err = console.New(console.Config{API: g.mux, SignIns: consolev1.NewConsoleServiceClient(conn("credential")),
		Secret: cfg.ForwardingToken, Logger: cfg.Logger, Metadata: func(r *http.Request) metadata.MD { return g.annotate(r.Context(), r) }}); err != nil {
		g.Close()
		return nil, fmt.Errorf("gateway: console: %w", err)
	}
	g.handler = g.middleware(g.routes())
	return g, nil
}

// Handler returns the HTTP handler serving the REST routes, /healthz,
// /readyz and /openapi.json.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Server returns an HTTP server for Handler with the configured limits: a
// client gets ReadHeaderTimeout to send a request's headers (also the first
// request on a new connection, so a connection that sends nothing is closed
// after it), at most MaxHeaderBytes of them (431 beyond), BodyTimeout for
// the body once the headers are in (408, and the connection is closed), at
// most MaxBodyBytes of body (413), and a keep-alive connection is closed
// after IdleTimeout without a request. There is no whole-request read or
// write timeout: it would cancel slow but legitimate calls to the services
// (an HTTP Request step waits on a third party).
func (g *Gateway) Server() *http.Server {
	// net/http's own complaints (accept errors, TLS handshakes) as JSON lines.
	errLog, _ := zap.NewStdLogAt(g.lg.Named("http"), zapcore.WarnLevel)
	return &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: g.cfg.ReadHeaderTimeout,
		IdleTimeout:       g.cfg.IdleTimeout,
		MaxHeaderBytes:    g.cfg.MaxHeaderBytes,
		ErrorLog:          errLog,
	}
}

// Close closes the connections to the services.
func (g *Gateway) Close() error {
	var errs []error
	for _, c := range g.conns {
		errs = append(errs, c.Close())
	}
	g.conns = nil
	return errors.Join(errs...)
}

func dial(addr string, creds credentials.TransportCredentials, forwardingToken string, dialer func(context.Context, string) (net.Conn, error)) (*grpc.ClientConn, error) {
	secure := creds != nil
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	var opts []grpc.DialOption
	if dialer != nil {
		opts = append(opts, grpc.WithContextDialer(dialer))
	}
	if forwardingToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(auth.ForwarderCredentials{Token: forwardingToken, Secure: secure}))
	}
	// addr may be a comma list of the service's replicas.
	target, extra := replicas.Target(addr)
	return grpc.NewClient(target, append(append(opts, extra...),
		grpc.WithTransportCredentials(creds),
		// Services are on loopback or a private network: reconnect quickly
		// after a restart instead of backing off for up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   3 * time.Second,
			},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithChainUnaryInterceptor(allowMetadata),
		grpc.WithChainStreamInterceptor(allowMetadataStream),
	)...)
}

// allowMetadata drops every outgoing metadata key but forwardedMetadata,
// whatever grpc-gateway added on its own (x-forwarded-for, x-forwarded-host).
func allowMetadata(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(filterOutgoing(ctx), method, req, reply, cc, opts...)
}

func allowMetadataStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(filterOutgoing(ctx), desc, cc, method, opts...)
}

func filterOutgoing(ctx context.Context) context.Context {
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok {
		return ctx
	}
	return metadata.NewOutgoingContext(ctx, forwarded(md))
}

// forwarded is the part of md the gateway sends: forwardedMetadata.
func forwarded(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for _, k := range forwardedMetadata {
		if v := md.Get(k); len(v) > 0 {
			out[k] = v
		}
	}
	return out
}

// channel is a service reached over a channel of Config.Channels: what the
// connections' interceptors and per-call credentials do (allowMetadata,
// auth.ForwarderCredentials), it does before handing the call on.
type channel struct {
	cc              grpc.ClientConnInterface
	forwardingToken string
}

func (c channel) Invoke(ctx context.Context, method string, req, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(c.outgoing(ctx), method, req, reply, opts...)
}

func (c channel) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(c.outgoing(ctx), desc, method, opts...)
}

func (c channel) outgoing(ctx context.Context) context.Context {
	// forwarded(md), reading the few keys one by one instead of copying
	// the whole outgoing metadata first.
	out := make(metadata.MD, len(forwardedMetadata)+1)
	for _, k := range forwardedMetadata {
		if v := metadata.ValueFromOutgoingContext(ctx, k); len(v) > 0 {
			out[k] = v
		}
	}
	if c.forwardingToken != "" {
		out[auth.ForwarderKey] = []string{c.forwardingToken}
	}
	return metadata.NewOutgoingContext(ctx, out)
}

// incomingHeaderMatcher forwards Idempotency-Key and nothing else.
// (grpc-gateway passes Authorization on its own.)
func incomingHeaderMatcher(key string) (string, bool) {
	if http.CanonicalHeaderKey(key) == "Idempotency-Key" {
		return IdempotencyKey, true
	}
	return "", false
}

// dropHeader keeps service response metadata out of HTTP responses.
func dropHeader(string) (string, bool) { return "", false }

// annotate adds the request id and client IP the middleware computed.
func (g *Gateway) annotate(ctx context.Context, _ *http.Request) metadata.MD {
	ri := infoFrom(ctx)
	if ri == nil {
		return nil
	}
	if pattern, ok := runtime.HTTPPathPattern(ctx); ok { // for the access log
		ri.route.Store(routeOf(pattern))
	}
	// The keys are lower case already: no metadata.Pairs.
	md := metadata.MD{server.RequestIDKey: {ri.requestID}}
	if ri.clientIP != "" {
		md[clientip.MetadataKey] = []string{ri.clientIP}
	}
	return md
}

func (g *Gateway) routes() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var h http.HandlerFunc
		switch r.URL.Path {
		case "/healthz":
			h = g.healthz
		case "/readyz":
			h = g.readyz
		case "/openapi.json":
			h = g.openapi
		default:
			if console.Owns(r.URL.Path) {
				g.console.ServeHTTP(w, r)
				return
			}
			g.mux.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, 12, "method not allowed")
			return
		}
		h(w, r)
	})
}
