package boltstore_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/store"
)

func TestLeasesTakeTurns(t *testing.T) {
	leases := store.Leases{Bucket: things, TTL: time.Minute, Poll: time.Millisecond}
	db := mustOpen(t, filepath.Join(t.TempDir(), "leases.db"))
	ctx := context.Background()
	key := []byte("ws/auto_1")
	first, err := leases.Take(ctx, db, key)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		tok, err := leases.Take(ctx, db, key)
		if err != nil {
			t.Error(err)
		}
		got <- tok
	}()
	select {
	case <-got:
		t.Fatal("a second holder took a held lease")
	case <-time.After(50 * time.Millisecond):
	}
	if err := leases.Release(ctx, db, key, first); err != nil {
		t.Fatal(err)
	}

	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter never took the released lease")
	}
	// A stale token drops nothing; ClearAll ends what is left.
	if err := leases.Release(ctx, db, key, first); err != nil {
		t.Fatal(err)
	}
	if n, err := leases.ClearAll(ctx, db); err != nil || n != 1 {
		t.Fatalf("ClearAll = %d, %v; want the second holder's lease", n, err)
	}
	if _, err := leases.Take(ctx, db, key); err != nil {
		t.Fatal(err)
	}
}
