// Package boltstore is the embedded store engine: one bbolt file per service,
// with group commit so that concurrent writers share one fsync while a lone
// writer never waits for a timer. It is the only package that imports bbolt.
//
// Beside the caller's buckets a file holds the engine's own: _meta (the
// store's id, creation time and revision), _expiry and _expiry_at (keys put
// with ExpiresAt), and store.RequestsBucket. A marker file <path>.id records
// that the store exists, so that a missing file is noticed instead of being
// created empty.
package boltstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/store"
)

var (
	metaBucket     = []byte("_meta")
	expiryBucket   = []byte("_expiry")    // bucket 0x00 key → deadline (unix ns, big-endian)
	expiryAtBucket = []byte("_expiry_at") // deadline + bucket 0x00 key → nil
	metaID         = []byte("id")
	metaCreated    = []byte("created_at")
	metaRevision   = []byte("revision")
)

// Options tune Open.
type Options struct {
	Logger *zap.Logger
	// Init creates the store empty even when its marker says it existed (a
	// deliberate fresh start after losing the file).
	Init bool
	// Limits overrides store.DefaultLimits.
	Limits store.Limits
	// Now is the clock for expiry (default time.Now).
	Now func() time.Time
	// SweepEvery is how often expired keys are deleted (default 1 s).
	SweepEvery time.Duration
	// WatchHistory is how many commits a watch can resume from (default 4096).
	WatchHistory int
	// WatchHistoryBytes bounds the memory those commits' keys and values
	// take (default 2 MiB); the oldest are compacted first.
	WatchHistoryBytes int
}

// DB is one service's bbolt store. It implements store.Backend and store.Faults.
type DB struct {
	db     *bolt.DB
	lg     *zap.Logger
	name   string
	info   store.Info
	limits store.Limits
	now    func() time.Time

	hasExpiry atomic.Bool // any key was ever put with an expiry: reads check _expiry

	mu       sync.Mutex
	pending  []*call
	closed   bool
	fault    func() error
	loseRepl bool
	kick     chan struct{} // wakes the committer; buffered 1
	done     chan struct{} // closed when the committer exits
	stop     chan struct{} // closed by Close: ends the sweeper and watches

	hist watchHistory
}

var (
	_ store.Backend   = (*DB)(nil)
	_ store.Faults    = (*DB)(nil)
	_ store.Discarder = (*DB)(nil)
)

type call struct {
	fn     func(store.WriteTx) error
	done   chan error
	queued time.Time
}

// Dir returns a store.Opener that keeps each store in dir/<name>.db.
// initStores names stores that Options.Init applies to.
func Dir(dir string, lg *zap.Logger, initStores ...string) store.Opener {
	return func(name string, buckets []store.Bucket) (store.Backend, error) {
		opts := Options{Logger: lg}
		for _, n := range initStores {
			if n == name {
				opts.Init = true
			}
		}
		return Open(filepath.Join(dir, name+".db"), buckets, opts)
	}
}

// MarkerPath is the marker file that records that the store at path exists.
func MarkerPath(path string) string { return path + ".id" }

// Open opens the bbolt file at path, creating it (mode 0600) only when
// neither it nor its marker exists. A missing file whose marker exists, an
// empty file, a damaged or truncated file, or a file whose id differs from its
// marker's stops the open with an error that names the file and what to do.
func Open(path string, buckets []store.Bucket, opts Options) (*DB, error) {
	lg := opts.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Limits == (store.Limits{}) {
		opts.Limits = store.DefaultLimits
	}
	if opts.SweepEvery <= 0 {
		opts.SweepEvery = time.Second
	}
	if opts.WatchHistory <= 0 {
		opts.WatchHistory = 4096
	}
	if opts.WatchHistoryBytes <= 0 {
		opts.WatchHistoryBytes = 2 << 20
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	marker, err := readMarker(path)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if marker != "" && !opts.Init {
			return nil, fmt.Errorf("store %s is missing, but %s shows that it existed: restore it from a backup (backlogd restore), or start with -init-store=%s to begin with an empty store on purpose",
				path, MarkerPath(path), storeName(path))
		}
	case err != nil:
		return nil, fmt.Errorf("store %s: %w", path, err)
	case st.Size() == 0:
		if !opts.Init {
			return nil, fmt.Errorf("store %s is empty (0 bytes): restore it from a backup (backlogd restore), or start with -init-store=%s to begin with an empty store on purpose",
				path, storeName(path))
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	default:
		if err := checkHeader(path); err != nil {
			return nil, fmt.Errorf("store %s is %v: restore it from a backup (backlogd restore)", path, err)
		}
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another process holds it open", path)
		}
		return nil, fmt.Errorf("open %s: %w: restore it from a backup (backlogd restore)", path, err)
	}
	d := &DB{
		db: bdb, lg: lg, name: path, limits: opts.Limits, now: opts.Now,
		kick: make(chan struct{}, 1), done: make(chan struct{}), stop: make(chan struct{}),
	}
	if err := d.init(buckets, marker, opts.Init); err != nil {
		bdb.Close()
		return nil, err
	}
	d.hist.init(opts.WatchHistory, opts.WatchHistoryBytes, d.revision())
	go d.committer()
	go d.sweeper(opts.SweepEvery)
	return d, nil
}

func storeName(path string) string { return strings.TrimSuffix(filepath.Base(path), ".db") }

func readMarker(path string) (string, error) {
	b, err := os.ReadFile(MarkerPath(path))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", MarkerPath(path), err)
	}
	return strings.TrimSpace(string(b)), nil
}

// init creates the buckets, gives a new store its id and creation time, and
// checks the id against the marker (writing the marker when there is none).
func (d *DB) init(buckets []store.Bucket, marker string, force bool) error {
	var id string
	var created time.Time
	fresh := false
	err := d.db.Update(func(tx *bolt.Tx) error {
		for _, b := range append([]store.Bucket{metaBucket, expiryBucket, expiryAtBucket, store.RequestsBucket, store.LeaderBucket}, buckets...) {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("bucket %s: %w", b, err)
			}
		}
		meta := tx.Bucket(metaBucket)
		if meta.Get(metaRevision) == nil {
			// Revisions start at 1, so that 0 can mean "from now" in Watch.
			if _, err := bumpRevision(tx); err != nil {
				return err
			}
		}
		if v := meta.Get(metaID); v != nil {
			id = string(v)
			if t := meta.Get(metaCreated); len(t) == 8 {
				created = time.Unix(0, int64(binary.BigEndian.Uint64(t))).UTC()
			}
			return nil
		}
		// A store without an id: new, or written before stores had ids. Only
		// a store whose buckets hold nothing counts as new.
		fresh = true
		for _, b := range buckets {
			if k, _ := tx.Bucket(b).Cursor().First(); k != nil {
				fresh = false
				break
			}
		}
		var raw [16]byte
		rand.Read(raw[:])
		id = hex.EncodeToString(raw[:])
		if fresh {
			created = d.now().UTC()
		} // else: created long ago, at an unknown time (zero)
		if err := meta.Put(metaID, []byte(id)); err != nil {
			return err
		}
		var t [8]byte
		if !created.IsZero() {
			binary.BigEndian.PutUint64(t[:], uint64(created.UnixNano()))
		}
		return meta.Put(metaCreated, t[:])
	})
	if err != nil {
		return fmt.Errorf("open %s: %w", d.name, err)
	}
	d.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(expiryBucket).Cursor().First(); k != nil {
			d.hasExpiry.Store(true)
		}
		return nil
	})
	if marker != "" && marker != id && !force {
		return fmt.Errorf("store %s has id %s but %s says %s: the file belongs to another deployment; restore this store's own backup, or start with -init-store=%s",
			d.name, id, MarkerPath(d.name), marker, storeName(d.name))
	}
	if marker != id {
		if err := writeFileSync(MarkerPath(d.name), []byte(id+"\n")); err != nil {
			return fmt.Errorf("write %s: %w", MarkerPath(d.name), err)
		}
	}
	d.info = store.Info{Name: d.name, Engine: "bbolt", ID: id, CreatedAt: created, Created: fresh, Reinit: fresh && force}
	return nil
}

// Discard implements store.Discarder: it closes the store and, when this
// open created it, removes the file and its marker.
func (d *DB) Discard() error {
	err := d.Close()
	if !d.info.Created {
		return err
	}
	if rerr := os.Remove(d.name); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return rerr
	}
	if rerr := os.Remove(MarkerPath(d.name)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return rerr
	}
	return err
}

func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// Info implements store.Backend.
func (d *DB) Info() store.Info { return d.info }

// Limits implements store.Backend.
func (d *DB) Limits() store.Limits { return d.limits }

// Path is the file the store lives in.
func (d *DB) Path() string { return d.name }

func (d *DB) revision() int64 {
	var rev int64
	d.db.View(func(tx *bolt.Tx) error {
		rev = readRevision(tx)
		return nil
	})
	return rev
}

func readRevision(tx *bolt.Tx) int64 {
	if v := tx.Bucket(metaBucket).Get(metaRevision); len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

// Close waits for pending writes and closes the file.
func (d *DB) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.stop)
	d.mu.Unlock()
	d.wake()
	<-d.done
	d.hist.close()
	return d.db.Close()
}

func (d *DB) wake() {
	select {
	case d.kick <- struct{}{}:
	default: // already awake or about to be
	}
}

// SetFault implements store.Faults.
func (d *DB) SetFault(f func() error) {
	d.mu.Lock()
	d.fault = f
	d.mu.Unlock()
}

// SetLoseReply implements store.Faults.
func (d *DB) SetLoseReply(on bool) {
	d.mu.Lock()
	d.loseRepl = on
	d.mu.Unlock()
}

// View implements store.Backend.
func (d *DB) View(ctx context.Context, fn func(store.ReadTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.db.View(func(tx *bolt.Tx) error {
		return fn(&readTx{tx: tx, d: d, now: d.now()})
	})
}

// Update implements store.Backend: concurrent calls are grouped into one
// transaction and one fsync.
func (d *DB) Update(ctx context.Context, fn func(store.WriteTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := &call{fn: fn, done: make(chan error, 1), queued: time.Now()}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("%w: %w", store.ErrUnavailable, store.ErrClosed)
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
			batch, fault, lose, closed := d.pending, d.fault, d.loseRepl, d.closed
			d.pending = nil
			d.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					return
				}
				break
			}
			d.commit(batch, fault, lose)
		}
	}
}

// fnError marks an error returned by a caller's function (not by the commit).
type fnError struct {
	idx int
	err error
}

func (e *fnError) Error() string { return e.err.Error() }

func (d *DB) commit(batch []*call, fault func() error, lose bool) {
	// Functions that failed wait for the rest of their group: their error
	// may rest on the writes of those before them (ErrExists, say), which
	// must be committed — and visible to the caller's next read — before
	// the error is. If that commit fails, so do they: what they saw never
	// happened.
	type failed struct {
		c   *call
		err error
	}
	var fails []failed
	defer func() {
		for _, f := range fails {
			f.c.done <- f.err
		}
	}()
	for len(batch) > 0 {
		var changes []store.Change
		var rev int64
		now := d.now()
		err := d.db.Update(func(tx *bolt.Tx) error {
			changes = changes[:0]
			for i, c := range batch {
				w := &writeTx{readTx: readTx{tx: tx, d: d, now: now}}
				if err := safeCall(c.fn, w); err != nil {
					return &fnError{i, err}
				}
				if w.tooLarge != nil {
					return &fnError{i, w.tooLarge}
				}
				changes = append(changes, w.changes...)
			}
			if fault != nil {
				if err := fault(); err != nil {
					return err
				}
			}
			var err error
			rev, err = bumpRevision(tx)
			return err
		})
		var fe *fnError
		if errors.As(err, &fe) {
			// That function fails on the state the others before it left: a
			// valid serial order. Retry the rest without it; its error is
			// reported once they are committed.
			fails = append(fails, failed{batch[fe.idx], fe.err})
			batch = append(batch[:fe.idx:fe.idx], batch[fe.idx+1:]...)
			continue
		}
		name := filepath.Base(d.name)
		metrics.StoreBatchSize.WithLabelValues(name).Observe(float64(len(batch)))
		t := time.Now()
		for _, c := range batch {
			metrics.StoreCommitSeconds.WithLabelValues(name).Observe(t.Sub(c.queued).Seconds())
		}
		if err != nil {
			d.lg.Error("store commit failed", zap.String("path", d.name), zap.Int("batch", len(batch)), zap.Error(err))
			err = fmt.Errorf("%w: commit failed", store.ErrUnavailable)
			for i := range fails {
				fails[i].err = err
			}
		} else {
			d.hist.add(rev, changes)
			if lose {
				err = fmt.Errorf("%w: reply lost (fault injection)", store.ErrOutcomeUnknown)
			}
		}
		for _, c := range batch {
			c.done <- err
		}
		return
	}
}

func bumpRevision(tx *bolt.Tx) (int64, error) {
	rev := readRevision(tx) + 1
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(rev))
	return rev, tx.Bucket(metaBucket).Put(metaRevision, b[:])
}

func safeCall(fn func(store.WriteTx) error, tx store.WriteTx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in store transaction: %v", r)
		}
	}()
	return fn(tx)
}

// readTx implements store.ReadTx over a bbolt transaction.
type readTx struct {
	tx  *bolt.Tx
	d   *DB
	now time.Time
	rev int64 // read lazily; 0 until then
}

func (r *readTx) bucket(b store.Bucket) (*bolt.Bucket, error) {
	bk := r.tx.Bucket(b)
	if bk == nil {
		return nil, fmt.Errorf("store %s: bucket %q is not in the schema", r.d.name, b)
	}
	return bk, nil
}

// expired reports whether key in bucket b carries an expiry that has passed.
func (r *readTx) expired(b store.Bucket, key []byte) bool {
	if !r.d.hasExpiry.Load() {
		return false
	}
	v := r.tx.Bucket(expiryBucket).Get(expiryKey(b, key))
	return len(v) == 8 && int64(binary.BigEndian.Uint64(v)) <= r.now.UnixNano()
}

func (r *readTx) Get(b store.Bucket, key []byte) ([]byte, error) {
	bk, err := r.bucket(b)
	if err != nil {
		return nil, err
	}
	k, v := bk.Cursor().Seek(key)
	if k == nil || !bytes.Equal(k, key) || r.expired(b, key) {
		return nil, nil
	}
	if v == nil {
		v = []byte{} // present, empty
	}
	return v, nil
}

func (r *readTx) Revision() int64 {
	if r.rev == 0 {
		r.rev = readRevision(r.tx)
	}
	return r.rev
}

func (r *readTx) Scan(b store.Bucket, opt store.ScanOptions, fn func(k, v []byte) (bool, error)) ([]byte, error) {
	bk, err := r.bucket(b)
	if err != nil {
		return nil, err
	}
	prefix := opt.Prefix
	if len(opt.After) > 0 && !bytes.HasPrefix(opt.After, prefix) {
		return nil, errors.New("store: scan cursor outside its prefix")
	}
	c := bk.Cursor()
	var k, v []byte
	next := c.Next
	switch {
	case !opt.Reverse && len(opt.After) > 0:
		k, v = c.Seek(opt.After)
		if k != nil && bytes.Equal(k, opt.After) {
			k, v = c.Next()
		}
	case !opt.Reverse:
		k, v = c.Seek(prefix)
	case len(opt.After) > 0:
		next = c.Prev
		if k, _ = c.Seek(opt.After); k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
	default:
		next = c.Prev
		if end := prefixEnd(prefix); end == nil {
			k, v = c.Last()
		} else if k, _ = c.Seek(end); k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
	}
	n := 0
	var last []byte
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = next() {
		if r.expired(b, k) {
			continue
		}
		if opt.Limit > 0 && n == opt.Limit {
			return last, nil
		}
		if v == nil {
			v = []byte{}
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

// prefixEnd is the first key after every key with prefix (nil: none).
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// writeTx implements store.WriteTx for one caller's function in a group.
type writeTx struct {
	readTx
	ops, bytes int
	tooLarge   error
	changes    []store.Change
}

func (w *writeTx) count(n int) error {
	w.ops++
	w.bytes += n
	if w.ops > w.d.limits.MaxOpsPerUpdate || w.bytes > w.d.limits.MaxUpdateBytes {
		if w.tooLarge == nil {
			w.tooLarge = fmt.Errorf("%w: more than %d operations or %d bytes in one update", store.ErrTooLarge, w.d.limits.MaxOpsPerUpdate, w.d.limits.MaxUpdateBytes)
		}
		return w.tooLarge
	}
	return nil
}

func (w *writeTx) Put(b store.Bucket, key, value []byte, opts ...store.PutOption) error {
	if bytes.HasPrefix(b, []byte("_")) && !store.Writable(b) {
		return fmt.Errorf("store: bucket %q is reserved", b)
	}
	bk, err := w.bucket(b)
	if err != nil {
		return err
	}
	if len(key) == 0 {
		return errors.New("store: empty key")
	}
	if len(value) > w.d.limits.MaxValueBytes {
		if w.tooLarge == nil {
			w.tooLarge = fmt.Errorf("%w: a value of %d bytes (at most %d)", store.ErrTooLarge, len(value), w.d.limits.MaxValueBytes)
		}
		return w.tooLarge
	}
	if err := w.count(len(key) + len(value)); err != nil {
		return err
	}
	o := store.PutOptionsOf(opts)
	if o.IfAbsent {
		if cur, err := w.Get(b, key); err != nil {
			return err
		} else if cur != nil {
			return store.ErrExists
		}
	}
	if err := bk.Put(key, value); err != nil {
		return err
	}
	if err := w.setExpiry(b, key, o.ExpiresAt); err != nil {
		return err
	}
	w.changes = append(w.changes, store.Change{Bucket: string(b), Key: clone(key), Value: clone(value)})
	return nil
}

func (w *writeTx) Delete(b store.Bucket, key []byte) error {
	bk, err := w.bucket(b)
	if err != nil {
		return err
	}
	if err := w.count(len(key)); err != nil {
		return err
	}
	if k, _ := bk.Cursor().Seek(key); k == nil || !bytes.Equal(k, key) {
		return nil
	}
	if err := bk.Delete(key); err != nil {
		return err
	}
	if err := w.setExpiry(b, key, time.Time{}); err != nil {
		return err
	}
	w.changes = append(w.changes, store.Change{Bucket: string(b), Key: clone(key), Delete: true})
	return nil
}

// setExpiry records (or, for a zero t, clears) key's deadline.
func (w *writeTx) setExpiry(b store.Bucket, key []byte, t time.Time) error {
	if t.IsZero() && !w.d.hasExpiry.Load() {
		return nil
	}
	ek := expiryKey(b, key)
	exp, at := w.tx.Bucket(expiryBucket), w.tx.Bucket(expiryAtBucket)
	if old := exp.Get(ek); len(old) == 8 {
		if err := at.Delete(append(append([]byte(nil), old...), ek...)); err != nil {
			return err
		}
		if err := exp.Delete(ek); err != nil {
			return err
		}
	}
	if t.IsZero() {
		return nil
	}
	w.d.hasExpiry.Store(true)
	var dl [8]byte
	binary.BigEndian.PutUint64(dl[:], uint64(t.UnixNano()))
	if err := exp.Put(ek, dl[:]); err != nil {
		return err
	}
	return at.Put(append(dl[:], ek...), nil)
}

func expiryKey(b store.Bucket, key []byte) []byte {
	k := make([]byte, 0, len(b)+1+len(key))
	k = append(k, b...)
	k = append(k, 0)
	return append(k, key...)
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// sweeper deletes expired keys, so that a watch reports their deletion and
// the file does not keep them.
func (d *DB) sweeper(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		if !d.hasExpiry.Load() {
			continue
		}
		due := false
		now := d.now().UnixNano()
		d.db.View(func(tx *bolt.Tx) error {
			k, _ := tx.Bucket(expiryAtBucket).Cursor().First()
			due = len(k) >= 8 && int64(binary.BigEndian.Uint64(k)) <= now
			return nil
		})
		if !due {
			continue
		}
		err := d.Update(context.Background(), func(tx store.WriteTx) error {
			w := tx.(*writeTx)
			c := w.tx.Bucket(expiryAtBucket).Cursor()
			var expired [][]byte
			for k, _ := c.First(); len(k) >= 8 && int64(binary.BigEndian.Uint64(k)) <= now && len(expired) < 1000; k, _ = c.Next() {
				expired = append(expired, clone(k[8:]))
			}
			for _, ek := range expired {
				i := bytes.IndexByte(ek, 0)
				b, key := store.Bucket(ek[:i]), ek[i+1:]
				if bk := w.tx.Bucket(b); bk != nil {
					if err := bk.Delete(key); err != nil {
						return err
					}
					if !bytes.HasPrefix(b, []byte("_")) {
						w.changes = append(w.changes, store.Change{Bucket: string(b), Key: clone(key), Delete: true})
					}
				}
				if err := w.setExpiry(b, key, time.Time{}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrClosed) {
			d.lg.Warn("store expiry sweep failed", zap.String("path", d.name), zap.Error(err))
		}
	}
}

// Snapshot implements store.Backend with bbolt's own consistent copy.
func (d *DB) Snapshot(ctx context.Context) (store.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tx, err := d.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", store.ErrUnavailable, err)
	}
	return &snapshot{tx: tx, size: tx.Size()}, nil
}

type snapshot struct {
	tx   *bolt.Tx
	size int64
}

func (s *snapshot) Size() int64                        { return s.size }
func (s *snapshot) WriteTo(w io.Writer) (int64, error) { return s.tx.WriteTo(w) }
func (s *snapshot) Close() error                       { return s.tx.Rollback() }
