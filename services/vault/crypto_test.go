package vault

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func testKEK(t *testing.T) *kek {
	t.Helper()
	key := make([]byte, keyLen)
	rand.Read(key)
	k, err := newKEK(key)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testDataKey(t *testing.T, version uint32) (*dataKey, []byte) {
	t.Helper()
	key := make([]byte, keyLen)
	rand.Read(key)
	aead, err := newGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	return &dataKey{version: version, aead: aead}, key
}

func TestSealOpenBindsTheRecord(t *testing.T) {
	dk, _ := testDataKey(t, 1)
	value := []byte("sk_live_0123456789")
	blob, err := sealValue(dk, "ws_a", "api", 3, value)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, value) {
		t.Fatal("plaintext in the ciphertext")
	}
	if blob[0] != formatV1 || blob[4] != 1 {
		t.Fatalf("header = %x", blob[:5])
	}
	got, err := openValue(dk, "ws_a", "api", 3, blob)
	if err != nil || !bytes.Equal(got, value) {
		t.Fatalf("open = %q %v", got, err)
	}
	// Another record's identity does not open it.
	for name, open := range map[string]func() ([]byte, error){
		"other workspace": func() ([]byte, error) { return openValue(dk, "ws_b", "api", 3, blob) },
		"other name":      func() ([]byte, error) { return openValue(dk, "ws_a", "api2", 3, blob) },
		"other version":   func() ([]byte, error) { return openValue(dk, "ws_a", "api", 2, blob) },
		// The length prefixes keep ("ws_a", "pi") apart from ("ws_a" + "a", "pi").
		"shifted boundary": func() ([]byte, error) { return openValue(dk, "ws_aa", "pi", 3, blob) },
	} {
		if _, err := open(); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
	other, _ := testDataKey(t, 1)
	if _, err := openValue(other, "ws_a", "api", 3, blob); err == nil {
		t.Error("another data key opened it")
	}
	// Every single-bit flip anywhere is caught, without a panic.
	for i := range blob {
		for bit := range 8 {
			b := bytes.Clone(blob)
			b[i] ^= 1 << bit
			if v, err := openValue(dk, "ws_a", "api", 3, b); err == nil {
				t.Fatalf("flip at %d.%d opened: %q", i, bit, v)
			}
		}
	}
	// Truncations too.
	for n := range len(blob) {
		if _, err := openValue(dk, "ws_a", "api", 3, blob[:n]); err == nil {
			t.Fatalf("truncated to %d opened", n)
		}
	}
	// Nonces are fresh: sealing twice differs.
	blob2, _ := sealValue(dk, "ws_a", "api", 3, value)
	if bytes.Equal(blob, blob2) {
		t.Fatal("two seals are identical")
	}
}

func TestWrapUnwrapDataKey(t *testing.T) {
	old, cur := testKEK(t), testKEK(t)
	r := newKeyring()
	r.add(old, true)
	_, key := testDataKey(t, 1)
	blob, err := wrapDataKey(old, "ws_a", 1, key)
	if err != nil || len(blob) != wrappedLen {
		t.Fatalf("wrap: %d %v", len(blob), err)
	}
	if id, _ := wrappedBy(blob); id != old.id {
		t.Fatal("wrong kek id in the envelope")
	}
	got, err := r.unwrapDataKey("ws_a", 1, blob)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := r.unwrapDataKey("ws_b", 1, blob); err == nil {
		t.Fatal("unwrapped for another workspace")
	}
	if _, err := r.unwrapDataKey("ws_a", 2, blob); err == nil {
		t.Fatal("unwrapped as another version")
	}
	for i := range blob {
		b := bytes.Clone(blob)
		b[i] ^= 0x10
		if _, err := r.unwrapDataKey("ws_a", 1, b); err == nil {
			t.Fatalf("flip at %d unwrapped", i)
		}
	}
	// A key wrapped by a key that is not loaded names it.
	blob2, _ := wrapDataKey(cur, "ws_a", 1, key)
	_, err = r.unwrapDataKey("ws_a", 1, blob2)
	if !errors.Is(err, ErrKeyMissing) || !strings.Contains(err.Error(), cur.id.String()) {
		t.Fatalf("unknown kek: %v", err)
	}
	// Both loaded: both open; retire keeps only the active one.
	r.add(cur, true)
	if _, err := r.unwrapDataKey("ws_a", 1, blob); err != nil {
		t.Fatal(err)
	}
	if retired := r.retire(); len(retired) != 1 || retired[0] != old.id {
		t.Fatalf("retired %v", retired)
	}
	if _, err := r.unwrapDataKey("ws_a", 1, blob); !errors.Is(err, ErrKeyMissing) {
		t.Fatalf("retired key still opens: %v", err)
	}
	if _, err := r.unwrapDataKey("ws_a", 1, blob2); err != nil {
		t.Fatal(err)
	}
}

func TestKEKIDIsStable(t *testing.T) {
	key := bytes.Repeat([]byte{9}, keyLen)
	a, _ := newKEK(key)
	b, _ := newKEK(bytes.Clone(key))
	if a.id != b.id || !strings.HasPrefix(a.id.String(), "kek-") || len(a.id.String()) != 4+16 {
		t.Fatalf("ids %s %s", a.id, b.id)
	}
	if bytes.Contains([]byte(a.id.String()), key[:4]) {
		t.Fatal("id shows key bytes")
	}
	if _, err := newKEK(make([]byte, 31)); err == nil {
		t.Fatal("short key accepted")
	}
}

func TestDeniedClass(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1": "loopback", "::1": "loopback", "::ffff:127.0.0.1": "loopback",
		"10.0.0.1": "private", "172.16.5.4": "private", "192.168.1.1": "private", "fd00::1": "private",
		"169.254.169.254": "link-local", "fe80::1": "link-local",
		"0.0.0.0": "unspecified", "::": "unspecified", "0.1.2.3": `"this network"`,
		"224.0.0.1": "multicast", "ff02::1": "multicast", "100.64.0.1": "shared (carrier-grade NAT)",
		"255.255.255.255": "limited broadcast", "64:ff9b::7f00:1": "NAT64 address embedding a loopback",
		"8.8.8.8": "", "1.1.1.1": "", "2606:4700::1111": "",
	} {
		if got := deniedClass(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
	if err := guardControl("tcp", "127.0.0.1:443", nil); err == nil {
		t.Error("guard let loopback through")
	}
	if err := guardControl("tcp", "93.184.216.34:443", nil); err != nil {
		t.Errorf("guard refused a public address: %v", err)
	}
}

func TestRedactor(t *testing.T) {
	r := newRedactor(map[string]string{"a": "s3cr3t/v+al", "b": "al-extra"})
	for in, want := range map[string]string{
		"x s3cr3t/v+al y":        "x [REDACTED:a] y",
		"s3cr3t%2Fv%2Bal":        "[REDACTED:a]",   // query-escaped
		"czNjcjN0L3YrYWw=":       "[REDACTED:a]",   // base64
		"s3cr3t/v+al-extra":      "[REDACTED:a,b]", // overlapping values: one marker, nothing left over
		"nothing here":           "nothing here",
		"al-extra al-extra":      "[REDACTED:b] [REDACTED:b]",
		`{"k":"s3cr3t/v+al"}`:    `{"k":"[REDACTED:a]"}`,
		"s3cr3t/v+als3cr3t/v+al": "[REDACTED:a]",
	} {
		if got := r.redactString(in); got != want {
			t.Errorf("%q → %q, want %q", in, got, want)
		}
	}
	// A value straddling the size cap is still redacted, and nothing past
	// the cap is returned.
	body := []byte(strings.Repeat("x", 10) + "s3cr3t/v+al" + "tail")
	if got, _ := r.redact(body, 12); string(got) != "xxxxxxxxxx[REDACTED:a]" {
		t.Errorf("straddling: %q", got)
	}
	if got, _ := r.redact(body, 5); string(got) != "xxxxx" {
		t.Errorf("before: %q", got)
	}
	empty := newRedactor(nil)
	if got, _ := empty.redact([]byte("abc"), 2); string(got) != "ab" {
		t.Errorf("no values: %q", got)
	}
}
