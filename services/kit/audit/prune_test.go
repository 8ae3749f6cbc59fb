package audit_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// Pruning the oldest events (in chunks, under small store limits, and
// interrupted part-way) leaves a trail that verifies, starting at an event a
// signed digest vouches for; a tampered chain is not pruned.
func TestAuditPruneKeepsTrailVerifiable(t *testing.T) {
	ctx := context.Background()
	key := signingKey(t)
	pub := key.Public().(ed25519.PublicKey)
	db, err := boltstore.Open(filepath.Join(t.TempDir(), "things.db"), testBuckets,
		boltstore.Options{Limits: store.Limits{MaxOpsPerUpdate: 15, MaxValueBytes: 1 << 20, MaxUpdateBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	old := time.Now().Add(-48 * time.Hour)
	at := func(ev *auditv1.AuditEvent, tm time.Time) *auditv1.AuditEvent {
		ev.Time = timestamppb.New(tm)
		return ev
	}
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		for i := range 2 {
			putRaw(t, tx, at(testEvent("ws_old", i), old.Add(-time.Hour)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var evs []*auditv1.AuditEvent
	for i := 1; i <= 40; i++ {
		ev := testEvent("ws_p", i)
		if i <= 30 {
			at(ev, old.Add(time.Duration(i)*time.Minute))
		}
		if err := audit.Record(ctx, db, ev); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
		if i%3 == 0 {
			if _, err := audit.WriteDigest(ctx, db, "things", key, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	cutoff := time.Now().Add(-24 * time.Hour)

	// Interrupted after two chunks: what is left verifies.
	n := 0
	db.SetFault(func() error {
		if n++; n > 2 {
			return errors.New("injected: the process died")
		}
		return nil
	})
	res, err := audit.Prune(ctx, db, "things", key, cutoff)
	if err == nil || res.Events == 0 || res.Events >= 30 {
		t.Fatalf("interrupted prune: %+v %v", res, err)
	}
	db.SetFault(nil)
	if r := verify(t, db, pub); !r.Intact() || !r.Pruned || r.FirstSeq != res.Through+1 {
		t.Fatalf("after an interrupted prune through %d: %s", res.Through, r)
	}

	res, err = audit.Prune(ctx, db, "things", key, cutoff)
	if err != nil || res.Through != 30 || res.Legacy != 2 {
		t.Fatalf("prune: %+v %v", res, err)
	}
	r := verify(t, db, pub)
	if !r.Intact() || !r.Pruned || r.FirstSeq != 31 || r.Events != 10 || r.Legacy != 0 || r.Digests > 5 {
		t.Fatalf("after pruning: %s", r)
	}
	if res, err := audit.Prune(ctx, db, "things", key, cutoff); err != nil || res.Events != 0 {
		t.Fatalf("prune again: %+v %v", res, err)
	}
	// New events keep chaining after a prune.
	if err := audit.Record(ctx, db, testEvent("ws_p", 41)); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, db, pub); !r.Intact() || r.LastSeq != 41 {
		t.Fatalf("after pruning and writing: %s", r)
	}

	// A tampered chain is not pruned.
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		evs[35].Detail = "edited"
		putRaw(t, tx, evs[35])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Prune(ctx, db, "things", key, time.Now()); !errors.Is(err, audit.ErrTampered) || !strings.Contains(err.Error(), evs[35].Id) {
		t.Fatalf("prune of a tampered chain: %v", err)
	}
}
