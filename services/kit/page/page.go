// Package page makes opaque page tokens bound to the list they came from and
// to the caller they were issued to.
//
// A token is the cursor (the store key a list resumes after) and a MAC over
// the cursor, the gRPC method of the list, its scope (workspace and
// filters, as the handler spells them) and the calling subject. The MAC key
// is derived from the deployment's service credential (see NewKey), which
// every process and replica of a deployment shares, so a token minted by one
// replica pages on at another — and the credential service can hand the
// same token to its audit peers. A token that does not verify is
// InvalidArgument before the handler touches its store: nobody can point a
// cursor somewhere the list would not have gone on its own.
package page

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"

	"google.golang.org/grpc"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
)

const (
	// DefaultSize is used when a request sends no page size.
	DefaultSize = 50
	// MaxSize caps a page.
	MaxSize = 1000
	// version 2: cursor + MAC (version 1 tokens carried an unkeyed hash of
	// the scope, so anyone could write one).
	version = 2
	macLen  = 16
	// maxToken bounds what Decode looks at (base64 of a long store key).
	maxToken = 2048
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

// Key signs and checks page tokens.
type Key struct{ k []byte }

// keyLabel separates the page-token key from anything else derived from the
// same secret.
const keyLabel = "backlog page-token MAC key v1"

// NewKey derives the page-token key from a secret every process of the
// deployment shares: the service credential. Without one ("") the key is
// random per process, and a token works only on the process that made it.
func NewKey(secret string) Key {
	if secret == "" {
		return Key{k: processKey}
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(keyLabel))
	return Key{k: m.Sum(nil)}
}

// processKey signs tokens where no shared secret is configured (a service
// mounted without a service credential, a handler called without the kit
// server in front of it).
var processKey = func() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("page: no randomness for the process key: " + err.Error())
	}
	return b
}()

type keyCtx struct{}

// WithKey returns ctx carrying k; the kit server puts its key in every
// call's context, so handlers need not know about it.
func WithKey(ctx context.Context, k Key) context.Context {
	return context.WithValue(ctx, keyCtx{}, k)
}

func keyFrom(ctx context.Context) []byte {
	if k, ok := ctx.Value(keyCtx{}).(Key); ok && k.k != nil {
		return k.k
	}
	return processKey
}

// Encode makes a token that resumes after cursor, valid only for the same
// list (the gRPC method being served and scope, e.g. the workspace id plus
// any filter) and the same caller. A nil cursor (the last page) is "".
func Encode(ctx context.Context, scope string, cursor []byte) string {
	if cursor == nil {
		return ""
	}
	b := make([]byte, 0, 1+len(cursor)+macLen)
	b = append(b, version)
	b = append(b, cursor...)
	b = append(b, mac(ctx, scope, cursor)...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode returns the cursor a token resumes after. An empty token means the
// first page (nil cursor). A token this list did not issue to this caller —
// forged, altered, another list's, another workspace's, another caller's —
// is InvalidArgument.
func Decode(ctx context.Context, scope, token string) ([]byte, error) {
	if token == "" {
		return nil, nil
	}
	if len(token) > maxToken {
		return nil, errInvalid()
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 1+1+macLen || b[0] != version {
		return nil, errInvalid()
	}
	cursor, sum := b[1:len(b)-macLen], b[len(b)-macLen:]
	if !hmac.Equal(sum, mac(ctx, scope, cursor)) {
		return nil, errInvalid()
	}
	return cursor, nil
}

func errInvalid() error {
	return errs.Invalid("pageToken", "invalid: not a token this list issued to you; pass nextPageToken from the previous response unchanged, with the same filters and credential, or start again without one")
}

// mac binds cursor to the method, scope and caller of the call in ctx.
func mac(ctx context.Context, scope string, cursor []byte) []byte {
	method, _ := grpc.Method(ctx)
	var kind int32
	var subject, ws string
	if p := auth.FromContext(ctx); p != nil {
		kind, subject, ws = int32(p.GetSubjectKind()), p.GetSubjectId(), p.GetWorkspaceId()
	}
	m := hmac.New(sha256.New, keyFrom(ctx))
	for _, f := range []string{method, scope, subject, ws} {
		writeField(m, []byte(f))
	}
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], uint32(kind))
	m.Write(k[:])
	writeField(m, cursor)
	return m.Sum(nil)[:macLen]
}

// writeField writes a length-prefixed field, so that no two different
// sequences of fields hash alike.
func writeField(m interface{ Write([]byte) (int, error) }, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	m.Write(n[:])
	m.Write(b)
}
