// Package gateway is the REST facade of the control plane: a grpc-gateway v2
// mux that turns the documented JSON routes into gRPC calls to the credential,
// automation, agent and vault services, plus /healthz, /readyz and
// /openapi.json.
//
// The gateway forwards only what the services need: the Authorization header,
// a request id, the end client's IP (X-Forwarded-For is believed only from
// trusted proxies) and the Idempotency-Key header. It never logs credentials
// or bodies.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/server"
)

// MaxBodyBytes is the largest request body the gateway accepts (1 MiB).
const MaxBodyBytes = 1 << 20

// IdempotencyKey is the gRPC metadata key the Idempotency-Key header is
// forwarded in.
const IdempotencyKey = "idempotency-key"

// readyTimeout bounds each service's health check in /readyz.
const readyTimeout = time.Second

// Config configures the gateway.
type Config struct {
	// gRPC host:port of each service. All four are required.
	CredentialAddr, AutomationAddr, AgentAddr, VaultAddr string
	// TrustedProxies are the peers whose X-Forwarded-For is believed;
	// nil means clientip.Loopback. A non-nil empty slice trusts no one.
	TrustedProxies []netip.Prefix
	// Logger receives one debug line per request; nil logs nothing.
	Logger *zap.Logger
	// TransportCredentials secure the connections to the services (mTLS);
	// nil dials in plaintext.
	TransportCredentials credentials.TransportCredentials
}

// Gateway is the REST facade. Build it with New, serve Handler, then Close.
type Gateway struct {
	lg      *zap.Logger
	ips     clientip.Resolver
	mux     *runtime.ServeMux
	handler http.Handler
	conns   []*grpc.ClientConn
	// backends are checked by /readyz, in this order.
	backends []backend
}

type backend struct {
	name string
	addr string
	conn *grpc.ClientConn
}

// forwardedMetadata is every gRPC metadata key the gateway sends to a
// service; anything else is dropped before the call leaves the gateway.
var forwardedMetadata = []string{"authorization", server.RequestIDKey, clientip.MetadataKey, IdempotencyKey}

// New dials the services (lazily, with grpc.NewClient over insecure loopback
// transport) and builds the REST handler.
func New(cfg Config) (*Gateway, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.TrustedProxies == nil {
		cfg.TrustedProxies = clientip.Loopback
	}
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
		lg:  cfg.Logger.With(zap.String("service", "gateway")),
		ips: clientip.Resolver{Trusted: cfg.TrustedProxies},
	}
	g.mux = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newJSONMarshaler()),
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
			conn, err = dial(a.addr, cfg.TransportCredentials)
			if err != nil {
				g.Close()
				return nil, fmt.Errorf("gateway: %s service at %q: %w", a.name, a.addr, err)
			}
			byAddr[a.addr] = conn
			g.conns = append(g.conns, conn)
		}
		g.backends = append(g.backends, backend{name: a.name, addr: a.addr, conn: conn})
	}
	conn := func(name string) *grpc.ClientConn {
		for _, b := range g.backends {
			if b.name == name {
				return b.conn
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

	g.handler = g.middleware(g.routes())
	return g, nil
}

// Handler returns the HTTP handler serving the REST routes, /healthz,
// /readyz and /openapi.json.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Close closes the connections to the services.
func (g *Gateway) Close() error {
	var errs []error
	for _, c := range g.conns {
		errs = append(errs, c.Close())
	}
	g.conns = nil
	return errors.Join(errs...)
}

func dial(addr string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return grpc.NewClient(addr,
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
	)
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
	out := metadata.MD{}
	for _, k := range forwardedMetadata {
		if v := md.Get(k); len(v) > 0 {
			out[k] = v
		}
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
	md := metadata.Pairs(server.RequestIDKey, ri.requestID)
	if ri.clientIP != "" {
		md.Set(clientip.MetadataKey, ri.clientIP)
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

// jsonMarshaler is protojson with lowerCamelCase names that rejects unknown
// fields and says when a body is not valid JSON.
type jsonMarshaler struct{ *runtime.JSONPb }

func newJSONMarshaler() runtime.Marshaler {
	return jsonMarshaler{&runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: false},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}
}

func (m jsonMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	d := m.JSONPb.NewDecoder(r)
	return runtime.DecoderFunc(func(v any) error {
		err := d.Decode(v)
		if err == nil || errors.Is(err, io.EOF) { // an empty body is an empty message
			return err
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("request body too large: the limit is %d bytes", tooBig.Limit)
		}
		return fmt.Errorf("invalid JSON body: %v", err)
	})
}
