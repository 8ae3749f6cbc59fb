package gateway

import (
	"fmt"
	"net/http"
	"net/url"
	"unicode/utf8"
)

// singleHeaders may appear at most once in a request, and hold printable
// ASCII only: gRPC metadata can carry nothing else, and two credentials or
// two idempotency keys leave it unclear which one the caller meant.
var singleHeaders = []string{"Authorization", "Idempotency-Key"}

// checkRequest returns why a request is malformed before it is routed, or "".
// Text the gateway passes to the services as protobuf strings must be valid
// UTF-8 (gRPC refuses to encode anything else, which used to surface as a
// 500); the path is checked decoded, the query key by key and value by value.
func checkRequest(r *http.Request) string {
	for _, h := range singleHeaders {
		vs := r.Header.Values(h)
		if len(vs) > 1 {
			return fmt.Sprintf("send one %s header, not %d", h, len(vs))
		}
		if len(vs) == 1 && !printableASCII(vs[0]) {
			return fmt.Sprintf("the %s header may hold printable ASCII characters only", h)
		}
	}
	if !utf8.ValidString(r.URL.Path) {
		return "the request path is not valid UTF-8 (after percent-decoding)"
	}
	if r.URL.RawQuery == "" {
		return ""
	}
	// A pair that does not parse is left out here and refused by the
	// route's own form parsing, as before.
	q, _ := url.ParseQuery(r.URL.RawQuery)
	for k, vs := range q {
		if !utf8.ValidString(k) {
			return "a query parameter name is not valid UTF-8 (after percent-decoding)"
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return fmt.Sprintf("query parameter %q is not valid UTF-8 (after percent-decoding)", k)
			}
		}
	}
	return ""
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
