package etcdstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
)

// TestQuotaExceeded: once etcd's space quota is exceeded, an update fails
// with ErrUnavailable and a message saying what to do, and writes nothing
// (a multi-key update is all or nothing); reads go on.
func TestQuotaExceeded(t *testing.T) {
	c := proctest.NewEtcdCluster(t, 1, "--quota-backend-bytes=4194304")
	cli, err := etcdstore.Dial(context.Background(), etcdstore.ClientConfig{Endpoints: c.Endpoints(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	b := store.Bucket("a")
	db, err := etcdstore.Open(context.Background(), cli, "/quota", "vault", []store.Bucket{b}, etcdstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 512<<10)
	var full error
	for i := 0; i < 64 && full == nil; i++ {
		full = db.Update(context.Background(), func(tx store.WriteTx) error {
			return tx.Put(b, []byte(fmt.Sprintf("fill/%d", i)), []byte(big))
		})
	}
	if full == nil {
		t.Fatal("32 MiB written under a 4 MiB quota")
	}
	if !errors.Is(full, store.ErrUnavailable) || !strings.Contains(full.Error(), "out of space") {
		t.Fatalf("err = %v, want ErrUnavailable saying etcd is out of space", full)
	}
	// A small two-key update is refused whole too.
	err = db.Update(context.Background(), func(tx store.WriteTx) error {
		if err := tx.Put(b, []byte("pair/1"), []byte("1")); err != nil {
			return err
		}
		return tx.Put(b, []byte("pair/2"), []byte("2"))
	})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a small update under NOSPACE: %v", err)
	}
	var n int
	if err := db.View(context.Background(), func(tx store.ReadTx) error {
		_, err := tx.Scan(b, store.ScanOptions{Prefix: []byte("pair/")}, func(k, v []byte) (bool, error) { n++; return true, nil })
		return err
	}); err != nil {
		t.Fatalf("reads under NOSPACE: %v", err)
	}
	if n != 0 {
		t.Fatalf("a refused update left %d of its 2 keys", n)
	}
}
