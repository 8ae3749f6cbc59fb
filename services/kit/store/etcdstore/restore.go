package etcdstore

import (
	"context"
	"fmt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"time"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// Restore loads the store file at path (a backup, in the embedded engine's
// format) into the store called name under prefix, which must not exist
// yet: a restore never merges into live data. Keys keep their remaining
// expiry. It returns how many keys it wrote.
func Restore(ctx context.Context, cli *clientv3.Client, prefix, name, path string, opts Options) (int, error) {
	r, err := boltstore.OpenReader(path)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	var buckets []store.Bucket
	if buckets, err = r.Export(func(store.Bucket, []byte, []byte, time.Time) error { return nil }); err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	opts.Init = true // the marker may name the lost store
	db, err := Open(ctx, cli, prefix, name, buckets, opts)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	if !db.Info().Created {
		return 0, fmt.Errorf("etcd store %s already exists: a restore never merges into live data; restore under an empty -etcd-prefix, or remove the store first (etcdctl del --prefix %s)", db.Name(), db.base)
	}
	type kv struct {
		b      store.Bucket
		k, v   []byte
		expiry time.Time
	}
	var batch []kv
	n := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := db.Update(ctx, func(tx store.WriteTx) error {
			for _, e := range batch {
				var po []store.PutOption
				if !e.expiry.IsZero() {
					po = append(po, store.ExpiresAt(e.expiry))
				}
				if err := tx.Put(e.b, e.k, e.v, po...); err != nil {
					return err
				}
			}
			return nil
		})
		n += len(batch)
		batch = batch[:0]
		return err
	}
	size := 0
	_, err = r.Export(func(b store.Bucket, k, v []byte, exp time.Time) error {
		if len(batch) == db.limits.MaxOpsPerUpdate || size+len(k)+len(v) > db.limits.MaxUpdateBytes/2 {
			if err := flush(); err != nil {
				return err
			}
			size = 0
		}
		batch = append(batch, kv{b: b, k: append([]byte(nil), k...), v: append([]byte{}, v...), expiry: exp})
		size += len(k) + len(v)
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		db.Discard() // the next start finds it missing, not half restored
		return n, fmt.Errorf("restore %s into %s: %w (nothing kept)", path, db.Name(), err)
	}
	return n, nil
}
