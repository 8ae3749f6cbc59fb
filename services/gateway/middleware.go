package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/codes"
)

// RequestIDHeader is the HTTP header carrying the request id both ways.
const RequestIDHeader = "X-Request-Id"

type requestInfoKey struct{}

// requestInfo is what the middleware learns about a request before routing.
type requestInfo struct {
	requestID string
	clientIP  string
	// bodyTooLarge is set once the body reader hits the size cap,
	// bodyTimedOut once the body was not received within BodyTimeout.
	bodyTooLarge atomic.Bool
	bodyTimedOut atomic.Bool
	// route is the matched route's template ("/v1/workspaces/{workspaceId}/automations"),
	// set when the REST mux routes the request (annotate).
	route atomic.Pointer[string]
}

// routeTemplate writes a grpc-gateway path pattern's variables the way the
// OpenAPI document does: "/v1/workspaces/{workspace_id}" → "/v1/workspaces/{workspaceId}".
func routeTemplate(pattern string) string {
	if !strings.Contains(pattern, "_") {
		return pattern
	}
	b := make([]byte, 0, len(pattern))
	inVar, upper := false, false
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		switch {
		case c == '{':
			inVar = true
		case c == '}':
			inVar = false
		case inVar && c == '_':
			upper = true
			continue
		case upper && c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		}
		upper = false
		b = append(b, c)
	}
	return string(b)
}

// routes holds the route template of each path pattern the mux has matched
// (a fixed set: the registered routes), computed once.
var routes sync.Map // pattern → *string

// routeOf is routeTemplate(pattern), shared.
func routeOf(pattern string) *string {
	if r, ok := routes.Load(pattern); ok {
		return r.(*string)
	}
	route := routeTemplate(pattern)
	r, _ := routes.LoadOrStore(pattern, &route)
	return r.(*string)
}

// fixedRoutes are served by the gateway itself; their path is their route.
var fixedRoutes = []string{"/healthz", "/readyz", "/openapi.json"}

// routeFor is the route template for the access log: the REST route the mux
// matched, a fixed route, the console, or "unmatched".
func (ri *requestInfo) routeFor(path string) string {
	if p := ri.route.Load(); p != nil {
		return *p
	}
	switch {
	case slices.Contains(fixedRoutes, path):
		return path
	case path == "/" || path == "/console" || strings.HasPrefix(path, "/console/"):
		return "/console/*"
	}
	return "unmatched"
}

func infoFrom(ctx context.Context) *requestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return ri
}

// middleware assigns the request id, resolves the client IP, refuses
// malformed requests (checkRequest), limits the body in size and time,
// recovers panics and logs one line per request.
func (g *Gateway) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &requestInfo{
			requestID: r.Header.Get(RequestIDHeader),
			// Every X-Forwarded-For line, in order: a proxy may add its own
			// line rather than append to the client's.
			clientIP: g.ips.FromHTTP(r.RemoteAddr, strings.Join(r.Header.Values("X-Forwarded-For"), ",")),
		}
		if !validRequestID(ri.requestID) {
			ri.requestID = newRequestID()
		}
		w.Header().Set(RequestIDHeader, ri.requestID)
		rec := &recorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
					panic(p)
				}
				// The panic value may hold request data: log its absence only.
				g.lg.Error("panic while serving a request", zap.String("request-id", ri.requestID), zap.String("path", r.URL.Path), zap.Stack("stack"))
				if !rec.wroteHeader {
					writeError(rec, http.StatusInternalServerError, codes.Internal, "internal error")
				}
			}
			// The access log: one line per request, at info. The route
			// template, never the path or query (they may hold names or
			// tokens), and no header.
			if ce := g.lg.Check(zapcore.InfoLevel, "http request"); ce != nil {
				ce.Write(
					zap.String("method", r.Method),
					zap.String("route", ri.routeFor(r.URL.Path)),
					zap.Int("status", rec.statusCode()),
					zap.Duration("duration", time.Since(start)),
					zap.String("request-id", ri.requestID),
				)
			}
			// At debug, who asked and how. Never the path: a mistyped
			// request may carry a token in it.
			if ce := g.lg.Check(zapcore.DebugLevel, "http request detail"); ce != nil {
				ce.Write(zap.String("request-id", ri.requestID), zap.String("client-ip", ri.clientIP),
					zap.String("proto", r.Proto), zap.Bool("tls", r.TLS != nil))
			}
		}()

		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, ri))
		if msg := checkRequest(r); msg != "" {
			writeError(rec, http.StatusBadRequest, codes.InvalidArgument, msg)
			return
		}
		if r.ContentLength > g.cfg.MaxBodyBytes {
			writeError(rec, http.StatusRequestEntityTooLarge, codes.InvalidArgument, g.tooLargeMessage())
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			// The body gets BodyTimeout from here. The deadline is lifted
			// once the body has been read to its end (net/http/1 does so
			// itself; limitedBody makes sure), so that it never cuts short
			// the call to the service that follows.
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout)) // unsupported only in tests' recorders
			r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(rec, r.Body, g.cfg.MaxBodyBytes), ri: ri, rc: rc}
		}
		next.ServeHTTP(rec, r)
	})
}

func (g *Gateway) tooLargeMessage() string {
	return fmt.Sprintf("request body too large: the limit is %d bytes", g.cfg.MaxBodyBytes)
}

func (g *Gateway) timeoutMessage() string {
	return fmt.Sprintf("request body not received in time: send the whole body within %s of the headers", g.cfg.BodyTimeout)
}

// limitedBody notes in the request info when the body hit its size cap or
// its deadline, so that the error handler answers 413 or 408 instead of
// 400, and lifts the deadline once the body has been read to its end.
type limitedBody struct {
	io.ReadCloser
	ri     *requestInfo
	rc     *http.ResponseController
	lifted bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		if !b.lifted {
			b.lifted = true
			_ = b.rc.SetReadDeadline(time.Time{})
		}
	case errors.As(err, &tooBig):
		b.ri.bodyTooLarge.Store(true)
	case isTimeout(err):
		b.ri.bodyTimedOut.Store(true)
	}
	return n, err
}

// isTimeout reports whether err is a read deadline passing.
func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// validRequestID accepts up to 64 characters of [A-Za-z0-9._-].
func validRequestID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// recorder remembers the status code written.
type recorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status = code
		r.wroteHeader = true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if !r.wroteHeader {
		r.WriteHeader(http.StatusOK)
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		if !r.wroteHeader {
			r.WriteHeader(http.StatusOK)
		}
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) statusCode() int {
	if !r.wroteHeader {
		return http.StatusOK
	}
	return r.status
}
