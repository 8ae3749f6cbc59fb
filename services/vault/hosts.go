package vault

// Destination-bound webhook secrets: a webhook secret may name the hosts
// HTTP Request steps may send it to. A step whose URL is elsewhere fails
// before anything is decrypted into a header or sent.

import (
	"net/url"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/idna"

	"github.com/backlog/controlplane/services/kit/errs"
)

const (
	fieldAllowedHosts = "allowedHosts"
	maxAllowedHosts   = 20
	maxHostLen        = 253 + 6 // a DNS name and ":65535"
)

// validAllowedHosts normalises allowedHosts for a secret of kind: each a
// host ("api.example.com": any port) or host:port, lower case, IDNA names
// in their ASCII form, no scheme, path or wildcard; sorted, without
// duplicates. Empty: nil (any host).
func validAllowedHosts(kind string, in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	if kind != KindWebhook {
		return nil, errs.Invalid(fieldAllowedHosts, "only webhook secrets carry allowed hosts: integration secrets are never sent by HTTP Request steps")
	}
	if len(in) > maxAllowedHosts {
		return nil, errs.Invalid(fieldAllowedHosts, "at most %d hosts", maxAllowedHosts)
	}
	var out []string
	for _, raw := range in {
		h, err := normalHost(raw)
		if err != nil {
			return nil, errs.Invalid(fieldAllowedHosts, "%q %s; write a host or host:port, e.g. api.example.com or api.example.com:8443", clip(raw), err.Error())
		}
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out, nil
}

type hostError string

func (e hostError) Error() string { return string(e) }

// normalHost parses one allowed-hosts entry.
func normalHost(raw string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(raw))
	switch {
	case s == "":
		return "", hostError("is empty")
	case len(s) > maxHostLen:
		return "", hostError("is too long")
	case strings.Contains(s, "://"):
		return "", hostError("is a URL, not a host")
	case strings.ContainsAny(s, "/?#@*\\ \t"):
		return "", hostError("is not a host (no paths, credentials or wildcards)")
	}
	u, err := url.Parse("https://" + s)
	if err != nil || u.Hostname() == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
		return "", hostError("is not a host")
	}
	host, err := asciiHost(u.Hostname())
	if err != nil {
		return "", hostError("is not a valid host name")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", hostError("has an invalid port")
		}
		return joinHost(host, strconv.Itoa(n)), nil
	}
	if strings.HasSuffix(s, ":") {
		return "", hostError("has an empty port")
	}
	return joinHost(host, ""), nil
}

// asciiHost is the host a transport dials: IDNA names mapped to ASCII,
// lower case, without a trailing dot.
func asciiHost(h string) (string, error) {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if !isASCII(h) {
		a, err := idna.Lookup.ToASCII(h)
		if err != nil {
			return "", err
		}
		h = a
	}
	if h == "" {
		return "", hostError("empty")
	}
	return h, nil
}

func joinHost(host, port string) string {
	if strings.Contains(host, ":") { // IPv6
		host = "[" + host + "]"
	}
	if port == "" {
		return host
	}
	return host + ":" + port
}

// hostAllowed reports whether a step to u may carry a secret bound to
// allowed (empty: any host). An entry without a port allows any port.
func hostAllowed(allowed []string, u *url.URL) bool {
	if len(allowed) == 0 {
		return true
	}
	host, err := asciiHost(u.Hostname())
	if err != nil {
		return false
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	for _, a := range allowed {
		if a == joinHost(host, "") || a == joinHost(host, port) {
			return true
		}
	}
	return false
}
