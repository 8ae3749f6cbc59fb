// Package store wraps a bbolt file: buckets declared once, protobuf values,
// keys that sort the way lists read them, and group commit so that concurrent
// writers share one fsync while a lone writer never waits for a timer.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/backlog/controlplane/services/kit/metrics"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// ErrUnavailable is returned when a write could not be committed. The caller
// must treat the write as not having happened.
var ErrUnavailable = errors.New("store unavailable")

// Tx is a bbolt transaction.
type Tx = bolt.Tx

// Bucket names a top-level bucket. Every bucket a service uses is declared once
// in its schema and passed to Open.
type Bucket []byte

// DB is one service's store.
type DB struct {
	db *bolt.DB
	lg *zap.Logger

	mu      sync.Mutex
	pending []*call
	closed  bool
	kick    chan struct{} // wakes the committer; buffered 1
	done    chan struct{} // closed when the committer exits

	// fault, when set, runs inside every write transaction before commit; an
	// error from it aborts the transaction (fault injection in tests).
	fault func() error
}

type call struct {
	fn     func(*Tx) error
	done   chan error
	queued time.Time
}

// Open opens (creating if needed, mode 0600) the bbolt file at path and makes
// sure every bucket exists.
func Open(path string, buckets []Bucket, lg *zap.Logger) (*DB, error) {
	if lg == nil {
		lg = zap.NewNop()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another process holds it open", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	d := &DB{db: db, lg: lg, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go d.committer()
	return d, nil
}

// Bolt exposes the underlying database (for backups and consistency checks).
func (d *DB) Bolt() *bolt.DB { return d.db }

// Path is the file the store lives in.
func (d *DB) Path() string { return d.db.Path() }

// Close waits for pending writes and closes the file.
func (d *DB) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.wake()
	<-d.done
	return d.db.Close()
}

func (d *DB) wake() {
	select {
	case d.kick <- struct{}{}:
	default: // already awake or about to be
	}
}

// SetFault installs a hook that runs inside every write transaction; a non-nil
// error aborts it. For fault-injection tests only.
func (d *DB) SetFault(f func() error) {
	d.mu.Lock()
	d.fault = f
	d.mu.Unlock()
}

// View runs fn in a read-only transaction.
func (d *DB) View(fn func(*Tx) error) error { return d.db.View(fn) }

// Update runs fn in a read-write transaction and returns once it is durably
// committed. Concurrent calls are grouped into one transaction and one fsync.
// fn may run more than once (if another function in its group fails, the
// group is retried without it), so it must not have side effects outside tx
// other than setting its own results.
func (d *DB) Update(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := &call{fn: fn, done: make(chan error, 1), queued: time.Now()}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("%w: closed", ErrUnavailable)
	}
	d.pending = append(d.pending, c)
	d.mu.Unlock()
	d.wake()
	// The write is not cancelled by ctx once queued: the caller learns its fate.
	return <-c.done
}

// committer is the store's one writer: it commits whatever queued while the
// previous commit ran, as one transaction and one fsync (group commit). A
// lone write is committed at once, with no timer to wait for.
func (d *DB) committer() {
	defer close(d.done)
	for range d.kick {
		for {
			d.mu.Lock()
			batch, fault, closed := d.pending, d.fault, d.closed
			d.pending = nil
			d.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					return
				}
				break
			}
			d.commit(batch, fault)
		}
	}
}

// fnError marks an error returned by a caller's function (not by the commit).
type fnError struct {
	idx int
	err error
}

func (e *fnError) Error() string { return e.err.Error() }

func (d *DB) commit(batch []*call, fault func() error) {
	for len(batch) > 0 {
		err := d.db.Update(func(tx *bolt.Tx) error {
			for i, c := range batch {
				if err := safeCall(c.fn, tx); err != nil {
					return &fnError{i, err}
				}
			}
			if fault != nil {
				if err := fault(); err != nil {
					return err
				}
			}
			return nil
		})
		var fe *fnError
		if errors.As(err, &fe) {
			// That function fails on the state the others before it left: a
			// valid serial order. Report its error; retry the rest without it.
			batch[fe.idx].done <- fe.err
			batch = append(batch[:fe.idx:fe.idx], batch[fe.idx+1:]...)
			continue
		}
		name := filepath.Base(d.db.Path())
		metrics.StoreBatchSize.WithLabelValues(name).Observe(float64(len(batch)))
		now := time.Now()
		for _, c := range batch {
			metrics.StoreCommitSeconds.WithLabelValues(name).Observe(now.Sub(c.queued).Seconds())
		}
		if err != nil {
			d.lg.Error("store commit failed", zap.String("path", d.db.Path()), zap.Int("batch", len(batch)), zap.Error(err))
			err = fmt.Errorf("%w: commit failed", ErrUnavailable)
		}
		for _, c := range batch {
			c.done <- err
		}
		return
	}
}

func safeCall(fn func(*Tx) error, tx *Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in store transaction: %v", r)
		}
	}()
	return fn(tx)
}

// Get decodes the value at key in bucket into m. It reports whether the key exists.
func Get(tx *Tx, bucket Bucket, key []byte, m proto.Message) (bool, error) {
	v := tx.Bucket(bucket).Get(key)
	if v == nil {
		return false, nil
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return true, fmt.Errorf("decode %s/%q: %w", bucket, key, err)
	}
	return true, nil
}

// Put encodes m and stores it at key in bucket.
func Put(tx *Tx, bucket Bucket, key []byte, m proto.Message) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, v)
}

// Key joins parts with '/', which sorts before every id character.
func Key(parts ...string) []byte {
	n := len(parts) - 1
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			b = append(b, '/')
		}
		b = append(b, p...)
	}
	return b
}

// Scan visits keys with prefix in order, starting strictly after `after`
// (when set), until fn returns false or limit keys were visited. It returns
// the last key visited when more keys with the prefix remain, else nil.
func Scan(tx *Tx, bucket Bucket, prefix, after []byte, limit int, fn func(k, v []byte) (bool, error)) ([]byte, error) {
	c := tx.Bucket(bucket).Cursor()
	var k, v []byte
	if len(after) > 0 {
		if !bytes.HasPrefix(after, prefix) {
			return nil, errors.New("cursor outside prefix")
		}
		k, v = c.Seek(after)
		if k != nil && bytes.Equal(k, after) {
			k, v = c.Next()
		}
	} else {
		k, v = c.Seek(prefix)
	}
	n := 0
	var last []byte
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if limit > 0 && n == limit {
			return last, nil
		}
		ok, err := fn(k, v)
		if err != nil {
			return nil, err
		}
		if ok {
			n++
			last = append(last[:0], k...)
		}
	}
	return nil, nil
}
