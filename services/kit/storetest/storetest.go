// Package storetest opens real stores in a test's temp dir, and holds the
// conformance suite (Run) that every store engine passes.
package storetest

import (
	"path/filepath"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// New opens a bbolt store with buckets in tb.TempDir() and closes it in tb.Cleanup.
func New(tb testing.TB, buckets []store.Bucket) *boltstore.DB {
	tb.Helper()
	db, err := boltstore.Open(filepath.Join(tb.TempDir(), "test.db"), buckets, boltstore.Options{Logger: zaptest.NewLogger(tb)})
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// Opener opens an empty store with buckets for one test, closed by the test's cleanup.
type Opener func(t *testing.T, buckets []store.Bucket) store.Backend
