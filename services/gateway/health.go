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
}

// readyz answers 200 when every service reports SERVING on grpc.health.v1
// (overall server health, service ""), else 503 naming those that do not.
func (g *Gateway) readyz(w http.ResponseWriter, r *http.Request) {
	states := make([]string, len(g.backends))
	var wg sync.WaitGroup
	for i, b := range g.backends {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			resp, err := healthpb.NewHealthClient(b.conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				states[i] = status.Code(err).String()
				return
			}
			states[i] = resp.GetStatus().String()
		})
	}
	wg.Wait()

	out := readyResponse{Status: "ready", Services: map[string]string{}, NotReady: []string{}}
	for i, b := range g.backends {
		out.Services[b.name] = states[i]
		if states[i] != healthpb.HealthCheckResponse_SERVING.String() {
			out.NotReady = append(out.NotReady, b.name)
		}
	}
	code := http.StatusOK
	if len(out.NotReady) > 0 {
		out.Status, code = "not ready", http.StatusServiceUnavailable
	}
	writeJSON(w, code, out)
}

// openapi serves the merged OpenAPI (Swagger 2.0) document.
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
