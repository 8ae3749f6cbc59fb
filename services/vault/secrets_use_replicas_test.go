package vault_test

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
	"github.com/backlog/controlplane/services/vault"
)

// suShared is one store shared by several in-process vaults, as replicas
// share an etcd cluster; it closes once, when the last one closes.
type suShared struct {
	store.Backend
	mu   sync.Mutex
	refs int
}

func (s *suShared) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs--; s.refs > 0 {
		return nil
	}
	return s.Backend.Close()
}

// Three vaults on one store run the event loops together: every event is
// delivered once and every reminder raised once.
func TestSecretsUseReplicasDeliverOnce(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "vault.kek")
	if err := vault.GenerateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	db, err := boltstore.Dir(dir, zap.NewNop())("vault", vault.Buckets())
	if err != nil {
		t.Fatal(err)
	}
	shared := &suShared{Backend: db, refs: 3}
	rcv := suNewReceiver(t)
	var replicas []*vault.Service
	for i := 0; i < 3; i++ {
		svc, err := vault.New(vault.Config{
			DataDir: dir, KEKFile: kek, EgressAllowPrivate: true, EgressCAFile: suCAFile(t, rcv),
			Store:     func(string, []store.Bucket) (store.Backend, error) { return shared, nil },
			EventPoll: 5 * time.Millisecond, ReminderInterval: 5 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Close() })
		replicas = append(replicas, svc)
	}
	ws := "ws_replicas"
	ctx := auth.WithPrincipal(context.Background(), &credentialv1.Principal{
		SubjectKind: credentialv1.SubjectKind_SUBJECT_KIND_MEMBER, SubjectId: "mem_1", WorkspaceId: ws, Role: auth.RoleOwner, Scopes: auth.AdminScopes,
	})
	if _, err := replicas[0].CreateEventSubscription(ctx, &vaultv1.CreateEventSubscriptionRequest{WorkspaceId: ws, Url: rcv.srv.URL, Events: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := 0; i < n; i++ {
		_, err := replicas[i%3].CreateSecret(ctx, &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "secret " + string(rune('a'+i)), Kind: "webhook",
			Value: "value-value-value", ExpiresAt: ts(time.Now().Add(time.Hour))})
		if err != nil {
			t.Fatal(err)
		}
	}
	count := func(typ string) int {
		k := 0
		for _, e := range rcv.events(t) {
			if e.Type == typ {
				k++
			}
		}
		return k
	}
	suWait(t, "every created event and reminder", func() bool { return count("secret.created") >= n && count("secret.expiring") >= n })
	time.Sleep(300 * time.Millisecond)
	seen := map[string]int{}
	for _, e := range rcv.events(t) {
		seen[e.ID]++
	}
	for id, k := range seen {
		if k != 1 {
			t.Fatalf("event %s delivered %d times", id, k)
		}
	}
	if count("secret.created") != n || count("secret.expiring") != n {
		t.Fatalf("created %d, reminders %d; want %d each", count("secret.created"), count("secret.expiring"), n)
	}
}

// suCAFile writes the receiver's certificate for EgressCAFile.
func suCAFile(t *testing.T, r *suReceiver) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
