// Package clientip carries the end client's address from the gateway to the
// services, and decides whom to believe about it.
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

// Resolver decides the client IP from a peer address and what it claims.
type Resolver struct {
	// Trusted are the peers whose claims about the client IP are believed
	// (X-Forwarded-For at the gateway, MetadataKey at a service).
	Trusted []netip.Prefix
}

// Loopback trusts only peers on this machine.
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

// FromGRPC returns the client IP for a gRPC call: the metadata the gateway set
// when the peer is trusted, otherwise the peer address itself.
func (r Resolver) FromGRPC(ctx context.Context) string {
	var peerAddr netip.Addr
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		peerAddr = addrOf(p.Addr.String())
	}
	if peerAddr.IsValid() && r.trusted(peerAddr) {
		if v := metadata.ValueFromIncomingContext(ctx, MetadataKey); len(v) > 0 {
			if a, err := netip.ParseAddr(v[0]); err == nil {
				return a.Unmap().String()
			}
		}
	}
	if !peerAddr.IsValid() {
		return ""
	}
	return peerAddr.Unmap().String()
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
