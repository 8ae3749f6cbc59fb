package automation

import (
	"context"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
)

// LoadForTest reads a record directly, for tests that run without a server.
func LoadForTest(s *Service, ws, id string) (*automationv1.Automation, error) {
	return s.load(context.Background(), ws, id)
}

// SweepDone is closed when the service's orphan sweep has ended (at once
// without SweepOrphans).
func SweepDone(s *Service) <-chan struct{} { return s.sweepDone }
