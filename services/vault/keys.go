package vault

import (
	"bytes"
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

// rewrapBatch bounds the data keys rewrapped per transaction, so that a
// rotation never holds the writer for long.
const rewrapBatch = 256

// latestDataKey returns the newest data key version of ws and its wrapped
// blob, or 0 when the workspace has none yet.
func latestDataKey(tx *store.Tx, ws string) (uint32, []byte, error) {
	prefix := store.Key(ws, "")
	c := tx.Bucket(dataKeysBucket).Cursor()
	k, v := c.Seek(store.Key(ws, "~")) // '~' sorts after every hex digit
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return 0, nil, nil
	}
	ver, err := strconv.ParseUint(string(k[len(prefix):]), 16, 32)
	if err != nil || ver == 0 {
		return 0, nil, fmt.Errorf("malformed data key id %q", k)
	}
	return uint32(ver), v, nil
}

// dataKeyForWrite returns the data key new values of ws are sealed with,
// creating (and wrapping with the active key-encryption key) the
// workspace's first one if needed. It must run in a write transaction.
func (s *Service) dataKeyForWrite(tx *store.Tx, ws string) (*dataKey, error) {
	k := s.keys.activeKEK()
	if k == nil {
		return nil, ErrSealed
	}
	ver, blob, err := latestDataKey(tx, ws)
	if err != nil {
		return nil, err
	}
	var key []byte
	if ver == 0 {
		ver = 1
		key = make([]byte, keyLen)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		wrapped, err := wrapDataKey(k, ws, ver, key)
		if err != nil {
			return nil, err
		}
		if err := tx.Bucket(dataKeysBucket).Put(dataKeyKey(ws, ver), wrapped); err != nil {
			return nil, err
		}
	} else if key, err = s.keys.unwrapDataKey(ws, ver, blob); err != nil {
		return nil, s.dataKeyErr(ws, err)
	}
	aead, err := newGCM(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	return &dataKey{version: ver, aead: aead}, nil
}

// dataKeyFor returns version ver of ws's data key.
func (s *Service) dataKeyFor(tx *store.Tx, ws string, ver uint32) (*dataKey, error) {
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	blob := tx.Bucket(dataKeysBucket).Get(dataKeyKey(ws, ver))
	if blob == nil {
		return nil, fmt.Errorf("workspace %s has no data key version %d", ws, ver)
	}
	key, err := s.keys.unwrapDataKey(ws, ver, blob)
	if err != nil {
		return nil, s.dataKeyErr(ws, err)
	}
	aead, err := newGCM(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	return &dataKey{version: ver, aead: aead}, nil
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
func (s *Service) decrypt(tx *store.Tx, ws, key string, version int64, display string) ([]byte, error) {
	blob := tx.Bucket(valuesBucket).Get(secretKey(ws, key))
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
func (s *Service) viewKeys(fn func(*store.Tx) error) error {
	gen := s.keys.generation()
	err := s.db.View(fn)
	if errors.Is(err, ErrKeyMissing) && s.keys.generation() != gen {
		err = s.db.View(fn)
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
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	if s.keys.sealed() {
		return nil, ErrSealed
	}
	raw, err := LoadKEKFile(newKEKPath)
	if err != nil {
		return nil, fail(ErrRotation, "%s: %v", ErrRotation.Error(), err)
	}
	k, err := newKEK(raw)
	clear(raw)
	if err != nil {
		return nil, fail(ErrRotation, "%s: %v", ErrRotation.Error(), err)
	}
	old := s.keys.activeKEK()
	s.keys.add(k, true)
	s.lg.Warn("key-encryption key rotation started", zap.String("kek-id", k.id.String()), zap.String("previous-kek-id", old.id.String()))
	n, err := s.rewrapAll(ctx)
	if err != nil {
		// Every key stays loaded: nothing stops working. Retrying finishes.
		return nil, err
	}
	res := &RotateKEKResult{KEKID: k.id.String(), Rewrapped: n}
	for _, id := range s.keys.retire() {
		res.Retired = append(res.Retired, id.String())
	}
	s.lg.Warn("key-encryption key rotated: restart the vault with -vault-kek-file set to the new key; the old key file is no longer needed",
		zap.String("kek-id", res.KEKID), zap.Strings("retired-kek-ids", res.Retired), zap.Int("data-keys-rewrapped", n))
	return res, nil
}

// rewrapAll rewraps every data key not wrapped by the active key, in
// batches. It fails if some data key is wrapped by a key that is not loaded.
func (s *Service) rewrapAll(ctx context.Context) (int, error) {
	total := 0
	for {
		var n int
		var more bool
		var unknown map[kekID]int
		err := s.db.Update(ctx, func(tx *store.Tx) error {
			n, more, unknown = 0, false, map[kekID]int{}
			active := s.keys.activeKEK()
			if active == nil {
				return ErrSealed
			}
			b := tx.Bucket(dataKeysBucket)
			type put struct{ k, v []byte }
			var puts []put
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				id, err := wrappedBy(v)
				if err != nil {
					return fmt.Errorf("data key %q: %w", k, err)
				}
				if id == active.id {
					continue
				}
				if s.keys.get(id) == nil {
					unknown[id]++
					continue
				}
				if len(puts) == rewrapBatch {
					more = true
					break
				}
				ws, ver, err := splitDataKeyKey(k)
				if err != nil {
					return err
				}
				key, err := s.keys.unwrapDataKey(ws, ver, v)
				if err != nil {
					return fmt.Errorf("data key of workspace %s: %w", ws, err)
				}
				wrapped, err := wrapDataKey(active, ws, ver, key)
				clear(key)
				if err != nil {
					return err
				}
				puts = append(puts, put{bytes.Clone(k), wrapped})
			}
			// Written after the scan: a bbolt cursor must not see its bucket change.
			for _, p := range puts {
				if err := b.Put(p.k, p.v); err != nil {
					return err
				}
			}
			n = len(puts)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if !more {
			if len(unknown) > 0 {
				return total, fail(ErrRotation, "%s: %s wrapped by key-encryption keys that are not loaded (%s); load them as previous keys and retry",
					ErrRotation.Error(), plural(sum(unknown), "data key is", "data keys are"), idList(unknown))
			}
			return total, nil
		}
	}
}

// unknownWrappers counts the data keys wrapped by keys that are not loaded.
func (s *Service) unknownWrappers() (map[kekID]int, error) {
	unknown := map[kekID]int{}
	err := s.db.View(func(tx *store.Tx) error {
		return tx.Bucket(dataKeysBucket).ForEach(func(k, v []byte) error {
			id, err := wrappedBy(v)
			if err != nil {
				return fmt.Errorf("data key %q: %w", k, err)
			}
			if s.keys.get(id) == nil {
				unknown[id]++
			}
			return nil
		})
	})
	return unknown, err
}

func splitDataKeyKey(k []byte) (string, uint32, error) {
	i := bytes.LastIndexByte(k, '/')
	if i <= 0 {
		return "", 0, fmt.Errorf("malformed data key id %q", k)
	}
	ver, err := strconv.ParseUint(string(k[i+1:]), 16, 32)
	if err != nil || ver == 0 {
		return "", 0, fmt.Errorf("malformed data key id %q", k)
	}
	return string(k[:i]), uint32(ver), nil
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
