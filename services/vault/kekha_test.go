package vault

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// kekhaShared is one store shared by in-process vaults, as replicas share an
// etcd cluster; it closes when the last one closes.
type kekhaShared struct {
	store.Backend
	mu   sync.Mutex
	refs int
}

func (s *kekhaShared) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs--; s.refs > 0 {
		return nil
	}
	return s.Backend.Close()
}

// kekhaStore opens dir's vault store for several replicas. The lead of the
// rewrap is then taken over only when it expires, as on etcd.
func kekhaStore(t *testing.T, dir string) *kekhaShared {
	t.Helper()
	db, err := boltstore.Dir(dir, zap.NewNop())(storeName, buckets)
	if err != nil {
		t.Fatal(err)
	}
	sole := kekLeadSole
	kekLeadSole = func(store.Backend) bool { return false }
	t.Cleanup(func() { kekLeadSole = sole })
	sh := &kekhaShared{Backend: db, refs: 1}
	t.Cleanup(func() { sh.Close() })
	return sh
}

// kekhaReplica starts a vault replica on the shared store.
func kekhaReplica(t *testing.T, sh *kekhaShared, lg *zap.Logger, kekFile string, previous ...string) *Service {
	t.Helper()
	sh.mu.Lock()
	sh.refs++
	sh.mu.Unlock()
	s, err := New(Config{DataDir: t.TempDir(), Logger: lg, KEKFile: kekFile, PreviousKEKFiles: previous,
		Store: func(string, []store.Bucket) (store.Backend, error) { return sh, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// kekhaFill gives n workspaces a data key and a sealed value, written by s:
// ws_%04d without a prefix (fillWorkspaces), else prefix_%04d (n small).
func kekhaFill(t *testing.T, s *Service, prefix string, n int) map[string][]byte {
	t.Helper()
	if prefix == "" {
		return fillWorkspaces(t, s, n)
	}
	renamed := map[string][]byte{} // few: one update
	for i := range n {
		ws := fmt.Sprintf("%s_%04d", prefix, i)
		renamed[ws] = fmt.Appendf(nil, "value-of-%s", ws)
	}
	err := s.db.Update(context.Background(), func(tx store.WriteTx) error {
		for ws, v := range renamed {
			dk, err := s.dataKeyForWrite(tx, ws)
			if err != nil {
				return err
			}
			sealed, err := sealValue(dk, ws, "x", 1, v)
			if err != nil {
				return err
			}
			if err := putSealedValue(tx, ws, "x", sealed); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return renamed
}

// kekhaWrite seals one more value in a new workspace ws, written by s.
func kekhaWrite(s *Service, ws string) ([]byte, error) {
	v := fmt.Appendf(nil, "value-of-%s", ws)
	err := s.db.Update(context.Background(), func(tx store.WriteTx) error {
		dk, err := s.dataKeyForWrite(tx, ws)
		if err != nil {
			return err
		}
		sealed, err := sealValue(dk, ws, "x", 1, v)
		if err != nil {
			return err
		}
		return putSealedValue(tx, ws, "x", sealed)
	})
	return v, err
}

func kekhaID(t *testing.T, path string) string {
	t.Helper()
	raw, err := LoadKEKFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k, err := newKEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k.id.String()
}

// kekhaEventually polls cond for up to 5 s.
func kekhaEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Rotating on replica A: replica B, which was never told, reads every value
// (written before and after, by either), wraps new data keys with the new
// key, and drops the old key once the rewrap is done; the store holds the
// key's path, never its bytes.
func TestKEKHARotateOnOneReplica(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sh := kekhaStore(t, dir)
	k1 := newKEKFile(t, "k1")
	a := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("a"), k1)
	b := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("b"), k1)
	values := kekhaFill(t, a, "", 2*a.db.Limits().MaxOpsPerUpdate+5)
	for ws, v := range kekhaFill(t, b, "byb", 10) {
		values[ws] = v
	}
	id1 := a.KEKID()

	k2 := newKEKFile(t, "k2")
	id2 := kekhaID(t, k2)
	res, err := a.RotateKEK(ctx, k2)
	if err != nil {
		t.Fatal(err)
	}
	if res.KEKID != id2 || res.Rewrapped != len(values) || fmt.Sprint(res.Retired) != "["+id1+"]" {
		t.Fatalf("rotate = %+v", res)
	}
	// B follows: same key, old one dropped, every value readable.
	kekhaEventually(t, "replica B follows the rotation", func() bool {
		return b.KEKID() == id2 && b.keys.loadedCount() == 1
	})
	if got := checkWorkspaces(t, b, values); got[id2] != len(values) {
		t.Fatalf("wrappers seen by B = %v", got)
	}
	// New values through both replicas: wrapped by the new key.
	for i, s := range []*Service{a, b, b} {
		ws := fmt.Sprintf("after_%d", i)
		v, err := kekhaWrite(s, ws)
		if err != nil {
			t.Fatal(err)
		}
		values[ws] = v
	}
	// Neither needs the old key any more: gone from disk and from memory.
	os.Remove(k1)
	for _, s := range []*Service{a, b} {
		if s.keys.get(kekIDOf(id1)) != nil {
			t.Fatal("the retired key is still loaded")
		}
		if got := checkWorkspaces(t, s, values); got[id2] != len(values) || len(got) != 1 {
			t.Fatalf("wrappers = %v", got)
		}
	}
	// A replica restarted with the new key alone reads everything.
	b.Close()
	c := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("c"), k2)
	checkWorkspaces(t, c, values)

	// The store names the key's file, never its bytes.
	var rec *kekRecord
	a.db.View(ctx, func(tx store.ReadTx) (err error) { rec, err = getKEKRecord(tx); return err })
	if rec == nil || rec.ID != id2 || rec.Source.File != k2 || !rec.Rewrapped || len(rec.Previous) != 0 || fmt.Sprint(rec.Retired) != "["+id1+"]" {
		t.Fatalf("record = %+v", rec)
	}
	kekhaNoKeyBytes(t, a, dir, k2)
}

// kekhaNoKeyBytes scans the store's raw bytes for the key in keyFile (raw
// and hex).
func kekhaNoKeyBytes(t *testing.T, s *Service, dir, keyFile string) {
	t.Helper()
	raw, err := LoadKEKFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	// Every committed page is in the file.
	dump := kekhaDump(t, s)
	file, err := os.ReadFile(filepath.Join(dir, storeName+".db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{dump, file} {
		for _, needle := range [][]byte{raw, []byte(hex.EncodeToString(raw)), []byte(strings.ToUpper(hex.EncodeToString(raw)))} {
			if bytes.Contains(b, needle) {
				t.Fatal("the store holds key-encryption key bytes")
			}
		}
	}
	if !bytes.Contains(dump, []byte(keyFile)) {
		t.Fatal("the scan saw no key record: it proves nothing")
	}
}

// kekhaDump is every key and value of every bucket.
func kekhaDump(t *testing.T, s *Service) []byte {
	t.Helper()
	var out []byte
	err := s.db.View(context.Background(), func(tx store.ReadTx) error {
		for _, b := range buckets {
			_, err := tx.Scan(b, store.ScanOptions{}, func(k, v []byte) (bool, error) {
				out = append(append(out, k...), v...)
				return true, nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A replica whose copy of the recorded key source holds another key
// refuses it, loudly, and wraps nothing with it.
func TestKEKHAMismatchedSourceRefused(t *testing.T) {
	ctx := context.Background()
	sh := kekhaStore(t, t.TempDir())
	k1 := newKEKFile(t, "k1")
	a := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("a"), k1)
	core, logs := observer.New(zap.InfoLevel)
	b := kekhaReplica(t, sh, zap.New(core), k1)
	b.stopWatchKEK() // B learns of the rotation only when it meets the new key
	n := a.db.Limits().MaxOpsPerUpdate + 5
	values := kekhaFill(t, a, "", n)

	// A rotation stopped after its first chunk: the record names k2,
	// some data keys are wrapped by it.
	k2 := newKEKFile(t, "k2")
	id2 := kekhaID(t, k2)
	sh.Backend.(store.Faults).SetFault(failAfter(3)) // lead claim, record, one chunk
	if _, err := a.RotateKEK(ctx, k2); err == nil {
		t.Fatal("rotation with failing commits succeeded")
	}
	sh.Backend.(store.Faults).SetFault(nil)
	// B's host has another key at the recorded path.
	os.Remove(k2)
	if err := GenerateKEKFile(k2); err != nil {
		t.Fatal(err)
	}
	err := b.viewKeys(ctx, func(tx store.ReadTx) error {
		for ws := range values {
			if _, err := b.decrypt(tx, ws, "x", 1, "x"); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, ErrKeyMissing) || !strings.Contains(err.Error(), id2) || strings.Contains(err.Error(), k2) {
		t.Fatalf("read with a mismatched key source (the error names the key, the log its path): %v", err)
	}
	if _, err := kekhaWrite(b, "new_ws"); !errors.Is(err, ErrKeyMissing) {
		t.Fatalf("write with a mismatched key source: %v", err)
	}
	if b.keys.get(kekIDOf(id2)) != nil || b.keys.activeKEK().id.String() == kekhaID(t, k2) {
		t.Fatal("B loaded the mismatched key")
	}
	refused := logs.FilterMessageSnippet("refusing a key-encryption key").All()
	if len(refused) == 0 {
		t.Fatal("the refusal was not logged")
	}
	if f := refused[0].ContextMap(); f["kek"] != "file "+k2 || f["recorded-kek-id"] != id2 || f["loaded-kek-id"] != kekhaID(t, k2) {
		t.Fatalf("the refusal does not name the file and both keys: %v", f)
	}
	var wrong int
	a.db.View(ctx, func(tx store.ReadTx) error {
		_, err := eachDataKey(tx, nil, 0, func(_ string, _ uint32, blob []byte) (bool, error) {
			if id, _ := wrappedBy(blob); id.String() == kekhaID(t, k2) {
				wrong++
			}
			return true, nil
		})
		return err
	})
	if wrong != 0 {
		t.Fatalf("%d data keys wrapped by the mismatched key", wrong)
	}
	// A, which holds the recorded key, still reads everything.
	checkWorkspaces(t, a, values)
}

// While another replica leads the rewrap, a rotation waits, then says so,
// and changes nothing; a start with previous keys does not rewrap unfenced
// beside it.
func TestKEKHAOneRewrapAtATime(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sh := kekhaStore(t, dir)
	k1 := newKEKFile(t, "k1")
	a := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("a"), k1)
	values := kekhaFill(t, a, "", 5)
	id1 := a.KEKID()

	wait := kekLeadWait
	kekLeadWait = 300 * time.Millisecond
	t.Cleanup(func() { kekLeadWait = wait })
	// Another replica holds the lead.
	held, gone := make(chan struct{}), make(chan struct{})
	lctx, stop := context.WithCancel(ctx)
	go func() {
		defer close(gone)
		(&store.Leadership{DB: sh, Job: kekJob}).Run(lctx, func(jctx context.Context) {
			close(held)
			<-jctx.Done() // until stop: then the lead is given up
		})
	}()
	<-held

	k2 := newKEKFile(t, "k2")
	_, err := a.RotateKEK(ctx, k2)
	if !errors.Is(err, ErrRotation) || !strings.Contains(err.Error(), "another vault replica") {
		t.Fatalf("rotation beside another rewrap: %v", err)
	}
	if a.KEKID() != id1 || checkWorkspaces(t, a, values)[id1] != len(values) {
		t.Fatal("a refused rotation changed the keys")
	}
	// A start with k2 and k1 as a previous key: no rewrap while the lead
	// is held elsewhere; the previous key stays loaded, nothing breaks.
	b := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("b"), k2, k1)
	if got := checkWorkspaces(t, b, values); got[id1] != len(values) {
		t.Fatalf("wrappers after a start beside another rewrap = %v", got)
	}
	stop()
	<-gone

	// Free again: a fenced write of a replica that does not lead fails,
	// and writes nothing.
	stale := &store.Leadership{DB: sh, Job: kekJob}
	if _, err := a.rewrapAll(ctx, stale.Fence); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("unfenced rewrap: %v", err)
	}
	// And B's rotation to the key it was started with now runs; A follows.
	if _, err := b.RotateKEKTo(ctx, KEKSource{File: k2}); err != nil {
		t.Fatal(err)
	}
	id2 := b.KEKID()
	kekhaEventually(t, "A follows B's rotation", func() bool { return a.KEKID() == id2 && a.keys.loadedCount() == 1 })
	if got := checkWorkspaces(t, a, values); got[id2] != len(values) {
		t.Fatalf("wrappers = %v", got)
	}
}

// Two replicas started at once with a new key and the old one as previous
// finish the rewrap together, one at a time, and both end up on the new key
// alone.
func TestKEKHAStartupRewrapOnReplicas(t *testing.T) {
	dir := t.TempDir()
	sh := kekhaStore(t, dir)
	k1 := newKEKFile(t, "k1")
	a := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("a"), k1)
	values := kekhaFill(t, a, "", 150)
	a.Close()

	k2 := newKEKFile(t, "k2")
	id2 := kekhaID(t, k2)
	var wg sync.WaitGroup
	reps := make([]*Service, 2)
	for i := range reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := New(Config{DataDir: t.TempDir(), Logger: zaptest.NewLogger(t).Named(fmt.Sprint(i)), KEKFile: k2, PreviousKEKFiles: []string{k1},
				Store: func(string, []store.Bucket) (store.Backend, error) {
					sh.mu.Lock()
					defer sh.mu.Unlock()
					sh.refs++
					return sh, nil
				}})
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { s.Close() })
			reps[i] = s
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, s := range reps {
		kekhaEventually(t, "both replicas drop the previous key", func() bool { return s.KEKID() == id2 && s.keys.loadedCount() == 1 })
		if got := checkWorkspaces(t, s, values); got[id2] != len(values) {
			t.Fatalf("wrappers = %v", got)
		}
	}
}

// A replica that learns of a rotation only after it finished (its watch
// lagged) still follows it: it wraps new data keys with the new key, never
// the retired one. A replica started with a retired key follows nothing,
// says which key it needs, and creates no data key.
func TestKEKHAFollowsAFinishedRotation(t *testing.T) {
	ctx := context.Background()
	sh := kekhaStore(t, t.TempDir())
	k1 := newKEKFile(t, "k1")
	a := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("a"), k1)
	b := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("b"), k1)
	b.stopWatchKEK()
	values := kekhaFill(t, a, "", 5)
	k2 := newKEKFile(t, "k2")
	res, err := a.RotateKEK(ctx, k2)
	if err != nil {
		t.Fatal(err)
	}
	v, err := kekhaWrite(b, "by_b")
	if err != nil {
		t.Fatal(err)
	}
	values["by_b"] = v
	if b.KEKID() != res.KEKID || b.keys.loadedCount() != 1 {
		t.Fatalf("B uses %s (%d keys), not %s alone", b.KEKID(), b.keys.loadedCount(), res.KEKID)
	}
	if got := checkWorkspaces(t, a, values); got[res.KEKID] != len(values) {
		t.Fatalf("wrappers = %v", got)
	}

	// Started with the retired key: no following, no new data key.
	c := kekhaReplica(t, sh, zaptest.NewLogger(t).Named("c"), k1)
	if c.KEKID() == res.KEKID {
		t.Fatal("a replica started with a retired key loaded the current one")
	}
	if _, err := kekhaWrite(c, "by_c"); !errors.Is(err, ErrKeyMissing) || !strings.Contains(err.Error(), res.KEKID) {
		t.Fatalf("write with a retired key: %v", err)
	}
	err = c.viewKeys(ctx, func(tx store.ReadTx) error { _, err := c.decrypt(tx, "by_b", "x", 1, "x"); return err })
	if !errors.Is(err, ErrKeyMissing) || !strings.Contains(err.Error(), res.KEKID) {
		t.Fatalf("read with a retired key: %v", err)
	}
}
