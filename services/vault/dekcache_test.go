package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"

	"github.com/backlog/controlplane/services/kit/store"
)

// wrappedKey reads version ver of ws's data key as stored.
func wrappedKey(t *testing.T, s *Service, ws string, ver uint32) []byte {
	t.Helper()
	var blob []byte
	err := s.db.View(context.Background(), func(tx store.ReadTx) error {
		b, err := wrappedDataKey(tx, ws, ver)
		blob = bytes.Clone(b)
		return err
	})
	if err != nil || blob == nil {
		t.Fatalf("data key %d of %s: %v", ver, ws, err)
	}
	return blob
}

// TestDataKeyCacheServesOnlyWhatTheStoreHolds replaces a workspace's data
// key in the store under the same version (as a restore from a backup
// would) after it was cached: the next read opens the values sealed under
// the new key, because the cache answers only for the wrapped form it
// unwrapped.
func TestDataKeyCacheServesOnlyWhatTheStoreHolds(t *testing.T) {
	ctx := context.Background()
	s := newTestVault(t, t.TempDir(), newKEKFile(t, "k1"))
	values := fillWorkspaces(t, s, 2)
	checkWorkspaces(t, s, values)
	if n := s.dks.len(); n != 2 {
		t.Fatalf("%d data keys cached after reading two workspaces, want 2", n)
	}
	before := wrappedKey(t, s, "ws_0000", 1)

	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		key := make([]byte, keyLen)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		wrapped, err := wrapDataKey(s.keys.activeKEK(), "ws_0000", 1, key)
		if err != nil {
			return err
		}
		aead, err := newGCM(key)
		if err != nil {
			return err
		}
		values["ws_0000"] = []byte("the value sealed under the replaced data key")
		sealed, err := sealValue(&dataKey{version: 1, aead: aead}, "ws_0000", "x", 1, values["ws_0000"])
		if err != nil {
			return err
		}
		if err := putDataKey(tx, "ws_0000", 1, wrapped); err != nil {
			return err
		}
		return putSealedValue(tx, "ws_0000", "x", sealed)
	})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, wrappedKey(t, s, "ws_0000", 1)) {
		t.Fatal("the data key was not replaced")
	}
	checkWorkspaces(t, s, values) // fails if the cache served the old key
}

// TestDataKeyCacheDroppedOnKEKRotation rotates the key-encryption key:
// nothing cached before the rotation is served after it (the data keys
// were rewrapped and the old key retired), and what is cached afterwards
// was unwrapped from the rewrapped form.
func TestDataKeyCacheDroppedOnKEKRotation(t *testing.T) {
	ctx := context.Background()
	s := newTestVault(t, t.TempDir(), newKEKFile(t, "k1"))
	values := fillWorkspaces(t, s, 3)
	checkWorkspaces(t, s, values)
	old := wrappedKey(t, s, "ws_0001", 1)
	gen := s.keys.generation()
	if s.dks.get("ws_0001", 1, old, gen) == nil {
		t.Fatal("the data key was not cached")
	}

	res, err := s.RotateKEK(ctx, newKEKFile(t, "k2"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Rewrapped != 3 || len(res.Retired) != 1 {
		t.Fatalf("rotation = %+v", res)
	}
	// Even asked with the old wrapped form, the cache no longer answers:
	// the old key-encryption key is retired.
	if s.dks.get("ws_0001", 1, old, s.keys.generation()) != nil {
		t.Fatal("a data key unwrapped under the retired key-encryption key is still served")
	}
	checkWorkspaces(t, s, values)
	now := wrappedKey(t, s, "ws_0001", 1)
	if bytes.Equal(now, old) {
		t.Fatal("the data key was not rewrapped")
	}
	if s.dks.get("ws_0001", 1, now, s.keys.generation()) == nil {
		t.Fatal("the rewrapped data key was not cached")
	}
	if id, _ := wrappedBy(now); id != s.keys.activeKEK().id {
		t.Fatalf("cached data key wrapped by %s, not the active key", id)
	}
}

// TestDataKeyCacheBounded fills the cache past its bound.
func TestDataKeyCacheBounded(t *testing.T) {
	var c dekCache
	dk := &dataKey{version: 1}
	for i := range dekCacheMax + 10 {
		c.put(string(rune('a'+i%26))+string(rune(i)), 1, []byte{byte(i)}, 0, dk)
	}
	if n := c.len(); n != dekCacheMax {
		t.Fatalf("%d entries, want %d", n, dekCacheMax)
	}
	// A put from before a retirement is not cached, and a newer
	// generation empties the cache.
	c.put("new", 1, []byte{1}, 1, dk)
	if c.len() != 1 || c.get("new", 1, []byte{1}, 1) != dk {
		t.Fatal("a newer generation did not replace the cache")
	}
	c.put("late", 1, []byte{1}, 0, dk)
	if c.get("late", 1, []byte{1}, 0) != nil || c.get("late", 1, []byte{1}, 1) != nil {
		t.Fatal("a data key unwrapped before a retirement was cached after it")
	}
}
