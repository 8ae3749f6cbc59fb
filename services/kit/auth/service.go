package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
)

// ServiceTokenKey is the metadata key a service presents its service
// credential in when calling a sibling's internal RPCs.
const ServiceTokenKey = "x-backlog-service-token"

// ServiceCredentials attaches the service credential to every outgoing call
// (grpc.WithPerRPCCredentials).
type ServiceCredentials struct {
	Token string
	// Secure is true when the transport is TLS.
	Secure bool
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c ServiceCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{ServiceTokenKey: c.Token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (c ServiceCredentials) RequireTransportSecurity() bool { return c.Secure }

// CheckService verifies, in constant time, that the call presents the
// service credential want. An empty want refuses everything.
func CheckService(ctx context.Context, want string) error {
	if want == "" {
		return errs.Forbidden("internal RPC disabled: this service has no service token configured")
	}
	if !presents(ctx, ServiceTokenKey, []byte(want)) {
		return errs.Unauthenticated("internal RPC: a valid service credential is required")
	}
	return nil
}

// ForwarderKey is the metadata a gateway presents its forwarding credential
// in.
const ForwarderKey = "x-backlog-forwarder"

// forwardingPrefix marks a forwarding credential.
const forwardingPrefix = "blg_fwd_"

// ForwardingToken derives from the service credential the one a gateway
// presents so that services believe the client address it forwards. It
// vouches for addresses and nothing else: it opens no internal RPC, so a
// gateway-only process never needs the service credential itself.
func ForwardingToken(serviceToken string) string {
	if serviceToken == "" {
		return ""
	}
	m := hmac.New(sha256.New, []byte(serviceToken))
	m.Write([]byte("backlog client-address forwarding v1"))
	return forwardingPrefix + hex.EncodeToString(m.Sum(nil))
}

// ForwarderCredentials attaches a forwarding credential to every outgoing
// call (grpc.WithPerRPCCredentials).
type ForwarderCredentials struct {
	Token  string
	Secure bool // the transport is TLS
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c ForwarderCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{ForwarderKey: c.Token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (c ForwarderCredentials) RequireTransportSecurity() bool { return c.Secure }

// Vouched reports whether the call may speak for its client's address: it
// presents the service credential, or the forwarding credential derived
// from it (compared in constant time). A server that asks at every call
// keeps a Voucher instead: it derives the forwarding credential once.
func Vouched(ctx context.Context, serviceToken string) bool {
	return NewVoucher(serviceToken).Vouched(ctx)
}

// Voucher answers Vouched for one service credential.
type Voucher struct {
	service, forwarding []byte // nil: no service credential, no one is believed
}

// NewVoucher returns the Voucher of serviceToken ("" believes no one).
func NewVoucher(serviceToken string) Voucher {
	if serviceToken == "" {
		return Voucher{}
	}
	return Voucher{service: []byte(serviceToken), forwarding: []byte(ForwardingToken(serviceToken))}
}

// Vouched is Vouched(ctx, serviceToken) for the Voucher's service token.
func (v Voucher) Vouched(ctx context.Context) bool {
	if v.service == nil {
		return false
	}
	return presents(ctx, ServiceTokenKey, v.service) || presents(ctx, ForwarderKey, v.forwarding)
}

// presents reports whether the call's metadata holds key exactly once, with
// the value want (compared in constant time).
func presents(ctx context.Context, key string, want []byte) bool {
	got := metadata.ValueFromIncomingContext(ctx, key) // no copy of the whole metadata
	return len(got) == 1 && subtle.ConstantTimeCompare([]byte(got[0]), want) == 1
}

// LoadForwardingToken reads a forwarding credential from path.
func LoadForwardingToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if !strings.HasPrefix(tok, forwardingPrefix) || len(tok) != len(forwardingPrefix)+64 {
		return "", fmt.Errorf("%s does not hold a forwarding credential (blg_fwd_…, from `backlogd forwarding-token`)", path)
	}
	return tok, nil
}

// LoadOrCreateServiceToken reads the service credential at path, creating it
// (mode 0600) when create is set and it does not exist.
func LoadOrCreateServiceToken(path string, create bool) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if credfmt.KindOf(tok) != credfmt.Service {
			return "", fmt.Errorf("%s does not hold a service credential (blg_svc_…)", path)
		}
		return tok, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || !create {
		return "", fmt.Errorf("service token: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	tok := credfmt.New(credfmt.Service)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateServiceToken(path, false) // another process won the race
	}
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", err
	}
	return tok, f.Close()
}
