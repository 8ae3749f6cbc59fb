package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// runDisk measures the durable-write floor in the same run, on the same file
// system as backlogd's data dir: the kit store's group-committed Update of a
// 300-byte record (one bbolt commit: write pages, fdatasync, write meta,
// fdatasync) with one writer and with 64; and, with one writer, a commit to
// each of two stores at the same time, waiting for both — what a
// CreateAutomation's two services' stores cost at the least (the credential
// store and the automation store commit concurrently), since both files'
// fdatasyncs share one disk. The disk's contention from other processes
// shows here first.
func runDisk(ctx context.Context, e *Env) error {
	dir, err := os.MkdirTemp(e.Dir, "disk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bucket := store.Bucket("bench")
	db, err := boltstore.Open(filepath.Join(dir, "floor.db"), []store.Bucket{bucket}, boltstore.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	db2, err := boltstore.Open(filepath.Join(dir, "floor2.db"), []store.Bucket{bucket}, boltstore.Options{})
	if err != nil {
		return err
	}
	defer db2.Close()
	val := make([]byte, 300)
	for _, c := range []int{1, 64} {
		st := Run(ctx, Load{Concurrency: c, Duration: e.Cfg.Duration, Warmup: e.Cfg.Warmup, Op: func(ctx context.Context, w, seq int) error {
			k := fmt.Appendf(nil, "c%02d/w%03d/%010d", c, w, seq)
			return db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(bucket, k, val) })
		}})
		e.Report.add(Result{Key: fmt.Sprintf("disk.commit.c%d", c), Scenario: "disk", Name: fmt.Sprintf("store commit c=%d (no server)", c), Transport: "bbolt", Stats: &st})
		e.Cfg.logf("  %-28s %s", fmt.Sprintf("store commit c=%d", c), st)
	}
	st := Run(ctx, Load{Concurrency: 1, Duration: e.Cfg.Duration, Warmup: e.Cfg.Warmup, Op: func(ctx context.Context, w, seq int) error {
		k := fmt.Appendf(nil, "pair/%010d", seq)
		errc := make(chan error, 1)
		go func() { errc <- db2.Update(ctx, func(tx store.WriteTx) error { return tx.Put(bucket, k, val) }) }()
		err := db.Update(ctx, func(tx store.WriteTx) error { return tx.Put(bucket, k, val) })
		if err2 := <-errc; err == nil {
			err = err2
		}
		return err
	}})
	e.Report.add(Result{Key: "disk.pair.c1", Scenario: "disk", Name: "two stores' commits at once c=1 (no server)", Transport: "bbolt", Stats: &st})
	e.Cfg.logf("  %-28s %s", "two stores at once c=1", st)
	return nil
}
