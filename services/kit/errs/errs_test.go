package errs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/kit/store"
)

var errGone = errors.New("gone")

func TestToStatus(t *testing.T) {
	tab := NewTable("test.backlog").Add(errGone, codes.NotFound, "GONE")
	cases := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
		known  bool
	}{
		{"sentinel wrapped", fmt.Errorf("automation a: %w", errGone), codes.NotFound, "GONE", true},
		{"status passes through", Invalid("name", "is required"), codes.InvalidArgument, "INVALID_ARGUMENT", true},
		{"canceled", context.Canceled, codes.Canceled, "", true},
		{"unknown is internal", errors.New("disk on fire: /secret/path"), codes.Internal, "INTERNAL", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, known := tab.ToStatus(c.err)
			if status.Code(out) != c.code || Reason(out) != c.reason || known != c.known {
				t.Fatalf("got %v %q known=%v", status.Code(out), Reason(out), known)
			}
			if c.code == codes.Internal && status.Convert(out).Message() != "internal error; the server logged the cause" {
				t.Fatalf("internal error leaks its cause: %q", status.Convert(out).Message())
			}
		})
	}
}

func TestStoreErrorsMapEverywhere(t *testing.T) {
	tb := NewTable("x.backlog")
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("%w: commit failed", store.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("%w: reply lost", store.ErrOutcomeUnknown), codes.Unavailable},
		{fmt.Errorf("%w: 200 operations", store.ErrTooLarge), codes.InvalidArgument},
	} {
		out, known := tb.ToStatus(tc.err)
		if !known || status.Code(out) != tc.code {
			t.Errorf("%v → %v (known %v), want %v", tc.err, out, known, tc.code)
		}
	}
}
