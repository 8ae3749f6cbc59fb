package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
)

// agent returns a visible agent's API key in the main workspace, creating
// an installation and the agent on first use.
func (e *Env) agent(ctx context.Context) (string, error) {
	if e.agentKey != "" {
		return e.agentKey, nil
	}
	ac := agentv1.NewAgentServiceClient(e.AgentConn)
	octx := bearer(ctx, e.OwnerToken)
	inst, err := ac.CreateInstallation(octx, &agentv1.CreateInstallationRequest{WorkspaceId: e.Workspace, Name: "bench", AppId: "app_bench"})
	if err != nil {
		return "", fmt.Errorf("create installation: %w", err)
	}
	ag, err := ac.CreateAgent(octx, &agentv1.CreateAgentRequest{
		WorkspaceId: e.Workspace, InstallationId: inst.GetInstallation().GetId(), Name: "bench-agent",
	})
	if err != nil {
		return "", fmt.Errorf("create agent: %w", err)
	}
	if ag.GetApiKey() == "" {
		return "", errors.New("create agent: no API key")
	}
	e.agentKey = ag.GetApiKey()
	return e.agentKey, nil
}

// runAgentRead is an authenticated read with a visible agent's API key:
// gRPC AgentService/GetSelf and REST GET /v1/agents/self, at the read
// scenario's concurrency (and in its rounds, next to the empty call).
func runAgentRead(ctx context.Context, e *Env) error {
	key, err := e.agent(ctx)
	if err != nil {
		return err
	}
	ac := agentv1.NewAgentServiceClient(e.AgentConn)
	kctx := bearer(ctx, key)
	req := &agentv1.GetSelfRequest{}
	e.measure(ctx, "agent-read.grpc", "agent-read", "GetSelf (agent API key)", "gRPC", e.Cfg.Concurrency, func(context.Context, int, int) error {
		resp, err := ac.GetSelf(kctx, req)
		if err == nil && resp.GetAgent().GetId() == "" {
			err = errors.New("no agent")
		}
		return err
	})
	e.measure(ctx, "agent-read.rest", "agent-read", "GET /v1/agents/self", "REST", e.Cfg.Concurrency, func(ctx context.Context, _, _ int) error {
		_, err := e.rest(e.newRequest(ctx, http.MethodGet, "/v1/agents/self", key, nil), http.StatusOK, false)
		return err
	})
	return nil
}
