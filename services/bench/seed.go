package bench

import (
	"context"
	"fmt"
	"time"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
)

type listWS struct {
	id, owner string
}

// listWorkspace returns a workspace holding exactly n automations, creating
// and seeding it on first use.
func (e *Env) listWorkspace(ctx context.Context, n int) (listWS, error) {
	if lw, ok := e.listWS[n]; ok {
		return lw, nil
	}
	id, owner, err := e.createWorkspace(ctx, "list-"+countLabel(n))
	if err != nil {
		return listWS{}, err
	}
	t0 := time.Now()
	if err := e.seedAutomationsAPI(ctx, id, owner, n); err != nil {
		return listWS{}, fmt.Errorf("seeding %d automations: %w", n, err)
	}
	d := time.Since(t0)
	note := fmt.Sprintf("seeded through the API, 64 concurrent CreateAutomation calls, in %.1f s (%.0f/s)", d.Seconds(), float64(n)/d.Seconds())
	e.Cfg.logf("  seeded %s automations in %.1f s (%.0f/s)", countLabel(n), d.Seconds(), float64(n)/d.Seconds())
	if n == e.Cfg.ListLarge {
		e.largeSeedNote = note
	}
	lw := listWS{id: id, owner: owner}
	if e.listWS == nil {
		e.listWS = map[int]listWS{}
	}
	e.listWS[n] = lw
	return lw, nil
}

// seedAutomationsAPI creates n automations in ws with 64 concurrent gRPC
// CreateAutomation calls: the real path (a secret issued at the credential
// service, the record and its audit event written at the automation
// service), so the stores hold exactly what production would.
func (e *Env) seedAutomationsAPI(ctx context.Context, ws, owner string, n int) error {
	octx := bearer(ctx, owner)
	return parallel(ctx, n, 64, func(i int) error {
		_, err := e.Auto.CreateAutomation(octx, &automationv1.CreateAutomationRequest{
			WorkspaceId: ws, Name: fmt.Sprintf("seed-%07d", i), Description: "seeded by the benchmark harness",
			Scopes: []string{"automations:read"}, TeamIds: []string{"team-bench"},
		})
		return err
	})
}
