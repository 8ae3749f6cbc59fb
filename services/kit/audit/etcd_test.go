package audit_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
)

// Two replicas of a service sharing one store in a real etcd write events
// at once, and sign digests at once: the chain head conflicts serialize
// them into one dense chain that verifies.
func TestAuditChainEtcdReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := context.Background()
	c := proctest.NewEtcdCluster(t, 1)
	cli, err := etcdstore.Dial(ctx, etcdstore.ClientConfig{Endpoints: c.Endpoints(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var replicas []store.Backend
	for range 2 {
		db, err := etcdstore.Open(ctx, cli, "/audit-chain", "things", testBuckets, etcdstore.Options{Logger: zaptest.NewLogger(t), MarkerDir: t.TempDir(), Fingerprint: "f1"})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		replicas = append(replicas, db)
	}
	// Each replica signs with a key of its own (no shared key file).
	keys := []ed25519.PrivateKey{signingKey(t), signingKey(t)}
	var wg sync.WaitGroup
	for r, db := range replicas {
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					if err := audit.Record(ctx, db, testEvent(fmt.Sprintf("ws_%d_%d", r, g), i)); err != nil {
						t.Error(err)
						return
					}
					if i%5 == 0 {
						if _, err := audit.WriteDigest(ctx, db, "things", keys[r], time.Now()); err != nil {
							t.Error(err)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	if _, err := audit.WriteDigest(ctx, replicas[1], "things", keys[1], time.Now()); err != nil {
		t.Fatal(err)
	}
	pubs := []ed25519.PublicKey{keys[0].Public().(ed25519.PublicKey), keys[1].Public().(ed25519.PublicKey)}
	var r *audit.Report
	if err := replicas[0].View(ctx, func(tx store.ReadTx) error {
		var err error
		r, err = audit.VerifyStore(tx, "things", replicas[0].Info().ID, pubs...)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !r.Intact() || r.Events != 80 || r.LastSeq != 80 || r.LatestDigest != 80 {
		t.Fatalf("report %s; want intact with 80 events", r)
	}
	// With one replica's key only, the other's digests do not verify.
	if r := verify(t, replicas[0], pubs[0]); r.Intact() || !strings.Contains(r.Problem, "no valid signature") {
		t.Fatalf("verified with one of two keys: %s", r)
	}
}
