package sdk

import (
	"errors"
	"hash/crc32"
	"strings"
)

// CredentialKind is the kind tag of a Backlog credential string
// (blg_<kind>_…).
type CredentialKind string

// Credential kinds a caller may present.
const (
	KindPersonal       CredentialKind = "pat"   // a person's personal access token
	KindAutomation     CredentialKind = "auto"  // an automation secret: only good for exchange
	KindAccessToken    CredentialKind = "at"    // a short-lived access token minted by exchange
	KindAgentKey       CredentialKind = "agk"   // a visible agent's API key
	KindRotationSecret CredentialKind = "rot"   // an agent's rotation secret: never a bearer credential
	KindOperator       CredentialKind = "op"    // the operator token: creates workspaces, nothing else
	KindService        CredentialKind = "svc"   // the control plane's service credential
	KindWebhookSigning CredentialKind = "whsec" // keys the signatures of event deliveries: never a bearer credential
)

var knownKinds = []CredentialKind{KindOperator, KindPersonal, KindAutomation, KindAccessToken, KindAgentKey, KindRotationSecret, KindService, KindWebhookSigning}

// The credential format, as the credential service defines it:
// blg_<kind>_<base62 body><6 base62 characters of CRC32 over everything before>.
const (
	credPrefix  = "blg_"
	base62      = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	checksumLen = 6
	maxCredLen  = 512 + 32
)

// Errors of ParseCredential. Their messages never contain the credential.
var (
	ErrNoCredential       = errors.New("no credential given")
	ErrCredentialFormat   = errors.New("credential is not a Backlog credential (expected blg_<kind>_…)")
	ErrCredentialKind     = errors.New("credential has an unknown kind")
	ErrCredentialChecksum = errors.New("credential checksum does not match: it was mistyped or truncated")
)

// ParseCredential checks the shape, kind and checksum of a credential string
// without asking anyone, and returns its kind. A mistyped or truncated
// credential is refused here, before any network call.
func ParseCredential(s string) (CredentialKind, error) {
	if s == "" {
		return "", ErrNoCredential
	}
	if !strings.HasPrefix(s, credPrefix) || len(s) > maxCredLen {
		return "", ErrCredentialFormat
	}
	rest := s[len(credPrefix):]
	i := strings.IndexByte(rest, '_')
	if i <= 0 {
		return "", ErrCredentialFormat
	}
	kind := CredentialKind(rest[:i])
	known := false
	for _, k := range knownKinds {
		known = known || k == kind
	}
	if !known {
		return "", ErrCredentialKind
	}
	tail := rest[i+1:]
	if len(tail) <= checksumLen {
		return "", ErrCredentialFormat
	}
	for j := 0; j < len(tail); j++ {
		if strings.IndexByte(base62, tail[j]) < 0 {
			return "", ErrCredentialFormat
		}
	}
	if checksum(s[:len(s)-checksumLen]) != s[len(s)-checksumLen:] {
		return "", ErrCredentialChecksum
	}
	return kind, nil
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
