package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/backlog/controlplane/services/kit/idem"
)

// defaultRetryAfter is sent with a 429 when the service named no delay.
const defaultRetryAfter = "60"

// errorBody is the JSON error every route answers with.
type errorBody struct {
	Code    int               `json:"code"`
	Message string            `json:"message"`
	Details []json.RawMessage `json:"details"`
}

// httpStatus maps a gRPC code to the HTTP status of the REST contract.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return http.StatusInternalServerError
	}
	return runtime.HTTPStatusFromCode(c)
}

// errorHandler writes a gRPC status (from a service or from the gateway
// itself) as the contract's JSON error.
func (g *Gateway) errorHandler(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	code := 0
	var hse *runtime.HTTPStatusError
	if errors.As(err, &hse) {
		code, err = hse.HTTPStatus, hse.Err
	}
	st := status.Convert(err)
	if code == 0 {
		code = httpStatus(st.Code())
	}
	msg, details := st.Message(), st.Proto().GetDetails()
	ri := infoFrom(r.Context())

	if isClientEncodingError(st) {
		// gRPC could not encode the request: text in it was not UTF-8.
		// checkRequest refuses that in the path, query and headers, and
		// protojson in the body; this is the backstop.
		code, st = http.StatusBadRequest, status.New(codes.InvalidArgument, "the request holds text that is not valid UTF-8")
		msg, details = st.Message(), nil
	}

	switch st.Code() {
	case codes.FailedPrecondition:
		if hasReason(st, idem.Reason) {
			// The same Idempotency-Key with another request: the body is
			// well-formed but cannot be processed under this key.
			code = http.StatusUnprocessableEntity
		}
	case codes.InvalidArgument:
		switch {
		case ri != nil && ri.bodyTooLarge.Load():
			code, msg, details = http.StatusRequestEntityTooLarge, g.tooLargeMessage(), nil
		case ri != nil && ri.bodyTimedOut.Load():
			// The rest of the body is not coming in time: do not wait
			// for it on this connection.
			w.Header().Set("Connection", "close")
			code, msg, details = http.StatusRequestTimeout, g.timeoutMessage(), nil
		}
	case codes.Unauthenticated:
		w.Header().Set("WWW-Authenticate", `Bearer realm="backlog"`)
	case codes.ResourceExhausted:
		w.Header().Set("Retry-After", retryAfter(ctx, st))
	case codes.Unavailable:
		// A transport failure between gateway and service carries the
		// service's address and dial error: do not show it to the caller.
		if len(details) == 0 {
			msg = "service unavailable; try again later"
		}
	case codes.Internal, codes.Unknown, codes.DataLoss:
		fields := []zap.Field{zap.String("code", st.Code().String()), zap.String("path", r.URL.Path), zap.String("error", st.Message())}
		if ri != nil {
			fields = append(fields, zap.String("request-id", ri.requestID))
		}
		g.lg.Error("internal error", fields...)
		msg, details = "internal error", nil
	}
	writeErrorDetails(w, code, st.Code(), msg, details)
}

// hasReason reports whether st carries an ErrorInfo with reason.
func hasReason(st *status.Status, reason string) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == reason {
			return true
		}
	}
	return false
}

// isClientEncodingError reports whether st is grpc-go's own refusal to
// marshal a request (it would otherwise surface as 500).
func isClientEncodingError(st *status.Status) bool {
	return st.Code() == codes.Internal && strings.HasPrefix(st.Message(), "grpc: error while marshaling") &&
		strings.Contains(st.Message(), "invalid UTF-8")
}

// routingErrorHandler answers unknown paths (404), wrong methods (405) and
// malformed paths (400) with the JSON error.
func (g *Gateway) routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	var err error
	switch httpStatus {
	case http.StatusNotFound:
		err = status.Error(codes.NotFound, "no such route")
	case http.StatusMethodNotAllowed:
		err = status.Error(codes.Unimplemented, "method not allowed on this route")
	case http.StatusBadRequest:
		err = status.Error(codes.InvalidArgument, "bad request path")
	default:
		httpStatus, err = http.StatusInternalServerError, status.Error(codes.Internal, "routing error")
	}
	g.errorHandler(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: httpStatus, Err: err})
}

// retryAfter is the Retry-After value of a ResourceExhausted status: the
// RetryInfo delay, else the service's "retry-after" metadata, else 60 s.
func retryAfter(ctx context.Context, st *status.Status) string {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			secs := math.Ceil(ri.GetRetryDelay().AsDuration().Seconds())
			if secs < 1 {
				secs = 1
			}
			return strconv.FormatInt(int64(secs), 10)
		}
	}
	if md, ok := runtime.ServerMetadataFromContext(ctx); ok {
		for _, vs := range [][]string{md.HeaderMD.Get("retry-after"), md.TrailerMD.Get("retry-after")} {
			for _, v := range vs {
				v = strings.TrimSpace(v)
				if n, err := strconv.ParseUint(v, 10, 32); err == nil {
					return strconv.FormatUint(n, 10)
				}
			}
		}
	}
	return defaultRetryAfter
}

// writeError writes a JSON error without details.
func writeError(w http.ResponseWriter, httpCode int, code codes.Code, msg string) {
	writeErrorDetails(w, httpCode, code, msg, nil)
}

func writeErrorDetails(w http.ResponseWriter, httpCode int, code codes.Code, msg string, details []*anypb.Any) {
	body := errorBody{Code: int(code), Message: msg, Details: []json.RawMessage{}}
	for _, d := range details {
		b, err := protojson.Marshal(d)
		if err != nil {
			// A detail type this binary does not know: name it only.
			b, _ = json.Marshal(map[string]string{"@type": d.GetTypeUrl()})
		}
		body.Details = append(body.Details, b)
	}
	buf, err := json.Marshal(body)
	if err != nil {
		buf = []byte(`{"code":13,"message":"internal error","details":[]}`)
		httpCode = http.StatusInternalServerError
	}
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(httpCode)
	_, _ = w.Write(buf)
}
