package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"time"
)

// Leases are short locks kept in a store, so that replicas sharing it take
// turns at something that cannot be undone (a rotation, say). A lease is a
// random token under a key, expiring after TTL: a holder that dies delays
// the others by at most that much.
type Leases struct {
	Bucket Bucket
	TTL    time.Duration
	Poll   time.Duration    // how often a waiter looks again
	Now    func() time.Time // default time.Now
}

// errLeaseOurs: an earlier attempt took the lease, its reply lost.
var errLeaseOurs = errors.New("lease already ours")

// Take waits until no one holds the lease at key, takes it, and returns its
// token (for Drop or Release).
func (l Leases) Take(ctx context.Context, db Backend, key []byte) ([]byte, error) {
	now := l.Now
	if now == nil {
		now = time.Now
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	for {
		// Read first: waiting costs no write.
		var held bool
		err := db.View(ctx, func(tx ReadTx) error {
			v, err := tx.Get(l.Bucket, key)
			held = v != nil && !bytes.Equal(v, tok)
			return err
		})
		if err == nil && !held {
			err = db.Update(ctx, func(tx WriteTx) error {
				v, err := tx.Get(l.Bucket, key)
				switch {
				case err != nil:
					return err
				case bytes.Equal(v, tok):
					return errLeaseOurs
				case v != nil:
					return ErrExists
				}
				return tx.Put(l.Bucket, key, tok, IfAbsent(), ExpiresAt(now().Add(l.TTL)))
			})
		} else if err == nil {
			err = ErrExists
		}
		switch {
		case err == nil, errors.Is(err, errLeaseOurs):
			return tok, nil
		case errors.Is(err, ErrOutcomeUnknown):
			continue // the next attempt reads whether it applied
		case !errors.Is(err, ErrExists):
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(l.Poll):
		}
	}
}

// Drop ends the lease tok in tx, if it is still held (it may have expired
// and been taken by another). A nil tok is no lease.
func (l Leases) Drop(tx WriteTx, key, tok []byte) error {
	if tok == nil {
		return nil
	}
	v, err := tx.Get(l.Bucket, key)
	if err != nil || !bytes.Equal(v, tok) {
		return err
	}
	return tx.Delete(l.Bucket, key)
}

// Release ends the lease tok in an update of its own.
func (l Leases) Release(ctx context.Context, db Backend, key, tok []byte) error {
	if tok == nil {
		return nil
	}
	return db.Update(ctx, func(tx WriteTx) error { return l.Drop(tx, key, tok) })
}

// ClearAll ends every lease in db when this process is its one writer (the
// embedded engine locks its file to one process: a lease there can only be
// left by a process that died holding it). With a shared engine it does
// nothing: only expiry ends a lease. It returns how many it ended.
func (l Leases) ClearAll(ctx context.Context, db Backend) (int, error) {
	if db.Info().Engine != "bbolt" {
		return 0, nil
	}
	total := 0
	for {
		var keys [][]byte
		err := db.View(ctx, func(tx ReadTx) error {
			keys = keys[:0]
			_, err := tx.Scan(l.Bucket, ScanOptions{Limit: 100}, func(k, _ []byte) (bool, error) {
				keys = append(keys, bytes.Clone(k))
				return true, nil
			})
			return err
		})
		if err == nil && len(keys) > 0 {
			err = db.Update(ctx, func(tx WriteTx) error {
				for _, k := range keys {
					if err := tx.Delete(l.Bucket, k); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err != nil || len(keys) == 0 {
			return total, err
		}
		total += len(keys)
	}
}
