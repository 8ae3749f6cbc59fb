package audit_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

var testBuckets = []store.Bucket{store.Bucket("things"), audit.Bucket, audit.ChainBucket}

func openStore(t *testing.T, path string) *boltstore.DB {
	t.Helper()
	db, err := boltstore.Open(path, testBuckets, boltstore.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return db
}

func testEvent(ws string, i int) *auditv1.AuditEvent {
	return &auditv1.AuditEvent{Id: ids.New("evt"), WorkspaceId: ws, Time: timestamppb.Now(), Action: "thing.create",
		Outcome: audit.Success, ActorKind: "member", ActorId: "mem_1", TargetKind: "thing", TargetId: fmt.Sprintf("thing_%d", i),
		ClientIp: "127.0.0.1", RequestId: "req", Service: "things", Detail: fmt.Sprintf("n=%d", i)}
}

func signingKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	k, err := audit.LoadOrCreateSigningKey(filepath.Join(t.TempDir(), audit.SigningKeyFile), true)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func verify(t *testing.T, db store.Backend, pub ed25519.PublicKey) *audit.Report {
	t.Helper()
	var r *audit.Report
	err := db.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		r, err = audit.VerifyStore(tx, "things", db.Info().ID, pub)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Concurrent writers (single events, and several events in one update)
// make one dense chain, and it verifies.
func TestAuditChainConcurrentWritersIntact(t *testing.T) {
	ctx := context.Background()
	db := openStore(t, filepath.Join(t.TempDir(), "things.db"))
	defer db.Close()
	key := signingKey(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if i%5 == 0 {
					err := db.Update(ctx, func(tx store.WriteTx) error {
						for j := range 3 {
							if err := audit.Put(tx, testEvent(fmt.Sprintf("ws_%d", g), 100*i+j)); err != nil {
								return err
							}
						}
						return tx.Put(store.Bucket("things"), []byte(fmt.Sprintf("%d/%d", g, i)), []byte("x"))
					})
					if err != nil {
						t.Error(err)
					}
					continue
				}
				if err := audit.Record(ctx, db, testEvent(fmt.Sprintf("ws_%d", g), i)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if _, err := audit.WriteDigest(ctx, db, "things", key, time.Now()); err != nil {
		t.Fatal(err)
	}
	r := verify(t, db, key.Public().(ed25519.PublicKey))
	want := 8 * (16 + 4*3)
	if !r.Intact() || r.Events != want || r.FirstSeq != 1 || r.LastSeq != uint64(want) || r.LatestDigest != uint64(want) {
		t.Fatalf("report %s; want intact, %d events", r, want)
	}
}

// tamperCase changes a copy of a store; want is a fragment of the report.
type tamperCase struct {
	name   string
	tamper func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent)
	want   string
}

func putRaw(t *testing.T, tx store.WriteTx, ev *auditv1.AuditEvent) {
	t.Helper()
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Put(audit.Bucket, store.Key(ev.WorkspaceId, ev.Id), b); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, tx store.WriteTx, ev *auditv1.AuditEvent) {
	t.Helper()
	if err := tx.Delete(audit.Bucket, store.Key(ev.WorkspaceId, ev.Id)); err != nil {
		t.Fatal(err)
	}
}

// rehash recomputes the chain from position from on, and the head: what an
// intruder who knows the format (but not the signing key) can do.
func rehash(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent, from int) {
	t.Helper()
	prev := evs[from-1].ChainPrevHash
	for _, ev := range evs[from-1:] {
		ev.ChainPrevHash = prev
		sum, err := audit.EventHash(ev)
		if err != nil {
			t.Fatal(err)
		}
		ev.ChainHash, prev = sum, sum
		putRaw(t, tx, ev)
	}
	last := evs[len(evs)-1]
	var h map[string]any
	v, _ := tx.Get(audit.ChainBucket, []byte("head"))
	if err := json.Unmarshal(v, &h); err != nil {
		t.Fatal(err)
	}
	h["seq"], h["hash"] = last.ChainSeq, last.ChainHash
	b, _ := json.Marshal(h)
	if err := tx.Put(audit.ChainBucket, []byte("head"), b); err != nil {
		t.Fatal(err)
	}
}

// A store with 2 events from before the chain, then 30 chained ones with
// digests at 10 and 30; each case tampers with a copy, which verification
// must flag (and the untouched copy passes).
func TestAuditVerifyFindsTampering(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "things.db")
	db := openStore(t, base)
	key := signingKey(t)
	pub := key.Public().(ed25519.PublicKey)
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		for i := range 2 { // written by a version without the chain
			putRaw(t, tx, testEvent("ws_old", i))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 30; i++ {
		if err := audit.Record(ctx, db, testEvent("ws_a", i)); err != nil {
			t.Fatal(err)
		}
		if i == 10 || i == 30 {
			if _, err := audit.WriteDigest(ctx, db, "things", key, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	cases := []tamperCase{
		{"untouched", func(*testing.T, store.WriteTx, []*auditv1.AuditEvent) {}, ""},
		{"altered detail", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			evs[4].Detail = "nothing to see"
			putRaw(t, tx, evs[4])
		}, "altered: event " + "%5" + " at position 5 does not match its hash"},
		{"altered and rehashed", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			evs[4].ActorId = "mem_innocent"
			rehash(t, tx, evs, 5)
		}, "altered: the signed digest for position 10"},
		{"deleted", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			del(t, tx, evs[6])
		}, "missing: the event at position 7 (after event %6, before event %8) is gone"},
		{"reordered", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			a, b := evs[11], evs[12]
			a.ChainSeq, b.ChainSeq = b.ChainSeq, a.ChainSeq
			a.ChainPrevHash, b.ChainPrevHash = b.ChainPrevHash, a.ChainPrevHash
			a.ChainHash, b.ChainHash = b.ChainHash, a.ChainHash
			putRaw(t, tx, a)
			putRaw(t, tx, b)
		}, "reordered: event %13 at position 12 was written at position 13"},
		{"moved to another key", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			a, b := evs[2], evs[3]
			va, _ := tx.Get(audit.Bucket, store.Key(a.WorkspaceId, a.Id))
			vb, _ := tx.Get(audit.Bucket, store.Key(b.WorkspaceId, b.Id))
			va, vb = append([]byte(nil), va...), append([]byte(nil), vb...)
			tx.Put(audit.Bucket, store.Key(a.WorkspaceId, a.Id), vb)
			tx.Put(audit.Bucket, store.Key(b.WorkspaceId, b.Id), va)
		}, "altered or moved"},
		{"newest removed, head rolled back", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			for _, ev := range evs[27:] {
				del(t, tx, ev)
			}
			rehash(t, tx, evs[:27], 27)
		}, "missing: a signed digest vouches for position 30 but the chain ends at position 27"},
		{"newest removed with their digest", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			for _, ev := range evs[27:] {
				del(t, tx, ev)
			}
			tx.Delete(audit.ChainBucket, []byte(fmt.Sprintf("digest/%020d", 30)))
		}, "missing: the chain head is at position 30 but the last event"},
		{"digest forged", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			k := []byte(fmt.Sprintf("digest/%020d", 10))
			v, _ := tx.Get(audit.ChainBucket, k)
			var d audit.Digest
			json.Unmarshal(v, &d)
			d.Hash = evs[9].ChainPrevHash
			b, _ := json.Marshal(d)
			tx.Put(audit.ChainBucket, k, b)
		}, "has no valid signature"},
		{"oldest removed without a digest", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			for _, ev := range evs[:5] {
				del(t, tx, ev)
			}
		}, "missing: events at positions 1-5 are gone and no signed digest vouches"},
		{"pruned up to a digest", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			for _, ev := range evs[:10] {
				del(t, tx, ev)
			}
			legacyDelete(t, tx)
		}, ""},
		{"legacy altered", func(t *testing.T, tx store.WriteTx, evs []*auditv1.AuditEvent) {
			legacyDelete(t, tx)
		}, "the 2 events written before the chain began were changed"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("copy%d", i), "things.db")
			copyStore(t, base, path)
			db := openStore(t, path)
			evs := chained(t, db)
			if len(evs) != 30 {
				t.Fatalf("%d chained events", len(evs))
			}
			if err := db.Update(ctx, func(tx store.WriteTx) error { c.tamper(t, tx, evs); return nil }); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			// Offline, as `backlogd audit verify` reads a stopped store.
			rd, err := boltstore.OpenReader(path)
			if err != nil {
				t.Fatal(err)
			}
			defer rd.Close()
			id, err := boltstore.ReadID(path)
			if err != nil {
				t.Fatal(err)
			}
			var r *audit.Report
			if err := rd.View(func(tx store.ReadTx) error {
				r, err = audit.VerifyStore(tx, "things", id, pub)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			want := c.want
			for n := len(evs); n >= 1; n-- { // %N: the id of the event written Nth
				want = strings.ReplaceAll(want, fmt.Sprintf("%%%d", n), evs[n-1].Id)
			}
			switch {
			case want == "" && !r.Intact():
				t.Fatalf("want intact, got %s", r)
			case want != "" && (r.Intact() || !strings.Contains(r.Problem, want)):
				t.Fatalf("want a problem with %q, got %s", want, r)
			}
			t.Log(r)
		})
	}
}

func legacyDelete(t *testing.T, tx store.WriteTx) {
	t.Helper()
	var keys [][]byte
	tx.Scan(audit.Bucket, store.ScanOptions{Prefix: []byte("ws_old/")}, func(k, v []byte) (bool, error) {
		keys = append(keys, append([]byte(nil), k...))
		return false, nil
	})
	if len(keys) != 2 {
		t.Fatalf("%d legacy events", len(keys))
	}
	tx.Delete(audit.Bucket, keys[0])
}

// chained reads the chained events in chain order.
func chained(t *testing.T, db store.Backend) []*auditv1.AuditEvent {
	t.Helper()
	var out []*auditv1.AuditEvent
	err := db.View(context.Background(), func(tx store.ReadTx) error {
		out = nil
		_, err := tx.Scan(audit.Bucket, store.ScanOptions{}, func(k, v []byte) (bool, error) {
			ev := &auditv1.AuditEvent{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return false, err
			}
			if ev.ChainSeq > 0 {
				out = append(out, ev)
			}
			return false, nil
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sorted := make([]*auditv1.AuditEvent, len(out))
	for _, ev := range out {
		if ev.ChainSeq > uint64(len(out)) {
			t.Fatalf("position %d of %d", ev.ChainSeq, len(out))
		}
		sorted[ev.ChainSeq-1] = ev
	}
	return sorted
}

func copyStore(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", ".id"} {
		in, err := os.Open(from + suffix)
		if err != nil {
			if suffix != "" && os.IsNotExist(err) {
				continue
			}
			t.Fatal(err)
		}
		out, err := os.OpenFile(to+suffix, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		out.Close()
	}
}
