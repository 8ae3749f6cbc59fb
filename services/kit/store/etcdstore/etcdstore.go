package etcdstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/kit/store"
)

// Options tune Open.
type Options struct {
	Logger *zap.Logger
	// Init creates the store empty on purpose where the marker in MarkerDir
	// shows that one existed (-init-store).
	Init bool
	// MarkerDir keeps <name>.etcd.id, the id of the store this data dir last
	// opened, so that a prefix that turns up empty (wrong -etcd-prefix, lost
	// etcd data) stops start-up instead of starting empty. "" keeps none.
	MarkerDir string
	// Fingerprint identifies the deployment (a digest of its shared keys): a
	// prefix that holds another deployment's data is refused.
	Fingerprint string
	Limits      store.Limits
	Now         func() time.Time
	// MaxAttempts bounds how often an Update runs fn after losing to
	// concurrent writers (default 64).
	MaxAttempts int
}

// DB is one service's store in etcd.
type DB struct {
	cli         *clientv3.Client
	lg          *zap.Logger
	prefix      string // the deployment's prefix
	base        string // <prefix>/<name>/
	data        string // base + "d/"
	name        string
	buckets     []store.Bucket
	known       map[string]bool
	limits      store.Limits
	now         func() time.Time
	maxAttempts int
	info        store.Info
	marker      string // marker file path, "" when none

	serial   sync.Mutex   // held by updates taking turns: see Update
	hotUntil atomic.Int64 // unix ns until which updates take turns
	fault    atomic.Pointer[func() error]
	lose     atomic.Bool
	closed   atomic.Bool
	leases   leaseCache
}

var (
	_ store.Backend   = (*DB)(nil)
	_ store.Faults    = (*DB)(nil)
	_ store.Discarder = (*DB)(nil)
)

type storeMeta struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"createdAt"`
}

type deploymentMeta struct {
	ID          string    `json:"id"`
	Fingerprint string    `json:"fingerprint"`
	CreatedAt   time.Time `json:"createdAt"`
}

// MarkerPath is the marker file for the store called name in dir.
func MarkerPath(dir, name string) string { return filepath.Join(dir, name+".etcd.id") }

// CleanPrefix checks an -etcd-prefix and returns it without a trailing slash.
func CleanPrefix(prefix string) (string, error) {
	p := strings.TrimRight(prefix, "/")
	if !strings.HasPrefix(p, "/") || p == "" || strings.Contains(p, "//") || strings.ContainsAny(p, "\x00\n") {
		return "", fmt.Errorf("etcd prefix %q: want an absolute key path such as /backlog", prefix)
	}
	return p, nil
}

// Open opens (creating when new) the store called name under prefix.
func Open(ctx context.Context, cli *clientv3.Client, prefix, name string, buckets []store.Bucket, opts Options) (*DB, error) {
	p, err := CleanPrefix(prefix)
	if err != nil {
		return nil, err
	}
	if name == "" || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("etcd store name %q: want a plain name", name)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Limits == (store.Limits{}) {
		opts.Limits = store.DefaultLimits
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 64
	}
	d := &DB{
		cli: cli, lg: opts.Logger, prefix: p, name: name,
		base: p + "/" + name + "/", limits: opts.Limits, now: opts.Now,
		maxAttempts: opts.MaxAttempts, known: map[string]bool{string(store.RequestsBucket): true, string(store.LeaderBucket): true},
	}
	d.data = d.base + "d/"
	d.leases.m = map[int64]leaseEntry{}
	for _, b := range buckets {
		if len(b) == 0 || bytes.ContainsAny(b, "/\x00") {
			return nil, fmt.Errorf("etcd store %s: bucket name %q must be non-empty without '/'", d.Name(), b)
		}
		d.known[string(b)] = true
	}
	for b := range d.known {
		d.buckets = append(d.buckets, store.Bucket(b))
	}
	sort.Slice(d.buckets, func(i, j int) bool { return bytes.Compare(d.buckets[i], d.buckets[j]) < 0 })
	if opts.MarkerDir != "" {
		d.marker = MarkerPath(opts.MarkerDir, name)
	}
	if err := d.checkDeployment(ctx, opts.Fingerprint); err != nil {
		return nil, err
	}
	if err := d.openMeta(ctx, opts.Init); err != nil {
		return nil, err
	}
	return d, nil
}

// Name is what messages call the store: its etcd prefix.
func (d *DB) Name() string { return "etcd:" + strings.TrimSuffix(d.base, "/") }

// checkDeployment refuses a prefix that lies inside another deployment's,
// that holds another deployment (its fingerprint differs), or that holds
// keys that are no deployment's; it claims an empty prefix.
func (d *DB) checkDeployment(ctx context.Context, fingerprint string) error {
	parts := strings.Split(strings.TrimPrefix(d.prefix, "/"), "/")
	for i := 1; i < len(parts); i++ {
		anc := "/" + strings.Join(parts[:i], "/")
		resp, err := d.cli.Get(ctx, anc+"/deployment", clientv3.WithKeysOnly())
		if err != nil {
			return d.dialErr(err)
		}
		if len(resp.Kvs) > 0 {
			return fmt.Errorf("etcd prefix %s lies inside the Backlog deployment at %s: choose a prefix of its own (-etcd-prefix)", d.prefix, anc)
		}
	}
	key := d.prefix + "/deployment"
	for {
		resp, err := d.cli.Get(ctx, key)
		if err != nil {
			return d.dialErr(err)
		}
		if len(resp.Kvs) > 0 {
			var m deploymentMeta
			if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
				return fmt.Errorf("etcd key %s is not a Backlog deployment record (%v): the prefix holds other data; choose another -etcd-prefix", key, err)
			}
			if fingerprint != "" && m.Fingerprint != "" && m.Fingerprint != fingerprint {
				return fmt.Errorf("etcd prefix %s belongs to another Backlog deployment (deployment %s, made with other keys than this process's -service-token-file): choose this deployment's own -etcd-prefix", d.prefix, m.ID)
			}
			return nil
		}
		other, err := d.cli.Get(ctx, d.prefix+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
		if err != nil {
			return d.dialErr(err)
		}
		if len(other.Kvs) > 0 {
			return fmt.Errorf("etcd prefix %s holds keys that are not a Backlog deployment's (e.g. %q): choose an empty -etcd-prefix", d.prefix, other.Kvs[0].Key)
		}
		v, _ := json.Marshal(deploymentMeta{ID: newID(), Fingerprint: fingerprint, CreatedAt: d.now().UTC()})
		if _, err := d.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(v))).Commit(); err != nil {
			return d.dialErr(err)
		}
		// Read it back: another replica may have claimed it first.
	}
}

func (d *DB) openMeta(ctx context.Context, force bool) error {
	marker := ""
	if d.marker != "" {
		b, err := os.ReadFile(d.marker)
		switch {
		case err == nil:
			marker = strings.TrimSpace(string(b))
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("read %s: %w", d.marker, err)
		}
	}
	key := d.base + "meta"
	var m storeMeta
	created := false
	for {
		resp, err := d.cli.Get(ctx, key)
		if err != nil {
			return d.dialErr(err)
		}
		if len(resp.Kvs) > 0 {
			if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.ID == "" {
				return fmt.Errorf("etcd store %s: its meta record is damaged: restore it from a backup (backlogd restore)", d.Name())
			}
			break
		}
		if marker != "" && !force {
			return fmt.Errorf("etcd store %s is missing (no keys), but %s shows that store %s was there: check -etcd-prefix and -etcd-endpoints; if the data was lost, restore it from a backup (backlogd restore), or start with -init-store=%s to begin with an empty store on purpose",
				d.Name(), d.marker, marker, d.name)
		}
		m = storeMeta{ID: newID(), CreatedAt: d.now().UTC()}
		v, _ := json.Marshal(m)
		tr, err := d.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(v))).Commit()
		if err != nil {
			return d.dialErr(err)
		}
		if tr.Succeeded {
			created = true
			break
		}
	}
	if marker != "" && marker != m.ID && !force {
		return fmt.Errorf("etcd store %s has id %s but %s says %s: -etcd-prefix points at another deployment's store, or the store was replaced; check -etcd-prefix, or start with -init-store=%s to accept this store",
			d.Name(), m.ID, d.marker, marker, d.name)
	}
	if d.marker != "" && marker != m.ID {
		if err := os.MkdirAll(filepath.Dir(d.marker), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(d.marker, []byte(m.ID+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", d.marker, err)
		}
	}
	d.info = store.Info{Name: d.Name(), Engine: "etcd", ID: m.ID, CreatedAt: m.CreatedAt, Created: created, Reinit: created && force && marker != ""}
	return nil
}

func newID() string {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(raw[:])
}

// Info implements store.Backend.
func (d *DB) Info() store.Info { return d.info }

// Limits implements store.Backend.
func (d *DB) Limits() store.Limits { return d.limits }

// Close implements store.Backend. The client is the caller's to close.
func (d *DB) Close() error {
	d.closed.Store(true)
	return nil
}

// Discard implements store.Discarder: a store this open created is removed
// again, so that the next start finds it missing as before.
func (d *DB) Discard() error {
	d.closed.Store(true)
	if !d.info.Created {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := d.cli.Delete(ctx, d.base, clientv3.WithPrefix()); err != nil {
		return d.dialErr(err)
	}
	if d.marker != "" {
		os.Remove(d.marker)
	}
	return nil
}

// SetFault implements store.Faults.
func (d *DB) SetFault(f func() error) {
	if f == nil {
		d.fault.Store(nil)
		return
	}
	d.fault.Store(&f)
}

// SetLoseReply implements store.Faults.
func (d *DB) SetLoseReply(on bool) { d.lose.Store(on) }

// Compact implements store.Faults by compacting the cluster's history.
func (d *DB) Compact(rev int64) error {
	_, err := d.cli.Compact(context.Background(), rev, clientv3.WithCompactPhysical())
	return err
}

// Ping reads from the cluster with a leader: nil when the store can serve.
func (d *DB) Ping(ctx context.Context) error {
	if _, err := d.cli.Get(clientv3.WithRequireLeader(ctx), d.base+"meta", clientv3.WithKeysOnly()); err != nil {
		return d.readErr(err)
	}
	return nil
}

func (d *DB) dataKey(b store.Bucket, key []byte) string {
	return d.data + string(b) + "/" + string(key)
}

func (d *DB) guardKey(b string) string { return d.base + "g/" + b }

// split turns an etcd data key back into bucket and key.
func (d *DB) split(k []byte) (string, []byte, bool) {
	rest, ok := bytes.CutPrefix(k, []byte(d.data))
	if !ok {
		return "", nil, false
	}
	i := bytes.IndexByte(rest, '/')
	if i <= 0 {
		return "", nil, false
	}
	return string(rest[:i]), rest[i+1:], true
}

func (d *DB) bucket(b store.Bucket) error {
	if !d.known[string(b)] {
		return fmt.Errorf("store %s: bucket %q is not in the schema", d.Name(), b)
	}
	return nil
}

// errConflict: the Txn's guards failed; fn runs again.
var errConflict = errors.New("etcd transaction conflict")

// errStale: a read inside an Update hit a compacted revision; fn runs again.
var errStale = errors.New("etcd read revision compacted")

// dialErr describes a failure to reach the cluster at start-up.
func (d *DB) dialErr(err error) error {
	return fmt.Errorf("etcd at %s: %w (is the cluster running and reachable? check -etcd-endpoints and the TLS files)", strings.Join(d.cli.Endpoints(), ","), err)
}

// readErr maps a read's error to the seam's.
func (d *DB) readErr(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%w: %w", errStale, err)
	case errors.Is(err, rpctypes.ErrNoLeader):
		return fmt.Errorf("%w: etcd has no leader (a quorum of members is down or cut off)", store.ErrUnavailable)
	}
	return fmt.Errorf("%w: etcd: %w", store.ErrUnavailable, err)
}

// txnErr maps a commit's error to the seam's: refusals that certainly
// applied nothing are ErrUnavailable or ErrTooLarge; anything that may have
// reached the cluster is ErrOutcomeUnknown.
func (d *DB) txnErr(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrTooManyOps), errors.Is(err, rpctypes.ErrRequestTooLarge), errors.Is(err, rpctypes.ErrDuplicateKey):
		return fmt.Errorf("%w: etcd refused the update: %v", store.ErrTooLarge, err)
	case errors.Is(err, rpctypes.ErrNoSpace):
		return fmt.Errorf("%w: etcd is out of space (its quota is exceeded: compact, defragment and disarm the NOSPACE alarm): %v", store.ErrUnavailable, err)
	case errors.Is(err, rpctypes.ErrNoLeader):
		return fmt.Errorf("%w: etcd has no leader: %v", store.ErrUnavailable, err)
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return errConflict // the lease expired under us: take a new one
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition, codes.ResourceExhausted:
			return fmt.Errorf("%w: etcd refused the update: %v", store.ErrUnavailable, err)
		}
	}
	return fmt.Errorf("%w: %w", store.ErrOutcomeUnknown, err)
}

// View implements store.Backend.
func (d *DB) View(ctx context.Context, fn func(store.ReadTx) error) error {
	if d.closed.Load() {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, store.ErrClosed)
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	r := &readTx{d: d, ctx: ctx}
	return safeCall(func() error { return fn(r) })
}

// Update implements store.Backend.
func (d *DB) Update(ctx context.Context, fn func(store.WriteTx) error) error {
	if d.closed.Load() {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, store.ErrClosed)
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	for attempt := 1; ; attempt++ {
		// The first attempt runs in parallel with everything else; a retry
		// runs alone among this process's retries, so that writers of one
		// hot key (an audit chain head, a counter) take turns here instead
		// of failing against each other in etcd. What still conflicts then
		// comes from other replicas: back off before trying again.
		serial := attempt > 1 || time.Now().UnixNano() < d.hotUntil.Load()
		if serial {
			d.serial.Lock()
		}
		w := &writeTx{readTx: readTx{d: d, ctx: ctx, track: true}, writes: map[string]*write{}}
		err := safeCall(func() error { return fn(w) })
		if err == nil && w.tooLarge != nil {
			err = w.tooLarge
		}
		if err == nil {
			err = d.commit(ctx, w)
		}
		if serial {
			d.serial.Unlock()
		}
		if !errors.Is(err, errConflict) && !errors.Is(err, errStale) {
			return err
		}
		// While this store's updates conflict, every update takes its turn
		// from the first attempt: parallel first attempts would only keep
		// invalidating the one whose turn it is.
		d.hotUntil.Store(time.Now().Add(hotFor).UnixNano())
		if attempt >= d.maxAttempts {
			return fmt.Errorf("%w: the update lost to concurrent writers %d times", store.ErrUnavailable, attempt)
		}
		if attempt > 1 {
			if err := sleep(ctx, backoff(attempt-1)); err != nil {
				return err
			}
		}
	}
}

// hotFor is how long updates take turns after a conflict.
const hotFor = time.Second

// OpTimeout bounds a transaction whose context has no deadline: with the
// cluster unreachable a caller gets ErrUnavailable (or ErrOutcomeUnknown)
// instead of waiting for ever.
const OpTimeout = 10 * time.Second

// bound requires a leader for every call of a transaction (a member cut
// off from its quorum answers "no leader" at once instead of blocking) and
// applies OpTimeout when ctx has no deadline.
func (d *DB) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = clientv3.WithRequireLeader(ctx)
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, OpTimeout)
}

// backoff is a jittered, growing pause before attempt+1.
func backoff(attempt int) time.Duration {
	max := time.Millisecond << min(attempt, 7) // 2 ms … 128 ms
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(max)))
	return max/4 + time.Duration(n.Int64())*3/4
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func safeCall(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store: transaction panicked: %v", p)
		}
	}()
	return fn()
}

// maxCompares: beyond this many guards, a Txn guards whole buckets instead.
const maxCompares = 100

func (d *DB) commit(ctx context.Context, w *writeTx) error {
	if len(w.writes) == 0 {
		return nil
	}
	cmps := w.compares()
	// In the order of the transaction's calls: a watch reports them so.
	ops := make([]clientv3.Op, 0, len(w.order)+len(w.deleted))
	for _, k := range w.order {
		wr := w.writes[k]
		if wr.del {
			ops = append(ops, clientv3.OpDelete(k))
			continue
		}
		var opts []clientv3.OpOption
		if !wr.exp.IsZero() {
			id, err := d.leaseFor(ctx, wr.exp)
			if err != nil {
				return err
			}
			opts = append(opts, clientv3.WithLease(id))
		}
		ops = append(ops, clientv3.OpPut(k, string(wr.val), opts...))
	}
	for _, b := range sortedKeys(w.deleted) {
		ops = append(ops, clientv3.OpPut(d.guardKey(b), ""))
	}
	if f := d.fault.Load(); f != nil {
		if err := (*f)(); err != nil {
			return fmt.Errorf("%w: commit failed: %v", store.ErrUnavailable, err)
		}
	}
	resp, err := d.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		err = d.txnErr(err)
		if errors.Is(err, errConflict) {
			d.leases.drop()
		}
		return err
	}
	if !resp.Succeeded {
		return errConflict
	}
	if d.lose.Load() {
		return fmt.Errorf("%w: reply lost (fault injection)", store.ErrOutcomeUnknown)
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// leaseCache holds one lease per expiry moment.
type leaseCache struct {
	mu sync.Mutex
	m  map[int64]leaseEntry
}

type leaseEntry struct {
	id clientv3.LeaseID
	at time.Time
}

func (c *leaseCache) drop() {
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

// expiryGrain rounds expiries up so that keys expiring close together
// share a lease: to the second within 10 minutes, the minute within a day.
func expiryGrain(ttl time.Duration) time.Duration {
	switch {
	case ttl <= 10*time.Minute:
		return time.Second
	case ttl <= 25*time.Hour:
		return time.Minute
	}
	return time.Hour
}

func (d *DB) leaseFor(ctx context.Context, t time.Time) (clientv3.LeaseID, error) {
	now := d.now()
	g := expiryGrain(t.Sub(now))
	at := t.Truncate(g)
	if at.Before(t) {
		at = at.Add(g)
	}
	c := &d.leases
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[at.Unix()]; ok {
		return e.id, nil
	}
	ttl := int64((at.Sub(now) + time.Second - 1) / time.Second)
	if ttl < 1 {
		ttl = 1
	}
	resp, err := d.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("%w: etcd lease: %v", store.ErrUnavailable, err)
	}
	for k, e := range c.m {
		if e.at.Before(now) {
			delete(c.m, k)
		}
	}
	c.m[at.Unix()] = leaseEntry{id: resp.ID, at: at}
	return resp.ID, nil
}

// readTx reads at one revision, fixed by its first read.
type readTx struct {
	d     *DB
	ctx   context.Context
	rev   int64
	track bool // record what was read (Update only)

	points  map[string]int64 // key → ModRevision seen (0: absent)
	ranges  []keyRange
	scanned map[string]bool // buckets scanned
}

type keyRange struct {
	bucket   string
	from, to string // [from, to)
}

func (r *readTx) pin(hdrRev int64) {
	if r.rev == 0 {
		r.rev = hdrRev
	}
}

func (r *readTx) opts(extra ...clientv3.OpOption) []clientv3.OpOption {
	if r.rev != 0 {
		extra = append(extra, clientv3.WithRev(r.rev))
	}
	return extra
}

// get reads at the transaction's revision. The first read is linearizable
// and fixes the revision; later reads of that revision are served by the
// member the client talks to (serializable: no round through the leader),
// unless that member has not applied the revision yet.
func (r *readTx) get(key string, extra ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if r.rev != 0 {
		resp, err := r.d.cli.Get(r.ctx, key, append(r.opts(extra...), clientv3.WithSerializable())...)
		if !errors.Is(err, rpctypes.ErrFutureRev) {
			return resp, err
		}
	}
	return r.d.cli.Get(r.ctx, key, r.opts(extra...)...)
}

// Revision implements store.ReadTx.
func (r *readTx) Revision() int64 {
	if r.rev == 0 {
		if resp, err := r.d.cli.Get(r.ctx, r.d.base+"meta", clientv3.WithKeysOnly()); err == nil {
			r.rev = resp.Header.Revision
		}
	}
	return r.rev
}

func (r *readTx) fetch(key string) ([]byte, error) {
	if r.track {
		if _, seen := r.points[key]; seen {
			// Read again at the same revision below; the guard is already set.
		}
	}
	resp, err := r.get(key)
	if err != nil {
		return nil, r.d.readErr(err)
	}
	r.pin(resp.Header.Revision)
	var v []byte
	var mod int64
	if len(resp.Kvs) > 0 {
		v, mod = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
		if v == nil {
			v = []byte{}
		}
	}
	if r.track {
		if r.points == nil {
			r.points = map[string]int64{}
		}
		r.points[key] = mod
	}
	return v, nil
}

// Get implements store.ReadTx.
func (r *readTx) Get(b store.Bucket, key []byte) ([]byte, error) {
	if err := r.d.bucket(b); err != nil {
		return nil, err
	}
	return r.fetch(r.d.dataKey(b, key))
}

// entry is one key of a scan, from etcd or from the transaction's writes.
type entry struct {
	key string
	val []byte
	del bool
}

// Scan implements store.ReadTx.
func (r *readTx) Scan(b store.Bucket, opt store.ScanOptions, fn func(k, v []byte) (bool, error)) ([]byte, error) {
	return r.scan(b, opt, nil, fn)
}

func (r *readTx) scan(b store.Bucket, opt store.ScanOptions, overlay []entry, fn func(k, v []byte) (bool, error)) ([]byte, error) {
	if err := r.d.bucket(b); err != nil {
		return nil, err
	}
	if len(opt.After) > 0 && !bytes.HasPrefix(opt.After, opt.Prefix) {
		return nil, errors.New("store: scan cursor outside its prefix")
	}
	bucketPrefix := r.d.dataKey(b, nil)
	lo := r.d.dataKey(b, opt.Prefix)
	hi := string(prefixEnd([]byte(lo)))
	switch {
	case len(opt.After) > 0 && !opt.Reverse:
		lo = r.d.dataKey(b, opt.After) + "\x00"
	case len(opt.After) > 0:
		hi = r.d.dataKey(b, opt.After)
	}
	// Overlay entries in range, in scan order.
	var ov []entry
	for _, e := range overlay {
		if e.key >= lo && e.key < hi {
			ov = append(ov, e)
		}
	}
	sort.Slice(ov, func(i, j int) bool { return (ov[i].key < ov[j].key) != opt.Reverse })

	page := 256
	if opt.Limit > 0 && opt.Limit+1 < page {
		page = opt.Limit + 1
	}
	cur := &etcdPager{r: r, lo: lo, hi: hi, reverse: opt.Reverse, page: int64(page)}
	covered := "" // the last key examined: the guard covers up to it
	done := false
	defer func() {
		if !r.track {
			return
		}
		from, to := lo, hi
		if !done && covered != "" {
			if opt.Reverse {
				from = covered
			} else {
				to = covered + "\x00"
			}
		}
		r.ranges = append(r.ranges, keyRange{bucket: string(b), from: from, to: to})
		if r.scanned == nil {
			r.scanned = map[string]bool{}
		}
		r.scanned[string(b)] = true
	}()
	n := 0
	var last []byte
	oi := 0
	for {
		ek, err := cur.peek()
		if err != nil {
			return nil, err
		}
		var e entry
		switch {
		case ek == nil && oi == len(ov):
			done = true
			return nil, nil
		case ek == nil:
			e = ov[oi]
			oi++
		case oi == len(ov):
			e = *ek
			cur.next()
		default:
			o := ov[oi]
			switch {
			case o.key == ek.key:
				e = o
				oi++
				cur.next()
			case (o.key < ek.key) != opt.Reverse:
				e = o
				oi++
			default:
				e = *ek
				cur.next()
			}
		}
		covered = e.key
		if e.del {
			continue
		}
		if opt.Limit > 0 && n == opt.Limit {
			return last, nil
		}
		k := []byte(strings.TrimPrefix(e.key, bucketPrefix))
		ok, err := fn(k, e.val)
		if err != nil {
			return nil, err
		}
		if ok {
			n++
			last = append(last[:0], k...)
		}
	}
}

// etcdPager walks [lo, hi) at the transaction's revision, a page at a time.
type etcdPager struct {
	r       *readTx
	lo, hi  string
	reverse bool
	page    int64
	buf     []entry
	i       int
	end     bool
}

func (p *etcdPager) peek() (*entry, error) {
	if p.i < len(p.buf) {
		return &p.buf[p.i], nil
	}
	if p.end {
		return nil, nil
	}
	order := clientv3.SortAscend
	if p.reverse {
		order = clientv3.SortDescend
	}
	resp, err := p.r.get(p.lo, clientv3.WithRange(p.hi), clientv3.WithLimit(p.page), clientv3.WithSort(clientv3.SortByKey, order))
	if err != nil {
		return nil, p.r.d.readErr(err)
	}
	p.r.pin(resp.Header.Revision)
	p.buf, p.i = p.buf[:0], 0
	for _, kv := range resp.Kvs {
		v := kv.Value
		if v == nil {
			v = []byte{}
		}
		p.buf = append(p.buf, entry{key: string(kv.Key), val: v})
	}
	if !resp.More || len(resp.Kvs) == 0 {
		p.end = true
	} else if lastKey := string(resp.Kvs[len(resp.Kvs)-1].Key); p.reverse {
		p.hi = lastKey
	} else {
		p.lo = lastKey + "\x00"
	}
	if len(p.buf) == 0 {
		return nil, nil
	}
	return &p.buf[0], nil
}

func (p *etcdPager) next() { p.i++ }

// prefixEnd is the first key after every key with prefix.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// write is one buffered change.
type write struct {
	val []byte
	del bool
	exp time.Time
}

// writeTx buffers writes over a readTx; reads see them.
type writeTx struct {
	readTx
	writes   map[string]*write
	order    []string        // keys of writes, first write first
	deleted  map[string]bool // buckets with deletes: their guards move
	ops, n   int
	tooLarge error
}

func (w *writeTx) count(n int) error {
	w.ops++
	w.n += n
	lim := w.d.limits
	if w.ops > lim.MaxOpsPerUpdate || w.n > lim.MaxUpdateBytes {
		if w.tooLarge == nil {
			w.tooLarge = fmt.Errorf("%w: more than %d operations or %d bytes in one update", store.ErrTooLarge, lim.MaxOpsPerUpdate, lim.MaxUpdateBytes)
		}
		return w.tooLarge
	}
	return nil
}

func (w *writeTx) set(k string, wr *write) {
	if _, ok := w.writes[k]; !ok {
		w.order = append(w.order, k)
	}
	w.writes[k] = wr
}

// Get implements store.ReadTx, seeing the transaction's own writes.
func (w *writeTx) Get(b store.Bucket, key []byte) ([]byte, error) {
	if err := w.d.bucket(b); err != nil {
		return nil, err
	}
	k := w.d.dataKey(b, key)
	if wr, ok := w.writes[k]; ok {
		if wr.del {
			return nil, nil
		}
		return wr.val, nil
	}
	return w.fetch(k)
}

// Scan implements store.ReadTx, seeing the transaction's own writes.
func (w *writeTx) Scan(b store.Bucket, opt store.ScanOptions, fn func(k, v []byte) (bool, error)) ([]byte, error) {
	var ov []entry
	pre := w.d.dataKey(b, nil)
	for k, wr := range w.writes {
		if strings.HasPrefix(k, pre) {
			ov = append(ov, entry{key: k, val: wr.val, del: wr.del})
		}
	}
	return w.scan(b, opt, ov, fn)
}

// Put implements store.WriteTx.
func (w *writeTx) Put(b store.Bucket, key, value []byte, opts ...store.PutOption) error {
	if bytes.HasPrefix(b, []byte("_")) && !store.Writable(b) {
		return fmt.Errorf("store: bucket %q is reserved", b)
	}
	if err := w.d.bucket(b); err != nil {
		return err
	}
	if len(key) == 0 {
		return errors.New("store: empty key")
	}
	lim := w.d.limits
	if len(value) > lim.MaxValueBytes {
		if w.tooLarge == nil {
			w.tooLarge = fmt.Errorf("%w: a value of %d bytes (at most %d)", store.ErrTooLarge, len(value), lim.MaxValueBytes)
		}
		return w.tooLarge
	}
	if err := w.count(len(key) + len(value)); err != nil {
		return err
	}
	o := store.PutOptionsOf(opts)
	if o.IfAbsent {
		cur, err := w.Get(b, key)
		if err != nil {
			return err
		}
		if cur != nil {
			return store.ErrExists
		}
	}
	w.set(w.d.dataKey(b, key), &write{val: append([]byte{}, value...), exp: o.ExpiresAt})
	return nil
}

// Delete implements store.WriteTx.
func (w *writeTx) Delete(b store.Bucket, key []byte) error {
	if err := w.d.bucket(b); err != nil {
		return err
	}
	if err := w.count(len(key)); err != nil {
		return err
	}
	cur, err := w.Get(b, key)
	if err != nil || cur == nil {
		return err
	}
	w.set(w.d.dataKey(b, key), &write{del: true})
	if w.deleted == nil {
		w.deleted = map[string]bool{}
	}
	w.deleted[string(b)] = true
	return nil
}

// compares guards the commit with what the transaction read.
func (w *writeTx) compares() []clientv3.Cmp {
	if w.rev == 0 {
		return nil // blind writes
	}
	n := len(w.points) + len(w.ranges) + len(w.scanned)
	if n <= maxCompares {
		cmps := make([]clientv3.Cmp, 0, n)
		for _, k := range sortedKeys(boolKeys(w.points)) {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", w.points[k]))
		}
		for _, rg := range w.ranges {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(rg.from).WithRange(rg.to), "<", w.rev+1))
		}
		for _, b := range sortedKeys(w.scanned) {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(w.d.guardKey(b)), "<", w.rev+1))
		}
		return cmps
	}
	// Too many to list: guard every bucket read as a whole (an insert or
	// change shows in the range, a delete in the guard).
	buckets := map[string]bool{}
	for k := range w.points {
		if b, _, ok := w.d.split([]byte(k)); ok {
			buckets[b] = true
		}
	}
	for _, rg := range w.ranges {
		buckets[rg.bucket] = true
	}
	var cmps []clientv3.Cmp
	for _, b := range sortedKeys(buckets) {
		from := w.d.dataKey(store.Bucket(b), nil)
		cmps = append(cmps,
			clientv3.Compare(clientv3.ModRevision(from).WithRange(string(prefixEnd([]byte(from)))), "<", w.rev+1),
			clientv3.Compare(clientv3.ModRevision(w.d.guardKey(b)), "<", w.rev+1))
	}
	return cmps
}

func boolKeys(m map[string]int64) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}
