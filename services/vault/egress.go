package vault

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/idna"

	"github.com/backlog/controlplane/services/kit/errs"
)

// egressDenied is the error a dial refused by the SSRF guard returns.
type egressDenied struct {
	class string // e.g. "loopback"
}

func (e *egressDenied) Error() string {
	return "refused to connect to a " + e.class + " address"
}

// What an HTTP Request step may reach unless private egress is allowed:
// globally reachable addresses only. IPv4 is judged against the IANA IPv4
// Special-Purpose Address Registry plus multicast and the reserved
// 240.0.0.0/4; IPv6 must be global unicast (2000::/3) outside the IANA IPv6
// Special-Purpose Address Registry, or an IPv4-mapped or well-known-prefix
// NAT64 address whose embedded IPv4 address is itself allowed. A few
// special-purpose blocks with globally reachable members (192.0.0.0/24,
// 2001::/23: anycast services no webhook lives on) are refused whole.
var deniedV4 = []struct {
	prefix netip.Prefix
	class  string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\""},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation (TEST-NET-1)"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast (deprecated)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation (TEST-NET-2)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation (TEST-NET-3)"},
	{netip.MustParsePrefix("255.255.255.255/32"), "limited broadcast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
}

var (
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	nat64WKP       = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052: embeds a public IPv4 address
	sixToFour      = netip.MustParsePrefix("2002::/16")       // RFC 3056: 2002:AABB:CCDD::/48
	teredo         = netip.MustParsePrefix("2001::/32")       // RFC 4380: client address obfuscated in the last 32 bits
	ipv4Compatible = netip.MustParsePrefix("::/96")           // RFC 4291 §2.5.5.1, deprecated
	ipv4Translated = netip.MustParsePrefix("::ffff:0:0:0/96") // RFC 2765 (SIIT)
)

var deniedV6 = []struct {
	prefix netip.Prefix
	class  string
}{
	{ipv4Compatible, "IPv4-compatible IPv6 (deprecated)"},
	{ipv4Translated, "IPv4-translated IPv6"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64"},
	{netip.MustParsePrefix("100::/64"), "discard-only"},
	{netip.MustParsePrefix("100:0:0:1::/64"), "dummy IPv6 prefix"},
	{netip.MustParsePrefix("2001:2::/48"), "benchmarking"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol assignment"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("3fff::/20"), "documentation"},
	{netip.MustParsePrefix("fec0::/10"), "site-local (deprecated)"},
}

// deniedClass returns why a may not be dialled, or "" if it may.
func deniedClass(a netip.Addr) string {
	if !a.IsValid() {
		return "invalid"
	}
	zone := a.Zone()
	a = a.WithZone("").Unmap()
	if class := deniedClassOf(a); class != "" {
		return class
	}
	if zone != "" {
		// A zone picks an interface; only link-scoped addresses have one.
		return "zone-scoped"
	}
	return ""
}

func deniedClassOf(a netip.Addr) string {
	switch {
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	}
	if a.Is4() {
		for _, d := range deniedV4 {
			if d.prefix.Contains(a) {
				return d.class
			}
		}
		return ""
	}
	// IPv6 forms that carry an IPv4 address: the embedded address is
	// judged too (a NAT64 gateway or a 6to4/Teredo tunnel would take the
	// packet there).
	switch {
	case nat64WKP.Contains(a):
		v4 := embedded4(a, 12)
		if class := deniedClassOf(v4); class != "" {
			return "NAT64 address embedding a " + class
		}
		return ""
	case sixToFour.Contains(a):
		if class := deniedClassOf(embedded4(a, 2)); class != "" {
			return "6to4 address embedding a " + class
		}
		return "6to4 (deprecated transition)"
	case teredo.Contains(a):
		client := embedded4(a, 12).As4()
		for i := range client {
			client[i] ^= 0xff
		}
		if class := deniedClassOf(netip.AddrFrom4(client)); class != "" {
			return "Teredo address embedding a " + class
		}
		return "Teredo"
	}
	for _, d := range deniedV6 {
		if d.prefix.Contains(a) {
			return d.class
		}
	}
	if !globalUnicast6.Contains(a) {
		return "reserved"
	}
	return ""
}

// embedded4 is the IPv4 address in bytes [at, at+4) of the IPv6 address a.
func embedded4(a netip.Addr, at int) netip.Addr {
	b := a.As16()
	return netip.AddrFrom4([4]byte(b[at : at+4]))
}

// guardControl runs on every socket before it connects, with the address
// actually being dialled (after DNS resolution): a name that resolves — or
// re-resolves, as in DNS rebinding — to a forbidden address is refused there.
func guardControl(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &egressDenied{class: "unparseable"}
	}
	if class := deniedClass(ap.Addr()); class != "" {
		return &egressDenied{class: class}
	}
	return nil
}

// newEgressClient builds the client HTTP Request steps are sent with: no
// proxy (a proxy would be dialled instead of the target, bypassing the
// guard), no redirects followed (a 3xx is returned as is, so substituted
// headers never travel to another host), TLS 1.2+ with the system roots plus
// caFile's certificates.
func newEgressClient(caFile string, allowPrivate bool, timeout time.Duration) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("egress CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("egress CA file %s holds no PEM certificate", caFile)
		}
	}
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	if !allowPrivate {
		dialer.Control = guardControl
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           256,
		// Steps to one target run concurrently: keep enough connections
		// alive that a busy workspace does not pay a TLS handshake per step.
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     60 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// checkHost judges the URL's host before anything is resolved or dialled.
// A host written as an IP address — in any form a URL parser (WHATWG) or a
// resolver (inet_aton) takes as one: decimal, octal or hex numbers,
// shortened, with a trailing dot, Unicode digits and dots that IDNA maps to
// ASCII as net/http does, IPv6 with an embedded IPv4 address or a zone — is
// judged as that address: refused (*egressDenied) when guard is on and the
// address is not public. Any such form but the usual dotted quad is also
// refused as ambiguous (InvalidArgument), guard or not: which address it
// reaches would depend on the resolver. Names are judged at dial time.
func checkHost(u *url.URL, guard bool) error {
	host := u.Hostname()
	if !isASCII(host) {
		// What net/http's transport dials (it maps the host with IDNA).
		if h, err := idna.Lookup.ToASCII(host); err == nil {
			host = h
		}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		// The usual forms (netip takes IPv4 as a dotted quad only).
		if guard {
			if class := deniedClass(a); class != "" {
				return &egressDenied{class: class}
			}
		}
		return nil
	}
	if !endsInNumber(host) {
		return nil // a name
	}
	a, ok := parseIPv4Loose(host)
	if !ok {
		return errs.Invalid(fieldURL, "host %q ends in a number but is not an IPv4 address; a host name's last label cannot be numeric", clip(u.Hostname()))
	}
	if guard {
		if class := deniedClass(a); class != "" {
			return &egressDenied{class: class}
		}
	}
	return errs.Invalid(fieldURL, "host %q is an IPv4 address written unusually; write it as %s", clip(u.Hostname()), a)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// endsInNumber reports whether a URL parser following the WHATWG URL
// standard takes host for an IPv4 address: its last label (after one
// trailing dot) is decimal digits, or 0x followed by hex digits.
func endsInNumber(host string) bool {
	host = strings.TrimSuffix(host, ".")
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if strings.Trim(last, "0123456789") == "" {
		return true
	}
	if len(last) >= 2 && last[0] == '0' && (last[1] == 'x' || last[1] == 'X') {
		return strings.Trim(last[2:], "0123456789abcdefABCDEF") == ""
	}
	return false
}

// parseIPv4Loose parses host as the WHATWG IPv4 parser and inet_aton do:
// one to four dot-separated numbers (decimal, 0-prefixed octal, 0x hex; a
// trailing dot allowed), each but the last one byte, the last filling the
// remaining bytes.
func parseIPv4Loose(host string) (netip.Addr, bool) {
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		n, ok := parseIPv4Number(p)
		if !ok {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	last := len(nums) - 1
	for _, n := range nums[:last] {
		if n > 255 {
			return netip.Addr{}, false
		}
	}
	if nums[last] >= 1<<(8*(5-len(nums))) {
		return netip.Addr{}, false
	}
	v := nums[last]
	for i, n := range nums[:last] {
		v += n << (8 * (3 - i))
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// parseIPv4Number parses one part: "0x…" hex (empty digits: 0), "0…"
// octal, else decimal. Values beyond 32 bits fail.
func parseIPv4Number(p string) (uint64, bool) {
	if p == "" {
		return 0, false
	}
	base := uint64(10)
	switch {
	case len(p) >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X'):
		base, p = 16, p[2:]
	case len(p) >= 2 && p[0] == '0':
		base, p = 8, p[1:]
	}
	var n uint64
	for i := 0; i < len(p); i++ {
		var d uint64
		switch c := p[i]; {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		if n = n*base + d; n > 1<<32-1 {
			return 0, false
		}
	}
	return n, true
}

// redactor replaces every occurrence of a secret value — raw, or in the
// encodings a target most plausibly echoes it in — with [REDACTED:name].
// Overlapping occurrences are merged, so no part of a value survives next
// to a marker.
//
// It never corrupts what it returns: only whole values are replaced, and a
// value shorter than minRedactable bytes (say "v" or "true") cannot be told
// apart from unrelated text that happens to hold it, so text in which such a
// value appears is not redacted at all but reported unsafe — the caller
// withholds it (bodyWithheld) rather than return it mangled or readable.
type redactor struct {
	needles []needle
	longest int
}

// minRedactable is the shortest value (in any of its forms) that is
// replaced where it appears; shorter ones make the text unsafe.
const minRedactable = 8

type needle struct {
	text  []byte
	name  string
	short bool
}

func newRedactor(values map[string]string) *redactor {
	r := &redactor{}
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		v := values[name]
		short := len(v) < minRedactable
		seen := map[string]bool{}
		for _, form := range encodings(v) {
			if form == "" || seen[form] {
				continue
			}
			seen[form] = true
			r.needles = append(r.needles, needle{text: []byte(form), name: name, short: short})
			r.longest = max(r.longest, len(form))
		}
	}
	return r
}

// encodings lists v and the forms of it a server may echo.
func encodings(v string) []string {
	jsonForm := func(html bool) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		enc.Encode(v)
		s := strings.TrimSuffix(b.String(), "\n")
		return strings.TrimSuffix(strings.TrimPrefix(s, `"`), `"`)
	}
	return []string{
		v,
		jsonForm(true), jsonForm(false),
		url.QueryEscape(v), url.PathEscape(v),
		base64.StdEncoding.EncodeToString([]byte(v)),
		base64.RawStdEncoding.EncodeToString([]byte(v)),
		base64.URLEncoding.EncodeToString([]byte(v)),
		base64.RawURLEncoding.EncodeToString([]byte(v)),
		hex.EncodeToString([]byte(v)),
		strings.ToUpper(hex.EncodeToString([]byte(v))),
	}
}

type span struct {
	start, end int
	names      []string
}

// redact returns b with every occurrence replaced, keeping only what starts
// before limit (limit < 0: no limit). Occurrences that start before limit
// but extend past it are still found, as long as b holds them whole. safe
// is false when a short value occurs in b: out is then b unchanged and must
// not be returned to anyone.
func (r *redactor) redact(b []byte, limit int) (out []byte, safe bool) {
	if limit < 0 || limit > len(b) {
		limit = len(b)
	}
	if len(r.needles) == 0 {
		return b[:limit:limit], true
	}
	var spans []span
	for _, n := range r.needles {
		for off := 0; off < len(b); {
			i := bytes.Index(b[off:], n.text)
			if i < 0 || off+i >= limit {
				break
			}
			if n.short {
				return b, false
			}
			spans = append(spans, span{off + i, off + i + len(n.text), []string{n.name}})
			off += i + 1
		}
	}
	if len(spans) == 0 {
		return b[:limit:limit], true
	}
	slices.SortFunc(spans, func(a, b span) int { return a.start - b.start })
	merged := []span{spans[0]}
	for _, s := range spans[1:] {
		last := &merged[len(merged)-1]
		if s.start <= last.end { // overlapping or touching: one marker
			last.end = max(last.end, s.end)
			if !slices.Contains(last.names, s.names[0]) {
				last.names = append(last.names, s.names[0])
			}
			continue
		}
		merged = append(merged, s)
	}
	var buf bytes.Buffer
	pos := 0
	for _, s := range merged {
		buf.Write(b[pos:s.start])
		slices.Sort(s.names)
		buf.WriteString("[REDACTED:" + strings.Join(s.names, ",") + "]")
		pos = s.end
	}
	if pos < limit {
		buf.Write(b[pos:limit])
	}
	return buf.Bytes(), true
}

// shortToken reports whether a short value is one of the '-'-separated
// parts of a header name (compared regardless of case: names arrive
// canonicalised).
func (r *redactor) shortToken(name string) bool {
	for _, part := range strings.Split(name, "-") {
		for _, n := range r.needles {
			if n.short && strings.EqualFold(part, string(n.text)) {
				return true
			}
		}
	}
	return false
}

// withheldText stands in for a header value that could not be redacted
// safely.
const withheldText = "[WITHHELD]"

// redactString redacts s, or returns withheldText when it cannot be done
// safely.
func (r *redactor) redactString(s string) string {
	out, ok := r.redact([]byte(s), -1)
	if !ok {
		return withheldText
	}
	return string(out)
}

// compressedMagic reports whether b starts like a compressed stream (gzip,
// zlib, zstd, bzip2, xz): a body sent that way without saying so cannot be
// checked for echoed values.
func compressedMagic(b []byte) bool {
	for _, m := range [][]byte{{0x1f, 0x8b}, {0x28, 0xb5, 0x2f, 0xfd}, []byte("BZh"), {0xfd, '7', 'z', 'X', 'Z', 0}} {
		if bytes.HasPrefix(b, m) {
			return true
		}
	}
	if len(b) >= 2 && b[0] == 0x78 && (uint16(b[0])<<8|uint16(b[1]))%31 == 0 {
		return true // zlib header: CMF 0x78 and a valid FCHECK
	}
	return false
}

// isEgressDenied reports whether err comes from the SSRF guard.
func isEgressDenied(err error) (*egressDenied, bool) {
	var d *egressDenied
	ok := errors.As(err, &d)
	return d, ok
}

// jsonString quotes s as a JSON string.
func jsonString(s string) (string, error) {
	b, err := json.Marshal(s)
	return string(b), err
}
