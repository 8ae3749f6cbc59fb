package storetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/store"
)

var (
	bucketA = store.Bucket("a")
	bucketB = store.Bucket("b")
	buckets = []store.Bucket{bucketA, bucketB}
)

// Run is the conformance suite of the storage seam (after SPIRE's datastore
// sqltest suite and Kubernetes' storage/testing store tests). Every engine
// runs it with one line: storetest.Run(t, openMyEngine). The engine must
// also implement store.Faults.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, db store.Backend)
	}{
		{"CRUD", testCRUD},
		{"BucketsAreApart", testBucketsApart},
		{"ScanPrefixAfterLimit", testScan},
		{"ScanReverse", testScanReverse},
		{"ReadsSeeOwnWrites", testOwnWrites},
		{"RollbackWhenFnFails", testRollback},
		{"FailedCommitLeavesNothing", testFault},
		{"PanicIsAnError", testPanic},
		{"ConcurrentReadModifyWrite", testCounter},
		{"PutIfAbsentHasOneWinner", testIfAbsent},
		{"NoPhantomInsert", testPhantomInsert},
		{"NoPhantomDelete", testPhantomDelete},
		{"TooLargeIsRefusedWhole", testTooLarge},
		{"Expiry", testExpiry},
		{"RevisionsIncrease", testRevisions},
		{"WatchOrderAndResume", testWatch},
		{"WatchCompactedThenResync", testWatchCompacted},
		{"AmbiguousCommitRetriedOnce", testUpdateOnce},
		{"Info", testInfo},
		{"LeadershipOneAtATime", testLeadership},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := open(t, buckets)
			if _, ok := db.(store.Faults); !ok {
				t.Fatalf("%T does not implement store.Faults", db)
			}
			tc.fn(t, db)
		})
	}
}

var ctx = context.Background()

func put(t *testing.T, db store.Backend, b store.Bucket, k, v string, opts ...store.PutOption) {
	t.Helper()
	if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(b, []byte(k), []byte(v), opts...) }); err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
}

func get(t *testing.T, db store.Backend, b store.Bucket, k string) ([]byte, bool) {
	t.Helper()
	var out []byte
	var found bool
	if err := db.View(ctx, func(tx store.ReadTx) error {
		v, err := tx.Get(b, []byte(k))
		found = v != nil
		out = append([]byte(nil), v...)
		return err
	}); err != nil {
		t.Fatalf("get %s: %v", k, err)
	}
	return out, found
}

func scan(t *testing.T, db store.Backend, b store.Bucket, opt store.ScanOptions) ([]string, []byte) {
	t.Helper()
	var keys []string
	var next []byte
	if err := db.View(ctx, func(tx store.ReadTx) (err error) {
		next, err = tx.Scan(b, opt, func(k, v []byte) (bool, error) {
			keys = append(keys, string(k))
			return true, nil
		})
		return err
	}); err != nil {
		t.Fatalf("scan: %v", err)
	}
	return keys, next
}

func testCRUD(t *testing.T, db store.Backend) {
	if _, ok := get(t, db, bucketA, "k"); ok {
		t.Fatal("empty store has a key")
	}
	put(t, db, bucketA, "k", "v1")
	if v, ok := get(t, db, bucketA, "k"); !ok || string(v) != "v1" {
		t.Fatalf("get = %q %v, want v1", v, ok)
	}
	put(t, db, bucketA, "k", "v2")
	if v, _ := get(t, db, bucketA, "k"); string(v) != "v2" {
		t.Fatalf("overwrite: got %q", v)
	}
	put(t, db, bucketA, "empty", "")
	if v, ok := get(t, db, bucketA, "empty"); !ok || len(v) != 0 {
		t.Fatalf("an empty value must read as present and empty, got %q %v", v, ok)
	}
	if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Delete(bucketA, []byte("k")) }); err != nil {
		t.Fatal(err)
	}
	if _, ok := get(t, db, bucketA, "k"); ok {
		t.Fatal("deleted key still there")
	}
	if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Delete(bucketA, []byte("never")) }); err != nil {
		t.Fatalf("deleting an absent key: %v", err)
	}
	if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(bucketA, nil, []byte("x")) }); err == nil {
		t.Fatal("an empty key was accepted")
	}
	if err := db.View(ctx, func(tx store.ReadTx) error { _, err := tx.Get(store.Bucket("undeclared"), []byte("k")); return err }); err == nil {
		t.Fatal("a bucket outside the schema was accepted")
	}
}

func testBucketsApart(t *testing.T, db store.Backend) {
	put(t, db, bucketA, "k", "in-a")
	put(t, db, bucketB, "k", "in-b")
	put(t, db, bucketB, "k2", "in-b")
	if v, _ := get(t, db, bucketA, "k"); string(v) != "in-a" {
		t.Fatalf("bucket a: %q", v)
	}
	if keys, _ := scan(t, db, bucketA, store.ScanOptions{}); len(keys) != 1 {
		t.Fatalf("scan of a sees b's keys: %v", keys)
	}
}

func seedScan(t *testing.T, db store.Backend) {
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		for i := 0; i < 25; i++ {
			if err := tx.Put(bucketA, store.Key("ws1", fmt.Sprintf("%03d", i)), []byte{byte(i)}); err != nil {
				return err
			}
		}
		for _, k := range []string{"ws0/999", "ws2/000", "ws1"} {
			if err := tx.Put(bucketA, []byte(k), []byte("x")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func testScan(t *testing.T, db store.Backend) {
	seedScan(t, db)
	prefix := store.Key("ws1", "")
	var all []string
	var after []byte
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		keys, next := scan(t, db, bucketA, store.ScanOptions{Prefix: prefix, After: after, Limit: 10})
		all = append(all, keys...)
		if next == nil {
			break
		}
		if string(next) != keys[len(keys)-1] {
			t.Fatalf("cursor %q is not the last key of the page %q", next, keys[len(keys)-1])
		}
		after = next
	}
	if len(all) != 25 || all[0] != "ws1/000" || all[24] != "ws1/024" {
		t.Fatalf("paged scan = %d keys %v", len(all), all)
	}
	// A page that ends exactly at the end of the range has no cursor.
	if _, next := scan(t, db, bucketA, store.ScanOptions{Prefix: prefix, After: []byte("ws1/014"), Limit: 10}); next != nil {
		t.Fatalf("cursor after the last page: %q", next)
	}
	// Uncounted keys (fn returns false) do not use up the limit.
	var counted int
	must(t, db.View(ctx, func(tx store.ReadTx) error {
		_, err := tx.Scan(bucketA, store.ScanOptions{Prefix: prefix, Limit: 5}, func(k, v []byte) (bool, error) {
			odd := v[0]%2 == 1
			if odd {
				counted++
			}
			return odd, nil
		})
		return err
	}))
	if counted != 5 {
		t.Fatalf("counted %d odd keys, want 5", counted)
	}
	if _, err := func() ([]byte, error) {
		var next []byte
		err := db.View(ctx, func(tx store.ReadTx) (err error) {
			next, err = tx.Scan(bucketA, store.ScanOptions{Prefix: prefix, After: []byte("ws2/000")}, func(k, v []byte) (bool, error) { return true, nil })
			return err
		})
		return next, err
	}(); err == nil {
		t.Fatal("a cursor outside the prefix was accepted")
	}
	errStop := errors.New("stop")
	err := db.View(ctx, func(tx store.ReadTx) error {
		_, err := tx.Scan(bucketA, store.ScanOptions{}, func(k, v []byte) (bool, error) { return false, errStop })
		return err
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("fn's error = %v, want it returned", err)
	}
	if keys, _ := scan(t, db, bucketA, store.ScanOptions{}); len(keys) != 28 {
		t.Fatalf("full scan: %d keys", len(keys))
	}
}

func testScanReverse(t *testing.T, db store.Backend) {
	seedScan(t, db)
	prefix := store.Key("ws1", "")
	keys, next := scan(t, db, bucketA, store.ScanOptions{Prefix: prefix, Reverse: true, Limit: 3})
	if fmt.Sprint(keys) != "[ws1/024 ws1/023 ws1/022]" || string(next) != "ws1/022" {
		t.Fatalf("reverse page = %v next %q", keys, next)
	}
	keys, _ = scan(t, db, bucketA, store.ScanOptions{Prefix: prefix, Reverse: true, After: next, Limit: 2})
	if fmt.Sprint(keys) != "[ws1/021 ws1/020]" {
		t.Fatalf("reverse after = %v", keys)
	}
	keys, next = scan(t, db, bucketA, store.ScanOptions{Prefix: prefix, Reverse: true, After: []byte("ws1/002")})
	if fmt.Sprint(keys) != "[ws1/001 ws1/000]" || next != nil {
		t.Fatalf("reverse to the start = %v %q", keys, next)
	}
	// A key between two existing ones works as a reverse cursor too.
	keys, _ = scan(t, db, bucketA, store.ScanOptions{Prefix: prefix, Reverse: true, After: []byte("ws1/0105"), Limit: 1})
	if fmt.Sprint(keys) != "[ws1/010]" {
		t.Fatalf("reverse from between keys = %v", keys)
	}
	keys, _ = scan(t, db, bucketA, store.ScanOptions{Reverse: true, Limit: 1})
	if fmt.Sprint(keys) != "[ws2/000]" {
		t.Fatalf("reverse of the whole bucket starts at %v", keys)
	}
	put(t, db, bucketA, "\xff\xff", "x")
	keys, _ = scan(t, db, bucketA, store.ScanOptions{Prefix: []byte("\xff"), Reverse: true})
	if len(keys) != 1 {
		t.Fatalf("reverse of an all-0xff prefix = %q", keys)
	}
}

func testOwnWrites(t *testing.T, db store.Backend) {
	put(t, db, bucketA, "p/2", "old")
	err := db.Update(ctx, func(tx store.WriteTx) error {
		if err := tx.Put(bucketA, []byte("p/1"), []byte("new")); err != nil {
			return err
		}
		if err := tx.Delete(bucketA, []byte("p/2")); err != nil {
			return err
		}
		if v, err := tx.Get(bucketA, []byte("p/1")); err != nil || string(v) != "new" {
			return fmt.Errorf("own put not visible: %q %v", v, err)
		}
		if v, err := tx.Get(bucketA, []byte("p/2")); err != nil || v != nil {
			return fmt.Errorf("own delete not visible: %q %v", v, err)
		}
		var keys []string
		if _, err := tx.Scan(bucketA, store.ScanOptions{Prefix: []byte("p/")}, func(k, v []byte) (bool, error) {
			keys = append(keys, string(k))
			return true, nil
		}); err != nil {
			return err
		}
		if fmt.Sprint(keys) != "[p/1]" {
			return fmt.Errorf("scan in the transaction = %v", keys)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testRollback(t *testing.T, db store.Backend) {
	put(t, db, bucketA, "keep", "1")
	errBad := errors.New("refused by the handler")
	err := db.Update(ctx, func(tx store.WriteTx) error {
		if err := tx.Put(bucketA, []byte("new"), []byte("x")); err != nil {
			return err
		}
		if err := tx.Put(bucketA, []byte("keep"), []byte("2")); err != nil {
			return err
		}
		if err := tx.Delete(bucketB, []byte("nothing")); err != nil {
			return err
		}
		return errBad
	})
	if !errors.Is(err, errBad) {
		t.Fatalf("err = %v, want fn's error", err)
	}
	if _, ok := get(t, db, bucketA, "new"); ok {
		t.Fatal("a failed update left a write behind")
	}
	if v, _ := get(t, db, bucketA, "keep"); string(v) != "1" {
		t.Fatalf("a failed update changed a key: %q", v)
	}
	// Concurrent updates: the failing ones leave nothing, the others all land.
	var wg sync.WaitGroup
	errsOut := make([]error, 48)
	for i := range errsOut {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errsOut[i] = db.Update(ctx, func(tx store.WriteTx) error {
				if err := tx.Put(bucketA, store.Key("c", fmt.Sprint(i)), []byte{1}); err != nil {
					return err
				}
				if i%5 == 0 {
					return errBad
				}
				return nil
			})
		}(i)
	}
	wg.Wait()
	for i, err := range errsOut {
		_, ok := get(t, db, bucketA, string(store.Key("c", fmt.Sprint(i))))
		if i%5 == 0 && (!errors.Is(err, errBad) || ok) {
			t.Errorf("update %d: err=%v present=%v, want errBad and absent", i, err, ok)
		}
		if i%5 != 0 && (err != nil || !ok) {
			t.Errorf("update %d: err=%v present=%v, want success", i, err, ok)
		}
	}
}

func testFault(t *testing.T, db store.Backend) {
	f := db.(store.Faults)
	f.SetFault(func() error { return errors.New("disk full") })
	err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(bucketA, []byte("a"), []byte("x")) })
	f.SetFault(nil)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if _, ok := get(t, db, bucketA, "a"); ok {
		t.Fatal("a failed commit left data behind")
	}
	put(t, db, bucketA, "a", "y")
}

func testPanic(t *testing.T, db store.Backend) {
	err := db.Update(ctx, func(tx store.WriteTx) error {
		tx.Put(bucketA, []byte("p"), []byte("x"))
		panic("boom")
	})
	if err == nil {
		t.Fatal("a panic in a transaction was swallowed")
	}
	if _, ok := get(t, db, bucketA, "p"); ok {
		t.Fatal("a panicking update left a write behind")
	}
}

func readCounter(tx store.ReadTx, key []byte) (uint64, error) {
	v, err := tx.Get(bucketA, key)
	if err != nil || v == nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

func testCounter(t *testing.T, db store.Backend) {
	const workers, each = 16, 15
	key := []byte("counter")
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				err := db.Update(ctx, func(tx store.WriteTx) error {
					n, err := readCounter(tx, key)
					if err != nil {
						return err
					}
					var b [8]byte
					binary.BigEndian.PutUint64(b[:], n+1)
					return tx.Put(bucketA, key, b[:])
				})
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	var n uint64
	must(t, db.View(ctx, func(tx store.ReadTx) (err error) { n, err = readCounter(tx, key); return err }))
	if failed.Load() != 0 || n != workers*each {
		t.Fatalf("counter = %d after %d increments (%d failed): an update was lost", n, workers*each, failed.Load())
	}
}

func testIfAbsent(t *testing.T, db store.Backend) {
	// Slow commits widen the window in which a loser could hear of its
	// loss before the winner is committed.
	db.(store.Faults).SetFault(func() error { time.Sleep(2 * time.Millisecond); return nil })
	defer db.(store.Faults).SetFault(nil)
	const n = 24
	var wg sync.WaitGroup
	var wins, exists atomic.Int64
	// A commit in flight while the contenders arrive, so that they queue
	// up and are committed together (a group commit, where an engine has it).
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(bucketA, []byte("other"), []byte{1}) }); err != nil {
			t.Errorf("put: %v", err)
		}
	}()
	time.Sleep(500 * time.Microsecond)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := db.Update(ctx, func(tx store.WriteTx) error {
				return tx.Put(bucketA, []byte("names/deploy-bot"), []byte(fmt.Sprint(i)), store.IfAbsent())
			})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, store.ErrExists):
				exists.Add(1)
				// The winner that made this fail is committed: the loser's
				// next read sees it.
				var seen bool
				if err := db.View(ctx, func(tx store.ReadTx) error {
					v, err := tx.Get(bucketA, []byte("names/deploy-bot"))
					seen = v != nil
					return err
				}); err != nil || !seen {
					t.Errorf("after ErrExists the next read did not see the winner (err %v)", err)
				}
			default:
				t.Errorf("put-if-absent: %v", err)
			}
		}(i)
	}
	wg.Wait()
	if wins.Load() != 1 || exists.Load() != n-1 {
		t.Fatalf("%d winners and %d ErrExists, want 1 and %d", wins.Load(), exists.Load(), n-1)
	}
	// After a delete the name is free again.
	must(t, db.Update(ctx, func(tx store.WriteTx) error { return tx.Delete(bucketA, []byte("names/deploy-bot")) }))
	put(t, db, bucketA, "names/deploy-bot", "again", store.IfAbsent())
}

func countPrefix(tx store.ReadTx, prefix string) ([]string, error) {
	var keys []string
	_, err := tx.Scan(bucketA, store.ScanOptions{Prefix: []byte(prefix)}, func(k, v []byte) (bool, error) {
		keys = append(keys, string(k))
		return true, nil
	})
	return keys, err
}

// A scan-then-write must see a concurrent insert under its prefix: of many
// "insert unless the prefix already holds one" updates, one inserts.
func testPhantomInsert(t *testing.T, db store.Backend) {
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := db.Update(ctx, func(tx store.WriteTx) error {
				keys, err := countPrefix(tx, "slot/")
				if err != nil || len(keys) > 0 {
					return err
				}
				return tx.Put(bucketA, []byte(fmt.Sprintf("slot/%02d", i)), []byte{1})
			})
			if err != nil {
				t.Errorf("update: %v", err)
			}
		}(i)
	}
	wg.Wait()
	must(t, db.View(ctx, func(tx store.ReadTx) error {
		keys, err := countPrefix(tx, "slot/")
		if err != nil || len(keys) != 1 {
			t.Fatalf("prefix holds %v (%v), want exactly one key: a scan missed a concurrent insert", keys, err)
		}
		return nil
	}))
}

// A scan-then-write must see a concurrent delete under its prefix: "delete
// one unless it is the last" never empties the prefix.
func testPhantomDelete(t *testing.T, db store.Backend) {
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		for i := 0; i < 4; i++ {
			if err := tx.Put(bucketA, []byte(fmt.Sprintf("owner/%d", i)), []byte{1}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := db.Update(ctx, func(tx store.WriteTx) error {
				keys, err := countPrefix(tx, "owner/")
				if err != nil || len(keys) < 2 {
					return err
				}
				return tx.Delete(bucketA, []byte(fmt.Sprintf("owner/%d", i)))
			})
			if err != nil {
				t.Errorf("update: %v", err)
			}
		}(i)
	}
	wg.Wait()
	must(t, db.View(ctx, func(tx store.ReadTx) error {
		keys, err := countPrefix(tx, "owner/")
		if err != nil || len(keys) != 1 {
			t.Fatalf("prefix holds %v (%v), want exactly one: a scan missed a concurrent delete", keys, err)
		}
		return nil
	}))
}

func testTooLarge(t *testing.T, db store.Backend) {
	lim := db.Limits()
	if lim.MaxOpsPerUpdate <= 0 || lim.MaxValueBytes <= 0 || lim.MaxUpdateBytes <= 0 {
		t.Fatalf("limits not declared: %+v", lim)
	}
	err := db.Update(ctx, func(tx store.WriteTx) error {
		for i := 0; i <= lim.MaxOpsPerUpdate; i++ {
			if err := tx.Put(bucketA, store.Key("big", fmt.Sprintf("%05d", i)), []byte{1}); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("%d puts in one update: err = %v, want ErrTooLarge", lim.MaxOpsPerUpdate+1, err)
	}
	// Even when fn swallows the error, nothing may be written.
	err = db.Update(ctx, func(tx store.WriteTx) error {
		for i := 0; i <= lim.MaxOpsPerUpdate; i++ {
			_ = tx.Put(bucketA, store.Key("big", fmt.Sprintf("%05d", i)), []byte{1})
		}
		return nil
	})
	if !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("an oversized update whose fn ignored the error: err = %v, want ErrTooLarge", err)
	}
	if keys, _ := scan(t, db, bucketA, store.ScanOptions{Prefix: []byte("big/")}); len(keys) != 0 {
		t.Fatalf("an oversized update was split: %d keys written", len(keys))
	}
	err = db.Update(ctx, func(tx store.WriteTx) error {
		return tx.Put(bucketA, []byte("huge"), make([]byte, lim.MaxValueBytes+1))
	})
	if !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("a %d-byte value: err = %v, want ErrTooLarge", lim.MaxValueBytes+1, err)
	}
	// Exactly at the limit is fine.
	err = db.Update(ctx, func(tx store.WriteTx) error {
		for i := 0; i < lim.MaxOpsPerUpdate; i++ {
			if err := tx.Put(bucketA, store.Key("big", fmt.Sprintf("%05d", i)), []byte{1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%d puts (the limit): %v", lim.MaxOpsPerUpdate, err)
	}
}

func testExpiry(t *testing.T, db store.Backend) {
	w := db.Watch(ctxT(t), 0)
	put(t, db, bucketA, "ttl/short", "x", store.ExpiresAt(time.Now().Add(time.Second)))
	put(t, db, bucketA, "ttl/kept", "x", store.ExpiresAt(time.Now().Add(time.Second)))
	put(t, db, bucketA, "ttl/kept", "y") // a plain put keeps the key for good
	put(t, db, bucketA, "ttl/long", "x", store.ExpiresAt(time.Now().Add(time.Hour)))
	if _, ok := get(t, db, bucketA, "ttl/short"); !ok {
		t.Fatal("a key with a future expiry is missing")
	}
	deadline := time.Now().Add(6 * time.Second)
	for {
		_, ok := get(t, db, bucketA, "ttl/short")
		keys, _ := scan(t, db, bucketA, store.ScanOptions{Prefix: []byte("ttl/")})
		if !ok && fmt.Sprint(keys) == "[ttl/kept ttl/long]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expired key still visible (get %v, scan %v)", ok, keys)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		select {
		case r := <-w:
			if r.Err != nil {
				t.Fatalf("watch: %v", r.Err)
			}
			for _, c := range r.Changes {
				if c.Delete && string(c.Key) == "ttl/short" {
					return
				}
			}
		case <-time.After(time.Until(deadline) + time.Second):
			t.Fatal("no watch event for the expired key")
		}
	}
}

// must fails the test on a setup or read error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	return c
}

func revision(t *testing.T, db store.Backend) int64 {
	var rev int64
	must(t, db.View(ctx, func(tx store.ReadTx) error { rev = tx.Revision(); return nil }))
	return rev
}

func testRevisions(t *testing.T, db store.Backend) {
	r0 := revision(t, db)
	put(t, db, bucketA, "r", "1")
	r1 := revision(t, db)
	put(t, db, bucketA, "r", "2")
	r2 := revision(t, db)
	if !(r0 < r1 && r1 < r2) {
		t.Fatalf("revisions %d, %d, %d do not increase with commits", r0, r1, r2)
	}
	if err := db.Update(ctx, func(tx store.WriteTx) error { return errors.New("no") }); err == nil {
		t.Fatal("a failing update reported success")
	}
	if r := revision(t, db); r != r2 {
		t.Fatalf("a failed update moved the revision from %d to %d", r2, r)
	}
}

func collect(t *testing.T, w <-chan store.WatchResponse, n int) []store.WatchResponse {
	t.Helper()
	var out []store.WatchResponse
	for len(out) < n {
		select {
		case r, ok := <-w:
			if !ok {
				t.Fatalf("watch closed after %d of %d commits", len(out), n)
			}
			if r.Err != nil {
				t.Fatalf("watch: %v", r.Err)
			}
			out = append(out, r)
		case <-time.After(5 * time.Second):
			t.Fatalf("watch delivered %d of %d commits", len(out), n)
		}
	}
	return out
}

func testWatch(t *testing.T, db store.Backend) {
	start := revision(t, db)
	w := db.Watch(ctxT(t), start)
	for i := 0; i < 20; i++ {
		i := i
		if err := db.Update(ctx, func(tx store.WriteTx) error {
			if err := tx.Put(bucketA, []byte(fmt.Sprintf("w/%02d", i)), []byte{byte(i)}); err != nil {
				return err
			}
			if i%4 == 3 {
				return tx.Delete(bucketA, []byte(fmt.Sprintf("w/%02d", i-1)))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	got := collect(t, w, 20)
	last := start
	for i, r := range got {
		if r.Revision <= last {
			t.Fatalf("commit %d has revision %d after %d", i, r.Revision, last)
		}
		last = r.Revision
		if string(r.Changes[0].Key) != fmt.Sprintf("w/%02d", i) || r.Changes[0].Bucket != string(bucketA) || r.Changes[0].Value[0] != byte(i) || r.Changes[0].Delete {
			t.Fatalf("commit %d: %+v", i, r.Changes)
		}
		if i%4 == 3 && (len(r.Changes) != 2 || !r.Changes[1].Delete || string(r.Changes[1].Key) != fmt.Sprintf("w/%02d", i-1)) {
			t.Fatalf("commit %d should carry a delete: %+v", i, r.Changes)
		}
	}
	// Resume from the middle: exactly the commits after that revision.
	mid := got[9].Revision
	again := collect(t, db.Watch(ctxT(t), mid), 10)
	for i, r := range again {
		if r.Revision != got[10+i].Revision || !bytes.Equal(r.Changes[0].Key, got[10+i].Changes[0].Key) {
			t.Fatalf("resumed commit %d = rev %d %q, want rev %d %q", i, r.Revision, r.Changes[0].Key, got[10+i].Revision, got[10+i].Changes[0].Key)
		}
	}
	// A failed update is never delivered.
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		if err := tx.Put(bucketA, []byte("w/failed"), []byte{1}); err != nil {
			return err
		}
		return errors.New("no")
	}); err == nil {
		t.Fatal("a failing update reported success")
	}
	put(t, db, bucketA, "w/after", "1")
	if r := collect(t, w, 1)[0]; string(r.Changes[0].Key) != "w/after" {
		t.Fatalf("after a failed update the watch saw %q", r.Changes[0].Key)
	}
}

func testWatchCompacted(t *testing.T, db store.Backend) {
	start := revision(t, db)
	for i := 0; i < 5; i++ {
		put(t, db, bucketA, fmt.Sprintf("c/%d", i), "v")
	}
	now := revision(t, db)
	if err := db.(store.Faults).Compact(now - 1); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-db.Watch(ctxT(t), start):
		if !errors.Is(r.Err, store.ErrCompacted) {
			t.Fatalf("watch from a compacted revision: %+v, want ErrCompacted", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch from a compacted revision said nothing")
	}
	// Resync: read the state, then watch from the revision of that read.
	var rev int64
	var keys []string
	must(t, db.View(ctx, func(tx store.ReadTx) (err error) {
		rev = tx.Revision()
		keys, err = countPrefix(tx, "c/")
		return err
	}))
	if len(keys) != 5 {
		t.Fatalf("resync read %d keys", len(keys))
	}
	w := db.Watch(ctxT(t), rev)
	put(t, db, bucketA, "c/5", "v")
	if r := collect(t, w, 1)[0]; string(r.Changes[0].Key) != "c/5" {
		t.Fatalf("after resync the watch saw %q", r.Changes[0].Key)
	}
}

func testUpdateOnce(t *testing.T, db store.Backend) {
	f := db.(store.Faults)
	var runs atomic.Int64
	fn := func(tx store.WriteTx) ([]byte, error) {
		runs.Add(1)
		n, err := readCounter(tx, []byte("once"))
		if err != nil {
			return nil, err
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], n+1)
		return []byte(fmt.Sprintf("issued #%d", n+1)), tx.Put(bucketA, []byte("once"), b[:])
	}
	f.SetLoseReply(true)
	_, err := store.UpdateOnce(ctx, db, "req-1", fn)
	f.SetLoseReply(false)
	if !errors.Is(err, store.ErrOutcomeUnknown) {
		t.Fatalf("lost reply: err = %v, want ErrOutcomeUnknown", err)
	}
	res, err := store.UpdateOnce(ctx, db, "req-1", fn)
	if err != nil || string(res) != "issued #1" {
		t.Fatalf("retry = %q, %v; want the first result", res, err)
	}
	var n uint64
	must(t, db.View(ctx, func(tx store.ReadTx) (err error) { n, err = readCounter(tx, []byte("once")); return err }))
	if n != 1 || runs.Load() != 1 {
		t.Fatalf("the retried update applied %d times (fn ran %d times), want once", n, runs.Load())
	}
	res, err = store.UpdateOnce(ctx, db, "req-2", fn)
	if err != nil || string(res) != "issued #2" {
		t.Fatalf("a new request id = %q, %v", res, err)
	}
	// A failing fn stores nothing: the same id may run again.
	boom := errors.New("refused")
	if _, err := store.UpdateOnce(ctx, db, "req-3", func(store.WriteTx) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if res, err := store.UpdateOnce(ctx, db, "req-3", fn); err != nil || string(res) != "issued #3" {
		t.Fatalf("after a refusal the id ran to %q, %v", res, err)
	}
}

func testInfo(t *testing.T, db store.Backend) {
	info := db.Info()
	if info.Name == "" || info.Engine == "" || info.ID == "" {
		t.Fatalf("info incomplete: %+v", info)
	}
	if !info.Created || info.CreatedAt.IsZero() || time.Since(info.CreatedAt) > time.Minute {
		t.Fatalf("a store opened empty should say it was created now: %+v", info)
	}
}

func testLeadership(t *testing.T, db store.Backend) {
	const ttl = 600 * time.Millisecond
	var running, most atomic.Int64
	var fencedOK, fencedRefused atomic.Int64
	leaders := make([]*store.Leadership, 3)
	cancels := make([]context.CancelFunc, 3)
	stopped := make([]chan struct{}, 3)
	for i := range leaders {
		l := &store.Leadership{DB: db, Job: "job", TTL: ttl}
		leaders[i] = l
		c, cancel := context.WithCancel(ctx)
		cancels[i], stopped[i] = cancel, make(chan struct{})
		go func() {
			defer close(stopped[i])
			l.Run(c, func(jc context.Context) {
				if n := running.Add(1); n > most.Load() {
					most.Store(n)
				}
				defer running.Add(-1)
				for jc.Err() == nil {
					err := db.Update(ctx, func(tx store.WriteTx) error {
						if err := l.Fence(tx); err != nil {
							return err
						}
						return tx.Put(bucketA, []byte("leader-wrote"), []byte{byte(i)})
					})
					if err == nil {
						fencedOK.Add(1)
					} else if errors.Is(err, store.ErrNotLeader) {
						fencedRefused.Add(1)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for fencedOK.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatal("no replica took the lead")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The leader stops: another takes over.
	var v []byte
	must(t, db.View(ctx, func(tx store.ReadTx) (err error) { v, err = tx.Get(bucketA, []byte("leader-wrote")); return err }))
	first := int(v[0])
	cancels[first]()
	<-stopped[first]
	before := fencedOK.Load()
	for {
		must(t, db.View(ctx, func(tx store.ReadTx) (err error) { v, err = tx.Get(bucketA, []byte("leader-wrote")); return err }))
		if int(v[0]) != first && fencedOK.Load() > before+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replica took over from replica %d", first)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range cancels {
		cancels[i]()
		<-stopped[i]
	}
	if most.Load() != 1 {
		t.Fatalf("%d replicas ran the job at once", most.Load())
	}
	// A replica that does not lead has its writes refused.
	outsider := &store.Leadership{DB: db, Job: "job", TTL: ttl}
	err := db.Update(ctx, func(tx store.WriteTx) error { return outsider.Fence(tx) })
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("fence of a replica that never led: %v", err)
	}
}
