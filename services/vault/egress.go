package vault

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
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
)

// egressDenied is the error a dial refused by the SSRF guard returns.
type egressDenied struct {
	class string // e.g. "loopback"
}

func (e *egressDenied) Error() string {
	return "refused to connect to a " + e.class + " address"
}

// Address ranges an HTTP Request step may not reach unless private egress
// is allowed, beyond what netip classifies itself.
var deniedPrefixes = []struct {
	prefix netip.Prefix
	class  string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "\"this network\""},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (carrier-grade NAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignment"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "NAT64"},
	{netip.MustParsePrefix("2002::/16"), "6to4"},
}

// deniedClass returns why a may not be dialled, or "" if it may.
func deniedClass(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return "invalid"
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
	for _, d := range deniedPrefixes {
		if d.prefix.Contains(a) {
			return d.class
		}
	}
	return ""
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

// checkLiteralHost refuses a URL whose host is a forbidden IP literal before
// anything is dialled (names are checked at dial time).
func checkLiteralHost(u *url.URL) *egressDenied {
	a, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]"))
	if err != nil {
		return nil
	}
	if class := deniedClass(a); class != "" {
		return &egressDenied{class: class}
	}
	return nil
}

// redactor replaces every occurrence of a secret value — raw, or in the
// encodings a target most plausibly echoes it in — with [REDACTED:name].
// Overlapping occurrences are merged, so no part of a value survives next
// to a marker.
type redactor struct {
	needles []needle
	longest int
}

type needle struct {
	text []byte
	name string
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
		seen := map[string]bool{}
		for _, form := range encodings(v) {
			if form == "" || seen[form] {
				continue
			}
			seen[form] = true
			r.needles = append(r.needles, needle{text: []byte(form), name: name})
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
	}
}

type span struct {
	start, end int
	names      []string
}

// redact returns b with every occurrence replaced, keeping only what starts
// before limit (limit < 0: no limit). Occurrences that start before limit
// but extend past it are still found, as long as b holds them whole.
func (r *redactor) redact(b []byte, limit int) []byte {
	if limit < 0 || limit > len(b) {
		limit = len(b)
	}
	if len(r.needles) == 0 {
		return b[:limit:limit]
	}
	var spans []span
	for _, n := range r.needles {
		for off := 0; off < len(b); {
			i := bytes.Index(b[off:], n.text)
			if i < 0 || off+i >= limit {
				break
			}
			spans = append(spans, span{off + i, off + i + len(n.text), []string{n.name}})
			off += i + 1
		}
	}
	if len(spans) == 0 {
		return b[:limit:limit]
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
	var out bytes.Buffer
	pos := 0
	for _, s := range merged {
		out.Write(b[pos:s.start])
		slices.Sort(s.names)
		out.WriteString("[REDACTED:" + strings.Join(s.names, ",") + "]")
		pos = s.end
	}
	if pos < limit {
		out.Write(b[pos:limit])
	}
	return out.Bytes()
}

func (r *redactor) redactString(s string) string { return string(r.redact([]byte(s), -1)) }

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
