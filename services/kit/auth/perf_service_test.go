package auth_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
)

// CheckService reads the one service-token header without copying the
// call's metadata; what it accepts and refuses is unchanged.
func TestPerfCheckServiceReadsOneHeader(t *testing.T) {
	svc := credfmt.New(credfmt.Service)
	other := credfmt.New(credfmt.Service)
	cases := []struct {
		name string
		ctx  context.Context
		ok   bool
	}{
		{"the service token", incoming(auth.ServiceTokenKey, svc, "authorization", "Bearer x"), true},
		{"another token", incoming(auth.ServiceTokenKey, other), false},
		{"the token twice", incoming(auth.ServiceTokenKey, svc, auth.ServiceTokenKey, svc), false},
		{"no token", incoming("authorization", "Bearer "+svc), false},
		{"no metadata", context.Background(), false},
		{"an empty token", metadata.NewIncomingContext(context.Background(), metadata.MD{auth.ServiceTokenKey: {""}}), false},
	}
	for _, tc := range cases {
		if err := auth.CheckService(tc.ctx, svc); (err == nil) != tc.ok {
			t.Errorf("%s: CheckService = %v, want accepted %v", tc.name, err, tc.ok)
		}
	}
	if err := auth.CheckService(incoming(auth.ServiceTokenKey, ""), ""); err == nil {
		t.Error("an empty configured token accepted a call")
	}
}
