package audit

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// reorderWindow is how far from its position verification looks for the
// place an out-of-place event was written at.
const reorderWindow = 256

// Report is the result of verifying one store's (or one service's exported)
// audit chain.
type Report struct {
	Service string
	// Events counts the chained events checked; Legacy those written before
	// the chain began.
	Events, Legacy int
	// FirstSeq and LastSeq bound the chain's positions present.
	FirstSeq, LastSeq uint64
	// Digests counts valid signed digests; LatestDigest is the highest
	// position one vouches for.
	Digests      int
	LatestDigest uint64
	// Pruned: the chain starts after position 1 at an event a digest vouches for.
	Pruned bool
	// Problem describes the first missing, altered or reordered event;
	// empty when the chain is intact.
	Problem string
	// Notes are facts worth knowing that are not tampering.
	Notes []string
}

// Intact reports whether no problem was found.
func (r *Report) Intact() bool { return r.Problem == "" }

func (r *Report) String() string {
	if !r.Intact() {
		return fmt.Sprintf("%s: TAMPERED: %s", r.Service, r.Problem)
	}
	s := fmt.Sprintf("%s: intact: %d events", r.Service, r.Events)
	if r.Events > 0 {
		s += fmt.Sprintf(" (positions %d-%d)", r.FirstSeq, r.LastSeq)
	}
	if r.Pruned {
		s += ", oldest pruned (start vouched for by a signed digest)"
	}
	s += fmt.Sprintf(", %d written before the chain, %d signed digests", r.Legacy, r.Digests)
	if r.Digests > 0 {
		s += fmt.Sprintf(" (latest at position %d)", r.LatestDigest)
	}
	for _, n := range r.Notes {
		s += "; " + n
	}
	return s
}

func (r *Report) fail(format string, args ...any) {
	if r.Problem == "" {
		r.Problem = fmt.Sprintf(format, args...)
	}
}

// chainInput is what a verification walks: the chained events by position,
// the signed digests by position, and (for a store) its head and legacy set.
type chainInput struct {
	events  map[uint64][]*auditv1.AuditEvent
	digests map[uint64]*Digest
	head    *head
	legacy  *legacyHasher
	store   bool // a store (not an export): digests, head and legacy set apply
}

// VerifyStore checks the audit chain of one service's store in tx: every
// event's hash, the links between them, the signed digests (with pub), the
// head and the events written before the chain began. storeID is the
// store's id (digests name it). A digest must be signed by one of keys
// (replicas that did not share one key each sign with their own). Tampering
// is reported in the Report; the error is for a store that cannot be read.
func VerifyStore(tx store.ReadTx, service, storeID string, keys ...ed25519.PublicKey) (*Report, error) {
	r := &Report{Service: service}
	in := &chainInput{events: map[uint64][]*auditv1.AuditEvent{}, digests: map[uint64]*Digest{}, legacy: newLegacyHasher(), store: true}
	_, err := tx.Scan(Bucket, store.ScanOptions{}, func(k, v []byte) (bool, error) {
		ev := &auditv1.AuditEvent{}
		if err := proto.Unmarshal(v, ev); err != nil {
			r.fail("altered: the event stored under key %q cannot be decoded", k)
			return false, nil
		}
		if string(eventKey(ev)) != string(k) {
			r.fail("altered or moved: the event stored under key %q is event %s of workspace %s", k, ev.GetId(), ev.GetWorkspaceId())
		}
		if ev.GetChainSeq() == 0 {
			in.legacy.add(k, v)
			return false, nil
		}
		in.events[ev.GetChainSeq()] = append(in.events[ev.GetChainSeq()], ev)
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	r.Legacy = int(in.legacy.n)
	var otherIDs []string
	_, err = tx.Scan(ChainBucket, store.ScanOptions{Prefix: digestPrefix}, func(k, v []byte) (bool, error) {
		d := &Digest{}
		if err := json.Unmarshal(v, d); err != nil {
			r.fail("altered: the signed digest under key %q cannot be decoded", k)
			return false, nil
		}
		switch {
		case !verifyAny(d, keys):
			r.fail("altered or forged: the digest for position %d has no valid signature by key %s", d.Seq, keyIDs(keys))
		case string(k) != string(digestKey(d.Seq)):
			r.fail("altered or moved: the digest under key %q is signed for position %d", k, d.Seq)
		case d.Service != service:
			r.fail("moved: the digest for position %d was signed for the %s store, not the %s store", d.Seq, d.Service, service)
		default:
			// A backup of an etcd store is a new file with an id of its own:
			// a different store id is worth saying, not tampering.
			if storeID != "" && d.StoreID != "" && d.StoreID != storeID && !slices.Contains(otherIDs, d.StoreID) {
				otherIDs = append(otherIDs, d.StoreID)
			}
			in.digests[d.Seq] = d
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	for _, id := range otherIDs {
		r.Notes = append(r.Notes, fmt.Sprintf("digests were signed in store %s (this file is store %s: a copy of an etcd store, or restored elsewhere)", id, storeID))
	}
	if in.head, err = readHead(tx); err != nil {
		r.fail("altered: %v", err)
	}
	walk(r, in)
	return r, nil
}

// walk checks the chain in in, filling r.
func walk(r *Report, in *chainInput) {
	seqs := make([]uint64, 0, len(in.events))
	for s := range in.events {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	r.Digests = len(in.digests)
	for s := range in.digests {
		r.LatestDigest = max(r.LatestDigest, s)
	}
	if len(seqs) == 0 {
		if in.store && in.head != nil && in.head.Seq > 0 {
			r.fail("missing: the chain head is at position %d but no chained event is left", in.head.Seq)
		}
		if r.LatestDigest > 0 {
			r.fail("missing: a signed digest vouches for position %d but no chained event is left", r.LatestDigest)
		}
		checkLegacy(r, in, false)
		return
	}
	r.FirstSeq, r.LastSeq = seqs[0], seqs[len(seqs)-1]
	for _, s := range seqs {
		if evs := in.events[s]; len(evs) > 1 {
			ids := make([]string, len(evs))
			for i, e := range evs {
				ids[i] = e.GetId()
			}
			r.fail("reordered or duplicated: %d events claim position %d (%s)", len(evs), s, strings.Join(ids, ", "))
			return
		}
	}
	first := in.events[r.FirstSeq][0]
	prev := ZeroHash
	if r.FirstSeq > 1 {
		switch d := in.digests[r.FirstSeq-1]; {
		case !in.store:
			prev = first.GetChainPrevHash()
			r.Notes = append(r.Notes, fmt.Sprintf("the export starts at position %d", r.FirstSeq))
		case d != nil && d.Hash == first.GetChainPrevHash():
			prev = d.Hash
			r.Pruned = true
		default:
			r.fail("missing: events at positions 1-%d are gone and no signed digest vouches for the chain starting at event %s (position %d)",
				r.FirstSeq-1, first.GetId(), r.FirstSeq)
			return
		}
	}
	var last *auditv1.AuditEvent
	for s := r.FirstSeq; s <= r.LastSeq; s++ {
		evs := in.events[s]
		if len(evs) == 0 {
			next := s + 1
			for len(in.events[next]) == 0 {
				next++
			}
			r.fail("missing: the event at position %d (after event %s, before event %s) is gone", s, last.GetId(), in.events[next][0].GetId())
			return
		}
		ev := evs[0]
		sum, err := EventHash(ev)
		switch {
		case err == nil && sum == ev.GetChainHash() && ev.GetChainPrevHash() == prev:
		case err == nil && belongsElsewhere(in, ev, s) != 0:
			r.fail("reordered: event %s at position %d was written at position %d", ev.GetId(), s, belongsElsewhere(in, ev, s))
			return
		case err != nil || sum != ev.GetChainHash():
			r.fail("altered: event %s at position %d does not match its hash", ev.GetId(), s)
			return
		default:
			r.fail("altered: event %s at position %d does not follow the event before it (%s): one of them was changed and rehashed",
				ev.GetId(), s, prevID(last))
			return
		}
		if d := in.digests[s]; d != nil && d.Hash != ev.GetChainHash() {
			r.fail("altered: the signed digest for position %d vouches for another hash than event %s has: events up to it were changed and rehashed", s, ev.GetId())
			return
		}
		prev, last = ev.GetChainHash(), ev
		r.Events++
	}
	if r.LatestDigest > r.LastSeq {
		r.fail("missing: a signed digest vouches for position %d but the chain ends at position %d (event %s): the newest events were removed",
			r.LatestDigest, r.LastSeq, last.GetId())
		return
	}
	if in.store {
		switch h := in.head; {
		case h == nil:
			r.fail("altered: the chain head is missing")
			return
		case h.Seq != r.LastSeq || h.Hash != last.GetChainHash():
			r.fail("missing: the chain head is at position %d but the last event (%s) is at position %d", h.Seq, last.GetId(), r.LastSeq)
			return
		}
		if r.Digests == 0 {
			r.Notes = append(r.Notes, "no signed digest yet: nothing vouches for the chain's end")
		} else if r.LatestDigest < r.LastSeq {
			r.Notes = append(r.Notes, fmt.Sprintf("%d newest events not yet covered by a signed digest", r.LastSeq-r.LatestDigest))
		}
	}
	checkLegacy(r, in, r.Pruned)
}

// checkLegacy compares the events written before the chain with what the
// head and the latest digest recorded. A pruned chain's legacy set was
// pruned first: what is left is counted, not judged.
func checkLegacy(r *Report, in *chainInput, pruned bool) {
	if !in.store || pruned || r.Problem != "" {
		return
	}
	n, sum := in.legacy.n, in.legacy.sum()
	var want *head
	if d := in.digests[r.LatestDigest]; d != nil {
		want = &head{LegacyEvents: d.LegacyEvents, LegacyHash: d.LegacyHash}
	} else if in.head != nil {
		want = in.head
	}
	if want == nil {
		return
	}
	if want.LegacyEvents != n || want.LegacyHash != sum {
		r.fail("altered: the %d events written before the chain began were changed (%d now, %d recorded when the chain began)", want.LegacyEvents, n, want.LegacyEvents)
	}
}

// belongsElsewhere returns the position near s whose chain fields ev's
// content hashes to, if ev is out of place; else 0.
func belongsElsewhere(in *chainInput, ev *auditv1.AuditEvent, s uint64) uint64 {
	lo := uint64(1)
	if s > reorderWindow {
		lo = s - reorderWindow
	}
	for m := lo; m <= s+reorderWindow; m++ {
		others := in.events[m]
		if m == s || len(others) == 0 {
			continue
		}
		c := proto.Clone(ev).(*auditv1.AuditEvent)
		c.ChainSeq, c.ChainPrevHash = m, others[0].GetChainPrevHash()
		if sum, err := EventHash(c); err == nil && sum == others[0].GetChainHash() {
			return m
		}
	}
	return 0
}

func prevID(ev *auditv1.AuditEvent) string {
	if ev == nil {
		return "the chain start"
	}
	return "event " + ev.GetId()
}

func verifyAny(d *Digest, keys []ed25519.PublicKey) bool {
	for _, k := range keys {
		if d.Verify(k) {
			return true
		}
	}
	return false
}

func keyIDs(keys []ed25519.PublicKey) string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = KeyID(k)
	}
	if len(ids) == 0 {
		return "(none given)"
	}
	return strings.Join(ids, " or ")
}
