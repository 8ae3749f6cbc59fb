package automation

import automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"

// LoadForTest reads a record directly, for tests that run without a server.
func LoadForTest(s *Service, ws, id string) (*automationv1.Automation, error) { return s.load(ws, id) }
