package agent

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// replayCache keeps, in the service's store for ttl, the result of each
// successful self-rotation that carried an Idempotency-Key, so that a retry
// of it (after a lost response), on whichever replica it lands, gets the
// same new pair instead of a second rotation — which would fail anyway, its
// credentials being dead.
//
// An entry is found by an id derived from the presented API key, the
// presented rotation secret and the Idempotency-Key: only the agent that held
// that pair can name it (the API key identifies the agent: no other agent
// ever held it), and the same Idempotency-Key with any other pair is a new
// request. The new pair, with the agent's workspace, is sealed with
// AES-256-GCM under a second key derived from the same inputs (and bound to
// the id): the stored bytes give away neither the pair nor whose it is,
// only when the entry expires. The credentials the keys derive from carry
// 256 random bits each, so the derivation needs no secret salt.
//
// While the first request for an id is in flight it holds the id's turn (a
// lease in selfTurnsBucket): a retry, here or on another replica, waits for
// it and then replays its result.
type replayCache struct {
	db    store.Backend
	ttl   time.Duration
	now   func() time.Time
	turns store.Leases
}

func newReplayCache(db store.Backend, ttl time.Duration, now func() time.Time, turns store.Leases) *replayCache {
	return &replayCache{db: db, ttl: ttl, now: now, turns: turns}
}

// replaySalt and replayInfo fix the derivation: every replica derives the
// same id and key from the same request.
const (
	replaySalt = "backlog agent self-rotation replay salt"
	replayInfo = "backlog agent self-rotation replay v2"
)

// derive makes the lookup id and the sealing key of a request.
func derive(idemKey, apiKey, secret string) (id string, sealKey []byte, err error) {
	var in []byte
	for _, s := range []string{apiKey, secret, idemKey} {
		in = binary.BigEndian.AppendUint32(in, uint32(len(s)))
		in = append(in, s...)
	}
	out, err := hkdf.Key(sha256.New, in, []byte(replaySalt), replayInfo, 64)
	clear(in)
	if err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(out[:32]), out[32:], nil
}

// replaySlot is the right (and the duty) of the first request for an id to
// complete or abandon its entry.
type replaySlot struct {
	c       *replayCache
	id      string
	sealKey []byte
	tok     []byte // the id's turn
	closed  bool
}

// replayHit is a stored result.
type replayHit struct {
	resp    *agentv1.RotateSelfKeyResponse
	agentID string
	ws      string
	id      string
}

// begin looks the request up. It returns the stored result of an earlier
// request (hit), or a slot that the caller must finish with complete or
// abandon (it is the first). A request that finds the first one in flight,
// on any replica, waits for it.
func (c *replayCache) begin(ctx context.Context, idemKey, apiKey, secret string) (*replayHit, *replaySlot, error) {
	id, sealKey, err := derive(idemKey, apiKey, secret)
	if err != nil {
		return nil, nil, err
	}
	if hit, err := c.lookup(ctx, id, sealKey); hit != nil || err != nil {
		return hit, nil, err
	}
	tok, err := c.turns.Take(ctx, c.db, selfReplayTurnKey(id))
	if err != nil {
		return nil, nil, err
	}
	// The request waited for may have stored its result meanwhile.
	hit, err := c.lookup(ctx, id, sealKey)
	if hit != nil || err != nil {
		c.release(ctx, id, tok)
		return hit, nil, err
	}
	return nil, &replaySlot{c: c, id: id, sealKey: sealKey, tok: tok}, nil
}

// lookup reads and opens the live entry id (nil when there is none).
func (c *replayCache) lookup(ctx context.Context, id string, sealKey []byte) (*replayHit, error) {
	var sealed []byte
	err := c.db.View(ctx, func(tx store.ReadTx) error {
		v, err := tx.Get(selfReplaysBucket, selfReplayKey(id))
		sealed = nil
		if err != nil || v == nil {
			return err
		}
		expires, s, err := decodeReplay(v)
		if err != nil || !c.now().Before(expires) {
			return err
		}
		sealed = bytes.Clone(s)
		return nil
	})
	if err != nil || sealed == nil {
		return nil, err
	}
	ws, resp, err := open(sealKey, id, sealed)
	if err != nil {
		return nil, err
	}
	return &replayHit{resp: resp, agentID: resp.GetAgentId(), ws: ws, id: id}, nil
}

// forget drops a stored result (its pair is no longer live).
func (c *replayCache) forget(ctx context.Context, id string) error {
	return c.db.Update(ctx, func(tx store.WriteTx) error { return tx.Delete(selfReplaysBucket, selfReplayKey(id)) })
}

// len is the number of entries held (for tests).
func (c *replayCache) len(ctx context.Context) (int, error) {
	n := 0
	err := c.db.View(ctx, func(tx store.ReadTx) error {
		n = 0
		_, err := tx.Scan(selfReplaysBucket, store.ScanOptions{}, func(_, _ []byte) (bool, error) { n++; return true, nil })
		return err
	})
	return n, err
}

// release ends the id's turn (best effort: it expires by itself).
func (c *replayCache) release(ctx context.Context, id string, tok []byte) {
	ctx, cancel := detached(ctx)
	defer cancel()
	_ = c.turns.Release(ctx, c.db, selfReplayTurnKey(id), tok)
}

// complete stores resp, the result of agent resp.AgentId of workspace ws,
// for retries, and ends the id's turn in the same update.
func (s *replaySlot) complete(ctx context.Context, resp *agentv1.RotateSelfKeyResponse, ws string) error {
	if s == nil || s.closed {
		return nil
	}
	s.closed = true
	sealed, err := seal(s.sealKey, s.id, ws, resp)
	if err != nil {
		s.c.release(ctx, s.id, s.tok)
		return err
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	expires := s.c.now().Add(s.c.ttl)
	err = s.c.db.Update(ctx, func(tx store.WriteTx) error {
		if err := tx.Put(selfReplaysBucket, selfReplayKey(s.id), encodeReplay(expires, sealed), store.ExpiresAt(expires.Add(time.Second))); err != nil {
			return err
		}
		return s.c.turns.Drop(tx, selfReplayTurnKey(s.id), s.tok)
	})
	if err != nil && !errors.Is(err, store.ErrOutcomeUnknown) {
		s.c.release(ctx, s.id, s.tok)
	}
	return err
}

// abandon ends the turn of a request that did not rotate; waiting retries
// then go through as requests of their own.
func (s *replaySlot) abandon(ctx context.Context) {
	if s == nil || s.closed {
		return
	}
	s.closed = true
	s.c.release(ctx, s.id, s.tok)
}

const replayRecordVersion = 1

// encodeReplay lays out a stored entry: a version byte, the expiry (Unix
// nanoseconds, judged by the service's clock), then the sealed result.
func encodeReplay(expires time.Time, sealed []byte) []byte {
	b := make([]byte, 0, 9+len(sealed))
	b = append(b, replayRecordVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(expires.UnixNano()))
	return append(b, sealed...)
}

func decodeReplay(v []byte) (time.Time, []byte, error) {
	if len(v) < 9 || v[0] != replayRecordVersion {
		return time.Time{}, nil, errReplayCorrupt
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v[1:9]))), v[9:], nil
}

// seal encrypts ws and resp under key, bound to the entry id.
func seal(key []byte, id, ws string, resp *agentv1.RotateSelfKeyResponse) ([]byte, error) {
	plain := binary.AppendUvarint(nil, uint64(len(ws)))
	plain = append(plain, ws...)
	plain, err := proto.MarshalOptions{}.MarshalAppend(plain, resp)
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, []byte(id)), nil
}

// open decrypts what seal made.
func open(key []byte, id string, sealed []byte) (string, *agentv1.RotateSelfKeyResponse, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return "", nil, err
	}
	n := aead.NonceSize()
	if len(sealed) < n {
		return "", nil, errReplayCorrupt
	}
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], []byte(id))
	if err != nil {
		return "", nil, errReplayCorrupt
	}
	defer clear(plain)
	l, w := binary.Uvarint(plain)
	if w <= 0 || l > uint64(len(plain)-w) {
		return "", nil, errReplayCorrupt
	}
	ws := string(plain[w : w+int(l)])
	resp := &agentv1.RotateSelfKeyResponse{}
	if err := proto.Unmarshal(plain[w+int(l):], resp); err != nil {
		return "", nil, errReplayCorrupt
	}
	return ws, resp, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

type replayError string

func (e replayError) Error() string { return string(e) }

// errReplayCorrupt cannot happen unless the store was altered: the id and
// the sealing key come from the same derivation.
const errReplayCorrupt = replayError("self-rotation replay entry does not open")

func selfReplayKey(id string) []byte { return []byte(id) }
