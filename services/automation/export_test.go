package automation

import (
	"context"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
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
