package boltstore_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
	"github.com/backlog/controlplane/services/kit/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, buckets []store.Bucket) store.Backend {
		db, err := boltstore.Open(filepath.Join(t.TempDir(), "conf.db"), buckets, boltstore.Options{
			Logger: zaptest.NewLogger(t), SweepEvery: 100 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	})
}

var things = store.Bucket("things")

func open(t *testing.T, path string, opts boltstore.Options) (*boltstore.DB, error) {
	t.Helper()
	opts.Logger = zaptest.NewLogger(t)
	db, err := boltstore.Open(path, []store.Bucket{things}, opts)
	if err == nil {
		t.Cleanup(func() { db.Close() })
	}
	return db, err
}

func mustOpen(t *testing.T, path string) *boltstore.DB {
	t.Helper()
	db, err := open(t, path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func putThing(t *testing.T, db store.Backend, k string) {
	t.Helper()
	if err := db.Update(context.Background(), func(tx store.WriteTx) error { return tx.Put(things, []byte(k), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
}

// A store with data, closed: the starting point of the refusal tests.
func existing(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "automation.db")
	db := mustOpen(t, path)
	if !db.Info().Created {
		t.Fatal("a new store should say it was created")
	}
	for i := 0; i < 200; i++ {
		putThing(t, db, strings.Repeat("k", 10)+string(rune('a'+i%26))+strings.Repeat("x", i))
	}
	db.Close()
	return path
}

func wantRefused(t *testing.T, path string, words ...string) {
	t.Helper()
	_, err := open(t, path, boltstore.Options{})
	if err == nil {
		t.Fatal("the store opened; it should have refused")
	}
	for _, w := range append([]string{path}, words...) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not say %q", err, w)
		}
	}
}

func TestReopenKeepsDataAndID(t *testing.T) {
	path := existing(t)
	db := mustOpen(t, path)
	info := db.Info()
	if info.Created || info.ID == "" || info.CreatedAt.IsZero() {
		t.Fatalf("reopened store info: %+v", info)
	}
	var n int
	db.View(context.Background(), func(tx store.ReadTx) error {
		_, err := tx.Scan(things, store.ScanOptions{}, func(k, v []byte) (bool, error) { n++; return true, nil })
		return err
	})
	if n != 26*0+n || n == 0 {
		t.Fatalf("reopened store has %d keys", n)
	}
}

func TestMissingFileWithMarkerRefuses(t *testing.T) {
	path := existing(t)
	os.Remove(path)
	wantRefused(t, path, "missing", "restore", "-init-store=automation")
	if _, err := os.Stat(path); err == nil {
		t.Fatal("a refused open created the file")
	}
	// -init-store starts it empty on purpose, with a new id.
	db, err := open(t, path, boltstore.Options{Init: true})
	if err != nil {
		t.Fatal(err)
	}
	if !db.Info().Created {
		t.Fatal("an initialised store should say it was created")
	}
}

func TestEmptyFileRefuses(t *testing.T) {
	path := existing(t)
	os.Truncate(path, 0)
	wantRefused(t, path, "empty", "restore")
	// Without a marker too: an empty file is never a store.
	path2 := filepath.Join(t.TempDir(), "agent.db")
	os.WriteFile(path2, nil, 0o600)
	wantRefused(t, path2, "empty")
}

func TestTruncatedFileRefuses(t *testing.T) {
	path := existing(t)
	st, _ := os.Stat(path)
	for _, size := range []int64{10, 4096, st.Size() / 2, st.Size() - 4096} {
		os.Truncate(path, size)
		wantRefused(t, path, "restore")
	}
}

func TestCorruptHeaderRefuses(t *testing.T) {
	path := existing(t)
	b, _ := os.ReadFile(path)
	for i := 16; i < 80; i++ {
		b[i] ^= 0xff // both meta pages' first bytes
	}
	copy(b[4096+16:4096+80], b[16:80])
	os.WriteFile(path, b, 0o600)
	wantRefused(t, path, "damaged")
}

func TestForeignFileRefuses(t *testing.T) {
	path := existing(t)
	other := existing(t)
	data, _ := os.ReadFile(other)
	os.WriteFile(path, data, 0o600)
	wantRefused(t, path, "another deployment")
}

func TestStoreFromBeforeIDsIsNotNew(t *testing.T) {
	// A file written by an earlier version: buckets with data, no _meta.
	path := filepath.Join(t.TempDir(), "automation.db")
	raw, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucket(things)
		return b.Put([]byte("k"), []byte("v"))
	})
	raw.Close()
	db := mustOpen(t, path)
	if info := db.Info(); info.Created || !info.CreatedAt.IsZero() || info.ID == "" {
		t.Fatalf("an old store with data is not new: %+v", info)
	}
	if _, err := os.Stat(boltstore.MarkerPath(path)); err != nil {
		t.Fatalf("no marker written: %v", err)
	}
}

func TestCheckAndEnsureClosed(t *testing.T) {
	path := existing(t)
	if err := boltstore.Check(path); err != nil {
		t.Fatal(err)
	}
	db := mustOpen(t, path)
	if err := boltstore.EnsureClosed(path); err == nil {
		t.Fatal("EnsureClosed passed while the store is open")
	}
	db.Close()
	if err := boltstore.EnsureClosed(path); err != nil {
		t.Fatal(err)
	}
	os.Truncate(path, 8192)
	if err := boltstore.Check(path); err == nil {
		t.Fatal("Check passed a truncated file")
	}
}

func TestSnapshotIsAStore(t *testing.T) {
	path := existing(t)
	db := mustOpen(t, path)
	snap, err := db.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	putThing(t, db, "written-during-snapshot")
	out := filepath.Join(t.TempDir(), "copy.db")
	f, _ := os.Create(out)
	n, err := snap.WriteTo(f)
	f.Close()
	snap.Close()
	if err != nil || n != snap.Size() {
		t.Fatalf("snapshot wrote %d of %d: %v", n, snap.Size(), err)
	}
	if err := boltstore.Check(out); err != nil {
		t.Fatal(err)
	}
	id, err := boltstore.ReadID(out)
	if err != nil || id != db.Info().ID {
		t.Fatalf("snapshot id %q, store id %q (%v)", id, db.Info().ID, err)
	}
}

func TestReservedBucketsRefused(t *testing.T) {
	db := mustOpen(t, filepath.Join(t.TempDir(), "x.db"))
	err := db.Update(context.Background(), func(tx store.WriteTx) error {
		return tx.Put(store.Bucket("_meta"), []byte("revision"), []byte("x"))
	})
	if err == nil {
		t.Fatal("a write to the engine's own bucket was accepted")
	}
}

// TestWatchHistoryBoundedByBytes: the commits a watch can resume from are
// bounded by the memory their values take, not only by their number: large
// commits push the oldest out (a watch from before them is told so), and
// the newest is always kept.
func TestWatchHistoryBoundedByBytes(t *testing.T) {
	db, err := open(t, filepath.Join(t.TempDir(), "hist.db"), boltstore.Options{WatchHistoryBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var start int64
	if err := db.View(ctx, func(tx store.ReadTx) error { start = tx.Revision(); return nil }); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 16<<10)
	for i := range 20 { // 320 KiB of values, 5x the budget
		if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(things, []byte{byte(i)}, big) }); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if r := <-db.Watch(wctx, start); r.Err != store.ErrCompacted {
		t.Fatalf("a watch from before 320 KiB of commits: %+v, want ErrCompacted", r.Err)
	}
	var last int64
	if err := db.View(ctx, func(tx store.ReadTx) error { last = tx.Revision(); return nil }); err != nil {
		t.Fatal(err)
	}
	// The last three commits (48 KiB) are within the budget.
	ch := db.Watch(wctx, last-3)
	for want := last - 2; want <= last; want++ {
		r := <-ch
		if r.Err != nil || r.Revision != want || len(r.Changes) != 1 {
			t.Fatalf("resumed watch: %+v, want revision %d", r, want)
		}
	}
	// A commit larger than the whole budget is still kept, alone.
	huge := make([]byte, 128<<10)
	if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(things, []byte("huge"), huge) }); err != nil {
		t.Fatal(err)
	}
	if r := <-db.Watch(wctx, last); r.Err != nil || r.Revision != last+1 {
		t.Fatalf("the newest commit, over budget: %+v", r)
	}
	if r := <-db.Watch(wctx, last-1); r.Err != store.ErrCompacted {
		t.Fatalf("a watch from before the huge commit: %+v, want ErrCompacted", r.Err)
	}
}
