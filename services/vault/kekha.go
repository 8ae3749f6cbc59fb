package vault

// Key-encryption key rotation with several replicas on one store.
//
// The replica that rotates records, in kekBucket, the new key's id and where
// it is (a file path, or a PKCS#11 module, token, key label and PIN file
// path: never key bytes, never the PIN), with the keys that may still wrap
// data keys until the rewrap ends. Replicas share the same key files and
// tokens, so every other replica can load the recorded key itself:
//
//   - a write that creates a data key reads the record in its transaction
//     and wraps with the recorded key, loading it first if needed, so no
//     replica wraps a new data key with a key being retired;
//   - a data key wrapped by a key this replica lacks is unwrapped after
//     loading that key from the record;
//   - each replica watches the record: it switches to the new key, and drops
//     the old ones once the record says every data key is rewrapped.
//
// A loaded key must have the recorded id, or it is refused (logged, with the
// source and both ids). A replica follows the record only if its own key is
// part of it (current, previous or retired): one started with an unrelated
// key keeps saying which key it lacks instead of loading keys it was not
// given. The rewrap itself runs on one replica at a time, under
// store.Leadership, every write fenced by that leadership.

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/store"
)

// kekJob is the Leadership job of key-encryption key rewraps.
const kekJob = "vault-kek-rewrap"

// kekLeadWait bounds how long a rotation (or a start-up rewrap) waits for
// another replica's rewrap to finish, or for a dead leader's lead to expire
// (store.Leadership's default TTL is 10 s).
var kekLeadWait = 15 * time.Second

// kekLeadSole says whether db is written by this process alone (a bbolt
// file, which one process locks), so that a lead left by a process that died
// is taken over at once (store.Leadership.Sole). Tests that share one store
// between in-process vaults, as replicas share etcd, say false.
var kekLeadSole = func(db store.Backend) bool { return db.Info().Engine == "bbolt" }

// maxRetiredIDs bounds the retired ids kept in the record.
const maxRetiredIDs = 32

// kekRecordKey is the record's key in kekBucket.
var kekRecordKey = []byte("current")

// kekSourceRecord is where a key is, as recorded: paths and labels only.
type kekSourceRecord struct {
	File   string        `json:"file,omitempty"`
	PKCS11 *pkcs11Record `json:"pkcs11,omitempty"`
}

type pkcs11Record struct {
	Module  string `json:"module"`
	Token   string `json:"token"`
	Key     string `json:"key"`
	PINFile string `json:"pinFile"`
}

// kekEntry is a recorded key: its id and where it is.
type kekEntry struct {
	ID     string          `json:"id"`
	Source kekSourceRecord `json:"source"`
}

// kekRecord is the vault's key-encryption key state shared by its replicas.
type kekRecord struct {
	kekEntry
	// Previous are the keys that may still wrap data keys, until the
	// rewrap to the current key has finished.
	Previous []kekEntry `json:"previous,omitempty"`
	// Rewrapped says every data key is wrapped by the current key: the
	// previous keys are retired and every replica drops them.
	Rewrapped bool `json:"rewrapped"`
	// Retired are the ids of keys retired by earlier rotations, newest last.
	Retired []string  `json:"retired,omitempty"`
	At      time.Time `json:"at"`
}

// lineage reports whether id is one of the recorded live keys: current, or
// previous while a rewrap runs. A retired key is not: a replica started with
// one says which key it lacks, as a single vault would.
func (r *kekRecord) lineage(id string) bool {
	return r.ID == id || r.previous(id) != nil
}

func (r *kekRecord) previous(id string) *kekEntry {
	for i := range r.Previous {
		if r.Previous[i].ID == id {
			return &r.Previous[i]
		}
	}
	return nil
}

// entry returns the recorded source of id: current or previous.
func (r *kekRecord) entry(id string) *kekEntry {
	if r.ID == id {
		return &r.kekEntry
	}
	return r.previous(id)
}

func getKEKRecord(tx store.ReadTx) (*kekRecord, error) {
	v, err := tx.Get(kekBucket, kekRecordKey)
	if err != nil || v == nil {
		return nil, err
	}
	r := &kekRecord{}
	if err := json.Unmarshal(v, r); err != nil {
		return nil, fmt.Errorf("key-encryption key record in bucket %s is malformed: %w", kekBucket, err)
	}
	return r, nil
}

func putKEKRecord(tx store.WriteTx, r *kekRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.Put(kekBucket, kekRecordKey, b)
}

func recordOf(src KEKSource) kekSourceRecord {
	if src.PKCS11.Enabled() {
		c := src.PKCS11
		return kekSourceRecord{PKCS11: &pkcs11Record{Module: c.Module, Token: c.Token, Key: c.Key, PINFile: c.PINFile}}
	}
	return kekSourceRecord{File: src.File}
}

func (r kekSourceRecord) source() KEKSource {
	if r.PKCS11 != nil {
		p := r.PKCS11
		return KEKSource{PKCS11: PKCS11Config{Module: p.Module, Token: p.Token, Key: p.Key, PINFile: p.PINFile}}
	}
	return KEKSource{File: r.File}
}

func (r kekSourceRecord) String() string {
	if r.PKCS11 != nil {
		return r.source().PKCS11.String()
	}
	if r.File == "" {
		return "no recorded source"
	}
	return "file " + r.File
}

// kekHA is a replica's side of the shared key state.
type kekHA struct {
	mu      sync.Mutex // serialises loads and keyring changes made here
	sources map[kekID]KEKSource
	// following: this replica's keys were in step with the record at start
	// (or there was none), so it follows every recorded rotation, even one
	// it first learns of after it finished. A replica started with a key
	// the record does not list as live (retired, or unrelated) does not:
	// it says which key it lacks, and creates no data key.
	following bool
	stop      context.CancelFunc
	done      chan struct{}
}

// noteSources remembers where the configured keys are, for the record.
func (s *Service) noteSources(cfg Config) {
	s.ha.sources = map[kekID]KEKSource{}
	if k := s.keys.activeKEK(); k != nil {
		s.ha.sources[k.id] = KEKSource{File: cfg.KEKFile, PKCS11: cfg.KEKPKCS11}
	}
	s.keys.mu.RLock()
	defer s.keys.mu.RUnlock()
	for id, k := range s.keys.all {
		if path, ok := strings.CutPrefix(k.source, "file "); ok && k.release == nil {
			if _, known := s.ha.sources[id]; !known {
				s.ha.sources[id] = KEKSource{File: path}
			}
		}
	}
}

// loadRecorded loads the recorded key e, refusing one whose id differs.
// Called with s.ha.mu held.
func (s *Service) loadRecorded(e *kekEntry) (*kek, error) {
	src := e.Source.source()
	if src.File == "" && !src.PKCS11.Enabled() {
		return nil, fmt.Errorf("key-encryption key %s: the store records no source for it", e.ID)
	}
	k, err := src.load()
	if err != nil {
		s.lg.Error("could not load the key-encryption key another replica rotated to", zap.String("kek-id", e.ID), zap.String("kek", e.Source.String()), zap.Error(err))
		return nil, fmt.Errorf("key-encryption key %s (%s): %w", e.ID, e.Source, err)
	}
	if k.id.String() != e.ID {
		if k.release != nil {
			k.release()
		}
		s.lg.Error("refusing a key-encryption key: its source holds another key than the one recorded (replicas must share the same key files and tokens)",
			zap.String("kek", e.Source.String()), zap.String("recorded-kek-id", e.ID), zap.String("loaded-kek-id", k.id.String()))
		return nil, fmt.Errorf("%s holds key-encryption key %s, not %s as the vault's store records: every vault replica must see the same key files and tokens", e.Source, k.id, e.ID)
	}
	s.ha.sources[k.id] = src
	return k, nil
}

// followKEK brings this replica's keyring in line with the record in tx:
// the recorded current key becomes the active one (loaded if needed), and
// once the record says the rewrap is done the other keys are dropped.
// Nothing happens without a record, or on a replica that does not follow it
// (see kekHA.following).
func (s *Service) followKEK(tx store.ReadTx) error { return s.followKEKFor(tx, false) }

// followKEKFor is followKEK; forWrite (a data key is about to be wrapped)
// refuses when this replica's key is not the current one and it does not
// follow the record.
func (s *Service) followKEKFor(tx store.ReadTx, forWrite bool) error {
	rec, err := getKEKRecord(tx)
	if err != nil || rec == nil {
		return err
	}
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	active := s.keys.activeKEK()
	if active == nil {
		return nil
	}
	if !s.ha.following && !rec.lineage(active.id.String()) {
		if active.id.String() != rec.ID && forWrite {
			s.lg.Error("refusing to wrap a new data key: this replica's key-encryption key is not the vault's current one; start it with the current key",
				zap.String("kek-id", active.id.String()), zap.String("current-kek-id", rec.ID), zap.String("kek", rec.Source.String()))
			return fail(ErrKeyMissing, "this vault replica's key-encryption key %s is not the vault's current key %s: an operator must start it with that key (see the vault's log)",
				active.id, rec.ID)
		}
		return nil
	}
	s.ha.following = true
	if active.id.String() != rec.ID {
		k := s.keyByID(rec.ID)
		if k == nil {
			if k, err = s.loadRecorded(&rec.kekEntry); err != nil {
				return fail(ErrKeyMissing, "the vault's key-encryption key was rotated to %s by another replica, and this replica could not load it: an operator must check that key's source on this replica's host (see the vault's log)", rec.ID)
			}
		}
		s.keys.add(k, true)
		s.lg.Warn("following a key-encryption key rotation made by another replica", zap.String("kek-id", rec.ID), zap.String("kek", rec.Source.String()),
			zap.String("previous-kek-id", active.id.String()))
	}
	if rec.Rewrapped && s.keys.loadedCount() > 1 {
		retired := s.keys.retire()
		var ids []string
		for _, id := range retired {
			ids = append(ids, id.String())
		}
		s.lg.Info("dropped key-encryption keys retired by a rotation", zap.String("kek-id", rec.ID), zap.Strings("retired-kek-ids", ids))
	}
	return nil
}

func (s *Service) keyByID(id string) *kek {
	s.keys.mu.RLock()
	defer s.keys.mu.RUnlock()
	for kid, k := range s.keys.all {
		if kid.String() == id {
			return k
		}
	}
	return nil
}

// loadedCount is how many keys are loaded.
func (r *keyring) loadedCount() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.all)
}

// loadMissing loads key id from the record in tx, if the record has it
// (current or previous) and this replica's key is part of the record. It
// reports whether the key is now loaded.
func (s *Service) loadMissing(tx store.ReadTx, id kekID) (bool, error) {
	rec, err := getKEKRecord(tx)
	if err != nil || rec == nil {
		return false, err
	}
	e := rec.entry(id.String())
	if e == nil {
		return false, nil
	}
	s.ha.mu.Lock()
	defer s.ha.mu.Unlock()
	if s.keys.get(id) != nil {
		return true, nil
	}
	active := s.keys.activeKEK()
	if active == nil || !s.ha.following && !rec.lineage(active.id.String()) {
		return false, nil
	}
	k, err := s.loadRecorded(e)
	if err != nil {
		return false, fail(ErrKeyMissing, "this workspace's data key is wrapped by key-encryption key %s, which this replica could not load: an operator must check that key's source on this replica's host (see the vault's log)", id)
	}
	s.keys.add(k, id.String() == rec.ID && active.id.String() != rec.ID)
	s.lg.Info("loaded a key-encryption key recorded by another replica", zap.String("kek-id", e.ID), zap.String("kek", e.Source.String()))
	return true, nil
}

// unwrapIn unwraps a data key, loading the key that wrapped it from the
// record in tx if this replica lacks it.
func (s *Service) unwrapIn(tx store.ReadTx, ws string, ver uint32, blob []byte) ([]byte, error) {
	key, err := s.keys.unwrapDataKey(ws, ver, blob)
	if !errors.Is(err, ErrKeyMissing) {
		return key, err
	}
	id, _ := wrappedBy(blob)
	ok, lerr := s.loadMissing(tx, id)
	if lerr != nil {
		return nil, lerr
	}
	if !ok {
		return nil, err
	}
	return s.keys.unwrapDataKey(ws, ver, blob)
}

// asKEKLeader runs job once as the leader of kekJob, waiting at most
// kekLeadWait for the lead. The job's writes must be fenced with l.Fence.
func (s *Service) asKEKLeader(ctx context.Context, job func(ctx context.Context, l *store.Leadership) error) error {
	l := &store.Leadership{DB: s.db, Job: kekJob, Logger: s.lg, Sole: kekLeadSole(s.db)}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	started := false
	var jobErr error
	timer := time.AfterFunc(kekLeadWait, func() {
		mu.Lock()
		defer mu.Unlock()
		if !started {
			cancel()
		}
	})
	defer timer.Stop()
	l.Run(rctx, func(jctx context.Context) {
		mu.Lock()
		if rctx.Err() != nil || started {
			mu.Unlock()
			return
		}
		started = true
		mu.Unlock()
		jobErr = job(jctx, l)
		if jobErr != nil && (jctx.Err() != nil || errors.Is(jobErr, store.ErrNotLeader)) && ctx.Err() == nil {
			jobErr = fail(ErrRotation, "%s: this replica lost the lead of the rewrap part-way (every key stays loaded; retry): %v", ErrRotation.Error(), jobErr)
		}
		cancel()
	})
	mu.Lock()
	defer mu.Unlock()
	if !started {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fail(ErrRotation, "%s: could not lead the rewrap within %s: another vault replica is rewrapping data keys (job %s), or the store refuses writes; retry when it has finished",
			ErrRotation.Error(), kekLeadWait, kekJob)
	}
	return jobErr
}

// rotateShared records k (from src) as the current key, rewraps every data
// key with it and records the rewrap done. It runs as the kek leader.
func (s *Service) rotateShared(ctx context.Context, l *store.Leadership, k *kek, src KEKSource) (*RotateKEKResult, error) {
	old := s.keys.activeKEK()
	// Every key loaded here may still wrap data keys: recorded as previous
	// keys, so that a replica lacking one can load it.
	var loaded []kekEntry
	s.ha.mu.Lock()
	s.keys.mu.RLock()
	for id := range s.keys.all {
		loaded = append(loaded, kekEntry{ID: id.String(), Source: recordOf(s.ha.sources[id])})
	}
	s.keys.mu.RUnlock()
	s.ha.mu.Unlock()
	slices.SortFunc(loaded, func(a, b kekEntry) int { return strings.Compare(a.ID, b.ID) })
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := l.Fence(tx); err != nil {
			return err
		}
		rec, err := getKEKRecord(tx)
		if err != nil {
			return err
		}
		next := &kekRecord{kekEntry: kekEntry{ID: k.id.String(), Source: recordOf(src)}, At: s.now().UTC()}
		add := func(e kekEntry) {
			if e.ID != next.ID && next.previous(e.ID) == nil {
				next.Previous = append(next.Previous, e)
			}
		}
		if rec != nil {
			next.Retired = rec.Retired
			if !rec.Rewrapped || rec.ID != next.ID {
				add(rec.kekEntry)
			}
			if !rec.Rewrapped {
				for _, e := range rec.Previous {
					add(e)
				}
			}
		}
		for _, e := range loaded {
			add(e)
		}
		return putKEKRecord(tx, next)
	})
	if err != nil {
		return nil, err
	}
	s.ha.mu.Lock()
	s.ha.sources[k.id] = src
	s.keys.add(k, true)
	s.ha.mu.Unlock()
	if old != nil && old.id != k.id {
		s.lg.Warn("key-encryption key rotation started", zap.String("kek-id", k.id.String()), zap.String("kek", k.source), zap.String("previous-kek-id", old.id.String()))
	}
	n, err := s.rewrapFenced(ctx, l)
	if err != nil {
		// Every key stays loaded: nothing stops working. Retrying finishes.
		return nil, err
	}
	res := &RotateKEKResult{KEKID: k.id.String(), Rewrapped: n}
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := l.Fence(tx); err != nil {
			return err
		}
		rec, err := getKEKRecord(tx)
		if err != nil {
			return err
		}
		if rec == nil || rec.ID != res.KEKID {
			return fmt.Errorf("%w: the key-encryption key record changed during the rewrap", store.ErrNotLeader)
		}
		res.Retired = nil
		for _, e := range rec.Previous {
			res.Retired = append(res.Retired, e.ID)
			if !slices.Contains(rec.Retired, e.ID) {
				rec.Retired = append(rec.Retired, e.ID)
			}
		}
		if len(rec.Retired) > maxRetiredIDs {
			rec.Retired = rec.Retired[len(rec.Retired)-maxRetiredIDs:]
		}
		rec.Previous, rec.Rewrapped, rec.At = nil, true, s.now().UTC()
		return putKEKRecord(tx, rec)
	})
	if err != nil {
		return nil, err
	}
	// (This replica's watch of the record may have dropped them already.)
	s.ha.mu.Lock()
	s.keys.retire()
	s.ha.mu.Unlock()
	slices.Sort(res.Retired)
	return res, nil
}

// rewrapFenced rewraps until no data key is wrapped by another key than the
// active one: a pass walks the data keys once, and a data key another
// replica created during the pass is wrapped by the recorded key already,
// so a second pass normally finds nothing.
func (s *Service) rewrapFenced(ctx context.Context, l *store.Leadership) (int, error) {
	total := 0
	for pass := 0; ; pass++ {
		n, err := s.rewrapAll(ctx, l.Fence)
		total += n
		if err != nil {
			return total, err
		}
		left, err := s.wrappedByOthers(ctx)
		if err != nil {
			return total, err
		}
		if left == 0 {
			return total, nil
		}
		if pass == 3 {
			return total, fail(ErrRotation, "%s: %d data keys are still wrapped by older keys after %d passes; retry", ErrRotation.Error(), left, pass+1)
		}
	}
}

// wrappedByOthers counts the data keys not wrapped by the active key.
func (s *Service) wrappedByOthers(ctx context.Context) (int, error) {
	n := 0
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		n = 0
		active := s.keys.activeKEK()
		_, err := eachDataKey(tx, nil, 0, func(ws string, ver uint32, blob []byte) (bool, error) {
			id, err := wrappedBy(blob)
			if err != nil {
				return false, fmt.Errorf("data key %d of workspace %s: %w", ver, ws, err)
			}
			if active == nil || id != active.id {
				n++
			}
			return true, nil
		})
		return err
	})
	return n, err
}

// startKeys runs at start, after the keys are loaded: it follows a
// rotation recorded by another replica and, with previous keys configured,
// finishes a rewrap to the configured key as the kek leader.
func (s *Service) startKeys(previous bool) {
	ctx := context.Background()
	if previous {
		err := s.asKEKLeader(ctx, func(ctx context.Context, l *store.Leadership) error {
			var rec *kekRecord
			if err := s.db.View(ctx, func(tx store.ReadTx) (err error) { rec, err = getKEKRecord(tx); return err }); err != nil {
				return err
			}
			active := s.keys.activeKEK()
			if rec != nil && rec.ID != active.id.String() && s.keys.get(kekIDOf(rec.ID)) == nil {
				// The store has moved on to a key this replica was not
				// started with: never roll it back.
				s.lg.Error("not rewrapping to the configured key-encryption key: the vault's store records a newer rotation; start with the recorded key (-vault-kek-file / -vault-kek-pkcs11-*)",
					zap.String("configured-kek-id", active.id.String()), zap.String("recorded-kek-id", rec.ID), zap.String("kek", rec.Source.String()))
				return nil
			}
			res, err := s.rotateShared(ctx, l, active, s.ha.sources[active.id])
			if err != nil {
				return err
			}
			s.lg.Info("rewrapped data keys with the current key-encryption key; the previous key files are no longer needed",
				zap.Int("data-keys-rewrapped", res.Rewrapped), zap.Int("previous-keys-dropped", len(res.Retired)))
			return nil
		})
		if err != nil {
			s.lg.Error("could not rewrap every data key with the current key-encryption key; previous keys stay loaded", zap.Error(err))
		}
	}
	if err := s.db.View(ctx, s.warnRetired); err != nil {
		s.lg.Error("could not read the key-encryption key record in the vault's store", zap.Error(err))
	}
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		rec, err := getKEKRecord(tx)
		if err != nil {
			return err
		}
		s.ha.mu.Lock()
		active := s.keys.activeKEK()
		s.ha.following = active != nil && (rec == nil || rec.lineage(active.id.String()))
		s.ha.mu.Unlock()
		return s.followKEK(tx)
	})
	if err != nil {
		s.lg.Error("could not follow the key-encryption key recorded in the vault's store", zap.Error(err))
	}
}

func kekIDOf(s string) kekID {
	var id kekID
	if h, ok := strings.CutPrefix(s, "kek-"); ok && len(h) == 2*kekIDLen {
		hex.Decode(id[:], []byte(h))
	}
	return id
}

// watchKEK follows changes of the record made by other replicas until
// Close.
func (s *Service) watchKEK() {
	ctx, cancel := context.WithCancel(context.Background())
	s.ha.stop, s.ha.done = cancel, make(chan struct{})
	go func() {
		defer close(s.ha.done)
		for ctx.Err() == nil {
			var rev int64
			if err := s.db.View(ctx, func(tx store.ReadTx) error { rev = tx.Revision(); return s.followKEK(tx) }); err != nil && ctx.Err() == nil {
				s.lg.Warn("key-encryption key record check failed", zap.Error(err))
			}
			for wr := range s.db.Watch(ctx, rev) {
				if wr.Err != nil {
					break
				}
				if slices.ContainsFunc(wr.Changes, func(c store.Change) bool { return c.Bucket == string(kekBucket) }) {
					if err := s.db.View(ctx, s.followKEK); err != nil && ctx.Err() == nil {
						s.lg.Warn("key-encryption key record check failed", zap.Error(err))
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}

func (s *Service) stopWatchKEK() {
	if s.ha.stop != nil {
		s.ha.stop()
		<-s.ha.done
	}
}

// warnRetired says so at start when the configured key was retired by a
// rotation: the vault must be started with the recorded current key.
func (s *Service) warnRetired(tx store.ReadTx) error {
	rec, err := getKEKRecord(tx)
	if err != nil || rec == nil {
		return err
	}
	if active := s.keys.activeKEK(); active != nil && slices.Contains(rec.Retired, active.id.String()) {
		s.lg.Error("the configured key-encryption key was retired by a rotation: start the vault with the current key instead",
			zap.String("configured-kek-id", active.id.String()), zap.String("current-kek-id", rec.ID), zap.String("kek", rec.Source.String()))
	}
	return nil
}
