package vault

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSecretsUseNameKeyUnchangedForASCII(t *testing.T) {
	// Keys of names stored before readable names (ASCII letters, digits,
	// '_', '-', '.') are what strings.ToLower made: no migration needed.
	for _, n := range []string{"Stripe", "api-KEY.v2", "A_B", strings.Repeat("Zz", 64)} {
		if nameKey(n) != strings.ToLower(n) {
			t.Fatalf("nameKey(%q) = %q", n, nameKey(n))
		}
	}
	for a, b := range map[string]string{
		"HubSpot API key – production": "hubspot api KEY – PRODUCTION",
		"Straße":                       "STRAßE",
		"ſecret":                       "Secret",
		"café":                         "cafe\u0301", // NFC and NFD
	} {
		if nameKey(a) != nameKey(b) {
			t.Errorf("%q and %q are different names", a, b)
		}
	}
	for _, bad := range []string{"", " lead", "trail ", "a{b", "a}b", "a/b", "..", "tab\there", "bidi\u202e", "zero\u200bwidth", strings.Repeat("x", 101)} {
		if checkName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if checkExistingName(strings.Repeat("x", 128)) != nil || checkName(strings.Repeat("é", 100)) != nil {
		t.Error("a legacy 128-character or a 100-character name refused")
	}
}

// TestNameKeyASCIIFastPath checks that the ASCII shortcut of nameKey gives
// what the full Unicode mapping gives, for every ASCII character and for
// names mixing ASCII with other characters.
func TestNameKeyASCIIFastPath(t *testing.T) {
	var all strings.Builder
	for c := 0; c < utf8.RuneSelf; c++ {
		all.WriteByte(byte(c))
		s := "Name-" + string(rune(c)) + "-X"
		if got, want := nameKey(s), nameKeyUnicode(s); got != want {
			t.Fatalf("nameKey(%q) = %q, want %q", s, got, want)
		}
	}
	for _, s := range []string{all.String(), "ſecret KEY", "Café API", "cafe\u0301 X"} {
		if got, want := nameKey(s), nameKeyUnicode(s); got != want {
			t.Errorf("nameKey(%q) = %q, want %q", s, got, want)
		}
	}
}

func TestSecretsUseAllowedHostMatching(t *testing.T) {
	hosts, err := validAllowedHosts(KindWebhook, []string{"API.Example.com", "hooks.example.com:8443", "[2001:db8::1]:443", "bücher.example", "api.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	want := "[2001:db8::1]:443,api.example.com,hooks.example.com:8443,xn--bcher-kva.example"
	if strings.Join(hosts, ",") != want {
		t.Fatalf("normalised = %v", hosts)
	}
	for raw, ok := range map[string]bool{
		"https://api.example.com/v1":     true,
		"https://API.EXAMPLE.COM.:9443/": true, // any port for a bare host
		"https://hooks.example.com:8443": true,
		"https://hooks.example.com/":     false, // 443, not 8443
		"https://evil.example.com/":      false,
		"https://api.example.com.evil/":  false,
		"https://[2001:db8::1]/x":        true,
		"https://bücher.example/":        true,
	} {
		u, _ := url.Parse(raw)
		if hostAllowed(hosts, u) != ok {
			t.Errorf("%s: allowed = %v", raw, !ok)
		}
	}
	if u, _ := url.Parse("https://anything.example"); !hostAllowed(nil, u) {
		t.Error("no binding refused a host")
	}
	for _, bad := range [][]string{{"https://x.example"}, {"x.example/p"}, {"*.example"}, {"user@x.example"}, {"x.example:0"}, {"x.example:"}, {" "}} {
		if _, err := validAllowedHosts(KindWebhook, bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := validAllowedHosts(KindIntegration, []string{"x.example"}); err == nil {
		t.Error("an integration secret took allowed hosts")
	}
}

func TestSecretsUseRedactorShortValues(t *testing.T) {
	r := newRedactor(map[string]string{"short": "true", "long": "sk_live_0123456789"})
	if out, ok := r.redact([]byte(`{"ok":true}`), -1); ok || string(out) != `{"ok":true}` {
		t.Fatalf("short value in a body: %q %v (want unchanged and unsafe)", out, ok)
	}
	if out, ok := r.redact([]byte(`{"ok":1,"key":"sk_live_0123456789"}`), -1); !ok || string(out) != `{"ok":1,"key":"[REDACTED:long]"}` {
		t.Fatalf("long value: %q %v", out, ok)
	}
	if out, ok := r.redact([]byte("736b5f6c6976655f30313233343536373839"), -1); !ok || string(out) != "[REDACTED:long]" {
		t.Fatalf("hex: %q %v", out, ok)
	}
	if got := r.redactString("Server: nginx (trueish)"); got != withheldText {
		t.Fatalf("header = %q", got)
	}
	if !r.shortToken("X-True") || r.shortToken("X-Trueish") {
		t.Fatal("shortToken")
	}
	for _, b := range [][]byte{{0x1f, 0x8b, 8}, {0x78, 0x9c, 1}, {0x28, 0xb5, 0x2f, 0xfd}} {
		if !compressedMagic(b) {
			t.Errorf("%x not seen as compressed", b)
		}
	}
	if compressedMagic([]byte(`{"x":1}`)) || compressedMagic([]byte("xyz")) {
		t.Error("text seen as compressed")
	}
}
