// Package store is the storage seam every service is written against: a read
// transaction, a write transaction and a backend that runs them. Handlers never
// see an engine's types; each service's schema.go turns these calls into typed
// accessors. The embedded engine is in package boltstore; every engine passes
// storetest.Run.
//
// The model is a sorted key/value map split into buckets (declared once per
// service), with serializable transactions:
//
//   - View runs fn on a consistent snapshot.
//   - Update runs fn and commits all its writes atomically and durably, or none.
//     fn may run more than once (an engine retries it on conflict, or without a
//     failing neighbour in a group commit), so it must have no effects outside
//     the transaction other than setting its own results.
//   - Every commit gets a revision, strictly increasing; Watch replays commits
//     after a revision, in order, or says ErrCompacted when they are gone.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/proto"
)

// Errors every engine returns (wrapped; test with errors.Is).
var (
	// ErrUnavailable: the store could not run or commit the transaction; it
	// did not happen. Safe to retry.
	ErrUnavailable = errors.New("store unavailable")
	// ErrOutcomeUnknown: the commit was sent but its reply was lost (a leader
	// died, a connection broke); it may or may not have been applied. Retry
	// only through UpdateOnce with the same request id, or read to decide.
	ErrOutcomeUnknown = errors.New("store commit outcome unknown")
	// ErrTooLarge: the update exceeds the engine's declared Limits. Nothing
	// was written; updates are never silently split.
	ErrTooLarge = errors.New("store update too large")
	// ErrCompacted: a watch asked for revisions the engine no longer keeps.
	// Re-read the state and watch from the revision of that read.
	ErrCompacted = errors.New("store revision compacted")
	// ErrExists: a Put with IfAbsent found the key present.
	ErrExists = errors.New("store key exists")
	// ErrClosed: the backend was closed.
	ErrClosed = errors.New("store closed")
)

// Bucket names a keyspace. Every bucket a service uses is declared once in
// its schema and passed to the engine when the store is opened. Names that
// start with '_' are reserved for the engines.
type Bucket []byte

// ReadTx is a read transaction: a consistent snapshot.
type ReadTx interface {
	// Get returns the value at key, or nil when there is none. The slice is
	// valid only until the transaction ends and must not be modified.
	Get(b Bucket, key []byte) ([]byte, error)
	// Scan visits keys in order (see ScanOptions) until fn returns an error
	// or Limit keys were counted (fn returns true to count a key). It returns
	// the last counted key when keys in range remain, else nil: a cursor for
	// the next page. Keys and values are valid only during fn.
	Scan(b Bucket, opt ScanOptions, fn func(k, v []byte) (bool, error)) ([]byte, error)
	// Revision is the revision of the snapshot this transaction reads.
	Revision() int64
}

// ScanOptions selects keys for Scan.
type ScanOptions struct {
	Prefix  []byte // only keys with this prefix (nil: all)
	After   []byte // start strictly after this key (before it, when Reverse); must have Prefix
	Limit   int    // stop after this many counted keys (0: no limit)
	Reverse bool   // visit keys in descending order
}

// WriteTx is a read-write transaction. Reads see the transaction's own writes.
type WriteTx interface {
	ReadTx
	// Put stores value at key. See IfAbsent and ExpiresAt.
	Put(b Bucket, key, value []byte, opts ...PutOption) error
	// Delete removes key (no error when it is absent).
	Delete(b Bucket, key []byte) error
}

// PutOption changes a Put.
type PutOption func(*PutOptions)

// PutOptions is what PutOption sets; engines read it with PutOptionsOf.
type PutOptions struct {
	IfAbsent  bool
	ExpiresAt time.Time
}

// IfAbsent makes Put fail with ErrExists when the key holds a value.
func IfAbsent() PutOption { return func(o *PutOptions) { o.IfAbsent = true } }

// ExpiresAt makes the key disappear at t (to the second): reads stop seeing
// it then, and a watch reports its deletion. A later Put without it keeps
// the key for good.
func ExpiresAt(t time.Time) PutOption { return func(o *PutOptions) { o.ExpiresAt = t } }

// PutOptionsOf folds opts.
func PutOptionsOf(opts []PutOption) PutOptions {
	var o PutOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Limits an engine declares. Code written against one engine must fit all:
// the embedded engine enforces the same limits as the distributed one.
type Limits struct {
	MaxOpsPerUpdate int // puts and deletes in one Update call
	MaxValueBytes   int // one value
	MaxUpdateBytes  int // keys and values written by one Update call
}

// DefaultLimits are etcd's defaults (128 operations per transaction, a
// 1.5 MiB request), with headroom for the engine's own keys.
var DefaultLimits = Limits{MaxOpsPerUpdate: 120, MaxValueBytes: 1 << 20, MaxUpdateBytes: 1 << 20}

// Change is one key's change in a commit.
type Change struct {
	Bucket string
	Key    []byte
	Value  []byte // nil when Deleted
	Delete bool
}

// WatchResponse is one commit's changes, or the error that ended a watch.
type WatchResponse struct {
	Revision int64
	Changes  []Change
	Err      error // ErrCompacted, ErrClosed or the context's error; the channel closes after it
}

// Backend is one service's store.
type Backend interface {
	// View runs fn in a read transaction.
	View(ctx context.Context, fn func(ReadTx) error) error
	// Update runs fn in a write transaction and returns once it is durably
	// committed. fn may run more than once. An error from fn aborts the
	// transaction and is returned as is.
	Update(ctx context.Context, fn func(WriteTx) error) error
	// Watch sends every commit with a revision greater than after, in order
	// (after 0: from now on), until ctx ends or the watch fails.
	Watch(ctx context.Context, after int64) <-chan WatchResponse
	// Snapshot opens a consistent copy of the store, in the embedded
	// engine's file format (so a backup restores onto either engine), while
	// writers carry on. Close it when done.
	Snapshot(ctx context.Context) (Snapshot, error)
	// Info describes the store.
	Info() Info
	// Limits are the engine's update limits.
	Limits() Limits
	// Close waits for pending writes and releases the store.
	Close() error
}

// Snapshot is a consistent copy of a store being read out.
type Snapshot interface {
	Size() int64 // bytes WriteTo will write
	WriteTo(w io.Writer) (int64, error)
	Close() error
}

// Info describes an open store.
type Info struct {
	Name      string    // what messages call it: a file path, or an etcd prefix
	Engine    string    // "bbolt", "etcd"
	ID        string    // random id given at creation
	CreatedAt time.Time // when the store was first created
	Created   bool      // this open created it (it held nothing before)
	Reinit    bool      // created empty on purpose (-init-store) where a store had existed
}

// Discarder is implemented by engines that can undo the creation of a store
// that start-up then refused: the next start must find it missing again, not
// an empty store that looks deliberate.
type Discarder interface {
	// Discard closes the store and removes it, if this open created it.
	Discard() error
}

// Release lets go of a store that start-up then refused: one this start
// created is discarded (see Discarder), any other is closed.
func Release(db Backend) error {
	if d, ok := db.(Discarder); ok {
		return d.Discard()
	}
	return db.Close()
}

// Pinger is implemented by engines that can become unreachable while open
// (a distributed one): Ping is nil while the store can serve.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Faults is implemented by engines that can simulate failures, for tests.
type Faults interface {
	// SetFault installs f, run inside every write transaction before it
	// commits; an error from it aborts the commit (callers get ErrUnavailable).
	SetFault(f func() error)
	// SetLoseReply makes commits apply while their callers get
	// ErrOutcomeUnknown, as when a reply is lost.
	SetLoseReply(on bool)
	// Compact forgets the history up to rev: a watch from before it gets
	// ErrCompacted.
	Compact(rev int64) error
}

// Opener opens the store called name (e.g. "automation") with its buckets.
type Opener func(name string, buckets []Bucket) (Backend, error)

// Get decodes the value at key in bucket into m. It reports whether the key exists.
func Get(tx ReadTx, bucket Bucket, key []byte, m proto.Message) (bool, error) {
	v, err := tx.Get(bucket, key)
	if err != nil || v == nil {
		return false, err
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return true, fmt.Errorf("decode %s/%q: %w", bucket, key, err)
	}
	return true, nil
}

// Put encodes m (deterministically) and stores it at key in bucket.
func Put(tx WriteTx, bucket Bucket, key []byte, m proto.Message, opts ...PutOption) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Put(bucket, key, v, opts...)
}

// Scan visits keys with prefix in order, starting strictly after `after`
// (when set); see ReadTx.Scan.
func Scan(tx ReadTx, bucket Bucket, prefix, after []byte, limit int, fn func(k, v []byte) (bool, error)) ([]byte, error) {
	return tx.Scan(bucket, ScanOptions{Prefix: prefix, After: after, Limit: limit}, fn)
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

// RequestsBucket holds UpdateOnce's results. Engines create it.
var RequestsBucket = Bucket("_requests")

// RequestTTL is how long UpdateOnce remembers a request id.
const RequestTTL = 24 * time.Hour

// UpdateOnce runs fn in an Update at most once per request id: the result fn
// returns is stored in the same transaction, and a later call with the same
// id (a retry after ErrOutcomeUnknown, say) returns that stored result without
// running fn. Ids are remembered for RequestTTL.
func UpdateOnce(ctx context.Context, b Backend, requestID string, fn func(WriteTx) ([]byte, error)) ([]byte, error) {
	if requestID == "" {
		return nil, errors.New("store: UpdateOnce needs a request id")
	}
	key := []byte(requestID)
	var out []byte
	err := b.Update(ctx, func(tx WriteTx) error {
		prev, err := tx.Get(RequestsBucket, key)
		if err != nil {
			return err
		}
		if prev != nil {
			out = append([]byte(nil), prev...)
			return nil
		}
		res, err := fn(tx)
		if err != nil {
			return err
		}
		if res == nil {
			res = []byte{}
		}
		out = res
		return tx.Put(RequestsBucket, key, res, ExpiresAt(time.Now().Add(RequestTTL)))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// LeaderBucket holds Leadership's keys. Engines create it.
var LeaderBucket = Bucket("_leader")

// Writable reports whether b, a reserved bucket, takes writes from
// outside the engine (UpdateOnce's and Leadership's).
func Writable(b Bucket) bool {
	return string(b) == string(RequestsBucket) || string(b) == string(LeaderBucket)
}
