package credential_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// started is a data dir where the service ran once: a workspace exists, and
// the service is stopped.
type started struct {
	dir, operator, owner string
}

func startOnce(t *testing.T) started {
	t.Helper()
	env := credentialtest.Start(t)
	_, owner := env.NewWorkspace(t, "Acme")
	env.Stop()
	return started{dir: env.DataDir, operator: env.OperatorToken, owner: owner}
}

func (s started) path(name string) string { return filepath.Join(s.dir, name) }

// refused starts the service in dir and wants a refusal naming every one of want.
func refused(t *testing.T, dir string, want ...string) error {
	t.Helper()
	svc, err := credential.New(credential.Config{DataDir: dir, Logger: zaptest.NewLogger(t)})
	if err == nil {
		svc.Close()
		t.Fatalf("the service started; want a refusal naming %v", want)
	}
	t.Logf("refused: %v", err)
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the refusal does not name %s: %v", w, err)
		}
	}
	return err
}

// worksAgain starts the service in s.dir and checks that the operator token
// and the owner's token of the first run still work.
func worksAgain(t *testing.T, s started) {
	t.Helper()
	env := credentialtest.StartWith(t, credentialtest.Options{DataDir: s.dir})
	if env.OperatorToken != s.operator {
		t.Errorf("operator-token was rewritten")
	}
	bg := context.Background()
	who, err := env.Public.WhoAmI(as(bg, s.operator), &credentialv1.WhoAmIRequest{})
	if err != nil || who.Kind != "operator" {
		t.Fatalf("the operator token after the restart: %v %v", who, err)
	}
	if s.owner != "" {
		if _, err := env.Public.WhoAmI(as(bg, s.owner), &credentialv1.WhoAmIRequest{}); err != nil {
			t.Fatalf("the owner's token after the restart: %v", err)
		}
	}
	env.Stop()
}

func move(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after the refusal (%v)", path, err)
	}
}

func TestStartRefusesWithoutKey(t *testing.T) {
	s := startOnce(t)
	aside := filepath.Join(t.TempDir(), "credential.key")
	move(t, s.path("credential.key"), aside)

	err := refused(t, s.dir, credential.KeyPath(s.dir), "-init-store=credential")
	if !errors.Is(err, credential.ErrDataLost) {
		t.Errorf("refusal is not ErrDataLost: %v", err)
	}
	mustNotExist(t, s.path("credential.key")) // no silent new key
	refused(t, s.dir, credential.KeyPath(s.dir))

	move(t, aside, s.path("credential.key"))
	worksAgain(t, s)
}

func TestStartRefusesNewStoreBesideOldKey(t *testing.T) {
	s := startOnce(t)
	db, marker := s.path("credential.db"), boltstore.MarkerPath(s.path("credential.db"))
	backup := t.TempDir()
	move(t, db, filepath.Join(backup, "credential.db"))
	move(t, marker, filepath.Join(backup, "credential.db.id"))

	for i := range 2 { // the first refusal must not leave an innocent empty store behind
		err := refused(t, s.dir, db, credential.KeyPath(s.dir), credential.OperatorTokenPath(s.dir), "backlogd restore", "-init-store=credential")
		if !errors.Is(err, credential.ErrDataLost) {
			t.Errorf("start %d: refusal is not ErrDataLost: %v", i+1, err)
		}
		mustNotExist(t, db)
		mustNotExist(t, marker)
	}

	// The operator token alone is evidence too.
	keyAside := filepath.Join(backup, "credential.key")
	move(t, s.path("credential.key"), keyAside)
	refused(t, s.dir, db, credential.OperatorTokenPath(s.dir))
	mustNotExist(t, db)
	mustNotExist(t, s.path("credential.key"))

	move(t, keyAside, s.path("credential.key"))
	move(t, filepath.Join(backup, "credential.db"), db)
	move(t, filepath.Join(backup, "credential.db.id"), marker)
	worksAgain(t, s)
}

func TestStartRefusesDamagedStore(t *testing.T) {
	s := startOnce(t)
	db := s.path("credential.db")
	orig, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{
		"empty":     nil,
		"truncated": orig[:len(orig)/2],
	} {
		if err := os.WriteFile(db, content, 0o600); err != nil {
			t.Fatal(err)
		}
		refused(t, s.dir, db, "backlogd restore")
		if got, _ := os.ReadFile(db); len(got) != len(content) {
			t.Errorf("%s: the refusal changed credential.db (%d bytes, was %d)", name, len(got), len(content))
		}
	}
	if err := os.WriteFile(db, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	worksAgain(t, s)
}

// The way out the refusals name: -init-store=credential starts empty on
// purpose, with a new operator token; the old credentials stop working.
func TestStartFreshOnPurpose(t *testing.T) {
	initStore := func(c *credential.Config) {
		c.Store = boltstore.Dir(c.DataDir, c.Logger, "credential")
	}
	check := func(t *testing.T, s started) {
		t.Helper()
		env := credentialtest.StartWith(t, credentialtest.Options{DataDir: s.dir, Config: initStore})
		if env.OperatorToken == s.operator {
			t.Fatalf("the operator token was not renewed")
		}
		bg := context.Background()
		if _, err := env.Public.WhoAmI(as(bg, env.OperatorToken), &credentialv1.WhoAmIRequest{}); err != nil {
			t.Fatalf("the new operator token: %v", err)
		}
		for _, old := range []string{s.operator, s.owner} {
			if _, err := env.Public.WhoAmI(as(bg, old), &credentialv1.WhoAmIRequest{}); code(err) != codes.Unauthenticated {
				t.Errorf("a credential from before the fresh start: %v, want Unauthenticated", err)
			}
		}
		env.Stop()
		worksAgain(t, started{dir: s.dir, operator: env.OperatorToken})
	}
	t.Run("key lost", func(t *testing.T) {
		s := startOnce(t)
		os.Remove(s.path("credential.key"))
		refused(t, s.dir, "credential.key")
		// What the refusal says: move credential.db aside, start with -init-store.
		move(t, s.path("credential.db"), filepath.Join(t.TempDir(), "credential.db"))
		check(t, s)
	})
	t.Run("store and marker lost", func(t *testing.T) {
		s := startOnce(t)
		os.Remove(s.path("credential.db"))
		os.Remove(boltstore.MarkerPath(s.path("credential.db")))
		refused(t, s.dir, "credential.db")
		svc, err := credential.New(credential.Config{DataDir: s.dir, Logger: zaptest.NewLogger(t), Store: boltstore.Dir(s.dir, zaptest.NewLogger(t), "credential")})
		if err != nil {
			t.Fatal(err)
		}
		svc.Close()
		check(t, s)
	})
}
