package clientip

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

func TestFromHTTP(t *testing.T) {
	r := Resolver{Trusted: Loopback}
	cases := []struct{ remote, xff, want string }{
		{"203.0.113.9:5555", "", "203.0.113.9"},
		{"203.0.113.9:5555", "1.2.3.4", "203.0.113.9"}, // untrusted peer: XFF ignored
		{"127.0.0.1:5555", "198.51.100.7", "198.51.100.7"},
		{"127.0.0.1:5555", "6.6.6.6, 198.51.100.7", "198.51.100.7"}, // right-most untrusted
		{"127.0.0.1:5555", "198.51.100.7, 127.0.0.1", "198.51.100.7"},
		{"127.0.0.1:5555", "garbage", "127.0.0.1"},
		{"[::1]:5555", "", "::1"},
	}
	for _, c := range cases {
		if got := r.FromHTTP(c.remote, c.xff); got != c.want {
			t.Errorf("FromHTTP(%q, %q) = %q, want %q", c.remote, c.xff, got, c.want)
		}
	}
}

func TestFromGRPC(t *testing.T) {
	loopback := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5555}
	remote := &net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 5555}
	in := func(p net.Addr, md ...string) context.Context {
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: p})
		return metadata.NewIncomingContext(ctx, metadata.Pairs(md...))
	}
	cases := []struct {
		name    string
		ctx     context.Context
		vouched bool
		want    string
	}{
		{"loopback claim, not vouched", in(loopback, MetadataKey, "198.51.100.7"), false, "127.0.0.1"},
		{"remote claim, not vouched", in(remote, MetadataKey, "198.51.100.7"), false, "203.0.113.9"},
		{"vouched claim from loopback", in(loopback, MetadataKey, "198.51.100.7"), true, "198.51.100.7"},
		{"vouched claim from elsewhere", in(remote, MetadataKey, "2001:db8::1"), true, "2001:db8::1"},
		{"vouched, mapped v4", in(loopback, MetadataKey, "::ffff:198.51.100.7"), true, "198.51.100.7"},
		{"vouched, garbage", in(loopback, MetadataKey, "not an ip"), true, "127.0.0.1"},
		{"vouched, two claims", in(loopback, MetadataKey, "198.51.100.7", MetadataKey, "198.51.100.8"), true, "127.0.0.1"},
		{"vouched, no claim", in(remote), true, "203.0.113.9"},
		{"no peer", metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, "198.51.100.7")), false, ""},
	}
	for _, c := range cases {
		if got := FromGRPC(c.ctx, c.vouched); got != c.want {
			t.Errorf("%s: FromGRPC = %q, want %q", c.name, got, c.want)
		}
	}
}
