package vault

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/store"
)

// dataKeyForWrite returns the data key new values of ws are sealed with,
// creating (and wrapping with the active key-encryption key) the
// workspace's first one if needed. It must run in a write transaction.
func (s *Service) dataKeyForWrite(tx store.WriteTx, ws string) (*dataKey, error) {
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	ver, blob, err := latestDataKey(tx, ws)
	if err != nil {
		return nil, err
	}
	if ver != 0 {
		return s.openDataKey(tx, ws, ver, blob)
	}
	// Wrap with the key the store records as current (see kekha.go), read
	// in this transaction: never with one a rotation is retiring.
	if err := s.followKEKFor(tx, true); err != nil {
		return nil, err
	}
	k := s.keys.activeKEK()
	ver = 1
	key := make([]byte, keyLen)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	wrapped, err := wrapDataKey(k, ws, ver, key)
	if err != nil {
		return nil, err
	}
	if err := putDataKey(tx, ws, ver, wrapped); err != nil {
		return nil, err
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	return &dataKey{version: ver, aead: aead}, nil
}

// dataKeyFor returns version ver of ws's data key.
func (s *Service) dataKeyFor(tx store.ReadTx, ws string, ver uint32) (*dataKey, error) {
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	blob, err := wrappedDataKey(tx, ws, ver)
	if err != nil {
		return nil, err
	}
	if blob == nil {
		return nil, fmt.Errorf("workspace %s has no data key version %d", ws, ver)
	}
	return s.openDataKey(tx, ws, ver, blob)
}

// openDataKey unwraps blob, version ver of ws's data key as read in tx, or
// takes it from the cache when the cache holds that very blob unwrapped.
func (s *Service) openDataKey(tx store.ReadTx, ws string, ver uint32, blob []byte) (*dataKey, error) {
	gen := s.keys.generation()
	if dk := s.dks.get(ws, ver, blob, gen); dk != nil {
		return dk, nil
	}
	key, err := s.unwrapIn(tx, ws, ver, blob)
	if err != nil {
		return nil, s.dataKeyErr(ws, err)
	}
	aead, err := newGCM(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	dk := &dataKey{version: ver, aead: aead}
	s.dks.put(ws, ver, blob, gen, dk)
	return dk, nil
}

// dataKeyErr passes on ErrKeyMissing (the caller's to act on) and turns any
// other unwrap failure into ErrUnreadable, logged.
func (s *Service) dataKeyErr(ws string, err error) error {
	if errors.Is(err, ErrKeyMissing) {
		return err
	}
	s.lg.Error("workspace data key unreadable", zap.String("workspace-id", ws), zap.Error(err))
	return fail(ErrUnreadable, "this workspace's data key could not be decrypted (its stored form is corrupted); an operator must restore it from a backup")
}

// decrypt opens a secret's stored value in tx.
func (s *Service) decrypt(tx store.ReadTx, ws, key string, version int64, display string) ([]byte, error) {
	blob, err := sealedValue(tx, ws, key)
	if err != nil {
		return nil, err
	}
	if blob == nil {
		s.lg.Error("secret has no stored value", zap.String("workspace-id", ws), zap.String("secret", display))
		return nil, fail(ErrUnreadable, "secret %q has no stored value; update its value", display)
	}
	ver, err := sealedBy(blob)
	if err == nil {
		var dk *dataKey
		if dk, err = s.dataKeyFor(tx, ws, ver); err != nil {
			if errors.Is(err, ErrKeyMissing) || errors.Is(err, ErrSealed) || errors.Is(err, ErrUnreadable) {
				return nil, err
			}
		} else {
			var v []byte
			if v, err = openValue(dk, ws, key, version, blob); err == nil {
				return v, nil
			}
		}
	}
	// Never the blob, never a value: which record, and why.
	s.lg.Error("secret ciphertext unreadable", zap.String("workspace-id", ws), zap.String("secret", display), zap.Int64("version", version), zap.Error(err))
	return nil, fail(ErrUnreadable, "secret %q could not be decrypted: its stored ciphertext failed authentication (corrupted or tampered with); update its value", display)
}

// viewKeys runs a read transaction that unwraps data keys. A rotation may
// retire a key-encryption key between this snapshot's read of a wrapped
// data key and its unwrap; then the newer snapshot has the rewrapped key,
// so the read is repeated once.
func (s *Service) viewKeys(ctx context.Context, fn func(store.ReadTx) error) error {
	gen := s.keys.generation()
	err := s.db.View(ctx, fn)
	if errors.Is(err, ErrKeyMissing) && s.keys.generation() != gen {
		err = s.db.View(ctx, fn)
	}
	return err
}

// RotateKEKResult describes a finished key-encryption key rotation.
type RotateKEKResult struct {
	// KEKID is the id (fingerprint) of the key now wrapping every data key.
	KEKID string
	// Retired are the ids of the keys no data key is wrapped by any more.
	Retired []string
	// Rewrapped counts the data keys rewrapped.
	Rewrapped int
}

// RotateKEK loads the key-encryption key in newKEKPath and rewraps every
// workspace data key with it, online. The new key wraps new data keys at
// once; the old keys stay loaded (so every request keeps working) until no
// data key is wrapped by them, and are then dropped from memory. Restart the
// vault with -vault-kek-file pointing at the new file; the old file is no
// longer needed. If rotation stops part-way (e.g. the process dies), start
// with the new key as -vault-kek-file and the old one as a previous key:
// the rewrap completes at start.
func (s *Service) RotateKEK(ctx context.Context, newKEKPath string) (*RotateKEKResult, error) {
	return s.RotateKEKTo(ctx, KEKSource{File: newKEKPath})
}

// RotateKEKTo is RotateKEK to a key file or a PKCS#11 key: file to token,
// token to token (another label) and token to file all work the same way.
// With several replicas on one store, every replica follows it (kekha.go).
// After it, restart every replica with the new key's flags.
func (s *Service) RotateKEKTo(ctx context.Context, src KEKSource) (*RotateKEKResult, error) {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	k, err := src.load()
	if err != nil {
		return nil, fail(ErrRotation, "%s: %v", ErrRotation.Error(), err)
	}
	// One replica rewraps at a time, every write fenced by its lead; the
	// others follow the record it writes (see kekha.go).
	var res *RotateKEKResult
	err = s.asKEKLeader(ctx, func(ctx context.Context, l *store.Leadership) (err error) {
		res, err = s.rotateShared(ctx, l, k, src)
		return err
	})
	if err != nil {
		if s.keys.get(k.id) != k && k.release != nil {
			k.release()
		}
		return nil, err
	}
	s.lg.Warn("key-encryption key rotated: restart the vault with the new key (-vault-kek-file or -vault-kek-pkcs11-*); the old key is no longer needed",
		zap.String("kek-id", res.KEKID), zap.Strings("retired-kek-ids", res.Retired), zap.Int("data-keys-rewrapped", res.Rewrapped))
	return res, nil
}

// rewrapAll rewraps every data key not wrapped by the active key, in
// chunks that fit the store's update limits (see perUpdate), each its own
// transaction, so that no rotation holds the writer for long. It walks the data
// keys once, in key order: data keys created meanwhile are wrapped by the
// active key already. Stopped part-way (an error, a crash), every data key
// is wrapped by the old key or the new one, both of which stay loaded; a
// later call (a retried rotation, or a start with the old key as a previous
// key) finishes the rest. It fails if some data key is wrapped by a key that
// is not loaded and not recorded (see loadMissing). fence runs first in each
// write transaction (the rewrap leader's Fence).
func (s *Service) rewrapAll(ctx context.Context, fence func(store.ReadTx) error) (int, error) {
	batch := s.perUpdate(1)
	total := 0
	unknown := map[kekID]int{}
	var after []byte
	for {
		type rewrapped struct {
			ws      string
			ver     uint32
			wrapped []byte
		}
		var chunk []rewrapped
		var chunkUnknown map[kekID]int
		var next []byte
		err := s.db.Update(ctx, func(tx store.WriteTx) error {
			chunk, chunkUnknown = nil, map[kekID]int{}
			if err := fence(tx); err != nil {
				return err
			}
			active := s.keys.activeKEK()
			if active == nil {
				return ErrSealed
			}
			var err error
			next, err = eachDataKey(tx, after, batch, func(ws string, ver uint32, blob []byte) (bool, error) {
				id, err := wrappedBy(blob)
				if err != nil {
					return false, fmt.Errorf("data key %d of workspace %s: %w", ver, ws, err)
				}
				if id == active.id {
					return false, nil
				}
				if s.keys.get(id) == nil {
					if ok, err := s.loadMissing(tx, id); err != nil || !ok {
						chunkUnknown[id]++
						return false, nil
					}
				}
				key, err := s.keys.unwrapDataKey(ws, ver, blob)
				if err != nil {
					return false, fmt.Errorf("data key of workspace %s: %w", ws, err)
				}
				wrapped, err := wrapDataKey(active, ws, ver, key)
				clear(key)
				if err != nil {
					return false, err
				}
				chunk = append(chunk, rewrapped{ws, ver, wrapped})
				return true, nil
			})
			if err != nil {
				return err
			}
			// Written after the scan, which must not see its bucket change.
			for _, r := range chunk {
				if err := putDataKey(tx, r.ws, r.ver, r.wrapped); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += len(chunk)
		for id, n := range chunkUnknown {
			unknown[id] += n
		}
		if next == nil {
			break
		}
		after = next
	}
	if len(unknown) > 0 {
		return total, fail(ErrRotation, "%s: %s wrapped by key-encryption keys that are not loaded (%s); load them as previous keys and retry",
			ErrRotation.Error(), plural(sum(unknown), "data key is", "data keys are"), idList(unknown))
	}
	return total, nil
}

// unknownWrappers counts the data keys wrapped by keys that are not loaded.
func (s *Service) unknownWrappers(ctx context.Context) (map[kekID]int, error) {
	unknown := map[kekID]int{}
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		clear(unknown)
		_, err := eachDataKey(tx, nil, 0, func(ws string, ver uint32, blob []byte) (bool, error) {
			id, err := wrappedBy(blob)
			if err != nil {
				return false, fmt.Errorf("data key %d of workspace %s: %w", ver, ws, err)
			}
			if s.keys.get(id) == nil {
				unknown[id]++
			}
			return true, nil
		})
		return err
	})
	return unknown, err
}

func sum(m map[kekID]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func idList(m map[kekID]int) string {
	var ids []string
	for id := range m {
		ids = append(ids, id.String())
	}
	sort.Strings(ids)
	return strings.Join(ids, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
