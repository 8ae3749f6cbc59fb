// Package page makes opaque page tokens bound to the list they came from.
package page

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"

	"github.com/backlog/controlplane/services/kit/errs"
)

const (
	// DefaultSize is used when a request sends no page size.
	DefaultSize = 50
	// MaxSize caps a page.
	MaxSize = 1000
	version = 1
)

// Size validates a requested page size and applies the default.
func Size(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, errs.Invalid("pageSize", "must not be negative")
	case n == 0:
		return DefaultSize, nil
	case n > MaxSize:
		return MaxSize, nil
	}
	return int(n), nil
}

// Encode makes a token that resumes after key, valid only for the same scope
// (e.g. the workspace id plus any filter).
func Encode(scope string, key []byte) string {
	if key == nil {
		return ""
	}
	h := scopeHash(scope)
	b := make([]byte, 0, 1+len(h)+len(key))
	b = append(b, version)
	b = append(b, h[:]...)
	b = append(b, key...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode returns the key a token resumes after. An empty token means the
// first page (nil key). A token from another list is InvalidArgument.
func Decode(scope, token string) ([]byte, error) {
	if token == "" {
		return nil, nil
	}
	bad := errs.Invalid("pageToken", "is not a token this list issued; pass nextPageToken from the previous response unchanged, with the same filters")
	if len(token) > 2048 {
		return nil, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	h := scopeHash(scope)
	if err != nil || len(b) < 1+len(h)+1 || b[0] != version || !bytes.Equal(b[1:1+len(h)], h[:]) {
		return nil, bad
	}
	return b[1+len(h):], nil
}

// scopeHash binds a token to its list without putting the scope in the token.
func scopeHash(scope string) [8]byte {
	sum := sha256.Sum256([]byte(scope))
	return [8]byte(sum[:8])
}
