package audit

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// PruneResult says what Prune removed.
type PruneResult struct {
	// Events counts the chained events removed; Through is the position of
	// the last one (a signed digest for it now starts the chain).
	Events  int
	Through uint64
	// Legacy counts removed events written before the chain began.
	Legacy int
}

// ErrTampered: Prune found the chain already broken and removed nothing.
var ErrTampered = errors.New("audit chain does not verify")

// Prune removes the oldest events of db's chain, those written before
// cutoff, so that the trail still verifies: it removes whole positions from
// the start, in chunks that fit the store's limits, and each chunk's
// transaction also writes a signed digest for its last position (and drops
// the digests before it). Stopped part-way, the chain starts at an event a
// digest vouches for. It refuses (ErrTampered) a chain that does not verify:
// evidence of tampering is not pruned away.
func Prune(ctx context.Context, db store.Backend, service string, key ed25519.PrivateKey, cutoff time.Time) (*PruneResult, error) {
	pub := key.Public().(ed25519.PublicKey)
	type item struct {
		seq uint64
		key []byte
	}
	var chained []item
	var legacy [][]byte
	var report *Report
	err := db.View(ctx, func(tx store.ReadTx) error {
		chained, legacy = nil, nil
		var err error
		if report, err = VerifyStore(tx, service, db.Info().ID, pub); err != nil {
			return err
		}
		times := map[uint64]time.Time{}
		_, err = tx.Scan(Bucket, store.ScanOptions{}, func(k, v []byte) (bool, error) {
			ev := &auditv1.AuditEvent{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return false, err
			}
			if ev.GetChainSeq() == 0 {
				if ev.GetTime().AsTime().Before(cutoff) {
					legacy = append(legacy, slices.Clone(k))
				}
				return false, nil
			}
			times[ev.GetChainSeq()] = ev.GetTime().AsTime()
			chained = append(chained, item{ev.GetChainSeq(), slices.Clone(k)})
			return false, nil
		})
		if err != nil {
			return err
		}
		slices.SortFunc(chained, func(a, b item) int {
			switch {
			case a.seq < b.seq:
				return -1
			case a.seq > b.seq:
				return 1
			}
			return 0
		})
		// The prefix of the chain older than cutoff; the newest event stays.
		n := 0
		for n < len(chained)-1 && times[chained[n].seq].Before(cutoff) {
			n++
		}
		chained = chained[:n]
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !report.Intact() {
		return nil, fmt.Errorf("%w: %s", ErrTampered, report.Problem)
	}
	res := &PruneResult{}
	per := max(1, min(100, db.Limits().MaxOpsPerUpdate-10))
	for chunk := range slices.Chunk(chained, per-1) {
		last := chunk[len(chunk)-1]
		err := db.Update(ctx, func(tx store.WriteTx) error {
			v, err := tx.Get(Bucket, last.key)
			if err != nil {
				return err
			}
			ev := &auditv1.AuditEvent{}
			if v == nil || proto.Unmarshal(v, ev) != nil || ev.GetChainSeq() != last.seq {
				return fmt.Errorf("audit event at position %d changed while pruning", last.seq)
			}
			h, err := readHead(tx)
			if err != nil || h == nil {
				return fmt.Errorf("audit chain head: %v", err)
			}
			d := &Digest{Service: service, StoreID: db.Info().ID, Seq: last.seq, Hash: ev.GetChainHash(),
				LegacyEvents: h.LegacyEvents, LegacyHash: h.LegacyHash, Time: time.Now().UTC(), KeyID: KeyID(pub)}
			d.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, d.signed()))
			b, err := json.Marshal(d)
			if err != nil {
				return err
			}
			if err := tx.Put(ChainBucket, digestKey(last.seq), b); err != nil {
				return err
			}
			for _, it := range chunk {
				if err := tx.Delete(Bucket, it.key); err != nil {
					return err
				}
			}
			// Digests before the new start vouch for nothing left; as many
			// as this update has room for go now, the rest with later chunks.
			var old [][]byte
			room := per - len(chunk)
			_, err = tx.Scan(ChainBucket, store.ScanOptions{Prefix: digestPrefix}, func(k, _ []byte) (bool, error) {
				if string(k) < string(digestKey(last.seq)) && len(old) < room {
					old = append(old, slices.Clone(k))
				}
				return false, nil
			})
			if err != nil {
				return err
			}
			for _, k := range old {
				if err := tx.Delete(ChainBucket, k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, err
		}
		res.Events += len(chunk)
		res.Through = last.seq
	}
	if res.Events == 0 {
		return res, nil // the chain is not pruned: the pre-chain set stays whole
	}
	for more := true; more; {
		err := db.Update(ctx, func(tx store.WriteTx) error {
			var old [][]byte
			_, err := tx.Scan(ChainBucket, store.ScanOptions{Prefix: digestPrefix, Limit: per + 1}, func(k, _ []byte) (bool, error) {
				if string(k) < string(digestKey(res.Through)) {
					old = append(old, slices.Clone(k))
				}
				return true, nil
			})
			if err != nil {
				return err
			}
			more = len(old) > per
			for _, k := range old[:min(len(old), per)] {
				if err := tx.Delete(ChainBucket, k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, err
		}
	}
	for chunk := range slices.Chunk(legacy, per) {
		err := db.Update(ctx, func(tx store.WriteTx) error {
			for _, k := range chunk {
				if err := tx.Delete(Bucket, k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, err
		}
		res.Legacy += len(chunk)
	}
	return res, nil
}
