package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
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
	// bodyTooLarge is set once the body reader hits MaxBodyBytes.
	bodyTooLarge atomic.Bool
}

func infoFrom(ctx context.Context) *requestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return ri
}

// middleware assigns the request id, resolves the client IP, limits the body,
// recovers panics and logs one line per request.
func (g *Gateway) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &requestInfo{
			requestID: r.Header.Get(RequestIDHeader),
			clientIP:  g.ips.FromHTTP(r.RemoteAddr, r.Header.Get("X-Forwarded-For")),
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
			if ce := g.lg.Check(zapcore.DebugLevel, "http request"); ce != nil {
				ce.Write(
					zap.String("method", r.Method),
					zap.String("path", r.URL.Path), // never the query: it may hold tokens
					zap.Int("status", rec.statusCode()),
					zap.Duration("duration", time.Since(start)),
					zap.String("request-id", ri.requestID),
				)
			}
		}()

		r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, ri))
		if r.ContentLength > MaxBodyBytes {
			writeError(rec, http.StatusRequestEntityTooLarge, codes.InvalidArgument, tooLargeMessage)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(rec, r.Body, MaxBodyBytes), ri: ri}
		}
		next.ServeHTTP(rec, r)
	})
}

const tooLargeMessage = "request body too large: the limit is 1048576 bytes"

// limitedBody notes in the request info when the body limit was hit, so the
// error handler answers 413 instead of 400.
type limitedBody struct {
	io.ReadCloser
	ri *requestInfo
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var tooBig *http.MaxBytesError
	if err != nil && errors.As(err, &tooBig) {
		b.ri.bodyTooLarge.Store(true)
	}
	return n, err
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
