package vault

import (
	"errors"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDeniedClassSpecialPurpose walks the IANA special-purpose address
// registries (IPv4 and IPv6), the multicast and reserved space, and the
// IPv6 forms that embed an IPv4 address: everything that is not globally
// reachable is refused, and ordinary public addresses are not.
func TestDeniedClassSpecialPurpose(t *testing.T) {
	denied := map[string]string{ // address → part of the class named
		// IPv4 special-purpose registry.
		"0.0.0.0":         "unspecified",
		"0.1.2.3":         "this network",
		"10.0.0.1":        "private",
		"100.64.0.1":      "shared",
		"100.127.255.254": "shared",
		"127.0.0.1":       "loopback",
		"127.255.255.254": "loopback",
		"169.254.169.254": "link-local",
		"172.16.0.1":      "private",
		"172.31.255.255":  "private",
		"192.0.0.1":       "IETF protocol assignment",
		"192.0.0.9":       "IETF protocol assignment",
		"192.0.0.170":     "IETF protocol assignment",
		"192.0.2.1":       "documentation",
		"192.88.99.1":     "6to4 relay",
		"192.168.1.1":     "private",
		"198.18.0.1":      "benchmarking",
		"198.19.255.255":  "benchmarking",
		"198.51.100.7":    "documentation",
		"203.0.113.9":     "documentation",
		"224.0.0.1":       "multicast",
		"239.255.255.250": "multicast",
		"240.0.0.1":       "reserved",
		"255.255.255.255": "broadcast",
		// IPv6 special-purpose registry and address space.
		"::":                                   "unspecified",
		"::1":                                  "loopback",
		"::ffff:127.0.0.1":                     "loopback", // IPv4-mapped
		"::ffff:10.0.0.1":                      "private",
		"::ffff:0:7f00:1":                      "IPv4-translated",
		"::127.0.0.1":                          "IPv4-compatible", // ::/96, deprecated
		"::8.8.8.8":                            "IPv4-compatible",
		"::2":                                  "IPv4-compatible",
		"64:ff9b::127.0.0.1":                   "NAT64 address embedding a loopback",
		"64:ff9b::10.1.2.3":                    "NAT64 address embedding a private",
		"64:ff9b::169.254.169.254":             "NAT64 address embedding a link-local",
		"64:ff9b::1:0:0:1":                     "reserved", // outside the /96: no embedding
		"64:ff9b:1::1":                         "local-use NAT64",
		"64:ff9b:1:ffff::8.8.8.8":              "local-use NAT64",
		"100::1":                               "discard-only",
		"100:0:0:1::1":                         "dummy",
		"2001::1":                              "Teredo",
		"2001:0:4136:e378:8000:63bf:80ff:fffe": "Teredo", // client 127.0.0.1, obfuscated
		"2001:1::1":                            "IETF protocol assignment",
		"2001:2::1":                            "benchmarking",
		"2001:3::1":                            "IETF protocol assignment",
		"2001:10::1":                           "IETF protocol assignment",
		"2001:20::1":                           "IETF protocol assignment",
		"2001:1ff::1":                          "IETF protocol assignment",
		"2001:db8::1":                          "documentation",
		"2001:db8:ffff::1":                     "documentation",
		"2002:7f00:1::1":                       "6to4 address embedding a loopback",
		"2002:0808:0808::1":                    "6to4",
		"3fff::1":                              "documentation",
		"3fff:fff::1":                          "documentation",
		"5f00::1":                              "reserved",
		"fc00::1":                              "private",
		"fd12:3456::1":                         "private",
		"fe80::1":                              "link-local",
		"febf::1":                              "link-local",
		"fec0::1":                              "site-local",
		"ff02::1":                              "multicast",
		"ff0e::1":                              "multicast",
		"4000::1":                              "reserved",
		"e000::1":                              "reserved",
		"1::1":                                 "reserved",
		// A zone belongs to link-scoped addresses only.
		"2606:4700::1%eth0": "zone",
		"fe80::1%eth0":      "link-local",
	}
	for s, want := range denied {
		a, err := netip.ParseAddr(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		got := deniedClass(a)
		if got == "" || !strings.Contains(got, want) {
			t.Errorf("deniedClass(%s) = %q, want one naming %q", s, got, want)
		}
		if err := guardControl("tcp", netip.AddrPortFrom(a, 443).String(), nil); err == nil {
			t.Errorf("the dial guard lets %s through", s)
		}
	}
	for _, s := range []string{
		"8.8.8.8", "1.1.1.1", "93.184.215.14", "100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
		"192.0.1.255", "192.0.3.0", "192.31.196.1", "192.52.193.1", "192.175.48.1", "198.17.255.255", "198.20.0.0",
		"223.255.255.255", "11.0.0.1",
		"2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::1", "2001:200::1", "2001:db9::1",
		"3ffe::1", "3fff:1000::1", "2003::1",
		"64:ff9b::8.8.8.8", "64:ff9b::1.1.1.1", "::ffff:8.8.8.8",
	} {
		a := netip.MustParseAddr(s)
		if got := deniedClass(a); got != "" {
			t.Errorf("deniedClass(%s) = %q, want allowed (globally reachable)", s, got)
		}
		if err := guardControl("tcp", netip.AddrPortFrom(a, 443).String(), nil); err != nil {
			t.Errorf("the dial guard refuses %s: %v", s, err)
		}
	}
}

// TestCheckHostLiteralForms judges every way of writing an address into a
// URL's host as the address it is, before anything is dialled or resolved:
// the forms a resolver's inet_aton or a WHATWG URL parser accept
// (decimal, octal, hex, shortened, with a trailing dot), IPv6 literals
// with an embedded IPv4 address or a zone, and Unicode digits and dots
// that IDNA maps to ASCII. Names are left to the dial-time guard.
func TestCheckHostLiteralForms(t *testing.T) {
	for raw, want := range map[string]string{ // URL → class named
		"https://127.0.0.1/":                              "loopback",
		"https://127.0.0.1./":                             "loopback", // trailing dot
		"https://2130706433/":                             "loopback", // one decimal number
		"https://2130706433./":                            "loopback",
		"https://0x7f000001/":                             "loopback", // hex
		"https://0X7F000001/":                             "loopback",
		"https://017700000001/":                           "loopback", // octal
		"https://0177.0.0.1/":                             "loopback",
		"https://0177.0.0.01/":                            "loopback",
		"https://127.000.000.001/":                        "loopback",
		"https://0x7f.0x0.0x0.0x1/":                       "loopback",
		"https://0x7f.1/":                                 "loopback", // a.b: b fills three bytes
		"https://127.1/":                                  "loopback",
		"https://127.0.1/":                                "loopback", // a.b.c: c fills two bytes
		"https://0/":                                      "unspecified",
		"https://0.0.0.0:8443/":                           "unspecified",
		"https://0x0/":                                    "unspecified",
		"https://0x/":                                     "unspecified", // WHATWG: "0x" is zero
		"https://3232235777/":                             "private",     // 192.168.1.1
		"https://0xa9.0xfe.0xa9.0xfe/latest/":             "link-local",
		"https://169.254.43518/":                          "link-local", // 169.254.169.254
		"https://[::1]/":                                  "loopback",
		"https://[::1%25lo]:8443/":                        "loopback",
		"https://[fe80::1%25eth0]/":                       "link-local", // zone id
		"https://[2606:4700::1%25eth0]/":                  "zone",
		"https://[::ffff:127.0.0.1]/":                     "loopback",
		"https://[::ffff:7f00:1]/":                        "loopback",
		"https://[0:0:0:0:0:ffff:127.0.0.1]/":             "loopback",
		"https://[::127.0.0.1]/":                          "IPv4-compatible",
		"https://[::ffff:0:127.0.0.1]/":                   "IPv4-translated",
		"https://[64:ff9b::127.0.0.1]/":                   "NAT64 address embedding a loopback",
		"https://[64:ff9b::a9fe:a9fe]/":                   "NAT64 address embedding a link-local",
		"https://[64:ff9b:1::10.0.0.1]/":                  "local-use NAT64",
		"https://[2002:7f00:1::]/":                        "6to4",
		"https://[2002:a9fe:a9fe::1]/":                    "6to4",
		"https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/": "Teredo",
		"https://[2001:db8::1]/":                          "documentation",
		"https://192.0.2.10/":                             "documentation",
		"https://198.51.100.10/":                          "documentation",
		"https://203.0.113.10/":                           "documentation",
		"https://198.18.0.10/":                            "benchmarking",
		"https://[2001:2::10]/":                           "benchmarking",
		"https://１２７.０.０.１/":                              "loopback", // fullwidth digits and dots, which IDNA maps
		"https://127。0。0。1/":                              "loopback", // ideographic full stops
		"https://１２７。１/":                                  "loopback",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		err = checkHost(u, true)
		d, ok := isEgressDenied(err)
		if !ok || !strings.Contains(d.class, want) {
			t.Errorf("checkHost(%s) = %v, want a refusal naming %q", raw, err, want)
		}
	}

	// A public address written in a form that a resolver may or may not
	// take as an address is ambiguous: refused as an invalid URL, asking
	// for the usual form, whether or not private egress is allowed.
	for raw, want := range map[string]string{
		"https://134744072/":   "8.8.8.8",
		"https://0x8080808/":   "8.8.8.8",
		"https://010.8.8.8/":   "8.8.8.8",
		"https://8.8.8.8./":    "8.8.8.8",
		"https://8.8.2056/":    "8.8.8.8",
		"https://4294967296/":  "",
		"https://1.2.3.4.5/":   "",
		"https://1.256.3.4/":   "",
		"https://09.1.1.1/":    "", // not octal
		"https://0xg.1.1.1/":   "", // not hex, yet it ends in a number
		"https://example.123/": "",
		"https://example.0x1/": "",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		for _, guard := range []bool{true, false} {
			err := checkHost(u, guard)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), want) {
				t.Errorf("checkHost(%s, guard=%v) = %v, want InvalidArgument naming %q", raw, guard, err, want)
			}
		}
	}

	// Public literals and names pass (names are judged when dialled).
	for _, raw := range []string{
		"https://8.8.8.8/", "https://[2606:4700:4700::1111]/", "https://[64:ff9b::8.8.8.8]/", "https://[::ffff:8.8.8.8]/",
		"https://example.com/", "https://example.com./", "https://localhost/", "https://1example.com/",
		"https://example.com1/", "https://0x7f.example/", "https://bücher.example/", "https://123.example/",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if err := checkHost(u, true); err != nil {
			t.Errorf("checkHost(%s) = %v, want nil", raw, err)
		}
	}
	// With private egress allowed, only ambiguity is refused.
	for _, raw := range []string{"https://127.0.0.1/", "https://[::1]/", "https://[fe80::1%25eth0]/", "https://10.0.0.1:8443/"} {
		u, _ := url.Parse(raw)
		if err := checkHost(u, false); err != nil {
			t.Errorf("checkHost(%s, guard off) = %v, want nil", raw, err)
		}
	}
	if err := guardControl("tcp", "not an address", nil); !errors.As(err, new(*egressDenied)) {
		t.Errorf("guardControl(unparseable) = %v", err)
	}
}
