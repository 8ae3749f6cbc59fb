package sdk

import (
	"encoding/json"
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// Messages of the refusals the SDK answers itself. They are the control
// plane's own, word for word, so that a caller reads the same advice from
// every Backlog service.
const (
	MsgMissing        = "missing credential: send the header Authorization: Bearer <token>"
	MsgExchangeFirst  = "an automation secret cannot call this API: exchange it for a short-lived access token first (POST /v1/auth/exchange, or `backlog auth exchange`)"
	MsgRotationSecret = "a rotation secret is not a bearer credential: send it in the body of POST /v1/agents/self/rotate-key with the agent API key as Bearer"
	MsgInvalid        = "invalid credential"
	MsgOperator       = "the operator token can only create workspaces"
	MsgUnavailable    = "could not verify the credential: the credential service is unavailable; try again"
)

// Domain is the ErrorInfo domain of the refusals the SDK answers itself.
const Domain = "backlog"

// ErrorInfo reasons of those refusals. The first three are the ones every
// Backlog service uses; the credential service's own refusals (a suspended
// automation, a revoked agent) are passed on with their reasons.
const (
	ReasonUnauthenticated   = "UNAUTHENTICATED"
	ReasonPermissionDenied  = "PERMISSION_DENIED"
	ReasonNotFound          = "NOT_FOUND"
	ReasonVerifyUnavailable = "CREDENTIAL_SERVICE_UNAVAILABLE"
	ReasonVerifierMisconfig = "VERIFIER_MISCONFIGURED"
)

// statusErr builds a status error with an ErrorInfo detail.
func statusErr(code codes.Code, reason, msg string) error {
	st := status.New(code, msg)
	if ds, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: Domain}); err == nil {
		st = ds
	}
	return st.Err()
}

// Unauthenticated is a 401 refusal with reason UNAUTHENTICATED.
func Unauthenticated(msg string) error {
	return statusErr(codes.Unauthenticated, ReasonUnauthenticated, msg)
}

// Forbidden is a 403 refusal with reason PERMISSION_DENIED.
func Forbidden(msg string) error {
	return statusErr(codes.PermissionDenied, ReasonPermissionDenied, msg)
}

// NotFound is a 404 with reason NOT_FOUND: what a caller of another
// workspace gets, so that it learns nothing about this one.
func NotFound(msg string) error { return statusErr(codes.NotFound, ReasonNotFound, msg) }

// Reason returns the ErrorInfo reason of a status error, or "".
func Reason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetReason()
		}
	}
	return ""
}

// HTTPStatus is the HTTP status the REST contract gives a gRPC code.
func HTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
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
	case codes.Canceled:
		return 499
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// WriteError answers an HTTP request with err as the contract's JSON error,
// {"code": <gRPC code>, "message": "…", "details": [ErrorInfo…]}, with the
// matching HTTP status (and WWW-Authenticate on a 401). An error that is not
// a gRPC status is answered 500 "internal error": its text is not shown.
func WriteError(w http.ResponseWriter, err error) {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.Unknown {
		st = status.New(codes.Internal, "internal error")
	}
	body := struct {
		Code    int               `json:"code"`
		Message string            `json:"message"`
		Details []json.RawMessage `json:"details"`
	}{Code: int(st.Code()), Message: st.Message(), Details: []json.RawMessage{}}
	for _, d := range st.Proto().GetDetails() {
		b, err := protojson.Marshal(d)
		if err != nil {
			b, _ = json.Marshal(map[string]string{"@type": d.GetTypeUrl()})
		}
		body.Details = append(body.Details, b)
	}
	buf, _ := json.Marshal(body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	if st.Code() == codes.Unauthenticated {
		h.Set("WWW-Authenticate", `Bearer realm="backlog"`)
	}
	w.WriteHeader(HTTPStatus(st.Code()))
	_, _ = w.Write(buf)
}
