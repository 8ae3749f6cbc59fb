// Package issues is an example resource service on the Backlog SDK: a
// team's issues, in memory. Creating one needs the scope issues:write,
// reading them issues:read, and both a team within the caller's team
// boundary; every route checks the workspace in its path.
package issues

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/sdk"
)

// Issue is one issue of a team.
type Issue struct {
	ID       string `json:"id"`
	TeamID   string `json:"teamId"`
	Title    string `json:"title"`
	AuthorID string `json:"authorId"`
}

type server struct {
	mu     sync.Mutex
	issues map[string][]Issue // by workspace/team
}

// Handler serves, behind v's middleware:
//
//	POST /v1/workspaces/{ws}/teams/{team}/issues  {"title": …}  (issues:write)
//	GET  /v1/workspaces/{ws}/teams/{team}/issues                (issues:read)
func Handler(v *sdk.Verifier) http.Handler {
	s := &server{issues: map[string][]Issue{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/workspaces/{ws}/teams/{team}/issues", s.create)
	mux.HandleFunc("GET /v1/workspaces/{ws}/teams/{team}/issues", s.list)
	return v.Middleware(mux)
}

func (s *server) create(w http.ResponseWriter, r *http.Request) {
	ws, team := r.PathValue("ws"), r.PathValue("team")
	c, err := sdk.Require(r.Context(), ws, "issues:write", team)
	if err != nil {
		sdk.WriteError(w, err)
		return
	}
	var in struct{ Title string }
	if json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&in) != nil || in.Title == "" || len(in.Title) > 200 {
		sdk.WriteError(w, status.Error(codes.InvalidArgument, "title: 1 to 200 characters, in a JSON body {\"title\": …}"))
		return
	}
	s.mu.Lock()
	key := ws + "/" + team
	is := Issue{ID: fmt.Sprintf("%s-%d", team, len(s.issues[key])+1), TeamID: team, Title: in.Title, AuthorID: c.SubjectID}
	s.issues[key] = append(s.issues[key], is)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(is)
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	ws, team := r.PathValue("ws"), r.PathValue("team")
	if _, err := sdk.Require(r.Context(), ws, "issues:read", team); err != nil {
		sdk.WriteError(w, err)
		return
	}
	s.mu.Lock()
	out := append([]Issue{}, s.issues[ws+"/"+team]...)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"issues": out})
}
