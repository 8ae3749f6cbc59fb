package agent

import "github.com/backlog/controlplane/services/kit/store"

// ForgetRotationSecret drops the record of an agent's rotation secret, as
// for an agent registered before rotation secrets existed (tests only).
func (s *Service) ForgetRotationSecret(ws, id string) error {
	return s.db.Update(t0(), func(tx store.WriteTx) error {
		return deleteCredentialInfo(tx, ws, id, credKeyRotationSecret)
	})
}

// Replays is the number of self-rotation results held for retries.
func (s *Service) Replays() int {
	n, err := s.replays.len(t0())
	if err != nil {
		return -1
	}
	return n
}

// ReplaySealKey is the key a keyed self-rotation's replay is sealed under,
// derived from the presented pair and Idempotency-Key: a test looks for it
// in the raw store bytes.
func ReplaySealKey(idemKey, apiKey, secret string) []byte {
	_, key, err := derive(idemKey, apiKey, secret)
	if err != nil {
		panic(err)
	}
	return key
}

// SweepDone is closed when the service's orphan sweep has ended (at once
// without SweepOrphans).
func SweepDone(s *Service) <-chan struct{} { return s.sweepDone }

// FlushRefusals writes the summaries of coalesced refusals whose window has
// ended (on the service's clock), as the background flush does.
func (s *Service) FlushRefusals() { s.flushRefusals() }

// HoldRotationLease takes the admin-rotation lease of agent id as another
// replica in the middle of a keyed rotation would hold it.
func (s *Service) HoldRotationLease(ws, id string) error {
	return s.db.Update(t0(), func(tx store.WriteTx) error {
		return tx.Put(leasesBucket, leaseKey(ws, id), []byte("another replica"), store.ExpiresAt(s.now().Add(leaseTTL)))
	})
}

// DropRotationLease ends that lease, as the other replica's commit would.
func (s *Service) DropRotationLease(ws, id string) error {
	return s.db.Update(t0(), func(tx store.WriteTx) error { return tx.Delete(leasesBucket, leaseKey(ws, id)) })
}

// RotationLeases counts the rotation leases held in s's store.
func (s *Service) RotationLeases() (int, error) {
	n := 0
	err := s.db.View(t0(), func(tx store.ReadTx) error {
		_, err := tx.Scan(leasesBucket, store.ScanOptions{}, func(_, _ []byte) (bool, error) { n++; return true, nil })
		return err
	})
	return n, err
}
