package auth_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
)

func incoming(kv ...string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
}

func TestForwardingCredentialVouchesForAddressesOnly(t *testing.T) {
	svc := credfmt.New(credfmt.Service)
	fwd := auth.ForwardingToken(svc)
	if !strings.HasPrefix(fwd, "blg_fwd_") || strings.Contains(fwd, svc) || fwd != auth.ForwardingToken(svc) {
		t.Fatalf("forwarding token %q: want a stable blg_fwd_ derivation that does not contain the service token", fwd)
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want bool
	}{
		{"nothing", incoming(), false},
		{"the service credential", incoming(auth.ServiceTokenKey, svc), true},
		{"the forwarding credential", incoming(auth.ForwarderKey, fwd), true},
		{"another deployment's forwarding credential", incoming(auth.ForwarderKey, auth.ForwardingToken(credfmt.New(credfmt.Service))), false},
		{"the service token sent as forwarding credential", incoming(auth.ForwarderKey, svc), false},
		{"two forwarding credentials", incoming(auth.ForwarderKey, fwd, auth.ForwarderKey, fwd), false},
	} {
		if got := auth.Vouched(tc.ctx, svc); got != tc.want {
			t.Errorf("%s: vouched = %v, want %v", tc.name, got, tc.want)
		}
		// A Voucher (the forwarding credential derived once) answers the same.
		if got := auth.NewVoucher(svc).Vouched(tc.ctx); got != tc.want {
			t.Errorf("%s: Voucher.Vouched = %v, want %v", tc.name, got, tc.want)
		}
	}
	if auth.Vouched(incoming(auth.ForwarderKey, fwd), "") || auth.NewVoucher("").Vouched(incoming(auth.ForwarderKey, fwd)) {
		t.Error("a service without a service token believed a forwarder")
	}
	if auth.NewVoucher("").Vouched(incoming(auth.ForwarderKey, "", auth.ServiceTokenKey, "")) {
		t.Error("a service without a service token believed empty credentials")
	}
	// It opens no internal method.
	if err := auth.CheckService(incoming(auth.ForwarderKey, fwd, auth.ServiceTokenKey, fwd), svc); err == nil {
		t.Error("the forwarding credential passed the service-credential check")
	}
}

func TestLoadForwardingToken(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "fwd")
	os.WriteFile(good, []byte(auth.ForwardingToken(credfmt.New(credfmt.Service))+"\n"), 0o600)
	if tok, err := auth.LoadForwardingToken(good); err != nil || !strings.HasPrefix(tok, "blg_fwd_") {
		t.Fatalf("load: %q %v", tok, err)
	}
	bad := filepath.Join(dir, "svc")
	svc := credfmt.New(credfmt.Service)
	os.WriteFile(bad, []byte(svc), 0o600)
	_, err := auth.LoadForwardingToken(bad)
	if err == nil {
		t.Fatal("a service token was accepted as a forwarding credential")
	}
	if strings.Contains(err.Error(), svc) {
		t.Fatalf("the error shows the file's secret: %v", err)
	}
}
