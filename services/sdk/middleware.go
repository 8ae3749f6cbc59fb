package sdk

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// UnaryServerInterceptor authenticates every unary call's bearer credential
// (metadata "authorization: Bearer …") and puts the caller in the context
// (CallerFrom). Health, reflection and WithPublicMethods methods pass
// without one.
func (v *Verifier) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if v.isPublic(info.FullMethod) {
			return h(ctx, req)
		}
		c, err := v.Verify(withForward(ctx, forwardGRPC(ctx)), bearerGRPC(ctx))
		if err != nil {
			return nil, err
		}
		return h(WithCaller(ctx, c), req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams: the
// credential is verified once, when the stream opens.
func (v *Verifier) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if v.isPublic(info.FullMethod) {
			return h(srv, ss)
		}
		ctx := ss.Context()
		c, err := v.Verify(withForward(ctx, forwardGRPC(ctx)), bearerGRPC(ctx))
		if err != nil {
			return err
		}
		return h(srv, &callerStream{ss, WithCaller(ctx, c)})
	}
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

func (v *Verifier) isPublic(m string) bool {
	if strings.HasPrefix(m, "/grpc.health.v1.") || strings.HasPrefix(m, "/grpc.reflection.") {
		return true
	}
	return v.public != nil && v.public(m)
}

// Middleware authenticates every request's bearer credential (header
// Authorization: Bearer …) and puts the caller in the request's context
// (CallerFrom); a refusal is answered with the contract's JSON error (401
// with WWW-Authenticate, 403, 503) and next is not called.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := forwarded{clientIP: hostIP(r.RemoteAddr), requestID: validRequestID(r.Header.Get("X-Request-Id"))}
		c, err := v.Verify(withForward(r.Context(), f), bearerHTTP(r.Header.Values("Authorization")))
		if err != nil {
			WriteError(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithCaller(r.Context(), c)))
	})
}

func bearer(v string) (string, bool) {
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:]), true
	}
	return "", false
}

func bearerGRPC(ctx context.Context) string {
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		if t, ok := bearer(v); ok {
			return t
		}
	}
	return ""
}

func bearerHTTP(vals []string) string {
	for _, v := range vals {
		if t, ok := bearer(v); ok {
			return t
		}
	}
	return ""
}

func forwardGRPC(ctx context.Context) forwarded {
	var f forwarded
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		f.clientIP = hostIP(p.Addr.String())
	}
	if v := metadata.ValueFromIncomingContext(ctx, requestIDKey); len(v) > 0 {
		f.requestID = validRequestID(v[0])
	}
	return f
}

// hostIP is the IP of a host:port, or "".
func hostIP(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	return a.Unmap().String()
}

// validRequestID returns s when it is a request id the credential service
// accepts (1 to 64 of [A-Za-z0-9._-]), else "".
func validRequestID(s string) string {
	if len(s) == 0 || len(s) > 64 {
		return ""
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return ""
		}
	}
	return s
}
