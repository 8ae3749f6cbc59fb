package agent

import (
	"container/list"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
)

// maxReplays bounds the replay entries held; the oldest go first.
const maxReplays = 10_000

// replayCache remembers, in memory only and for ttl, the result of each
// successful self-rotation that carried an Idempotency-Key, so that a retry
// of it (after a lost response) gets the same new pair instead of a second
// rotation — which would fail anyway, its credentials being dead.
//
// An entry is found by a key derived from the presented API key, the
// presented rotation secret and the Idempotency-Key: only the agent that held
// that pair can name it (the API key identifies the agent: no other agent
// ever held it), and the same Idempotency-Key with any other pair is a new
// request. The new pair is held sealed with AES-256-GCM under a second key
// derived from the same inputs, so the cache's memory alone does not give
// it away. Nothing of it is ever written to disk.
//
// While the first request for a key is in flight, a retry waits for it and
// then replays its result.
type replayCache struct {
	ttl  time.Duration
	now  func() time.Time
	salt []byte

	mu      sync.Mutex
	entries map[[32]byte]*list.Element // of *replayEntry, oldest first
	order   *list.List
}

type replayEntry struct {
	id      [32]byte
	done    chan struct{} // closed when the first request finished
	sealed  []byte        // nonce || ciphertext of the response; nil while in flight
	expires time.Time     // set on completion
	agentID string
	ws      string
}

func newReplayCache(ttl time.Duration, now func() time.Time) (*replayCache, error) {
	salt := make([]byte, 32)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	return &replayCache{ttl: ttl, now: now, salt: salt, entries: map[[32]byte]*list.Element{}, order: list.New()}, nil
}

// derive makes the lookup id and the sealing key of a request.
func (c *replayCache) derive(idemKey, apiKey, secret string) (id [32]byte, sealKey []byte, err error) {
	var in []byte
	for _, s := range []string{apiKey, secret, idemKey} {
		in = binary.BigEndian.AppendUint32(in, uint32(len(s)))
		in = append(in, s...)
	}
	out, err := hkdf.Key(sha256.New, in, c.salt, "backlog agent self-rotation replay v1", 64)
	if err != nil {
		return id, nil, err
	}
	copy(id[:], out[:32])
	return id, out[32:], nil
}

// replaySlot is the right (and the duty) of the first request for an id to
// complete or abandon its entry.
type replaySlot struct {
	c       *replayCache
	e       *replayEntry
	sealKey []byte
	closed  bool
}

// replayHit is a stored result.
type replayHit struct {
	resp    *agentv1.RotateSelfKeyResponse
	agentID string
	ws      string
	id      [32]byte
}

// begin looks the request up. It returns the stored result of an earlier
// request (hit), or a slot that the caller must finish with complete or
// abandon (it is the first). A request that finds the first one in flight
// waits for it.
func (c *replayCache) begin(ctx context.Context, idemKey, apiKey, secret string) (*replayHit, *replaySlot, error) {
	id, sealKey, err := c.derive(idemKey, apiKey, secret)
	if err != nil {
		return nil, nil, err
	}
	for {
		c.mu.Lock()
		now := c.now()
		c.sweep(now)
		el, ok := c.entries[id]
		if ok && el.Value.(*replayEntry).sealed != nil && !now.Before(el.Value.(*replayEntry).expires) {
			c.drop(el)
			ok = false
		}
		if !ok {
			for c.order.Len() >= maxReplays {
				c.drop(c.order.Front())
			}
			e := &replayEntry{id: id, done: make(chan struct{})}
			c.entries[id] = c.order.PushBack(e)
			c.mu.Unlock()
			return nil, &replaySlot{c: c, e: e, sealKey: sealKey}, nil
		}
		e := el.Value.(*replayEntry)
		if e.sealed != nil {
			sealed, agentID, ws := e.sealed, e.agentID, e.ws
			c.mu.Unlock()
			resp, err := open(sealKey, sealed)
			if err != nil {
				return nil, nil, err
			}
			return &replayHit{resp: resp, agentID: agentID, ws: ws, id: id}, nil, nil
		}
		done := e.done
		c.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// forget drops a stored result (its pair is no longer live).
func (c *replayCache) forget(id [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[id]; ok {
		c.drop(el)
	}
}

// len is the number of entries held (for tests).
func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// sweep drops expired entries from the front (entries complete in about
// the order they begin, and all live for ttl).
func (c *replayCache) sweep(now time.Time) {
	for el := c.order.Front(); el != nil; {
		e := el.Value.(*replayEntry)
		if e.sealed == nil || now.Before(e.expires) {
			return
		}
		next := el.Next()
		c.drop(el)
		el = next
	}
}

func (c *replayCache) drop(el *list.Element) {
	e := el.Value.(*replayEntry)
	c.order.Remove(el)
	delete(c.entries, e.id)
	select {
	case <-e.done:
	default:
		close(e.done)
	}
}

// complete stores resp for retries.
func (s *replaySlot) complete(resp *agentv1.RotateSelfKeyResponse, ws string) error {
	if s == nil || s.closed {
		return nil
	}
	s.closed = true
	sealed, err := seal(s.sealKey, resp)
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[s.e.id]
	if !ok || el.Value.(*replayEntry) != s.e {
		return err // evicted meanwhile: nothing to store
	}
	if err != nil {
		c.drop(el)
		return err
	}
	s.e.sealed, s.e.agentID, s.e.ws = sealed, resp.GetAgentId(), ws
	s.e.expires = c.now().Add(c.ttl)
	close(s.e.done)
	return nil
}

// abandon removes the entry of a request that did not rotate; waiting
// retries then go through as requests of their own.
func (s *replaySlot) abandon() {
	if s == nil || s.closed {
		return
	}
	s.closed = true
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[s.e.id]; ok && el.Value.(*replayEntry) == s.e {
		c.drop(el)
	}
}

func seal(key []byte, resp *agentv1.RotateSelfKeyResponse) ([]byte, error) {
	plain, err := proto.Marshal(resp)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := aead.Seal(nonce, nonce, plain, nil)
	clear(plain)
	return out, nil
}

func open(key, sealed []byte) (*agentv1.RotateSelfKeyResponse, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	n := aead.NonceSize()
	if len(sealed) < n {
		return nil, errReplayCorrupt
	}
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, errReplayCorrupt
	}
	resp := &agentv1.RotateSelfKeyResponse{}
	err = proto.Unmarshal(plain, resp)
	clear(plain)
	return resp, err
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

// errReplayCorrupt cannot happen unless memory is corrupted: the id and the
// sealing key come from the same derivation.
const errReplayCorrupt = replayError("replay entry does not open")
