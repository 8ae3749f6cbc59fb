// Package idem makes POSTs that return a one-time credential safe to retry:
// a retry with the same Idempotency-Key and the same body, within the replay
// window, gets the first response again instead of a second credential (or
// a 409 after the first one was created and its response lost); the same key
// with another body is refused.
//
// Replays live in the service's own store, in the same transaction as the
// change they answer for, so they survive restarts and serve every replica.
// A raw credential is never stored in plaintext: the response is sealed with
// AES-256-GCM under a key derived from the request itself — the
// Idempotency-Key, the caller's presented credential and the body — none of
// which is stored (the record is found by a hash). Only the caller that made
// the request can open its replay.
package idem

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/store"
)

// MetadataKey is the gRPC metadata the gateway forwards the Idempotency-Key
// header in.
const MetadataKey = "idempotency-key"

// Reason is the ErrorInfo reason of ErrReused; the gateway answers it 422.
const Reason = "IDEMPOTENCY_KEY_REUSED"

// TTL is how long a replay is kept.
const TTL = 24 * time.Hour

// ErrReused: the key was used with a different request (or by another
// credential) within the window.
var ErrReused = errors.New("this Idempotency-Key was used for a different request in the last 24 hours: send a new key with a new request")

// Errors registers ErrReused in a service's error table.
func Errors(t *errs.Table) *errs.Table {
	return t.Add(ErrReused, codes.FailedPrecondition, Reason)
}

// Request is one call that carries an Idempotency-Key.
type Request struct {
	id      []byte   // where the replay is stored: a hash of scope and key
	key     [32]byte // seals the response
	bodySum [32]byte
}

// FromContext returns the idempotent request of the call in ctx, or nil when
// it carries no Idempotency-Key. scope names what a key is unique within:
// the workspace and the method, e.g. "ws_…|CreateAutomation" (a key is also
// bound to the caller's credential). body is the request message.
func FromContext(ctx context.Context, scope string, body proto.Message) (*Request, error) {
	k, err := keyOf(ctx)
	if err != nil || k == "" {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	if err != nil {
		return nil, err
	}
	r := &Request{bodySum: sha256.Sum256(b)}
	caller := auth.Bearer(ctx)
	// Found by a hash of scope, caller and key: the store holds neither.
	h := sha256.New()
	for _, part := range []string{"backlog idempotency id v1", scope, caller, k} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	r.id = []byte(hex.EncodeToString(h.Sum(nil)))
	sealKey, err := hkdf.Key(sha256.New, []byte(k+"\x00"+caller), r.bodySum[:], "backlog idempotent replay v1", 32)
	if err != nil {
		return nil, err
	}
	copy(r.key[:], sealKey)
	return r, nil
}

// keyOf reads and checks the call's Idempotency-Key: 1–255 printable ASCII
// characters, as Stripe accepts.
func keyOf(ctx context.Context) (string, error) {
	v := metadata.ValueFromIncomingContext(ctx, MetadataKey)
	if len(v) == 0 {
		return "", nil
	}
	if len(v) > 1 {
		return "", errs.Invalid("Idempotency-Key", "was sent more than once")
	}
	k := v[0]
	if len(k) == 0 || len(k) > 255 {
		return "", errs.Invalid("Idempotency-Key", "must be 1 to 255 characters")
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return "", errs.Invalid("Idempotency-Key", "must be printable ASCII without spaces (a UUID is a good key)")
		}
	}
	return k, nil
}

// Lookup reads the replay of r in tx into resp. It reports false when there
// is none, and ErrReused when the key was used with another body.
func Lookup(tx store.ReadTx, b store.Bucket, r *Request, resp proto.Message) (bool, error) {
	v, err := tx.Get(b, r.id)
	if err != nil || v == nil {
		return false, err
	}
	if len(v) < 32+12 {
		return false, fmt.Errorf("idempotent replay %s: %d bytes is too short", r.id, len(v))
	}
	if subtle.ConstantTimeCompare(v[:32], r.bodySum[:]) != 1 {
		return false, ErrReused
	}
	aead, err := r.aead()
	if err != nil {
		return false, err
	}
	plain, err := aead.Open(nil, v[32:44], v[44:], r.id)
	if err != nil {
		// The body matched but the seal did not open: another caller's key.
		return false, ErrReused
	}
	defer clear(plain)
	if err := proto.Unmarshal(plain, resp); err != nil {
		return false, fmt.Errorf("idempotent replay %s: %w", r.id, err)
	}
	return true, nil
}

// Save stores the sealed resp as r's replay in tx, until now+TTL. It fails
// with store.ErrExists when a concurrent request with the same key won: the
// caller rolls back, undoes what it did outside the store, and looks the
// winner's replay up.
func Save(tx store.WriteTx, b store.Bucket, r *Request, resp proto.Message, now time.Time) error {
	plain, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
	if err != nil {
		return err
	}
	defer clear(plain)
	aead, err := r.aead()
	if err != nil {
		return err
	}
	v := make([]byte, 44, 44+len(plain)+aead.Overhead())
	copy(v, r.bodySum[:])
	if _, err := rand.Read(v[32:44]); err != nil {
		return err
	}
	v = aead.Seal(v, v[32:44], plain, r.id)
	return tx.Put(b, r.id, v, store.IfAbsent(), store.ExpiresAt(now.Add(TTL)))
}

func (r *Request) aead() (cipher.AEAD, error) {
	block, err := aes.NewCipher(r.key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
