package boltstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backlog/controlplane/services/kit/store"
)

// Check runs bbolt's consistency check on the store file at path, which no
// process may hold open (backups and restores use it).
func Check(path string) error {
	if err := checkHeader(path); err != nil {
		return fmt.Errorf("%s is %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	})
}

// EnsureClosed fails if a running process holds the store at path.
func EnsureClosed(path string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if err != nil {
		return fmt.Errorf("%s is in use: stop backlogd first (%v)", path, err)
	}
	return db.Close()
}

// ReadID returns the id recorded inside the store file at path (empty for a
// store written before stores had ids).
func ReadID(path string) (string, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	defer db.Close()
	var id string
	err = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(metaBucket); b != nil {
			id = string(b.Get(metaID))
		}
		return nil
	})
	return id, err
}

// Reader reads a store file offline (its process stopped or killed), for
// tools and tests that inspect what a service stored.
type Reader struct {
	db *bolt.DB
}

// OpenReader opens the store file at path read-only.
func OpenReader(path string) (*Reader, error) {
	if err := checkHeader(path); err != nil {
		return nil, fmt.Errorf("%s is %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Reader{db: db}, nil
}

// View runs fn in a read transaction (no expiry filtering: it shows what
// the file holds).
func (r *Reader) View(fn func(store.ReadTx) error) error {
	return r.db.View(func(tx *bolt.Tx) error {
		return fn(&readTx{tx: tx, d: &DB{name: r.db.Path()}, now: time.Now()})
	})
}

// Keys counts the keys of every bucket, the engine's own included.
func (r *Reader) Keys() (map[string]int, error) {
	out := map[string]int{}
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			out[string(name)] = b.Stats().KeyN
			return nil
		})
	})
	return out, err
}

// Close releases the file.
func (r *Reader) Close() error { return r.db.Close() }

// Export visits every key the services wrote in the store at path (the
// engines' own buckets, such as _meta and _requests, are skipped, and so are
// keys whose expiry has passed), bucket by bucket in key order, with each
// key's expiry (zero: none). It returns the buckets the file holds, so a
// restore onto another engine can declare them. The caller owns nothing
// after fn returns: copy what it keeps.
func (r *Reader) Export(fn func(b store.Bucket, key, value []byte, expires time.Time) error) ([]store.Bucket, error) {
	var buckets []store.Bucket
	now := time.Now().UnixNano()
	err := r.db.View(func(tx *bolt.Tx) error {
		exp := tx.Bucket(expiryBucket)
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if bytes.HasPrefix(name, []byte("_")) {
				return nil
			}
			buckets = append(buckets, store.Bucket(bytes.Clone(name)))
			return b.ForEach(func(k, v []byte) error {
				var at time.Time
				if exp != nil {
					if d := exp.Get(expiryKey(name, k)); len(d) == 8 {
						ns := int64(binary.BigEndian.Uint64(d))
						if ns <= now {
							return nil
						}
						at = time.Unix(0, ns)
					}
				}
				if v == nil {
					v = []byte{}
				}
				return fn(store.Bucket(name), k, v, at)
			})
		})
	})
	return buckets, err
}
