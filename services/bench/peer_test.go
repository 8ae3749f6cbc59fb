package bench

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPeerSkipsWithoutHydra(t *testing.T) {
	var se *SkipError
	if err := peerSkip(Config{}); !errors.As(err, &se) || !strings.Contains(se.Reason, "-hydra") {
		t.Fatalf("no -hydra: %v, want a skip naming the flag", err)
	}
	dir := t.TempDir()
	for name, c := range map[string]struct {
		path string
		mode os.FileMode
	}{"missing": {filepath.Join(dir, "nope"), 0}, "not executable": {filepath.Join(dir, "plain"), 0o644}, "directory": {dir, 0}} {
		if c.mode != 0 {
			if err := os.WriteFile(c.path, []byte("x"), c.mode); err != nil {
				t.Fatal(err)
			}
		}
		err := peerSkip(Config{Hydra: c.path})
		if err == nil || errors.As(err, &se) {
			t.Errorf("%s: %v, want a failure (a given binary that cannot run is an error, not a skip)", name, err)
		}
	}
	exe := filepath.Join(dir, "hydra")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := peerSkip(Config{Hydra: exe}); err != nil {
		t.Fatalf("executable: %v", err)
	}
}

func TestPeerHydraEnv(t *testing.T) {
	env := hydraEnv("/d", "127.0.0.1:4444", "127.0.0.1:4445", "s3cret-s3cret-s3cret-s3cret-s3cret")
	for _, want := range []string{"DSN=sqlite:///d/hydra.sqlite?_fk=true&mode=rwc", "SERVE_PUBLIC_PORT=4444", "SERVE_ADMIN_PORT=4445",
		"OAUTH2_HASHERS_ALGORITHM=pbkdf2", "OAUTH2_HASHERS_PBKDF2_ITERATIONS=1", "URLS_SELF_ISSUER=http://127.0.0.1:4444/"} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %s: %v", want, env)
		}
	}
}

func TestPeerParsesHydraResponses(t *testing.T) {
	c, err := parseHydraClient([]byte(`{"client_id":"abc","client_secret":"xyz","client_name":"n"}`))
	if err != nil || c.ID != "abc" || c.Secret != "xyz" {
		t.Fatalf("client: %+v %v", c, err)
	}
	for _, bad := range []string{`{"client_id":"abc"}`, `{"client_secret":"x"}`, `not json`} {
		if _, err := parseHydraClient([]byte(bad)); err == nil {
			t.Errorf("client %s: no error", bad)
		}
	}
	tok, err := parseHydraToken([]byte(`{"access_token":"ory_at_1","token_type":"bearer","expires_in":3599}`))
	if err != nil || tok != "ory_at_1" {
		t.Fatalf("token: %q %v", tok, err)
	}
	for _, bad := range []string{`{"token_type":"bearer"}`, `{`} {
		if _, err := parseHydraToken([]byte(bad)); err == nil {
			t.Errorf("token %s: no error", bad)
		}
	}
}

// TestPeerTargets: the lone create's and rotation's bar is Hydra's p50
// over ours (≥ 1.5×); the other loads are information; without the peer
// scenario there is no peer target at all.
func TestPeerTargets(t *testing.T) {
	r := &Report{}
	if got := r.peerTargets(); len(got) != 0 {
		t.Fatalf("targets without a peer run: %v", got)
	}
	add := func(key string, c int, p50, rate, cpu float64) {
		r.add(Result{Key: key, Scenario: "peer", Stats: &Stats{Concurrency: c, P50: p50, Throughput: rate, ServerCPU: cpu}})
	}
	add("peer.create.c1", 1, 1.0, 1000, 0)
	add("peer.hydra.create.c1", 1, 2.4, 400, 0)
	add("peer.rotate.c1", 1, 2.0, 500, 0)
	add("peer.hydra.rotate.c1", 1, 2.4, 400, 0)
	add("peer.mint.c16", 16, 1, 4000, 100)
	add("peer.hydra.mint.c16", 16, 5, 1000, 400)
	got := r.peerTargets()
	if len(got) != 3 {
		t.Fatalf("targets: %+v", got)
	}
	if got[0].Status != "PASS" || got[0].Value != 2.4 || got[1].Status != "MISS" || got[1].Value != 1.2 {
		t.Errorf("create/rotate: %+v %+v", got[0], got[1])
	}
	if got[2].Status != "info" || got[2].Value != 4 || !strings.Contains(got[2].Measured, "0.25×") {
		t.Errorf("mint: %+v", got[2])
	}
}
