// Package replicas lets a client reach every replica of a service through
// one gRPC connection: an address flag may be a comma list, and calls are
// balanced round robin over the replicas that are up, skipping one that
// goes down until it is back.
package replicas

import (
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Split splits a comma list of addresses.
func Split(addr string) []string {
	var out []string
	for _, a := range strings.Split(addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// Target is the gRPC target for addr, and the dial options it needs: one
// address as is; a comma list through a static resolver with round-robin
// balancing, each replica verified under its own host name when TLS is on.
func Target(addr string) (string, []grpc.DialOption) {
	addrs := Split(addr)
	if len(addrs) <= 1 {
		return addr, nil
	}
	r := manual.NewBuilderWithScheme("backlog-replicas")
	var st resolver.State
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			host = a
		}
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	r.InitialState(st)
	return r.Scheme() + ":///replicas", []grpc.DialOption{
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`),
	}
}
