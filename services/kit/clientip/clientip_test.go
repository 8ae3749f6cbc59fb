package clientip

import "testing"

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
