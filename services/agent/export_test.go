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
func (s *Service) Replays() int { return s.replays.len() }

// SweepDone is closed when the service's orphan sweep has ended (at once
// without SweepOrphans).
func SweepDone(s *Service) <-chan struct{} { return s.sweepDone }

// FlushRefusals writes the summaries of coalesced refusals whose window has
// ended (on the service's clock), as the background flush does.
func (s *Service) FlushRefusals() { s.flushRefusals() }
