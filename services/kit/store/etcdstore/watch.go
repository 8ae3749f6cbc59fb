package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// Watch implements store.Backend with an etcd watch on the store's data that
// requires a leader; it resumes from the last revision it delivered when the
// stream breaks (a member died, the cluster lost its leader), and ends with
// ErrCompacted when that revision is gone.
func (d *DB) Watch(ctx context.Context, after int64) <-chan store.WatchResponse {
	ch := make(chan store.WatchResponse, 16)
	go func() {
		defer close(ch)
		send := func(r store.WatchResponse) bool {
			select {
			case ch <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		end := func(err error) {
			select {
			case ch <- store.WatchResponse{Err: err}:
			default:
			}
		}
		pause := 50 * time.Millisecond
		for after <= 0 {
			resp, err := d.cli.Get(clientv3.WithRequireLeader(ctx), d.base+"meta", clientv3.WithKeysOnly())
			if err == nil {
				after = resp.Header.Revision
				break
			}
			if ctx.Err() != nil {
				end(ctx.Err())
				return
			}
			if sleep(ctx, pause) != nil {
				end(ctx.Err())
				return
			}
		}
		for {
			if d.closed.Load() {
				end(store.ErrClosed)
				return
			}
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			wch := d.cli.Watch(wctx, d.data, clientv3.WithPrefix(), clientv3.WithRev(after+1))
			for resp := range wch {
				if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
					cancel()
					send(store.WatchResponse{Err: fmt.Errorf("%w: etcd compacted revision %d", store.ErrCompacted, resp.CompactRevision)})
					return
				}
				if resp.Err() != nil {
					break
				}
				for _, r := range d.group(resp.Events) {
					if !send(r) {
						cancel()
						return
					}
					after = r.Revision
				}
				pause = 50 * time.Millisecond
			}
			cancel()
			if ctx.Err() != nil {
				end(ctx.Err())
				return
			}
			if sleep(ctx, pause) != nil {
				end(ctx.Err())
				return
			}
			pause = min(2*pause, 2*time.Second)
		}
	}()
	return ch
}

// group turns events into one WatchResponse per revision.
func (d *DB) group(evs []*clientv3.Event) []store.WatchResponse {
	var out []store.WatchResponse
	for _, ev := range evs {
		b, k, ok := d.split(ev.Kv.Key)
		if !ok {
			continue
		}
		c := store.Change{Bucket: b, Key: append([]byte(nil), k...)}
		if ev.Type == mvccpb.DELETE {
			c.Delete = true
		} else {
			c.Value = append([]byte{}, ev.Kv.Value...)
		}
		rev := ev.Kv.ModRevision
		if n := len(out); n > 0 && out[n-1].Revision == rev {
			out[n-1].Changes = append(out[n-1].Changes, c)
			continue
		}
		out = append(out, store.WatchResponse{Revision: rev, Changes: []store.Change{c}})
	}
	return out
}

// Snapshot implements store.Backend: every key of the store read at one
// revision, written into a bbolt file in the embedded engine's format (so a
// backup restores onto either engine), with the remaining life of keys that
// expire.
func (d *DB) Snapshot(ctx context.Context) (store.Snapshot, error) {
	dir, err := os.MkdirTemp("", "backlog-etcd-snapshot-")
	if err != nil {
		return nil, err
	}
	path := dir + "/" + d.name + ".db"
	fail := func(err error) (store.Snapshot, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	var user []store.Bucket
	for _, b := range d.buckets {
		if !bytes.HasPrefix(b, []byte("_")) {
			user = append(user, b)
		}
	}
	out, err := boltstore.Open(path, user, boltstore.Options{Logger: zap.NewNop(), Limits: store.Limits{MaxOpsPerUpdate: 1 << 20, MaxValueBytes: 1 << 30, MaxUpdateBytes: 1 << 30}})
	if err != nil {
		return fail(err)
	}
	if err := d.copyInto(ctx, out); err != nil {
		out.Close()
		return fail(err)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fail(err)
	}
	return &snapshot{f: f, size: st.Size(), dir: dir}, nil
}

func (d *DB) copyInto(ctx context.Context, out store.Backend) error {
	var rev int64
	from, to := d.data, string(prefixEnd([]byte(d.data)))
	ttls := map[int64]time.Time{}
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(to), clientv3.WithLimit(500)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := d.cli.Get(ctx, from, opts...)
		if err != nil {
			return d.readErr(err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		err = out.Update(ctx, func(tx store.WriteTx) error {
			for _, kv := range resp.Kvs {
				b, k, ok := d.split(kv.Key)
				if !ok || strings.HasPrefix(b, "_") {
					continue
				}
				var po []store.PutOption
				if kv.Lease != 0 {
					at, ok := ttls[kv.Lease]
					if !ok {
						l, err := d.cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
						if err != nil {
							return d.readErr(err)
						}
						at = time.Now().Add(time.Duration(l.TTL) * time.Second)
						ttls[kv.Lease] = at
					}
					po = append(po, store.ExpiresAt(at))
				}
				if err := tx.Put(store.Bucket(b), k, kv.Value, po...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !resp.More {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

type snapshot struct {
	f    *os.File
	size int64
	dir  string
}

func (s *snapshot) Size() int64                        { return s.size }
func (s *snapshot) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, s.f) }
func (s *snapshot) Close() error {
	err := s.f.Close()
	os.RemoveAll(s.dir)
	return err
}
