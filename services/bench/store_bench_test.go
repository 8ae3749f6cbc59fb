package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// The durable-write floor, measured apart from backlogd, to tell what the
// create and rotate scenarios can reach on this disk:
//
//	go test -run '^$' -bench 'Fdatasync|StoreUpdate' -benchtime 2s ./services/bench
//
// BenchmarkFdatasync is one 4 KiB pwrite + fdatasync (the disk's commit
// latency). BenchmarkStoreUpdate is the kit store's group-committed Update
// (bbolt: write pages, fdatasync, write meta, fdatasync) with N concurrent
// writers each putting a 300-byte record, as CreateAutomation does once at
// the credential service and once at the automation service.

func BenchmarkFdatasync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "sync"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkStoreUpdate(b *testing.B) {
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			bucket := store.Bucket("b")
			db, err := boltstore.Open(filepath.Join(b.TempDir(), "s.db"), []store.Bucket{bucket}, boltstore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			val := make([]byte, 300)
			rand.Read(val)
			var n atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N / writers
			for w := range writers {
				cnt := per
				if w == 0 {
					cnt += b.N % writers
				}
				wg.Go(func() {
					for range cnt {
						k := []byte(fmt.Sprintf("w%03d/%012d", w, n.Add(1)))
						if err := db.Update(context.Background(), func(tx store.WriteTx) error {
							return tx.Put(bucket, k, val)
						}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
		})
	}
}
