package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/gen"
)

// healthz answers 200 while the process is alive.
func (g *Gateway) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyResponse is the body of /readyz.
type readyResponse struct {
	Status string `json:"status"`
	// Services maps each service to its health: "SERVING", "NOT_SERVING",
	// "SERVICE_UNKNOWN", or the gRPC code of a failed check ("Unavailable",
	// "DeadlineExceeded", ...).
	Services map[string]string `json:"services"`
	// NotReady lists the services that are not SERVING, in a fixed order
	// ([] when every one is).
	NotReady []string `json:"notReady"`
	// Reasons says why each service in NotReady is not ready (absent when
	// every one is), e.g. {"vault": "sealed: …"}.
	Reasons map[string]string `json:"reasons,omitempty"`
}

// vaultSealedHealth is the health service name a sealed vault registers
// (vault.SealedHealthService): a check of it answers only while the vault is
// sealed.
const vaultSealedHealth = "backlog.vault.v1.VaultService/sealed"

// notReadyReason says why a service that is not SERVING is not ready.
func notReadyReason(ctx context.Context, b backend, state string) string {
	if state == healthpb.HealthCheckResponse_NOT_SERVING.String() && b.name == "vault" {
		if _, err := healthpb.NewHealthClient(b.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: vaultSealedHealth}); err == nil {
			return "sealed: no key-encryption key loaded; start the vault with -vault-kek-file (or -vault-kek-pkcs11-*): secret values cannot be created, updated or used"
		}
	}
	switch state {
	case healthpb.HealthCheckResponse_NOT_SERVING.String():
		return "not serving (starting or shutting down)"
	case "Unavailable", "DeadlineExceeded":
		return "unreachable from the gateway"
	}
	return "health check failed: " + state
}

// readyz answers 200 when every service reports SERVING on grpc.health.v1
// (overall server health, service ""), else 503 naming those that do not
// and why (a sealed vault is not ready: it cannot handle secret values).
func (g *Gateway) readyz(w http.ResponseWriter, r *http.Request) {
	states := make([]string, len(g.backends))
	reasons := make([]string, len(g.backends))
	var wg sync.WaitGroup
	for i, b := range g.backends {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			resp, err := healthpb.NewHealthClient(b.conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				states[i] = status.Code(err).String()
			} else {
				states[i] = resp.GetStatus().String()
			}
			if states[i] != healthpb.HealthCheckResponse_SERVING.String() {
				reasons[i] = notReadyReason(ctx, b, states[i])
			}
		})
	}
	wg.Wait()

	out := readyResponse{Status: "ready", Services: map[string]string{}, NotReady: []string{}}
	for i, b := range g.backends {
		out.Services[b.name] = states[i]
		if states[i] != healthpb.HealthCheckResponse_SERVING.String() {
			out.NotReady = append(out.NotReady, b.name)
			if out.Reasons == nil {
				out.Reasons = map[string]string{}
			}
			out.Reasons[b.name] = reasons[i]
		}
	}
	code := http.StatusOK
	if len(out.NotReady) > 0 {
		out.Status, code = "not ready", http.StatusServiceUnavailable
	}
	writeJSON(w, code, out)
}

// openapi serves the OpenAPI 3 document (gen/openapi/openapi.json).
func (g *Gateway) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(gen.OpenAPI)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	buf, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(buf, '\n'))
}
