// Package storetest opens real bbolt stores in a test's temp dir.
package storetest

import (
	"path/filepath"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/store"
)

// New opens a store with buckets in tb.TempDir() and closes it in tb.Cleanup.
func New(tb testing.TB, buckets []store.Bucket) *store.DB {
	tb.Helper()
	db, err := store.Open(filepath.Join(tb.TempDir(), "test.db"), buckets, zaptest.NewLogger(tb))
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}
