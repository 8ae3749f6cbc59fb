// Package credfmt defines the credential string format:
//
//	blg_<kind>_<body><checksum>
//
// where body is base62 and checksum is the CRC32 (IEEE) of everything before it,
// base62-encoded in exactly 6 characters. A mistyped credential fails the
// checksum and is rejected without touching storage; a leaked one is
// recognisable by its prefix.
package credfmt

import (
	"crypto/rand"
	"errors"
	"hash/crc32"
	"math/big"
	"strings"
)

// Kind is the short kind tag in a credential string.
type Kind string

// Credential kinds.
const (
	Operator       Kind = "op"
	Personal       Kind = "pat"
	Automation     Kind = "auto"
	AccessToken    Kind = "at"
	AgentKey       Kind = "agk"
	RotationSecret Kind = "rot"
	// Service is held by the control plane's own services to call each
	// other's internal RPCs.
	Service Kind = "svc"
	// WebhookSigning keys the signatures of event deliveries (the vault's
	// event subscriptions); the receiver holds it to verify them.
	WebhookSigning Kind = "whsec"
)

// Kinds lists every known kind.
var Kinds = []Kind{Operator, Personal, Automation, AccessToken, AgentKey, RotationSecret, Service, WebhookSigning}

const (
	base62       = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	checksumLen  = 6
	randomBytes  = 32 // 256 bits
	randomLen    = 43 // ceil(256 / log2(62))
	maxBodyLen   = 512
	prefixPrefix = "blg_"
)

// Errors returned by Parse. Their messages are safe to show: they never
// contain the credential.
var (
	ErrEmpty    = errors.New("no credential given")
	ErrFormat   = errors.New("credential is not a Backlog credential (expected blg_<kind>_…)")
	ErrKind     = errors.New("credential has an unknown kind")
	ErrChecksum = errors.New("credential checksum does not match: it was mistyped or truncated")
)

// New returns a fresh credential of the given kind with 256 random bits.
func New(kind Kind) string {
	var b [randomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return Encode(kind, b[:])
}

// Encode makes a credential string of kind whose body encodes payload.
func Encode(kind Kind, payload []byte) string {
	body := encode62(payload)
	head := prefixPrefix + string(kind) + "_" + body
	return head + checksum(head)
}

// Parsed is a credential string split into its parts.
type Parsed struct {
	Kind Kind
	Body string
}

// Parse checks the shape, kind and checksum of s. It never looks at storage.
func Parse(s string) (Parsed, error) {
	if s == "" {
		return Parsed{}, ErrEmpty
	}
	if !strings.HasPrefix(s, prefixPrefix) || len(s) > maxBodyLen+32 {
		return Parsed{}, ErrFormat
	}
	rest := s[len(prefixPrefix):]
	i := strings.IndexByte(rest, '_')
	if i <= 0 {
		return Parsed{}, ErrFormat
	}
	kind := Kind(rest[:i])
	known := false
	for _, k := range Kinds {
		if k == kind {
			known = true
			break
		}
	}
	if !known {
		return Parsed{}, ErrKind
	}
	tail := rest[i+1:]
	if len(tail) <= checksumLen {
		return Parsed{}, ErrFormat
	}
	for j := 0; j < len(tail); j++ {
		if strings.IndexByte(base62, tail[j]) < 0 {
			return Parsed{}, ErrFormat
		}
	}
	head := s[:len(s)-checksumLen]
	if checksum(head) != s[len(s)-checksumLen:] {
		return Parsed{}, ErrChecksum
	}
	return Parsed{Kind: kind, Body: tail[:len(tail)-checksumLen]}, nil
}

// KindOf returns the kind of a well-formed credential, or "" if s is not one.
func KindOf(s string) Kind {
	p, err := Parse(s)
	if err != nil {
		return ""
	}
	return p.Kind
}

// Payload decodes the body of a parsed credential made by Encode.
func (p Parsed) Payload() ([]byte, error) {
	return decode62(p.Body)
}

func checksum(head string) string {
	v := crc32.ChecksumIEEE([]byte(head))
	var out [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = base62[v%62]
		v /= 62
	}
	return string(out[:])
}

// encode62 encodes b (prefixed with a 1 byte so leading zeros survive).
func encode62(b []byte) string {
	n := new(big.Int).SetBytes(append([]byte{1}, b...))
	return n.Text(62)
}

func decode62(s string) ([]byte, error) {
	n, ok := new(big.Int).SetString(s, 62)
	if !ok {
		return nil, ErrFormat
	}
	b := n.Bytes()
	if len(b) == 0 || b[0] != 1 {
		return nil, ErrFormat
	}
	return b[1:], nil
}
