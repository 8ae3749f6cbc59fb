package automation

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	automationstorev1 "github.com/backlog/controlplane/gen/go/backlog/automationstore/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// LoadForTest reads a record directly, for tests that run without a server.
func LoadForTest(s *Service, ws, id string) (*automationv1.Automation, error) {
	return s.load(context.Background(), ws, id)
}

// SweepDone is closed when the service's orphan sweep has ended (at once
// without SweepOrphans).
func SweepDone(s *Service) <-chan struct{} { return s.sweepDone }

// HoldRotationLease takes the rotation lease of automation id as another
// replica in the middle of a keyed rotation would hold it.
func HoldRotationLease(s *Service, ws, id string) error {
	return s.db.Update(context.Background(), func(tx store.WriteTx) error {
		return tx.Put(leasesBucket, leaseKey(ws, id), []byte("another replica"), store.ExpiresAt(s.now().Add(leaseTTL)))
	})
}

// DropRotationLease ends that lease, as the other replica's commit would.
func DropRotationLease(s *Service, ws, id string) error {
	return s.db.Update(context.Background(), func(tx store.WriteTx) error { return tx.Delete(leasesBucket, leaseKey(ws, id)) })
}

// RotationLeases counts the rotation leases held in s's store.
func RotationLeases(s *Service) (int, error) {
	n := 0
	err := s.db.View(context.Background(), func(tx store.ReadTx) error {
		_, err := tx.Scan(leasesBucket, store.ScanOptions{}, func(_, _ []byte) (bool, error) { n++; return true, nil })
		return err
	})
	return n, err
}

// PendingMarkers lists the pending markers in s's store: automation id →
// the credential id each names.
func PendingMarkers(s *Service) (map[string]string, error) {
	out := map[string]string{}
	err := s.db.View(context.Background(), func(tx store.ReadTx) error {
		_, err := tx.Scan(pendingBucket, store.ScanOptions{}, func(k, v []byte) (bool, error) {
			m := &automationstorev1.PendingSecret{}
			if err := proto.Unmarshal(v, m); err != nil {
				return false, err
			}
			_, id, _ := splitKey(k)
			out[id] = m.GetCredentialId()
			return true, nil
		})
		return err
	})
	return out, err
}

// WriteInterrupted writes what a create (prev nil) or a rotation of a to
// credential cred leaves when the process dies before the credential
// service commits: the record naming cred, marked pending. For a create
// the name is claimed too.
func WriteInterrupted(s *Service, a *automationv1.Automation, cred string, prev *automationv1.SecretInfo) error {
	a = proto.CloneOf(a)
	a.Credential = &automationv1.SecretInfo{Id: cred, Label: "interrupted", CreatedAt: timestamppb.Now()}
	return s.db.Update(context.Background(), func(tx store.WriteTx) error {
		if prev == nil {
			if err := names.Claim(tx, a.GetWorkspaceId(), a.GetName(), a.GetId()); err != nil {
				return err
			}
		}
		if err := putAutomation(tx, a); err != nil {
			return err
		}
		return putPending(tx, a.GetWorkspaceId(), a.GetId(), &automationstorev1.PendingSecret{CredentialId: cred, Previous: prev, Since: timestamppb.New(s.now())})
	})
}

// ForgetPending drops what s knows in memory of its pending writes, as a
// restart would.
func ForgetPending(s *Service) {
	s.pending.mu.Lock()
	clear(s.pending.m)
	s.pending.mu.Unlock()
}

// SettlePending runs the sweep's settling of marked records begun before
// before.
func SettlePending(s *Service, before time.Time) error {
	return s.settlePending(context.Background(), before)
}
