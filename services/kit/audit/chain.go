package audit

// The hash chain.
//
// Every event a store records gets the next position (chain_seq, from 1) in
// that store's chain, the hash of the event before it (chain_prev_hash; 64
// zeros for the first) and its own hash (chain_hash):
//
//	chain_hash = SHA-256("backlog audit event v1" 0x00 | prev (32) | u64 seq |
//	             str id | str workspace_id | i64 seconds | i32 nanos | str action |
//	             str outcome | str actor_kind | str actor_id | str target_kind |
//	             str target_id | str client_ip | str request_id | str service | str detail)
//
// where str is a u32 big-endian length and the bytes. The hash covers the
// fields, not their protobuf encoding, so that it can be recomputed from the
// exported JSON lines as well as from the store.
//
// The chain head (last position and hash) is one key, read and written in
// the same transaction as the event: two concurrent writers conflict on it,
// and every engine serializes or retries them, so positions are dense and
// follow commit order. Events written before the chain existed (chain_seq 0)
// are covered as a set: the first chained write records their count and a
// hash over their stored bytes in the head, which signed digests carry.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// ChainBucket holds the chain head, the signed digests and the export
// checkpoint. Every store with an audit Bucket declares it too.
var ChainBucket = store.Bucket("audit_chain")

// Buckets are the buckets a service's schema declares for its audit trail.
var Buckets = []store.Bucket{Bucket, ChainBucket}

var (
	headKey       = []byte("head")
	digestPrefix  = []byte("digest/")
	checkpointKey = []byte("export/checkpoint")
)

// OpsPerEvent is how many store writes Put makes per event (the event and the
// chain head): callers that chunk events to fit store.Limits count this.
const OpsPerEvent = 2

// ZeroHash is the previous hash of the first event of a chain.
var ZeroHash = hex.EncodeToString(make([]byte, sha256.Size))

// head is the stored chain head.
type head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	// The events written before the chain began (chain_seq 0), as a set.
	LegacyEvents uint64 `json:"legacyEvents"`
	LegacyHash   string `json:"legacyHash"`
}

func readHead(tx store.ReadTx) (*head, error) {
	v, err := tx.Get(ChainBucket, headKey)
	if err != nil || v == nil {
		return nil, err
	}
	h := &head{}
	if err := json.Unmarshal(v, h); err != nil {
		return nil, fmt.Errorf("audit chain head: %w", err)
	}
	return h, nil
}

// link gives ev the next position of tx's chain and moves the head to it.
func link(tx store.WriteTx, ev *auditv1.AuditEvent) error {
	h, err := readHead(tx)
	if err != nil {
		return err
	}
	if h == nil {
		if h, err = genesis(tx); err != nil {
			return err
		}
	}
	ev.ChainSeq = h.Seq + 1
	ev.ChainPrevHash = h.Hash
	sum, err := EventHash(ev)
	if err != nil {
		return err
	}
	ev.ChainHash = sum
	h.Seq, h.Hash = ev.ChainSeq, sum
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return tx.Put(ChainBucket, headKey, b)
}

// genesis starts the chain of a store whose head is missing: the events
// already there without a position are hashed as a set. If chained events
// are there (the head key was lost), the chain continues from the last of
// them, and verification judges what happened.
func genesis(tx store.ReadTx) (*head, error) {
	h := &head{Hash: ZeroHash}
	lh := newLegacyHasher()
	_, err := tx.Scan(Bucket, store.ScanOptions{}, func(k, v []byte) (bool, error) {
		ev := &auditv1.AuditEvent{}
		if err := proto.Unmarshal(v, ev); err != nil {
			return false, fmt.Errorf("decode audit event %q: %w", k, err)
		}
		if ev.ChainSeq == 0 {
			lh.add(k, v)
			return false, nil
		}
		if ev.ChainSeq > h.Seq {
			h.Seq, h.Hash = ev.ChainSeq, ev.ChainHash
		}
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	h.LegacyEvents, h.LegacyHash = lh.n, lh.sum()
	return h, nil
}

type legacyHasher struct {
	h interface {
		Write([]byte) (int, error)
		Sum([]byte) []byte
	}
	n uint64
}

func newLegacyHasher() *legacyHasher {
	h := sha256.New()
	h.Write([]byte("backlog audit legacy v1\x00"))
	return &legacyHasher{h: h}
}

// add hashes one event's key and stored bytes; keys come in store order.
func (l *legacyHasher) add(k, v []byte) {
	l.n++
	l.h.Write(appendBytes(nil, k))
	l.h.Write(appendBytes(nil, v))
}

func (l *legacyHasher) sum() string { return hex.EncodeToString(l.h.Sum(nil)) }

func appendBytes(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// EventHash computes ev's chain hash from its fields, its position and its
// previous hash (see the package comment in chain.go).
func EventHash(ev *auditv1.AuditEvent) (string, error) {
	prev, err := hex.DecodeString(ev.GetChainPrevHash())
	if err != nil || len(prev) != sha256.Size {
		return "", fmt.Errorf("audit event %s: malformed previous hash", ev.GetId())
	}
	b := []byte("backlog audit event v1\x00")
	b = append(b, prev...)
	b = binary.BigEndian.AppendUint64(b, ev.GetChainSeq())
	b = appendStr(b, ev.GetId())
	b = appendStr(b, ev.GetWorkspaceId())
	b = binary.BigEndian.AppendUint64(b, uint64(ev.GetTime().GetSeconds()))
	b = binary.BigEndian.AppendUint32(b, uint32(ev.GetTime().GetNanos()))
	for _, s := range []string{ev.GetAction(), ev.GetOutcome(), ev.GetActorKind(), ev.GetActorId(),
		ev.GetTargetKind(), ev.GetTargetId(), ev.GetClientIp(), ev.GetRequestId(), ev.GetService(), ev.GetDetail()} {
		b = appendStr(b, s)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// eventKey is where ev is stored in Bucket.
func eventKey(ev *auditv1.AuditEvent) []byte { return store.Key(ev.GetWorkspaceId(), ev.GetId()) }

func isDigestKey(k []byte) bool { return bytes.HasPrefix(k, digestPrefix) }
