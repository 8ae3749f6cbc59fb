package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

// TestHealthAndReflection drives each service's gRPC port the way a platform
// operator would with grpcurl: health, then the list of services from
// server reflection. Each service owns its listener, so a port lists its own
// API and no one else's.
func TestHealthAndReflection(t *testing.T) {
	t.Parallel()
	const (
		credentialSvc = "backlog.credential.v1.CredentialService"
		automationSvc = "backlog.automation.v1.AutomationService"
		healthSvc     = "grpc.health.v1.Health"
		reflectionSvc = "grpc.reflection.v1.ServerReflection"
	)
	tests := []struct {
		service string
		want    []string // listed by reflection
		notWant []string // listed elsewhere, never here
	}{
		{"credential", []string{credentialSvc, healthSvc, reflectionSvc}, []string{automationSvc}},
		{"automation", []string{automationSvc, healthSvc, reflectionSvc}, []string{credentialSvc}},
		{"agent", []string{healthSvc, reflectionSvc}, []string{credentialSvc, automationSvc}},
		{"vault", []string{healthSvc, reflectionSvc}, []string{credentialSvc, automationSvc}},
	}
	forEachLayout(t, func(t *testing.T, c *cluster) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, tc := range tests {
			t.Run(tc.service, func(t *testing.T) {
				addr := c.Addr(tc.service)
				resp, err := healthpb.NewHealthClient(c.Conn(addr)).Check(ctx, &healthpb.HealthCheckRequest{})
				if err != nil {
					t.Fatalf("Health/Check at %s: %v", addr, err)
				}
				if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("Health/Check at %s: %s, want SERVING", addr, resp.GetStatus())
				}

				services := listServices(ctx, t, c, addr)
				for _, s := range tc.want {
					if !slices.Contains(services, s) {
						t.Errorf("reflection at %s lists %v, missing %s", addr, services, s)
					}
				}
				for _, s := range tc.notWant {
					if slices.Contains(services, s) {
						t.Errorf("reflection at %s lists %s, which another service owns", addr, s)
					}
				}
				// Every API service reports its own health too.
				for _, s := range tc.want {
					if s == healthSvc || s == reflectionSvc {
						continue
					}
					if err := c.Health(ctx, addr, s); err != nil {
						t.Errorf("Health/Check(%q): %v", s, err)
					}
				}
			})
		}

		t.Run("gateway", func(t *testing.T) {
			c.expect(t, http.StatusOK, http.MethodGet, "/healthz", "", nil)
			ready := c.expect(t, http.StatusOK, http.MethodGet, "/readyz", "", nil)
			for _, s := range []string{"credential", "automation", "agent", "vault"} {
				if got := ready.str("services." + s); got != "SERVING" {
					t.Errorf("/readyz says %s is %q, want SERVING", s, got)
				}
			}
			r := c.call(t, http.MethodGet, "/openapi.json", "", nil)
			var doc struct {
				Paths map[string]any `json:"paths"`
			}
			if r.Status != http.StatusOK || json.Unmarshal(r.Body, &doc) != nil {
				t.Fatalf("GET /openapi.json -> %d, or not JSON", r.Status)
			}
			for _, p := range []string{"/v1/auth/exchange", "/v1/workspaces/{workspaceId}/automations"} {
				if _, ok := doc.Paths[p]; !ok {
					t.Errorf("/openapi.json has no path %s", p)
				}
			}
		})
	})
}

// listServices asks server reflection at addr for its service names.
func listServices(ctx context.Context, t *testing.T, c *cluster, addr string) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(c.Conn(addr)).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection at %s: %v", addr, err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
	}); err != nil {
		t.Fatalf("reflection at %s: send: %v", addr, err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection at %s: recv: %v", addr, err)
	}
	var out []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	if len(out) == 0 {
		t.Fatalf("reflection at %s: no services listed (%v)", addr, resp.GetErrorResponse())
	}
	return out
}
