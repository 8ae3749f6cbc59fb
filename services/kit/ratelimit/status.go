package ratelimit

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Exhausted is a ResourceExhausted status carrying an ErrorInfo (reason,
// domain) and a RetryInfo with the wait: the gateway answers 429 with a
// Retry-After of the wait rounded up to whole seconds.
func Exhausted(domain, reason, msg string, retryAfter time.Duration) error {
	st := status.New(codes.ResourceExhausted, msg)
	if retryAfter < 0 {
		retryAfter = 0
	}
	if ds, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: reason, Domain: domain},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)},
	); err == nil {
		st = ds
	}
	return st.Err()
}

// RetryDelay returns the RetryInfo delay a status error carries.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}
