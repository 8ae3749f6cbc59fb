// Package errs maps a service's plain sentinel errors to gRPC statuses in one
// table, each status carrying an errdetails.ErrorInfo reason. Anything the table
// does not know becomes Internal with a generic message; the cause is logged by
// the server kit, never sent to the caller.
package errs

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/kit/store"
)

type entry struct {
	err    error
	code   codes.Code
	reason string
}

// Table maps sentinel errors of one domain (e.g. "automation.backlog") to codes.
type Table struct {
	domain  string
	entries []entry
}

// NewTable returns an empty table for domain.
func NewTable(domain string) *Table { return &Table{domain: domain} }

// Domain is the ErrorInfo domain of this table.
func (t *Table) Domain() string { return t.domain }

// Add maps err (matched with errors.Is) to code and reason, and returns t.
func (t *Table) Add(err error, code codes.Code, reason string) *Table {
	t.entries = append(t.entries, entry{err, code, reason})
	return t
}

// ToStatus converts err into a gRPC status error. known is false when err was
// neither a status already nor in the table: the result is then a generic
// Internal error and the caller must log the cause.
func (t *Table) ToStatus(err error) (out error, known bool) {
	if err == nil {
		return nil, true
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err, true
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Err(), true
	}
	for _, e := range t.entries {
		if errors.Is(err, e.err) {
			return WithReason(e.code, t.domain, e.reason, err.Error()), true
		}
	}
	// The storage seam's errors mean the same in every service.
	switch {
	case errors.Is(err, store.ErrOutcomeUnknown):
		return WithReason(codes.Unavailable, t.domain, "STORE_OUTCOME_UNKNOWN",
			"the store did not confirm the write: it may or may not have happened; read before you retry"), true
	case errors.Is(err, store.ErrTooLarge):
		return WithReason(codes.InvalidArgument, t.domain, "STORE_UPDATE_TOO_LARGE",
			"the request is larger than one store update may be; send less at a time"), true
	case errors.Is(err, store.ErrUnavailable):
		return WithReason(codes.Unavailable, t.domain, "STORE_UNAVAILABLE", "the store is unavailable; try again"), true
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled"), true
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded"), true
	}
	return WithReason(codes.Internal, t.domain, "INTERNAL", "internal error; the server logged the cause"), false
}

// WithReason builds a status error with an ErrorInfo detail.
func WithReason(code codes.Code, domain, reason, msg string) error {
	st := status.New(code, msg)
	if ds, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: domain}); err == nil {
		st = ds
	}
	return st.Err()
}

// Invalid is an InvalidArgument status naming the offending field.
func Invalid(field, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	st := status.New(codes.InvalidArgument, field+": "+msg)
	ds, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: "INVALID_ARGUMENT", Domain: "backlog"},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}}},
	)
	if err == nil {
		st = ds
	}
	return st.Err()
}

// Reason returns the ErrorInfo reason carried by a status error, or "".
func Reason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.Reason
		}
	}
	return ""
}

// Common errors shared by every service. Their messages are safe to show.
var (
	Unauthenticated = func(msg string) error {
		return WithReason(codes.Unauthenticated, "backlog", "UNAUTHENTICATED", msg)
	}
	Forbidden = func(msg string) error {
		return WithReason(codes.PermissionDenied, "backlog", "PERMISSION_DENIED", msg)
	}
	NotFound = func(msg string) error {
		return WithReason(codes.NotFound, "backlog", "NOT_FOUND", msg)
	}
)
