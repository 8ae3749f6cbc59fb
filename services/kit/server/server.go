// Package server builds the gRPC server every service runs: request ids,
// client IPs, zap logging (never credentials), panic recovery, authentication,
// one error-mapping table, server reflection and grpc.health.v1; requests
// that do not decode (a string that is not UTF-8) are InvalidArgument, and
// page tokens are signed with a key derived from the service credential.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"runtime"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/page"
)

// RequestIDKey is the metadata key carrying the request id.
const RequestIDKey = "x-request-id"

// Config configures a service's gRPC server.
type Config struct {
	// Name of the service, e.g. "credential"; used in logs and health.
	Name   string
	Logger *zap.Logger
	// Errors maps the service's sentinel errors to statuses.
	Errors *errs.Table
	// Auth authenticates bearer credentials; nil disables authentication.
	Auth auth.Authenticator
	// NoAuth reports methods that do their own authentication (or none).
	NoAuth func(fullMethod string) bool
	// Internal reports methods only sibling services may call: they must
	// present ServiceToken (see auth.CheckService).
	Internal func(fullMethod string) bool
	// ServiceToken is the deployment's service credential. Besides guarding
	// Internal methods, it decides whom the server believes about the client
	// IP: only a caller presenting it, or the forwarding credential derived
	// from it (auth.Vouched: the gateway), may name one in
	// clientip.MetadataKey; for anyone else the peer address counts. Page
	// tokens are signed with a key derived from it (page.NewKey), so every
	// replica accepts the others'. Empty: no caller is believed, and page
	// tokens work only on this process.
	ServiceToken string
	// Options are extra gRPC server options (e.g. TLS credentials).
	Options []grpc.ServerOption
}

// Server is a gRPC server with health and reflection registered.
type Server struct {
	GRPC   *grpc.Server
	Health *health.Server
	name   string
	lg     *zap.Logger
	cdc    *requestCodec
	// unary and stream are the interceptor chains GRPC runs (Interceptors).
	unary  grpc.UnaryServerInterceptor
	stream grpc.StreamServerInterceptor

	checks    []func(context.Context) error
	stopCheck chan struct{}
}

// CheckEvery is how often readiness checks run while serving.
const CheckEvery = time.Second

// AddCheck adds a readiness check (e.g. "the store answers"), run every
// CheckEvery while serving: when one starts failing the server reports
// NOT_SERVING on grpc.health.v1 (so the gateway's /readyz answers 503), and
// SERVING again once all pass. Add checks before Serve.
func (s *Server) AddCheck(check func(context.Context) error) {
	s.checks = append(s.checks, check)
}

func (s *Server) runChecks() {
	t := time.NewTicker(CheckEvery)
	defer t.Stop()
	ok := true
	for {
		select {
		case <-s.stopCheck:
			return
		case <-t.C:
		}
		var failed error
		for _, c := range s.checks {
			ctx, cancel := context.WithTimeout(context.Background(), CheckEvery)
			failed = c(ctx)
			cancel()
			if failed != nil {
				break
			}
		}
		switch {
		case failed != nil && ok:
			s.lg.Warn("not ready: a readiness check fails", zap.Error(failed))
			s.setAll(healthpb.HealthCheckResponse_NOT_SERVING)
		case failed == nil && !ok:
			s.lg.Info("ready again: every readiness check passes")
			s.setAll(healthpb.HealthCheckResponse_SERVING)
		}
		ok = failed == nil
	}
}

func (s *Server) setAll(st healthpb.HealthCheckResponse_ServingStatus) {
	s.Health.SetServingStatus("", st)
	for name := range s.GRPC.GetServiceInfo() {
		s.Health.SetServingStatus(name, st)
	}
}

// New builds the server. Register services on s.GRPC, then Serve.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Errors == nil {
		cfg.Errors = errs.NewTable(cfg.Name + ".backlog")
	}
	lg := cfg.Logger.With(zap.String("service", cfg.Name))
	pageKey := page.NewKey(cfg.ServiceToken)
	vouched := auth.NewVoucher(cfg.ServiceToken).Vouched
	withCall := func(ctx context.Context) context.Context {
		return page.WithKey(withCallInfo(ctx, vouched(ctx)), pageKey)
	}
	cdc := newRequestCodec()
	skip := func(m string) bool {
		if strings.HasPrefix(m, "/grpc.health.v1.") || strings.HasPrefix(m, "/grpc.reflection.") {
			return true
		}
		return cfg.NoAuth != nil && cfg.NoAuth(m)
	}
	recov := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		lg.Error("panic in handler", zap.String("request-id", RequestID(ctx)), zap.Any("panic", sanitizePanic(p)), zap.Stack("stack"))
		return status.Error(codes.Internal, "internal error; the server logged the cause")
	})
	unaryAuth, streamAuth := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(ctx, req)
	}, func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, ss)
	}
	if cfg.Auth != nil {
		unaryAuth, streamAuth = auth.Interceptors(cfg.Auth, skip)
	}
	internal := func(m string) bool { return cfg.Internal != nil && cfg.Internal(m) }
	mapErr := func(ctx context.Context, method string, err error) error {
		out, known := cfg.Errors.ToStatus(err)
		if !known {
			lg.Error("unmapped error", zap.String("method", method), zap.String("request-id", RequestID(ctx)), zap.Error(err))
		}
		return out
	}
	unary := []grpc.UnaryServerInterceptor{
		metrics.RPC.UnaryServerInterceptor(),
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx = withCall(ctx)
			start := time.Now()
			resp, err := h(ctx, req)
			logCall(lg, ctx, info.FullMethod, start, err)
			return resp, err
		},
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := cdc.take(req); err != nil {
				return nil, err // did not decode: see requestCodec
			}
			return h(ctx, req)
		},
		recovery.UnaryServerInterceptor(recov),
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			if err != nil {
				return nil, mapErr(ctx, info.FullMethod, err)
			}
			return resp, nil
		},
		func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if internal(info.FullMethod) {
				if err := auth.CheckService(ctx, cfg.ServiceToken); err != nil {
					return nil, err
				}
			}
			return h(ctx, req)
		},
		unaryAuth,
	}
	stream := []grpc.StreamServerInterceptor{
		metrics.RPC.StreamServerInterceptor(),
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx := withCall(ss.Context())
			start := time.Now()
			err := h(srv, &ctxStream{ss, ctx, cdc})
			logCall(lg, ctx, info.FullMethod, start, err)
			return err
		},
		recovery.StreamServerInterceptor(recov),
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := h(srv, ss); err != nil {
				return mapErr(ss.Context(), info.FullMethod, err)
			}
			return nil
		},
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if internal(info.FullMethod) {
				if err := auth.CheckService(ss.Context(), cfg.ServiceToken); err != nil {
					return err
				}
			}
			return h(srv, ss)
		},
		streamAuth,
	}
	g := grpc.NewServer(append([]grpc.ServerOption{
		// A fixed pool of stream workers instead of a goroutine per call:
		// fewer stack growths on the hot path.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		cdc.serverOption(),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}, cfg.Options...)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	metrics.RPC.InitializeMetrics(g)
	return &Server{GRPC: g, Health: hs, name: cfg.Name, lg: lg, cdc: cdc, stopCheck: make(chan struct{}),
		unary: chainUnary(unary), stream: chainStream(stream)}
}

// Interceptors returns the interceptor chains every call through GRPC
// passes (metrics, request ids and client IPs, logging, panic recovery, the
// error table, the service-credential check, authentication), so that the
// same services can be called in process (backlogd's in-process channel)
// exactly as over the network. The handler of a call given to them must see
// the caller's metadata as incoming metadata and the caller's address as
// its peer, as a network call would.
func (s *Server) Interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return s.unary, s.stream
}

// chainUnary runs ints in order around the handler, as
// grpc.ChainUnaryInterceptor does.
func chainUnary(ints []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		var next func(i int) grpc.UnaryHandler
		next = func(i int) grpc.UnaryHandler {
			if i == len(ints) {
				return h
			}
			return func(ctx context.Context, req any) (any, error) { return ints[i](ctx, req, info, next(i+1)) }
		}
		return next(0)(ctx, req)
	}
}

// chainStream runs ints in order around the handler, as
// grpc.ChainStreamInterceptor does.
func chainStream(ints []grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		var next func(i int) grpc.StreamHandler
		next = func(i int) grpc.StreamHandler {
			if i == len(ints) {
				return h
			}
			return func(srv any, ss grpc.ServerStream) error { return ints[i](srv, ss, info, next(i+1)) }
		}
		return next(0)(srv, ss)
	}
}

// Serve marks the server SERVING and serves lis until Stop.
func (s *Server) Serve(lis net.Listener) error {
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.GRPC.GetServiceInfo() {
		s.Health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.lg.Info("serving", zap.String("addr", lis.Addr().String()))
	if len(s.checks) > 0 {
		go s.runChecks()
	}
	return s.GRPC.Serve(lis)
}

// Stop drains in-flight calls, forcing a stop after the grace period.
func (s *Server) Stop(grace time.Duration) {
	select {
	case <-s.stopCheck:
	default:
		close(s.stopCheck)
	}
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() { s.GRPC.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.GRPC.Stop()
	}
}

type callInfoKey struct{}

type callInfo struct {
	requestID string
	clientIP  string
}

// withCallInfo records the call's request id and client IP; vouched is
// whether the caller may speak for its client's address (auth.Vouched).
func withCallInfo(ctx context.Context, vouched bool) context.Context {
	ci := callInfo{clientIP: clientip.FromGRPC(ctx, vouched)}
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDKey); len(v) > 0 && validRequestID(v[0]) {
		ci.requestID = v[0]
	}
	if ci.requestID == "" {
		var b [8]byte
		rand.Read(b[:])
		ci.requestID = hex.EncodeToString(b[:])
	}
	return context.WithValue(ctx, callInfoKey{}, ci)
}

func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// RequestID returns the request id of the call.
func RequestID(ctx context.Context) string {
	ci, _ := ctx.Value(callInfoKey{}).(callInfo)
	return ci.requestID
}

// ClientIP returns the end client's IP of the call.
func ClientIP(ctx context.Context) string {
	ci, _ := ctx.Value(callInfoKey{}).(callInfo)
	return ci.clientIP
}

func logCall(lg *zap.Logger, ctx context.Context, method string, start time.Time, err error) {
	st := status.Convert(err)
	level := zapcore.InfoLevel
	switch st.Code() {
	case codes.OK:
		level = zapcore.DebugLevel
	case codes.Internal, codes.Unknown, codes.DataLoss:
		level = zapcore.ErrorLevel
	}
	ce := lg.Check(level, "rpc")
	if ce == nil {
		return // not logged at this level: build no fields
	}
	fields := []zap.Field{
		zap.String("method", method),
		zap.String("code", st.Code().String()),
		zap.Duration("duration", time.Since(start)),
		zap.String("request-id", RequestID(ctx)),
		zap.String("client-ip", ClientIP(ctx)),
	}
	if p := auth.FromContext(ctx); p != nil {
		fields = append(fields, zap.String("subject-id", p.SubjectId), zap.String("workspace-id", p.WorkspaceId))
	}
	if err != nil {
		// Status messages are written for callers and never hold credentials.
		fields = append(fields, zap.String("error", st.Message()))
	}
	ce.Write(fields...)
}

// sanitizePanic keeps a panic value's type but not values that could be
// request data (a panic while handling a credential must not log it).
func sanitizePanic(p any) any {
	if e, ok := p.(error); ok {
		_ = e
		return "panic of type error"
	}
	if _, ok := p.(string); ok {
		return "panic with a message (withheld: it may hold request data)"
	}
	return "panic"
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
	cdc *requestCodec
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// RecvMsg answers InvalidArgument for a message that did not decode (see
// requestCodec).
func (c *ctxStream) RecvMsg(m any) error {
	if err := c.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return c.cdc.take(m)
}
