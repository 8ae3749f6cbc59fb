package etcdstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
	"github.com/backlog/controlplane/services/kit/storetest"
)

var prefixes atomic.Int64

// TestConformance runs the storage seam's suite on a real 3-member etcd
// cluster, each test under a prefix of its own.
func TestConformance(t *testing.T) {
	c := proctest.NewEtcdCluster(t, 3)
	cli, err := etcdstore.Dial(context.Background(), etcdstore.ClientConfig{Endpoints: c.Endpoints(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	storetest.Run(t, func(t *testing.T, buckets []store.Bucket) store.Backend {
		prefix := fmt.Sprintf("/conformance%d", prefixes.Add(1))
		db, err := etcdstore.Open(context.Background(), cli, prefix, "test", buckets, etcdstore.Options{Logger: zaptest.NewLogger(t), MarkerDir: t.TempDir(), Fingerprint: "f1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	})

	t.Run("RefusesWrongPrefixes", func(t *testing.T) {
		ctx := context.Background()
		open := func(prefix, fp, markers string) error {
			db, err := etcdstore.Open(ctx, cli, prefix, "credential", []store.Bucket{store.Bucket("a")}, etcdstore.Options{MarkerDir: markers, Fingerprint: fp})
			if err == nil {
				db.Close()
			}
			return err
		}
		markers := t.TempDir()
		if err := open("/deploy-a", "fp-a", markers); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			prefix, fp, markers, want string
		}{
			{"/deploy-a", "fp-b", t.TempDir(), "belongs to another Backlog deployment"},
			{"/deploy-a/nested", "fp-a", t.TempDir(), "lies inside the Backlog deployment at /deploy-a"},
			{"/deploy-other", "fp-a", markers, "is missing (no keys)"},
			{"relative", "fp-a", t.TempDir(), "absolute key path"},
		} {
			err := open(tc.prefix, tc.fp, tc.markers)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("open %s: err = %v, want it to say %q", tc.prefix, err, tc.want)
			}
		}
		if _, err := cli.Put(ctx, "/foreign/key", "x"); err != nil {
			t.Fatal(err)
		}
		if err := open("/foreign", "fp-a", t.TempDir()); err == nil || !strings.Contains(err.Error(), "not a Backlog deployment") {
			t.Errorf("a prefix holding foreign keys: err = %v", err)
		}
		// -init-store accepts an empty prefix where a store was.
		db, err := etcdstore.Open(ctx, cli, "/deploy-other", "credential", []store.Bucket{store.Bucket("a")}, etcdstore.Options{MarkerDir: markers, Fingerprint: "fp-a", Init: true})
		if err != nil || !db.Info().Reinit {
			t.Fatalf("init: %v %+v", err, db)
		}
	})

	t.Run("SnapshotRestores", func(t *testing.T) {
		ctx := context.Background()
		bk := []store.Bucket{store.Bucket("a"), store.Bucket("b")}
		src, err := etcdstore.Open(ctx, cli, "/snap-src", "vault", bk, etcdstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 300 { // more than one update's worth
			i := i
			if err := src.Update(ctx, func(tx store.WriteTx) error {
				opts := []store.PutOption{}
				if i%100 == 7 {
					opts = append(opts, store.ExpiresAt(time.Now().Add(time.Hour)))
				}
				return tx.Put(bk[i%2], []byte(fmt.Sprintf("k%03d", i)), []byte(fmt.Sprint(i)), opts...)
			}); err != nil {
				t.Fatal(err)
			}
		}
		snap, err := src.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "vault.db")
		f, _ := os.Create(path)
		if _, err := snap.WriteTo(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		snap.Close()
		n, err := etcdstore.Restore(ctx, cli, "/snap-dst", "vault", path, etcdstore.Options{})
		if err != nil || n != 300 {
			t.Fatalf("restore: %d keys, %v", n, err)
		}
		if _, err := etcdstore.Restore(ctx, cli, "/snap-dst", "vault", path, etcdstore.Options{}); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("a second restore onto live data: %v", err)
		}
		dst, err := etcdstore.Open(ctx, cli, "/snap-dst", "vault", bk, etcdstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		for _, b := range bk {
			if err := dst.View(ctx, func(tx store.ReadTx) error {
				_, err := tx.Scan(b, store.ScanOptions{}, func(k, v []byte) (bool, error) {
					var i int
					fmt.Sscan(string(v), &i)
					if string(k) != fmt.Sprintf("k%03d", i) || bk[i%2][0] != b[0] {
						t.Errorf("restored %s/%s = %s", b, k, v)
					}
					count++
					return true, nil
				})
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		if count != 300 {
			t.Fatalf("restored %d keys, want 300", count)
		}
		// Keys that expire keep their lease.
		resp, err := cli.Get(ctx, "/snap-dst/vault/d/b/k007")
		if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
			t.Fatalf("an expiring key lost its expiry in the restore: %v %v", resp, err)
		}
	})

	t.Run("UnreachableNamesEndpoints", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := etcdstore.Dial(ctx, etcdstore.ClientConfig{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Fatalf("err = %v, want one naming the endpoint", err)
		}
	})
}
