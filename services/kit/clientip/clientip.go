// Package clientip carries the end client's address from the gateway to the
// services, and decides whom to believe about it: the gateway believes
// X-Forwarded-For from its trusted proxies (Resolver.FromHTTP); a service
// believes the address the gateway forwards only from a caller that
// presented the service credential (FromGRPC), never because of where the
// call comes from — any local process can connect from loopback.
package clientip

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// MetadataKey is the gRPC metadata key the gateway forwards the client IP in.
const MetadataKey = "x-backlog-client-ip"

// Resolver decides the client IP of an HTTP request from its peer address
// and what the peer claims.
type Resolver struct {
	// Trusted are the peers whose X-Forwarded-For is believed.
	Trusted []netip.Prefix
}

// Loopback is this machine's addresses: trust them (Resolver.Trusted) only
// for a proxy in front of the gateway on the same machine.
var Loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// ParsePrefixes parses a comma-separated CIDR list.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (r Resolver) trusted(a netip.Addr) bool {
	for _, p := range r.Trusted {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// FromHTTP returns the client IP of an HTTP request: the peer, or, when the
// peer is a trusted proxy, the right-most untrusted address of X-Forwarded-For.
func (r Resolver) FromHTTP(remoteAddr, xff string) string {
	peerAddr := addrOf(remoteAddr)
	if !peerAddr.IsValid() {
		return ""
	}
	if xff == "" || !r.trusted(peerAddr) {
		return peerAddr.Unmap().String()
	}
	hops := strings.Split(xff, ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		if !r.trusted(a) || i == 0 {
			return a.Unmap().String()
		}
	}
	return peerAddr.Unmap().String()
}

// FromGRPC returns the client IP for a gRPC call: the address in MetadataKey
// when vouched (the caller presented the service credential, as the gateway
// does), otherwise the peer address itself, whatever the caller claims.
func FromGRPC(ctx context.Context, vouched bool) string {
	if vouched {
		if v := metadata.ValueFromIncomingContext(ctx, MetadataKey); len(v) == 1 {
			if a, err := netip.ParseAddr(v[0]); err == nil {
				return a.Unmap().String()
			}
		}
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if a := addrOf(p.Addr.String()); a.IsValid() {
			return a.Unmap().String()
		}
	}
	return ""
}

func addrOf(hostport string) netip.Addr {
	if ap, err := netip.ParseAddrPort(hostport); err == nil {
		return ap.Addr()
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	a, _ := netip.ParseAddr(host)
	return a
}
