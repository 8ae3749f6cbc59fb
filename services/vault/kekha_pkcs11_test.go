package vault_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/metadata"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
	"github.com/backlog/controlplane/services/vault"
)

// kekhaShared is one store shared by in-process vaults, as replicas share
// an etcd cluster; it closes when the last one closes.
type kekhaShared struct {
	store.Backend
	mu   sync.Mutex
	refs int
}

func (s *kekhaShared) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs--; s.refs > 0 {
		return nil
	}
	return s.Backend.Close()
}

// Rotated online on replica A to a PKCS#11 key, the vault keeps working on
// replica B, which loads the token key the store records (module, token,
// label, PIN file path); neither the store nor a log holds the PIN.
func TestKEKHAPKCS11RotationOnReplicas(t *testing.T) {
	hsm := hsmKey(t, "ha")
	dir := t.TempDir()
	kek := filepath.Join(dir, "keys", "vault.kek")
	if err := vault.GenerateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	db, err := boltstore.Dir(dir, zap.NewNop())("vault", vault.Buckets())
	if err != nil {
		t.Fatal(err)
	}
	shared := &kekhaShared{Backend: db, refs: 2}
	core, logs := observer.New(zap.DebugLevel)
	const token = "blg_svc_kekha_test_service_token"
	var reps []*vault.Service
	for range 2 {
		svc, err := vault.New(vault.Config{DataDir: dir, KEKFile: kek, ServiceToken: token, Logger: zap.New(core),
			Store: func(string, []store.Bucket) (store.Backend, error) { return shared, nil }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Close() })
		reps = append(reps, svc)
	}
	a, b := reps[0], reps[1]
	ws := "ws_kekha"
	member := auth.WithPrincipal(context.Background(), &credentialv1.Principal{
		SubjectKind: credentialv1.SubjectKind_SUBJECT_KIND_MEMBER, SubjectId: "mem_1", WorkspaceId: ws, Role: auth.RoleOwner, Scopes: auth.AdminScopes,
	})
	internal := metadata.NewIncomingContext(context.Background(), metadata.Pairs(vault.ServiceTokenMetadataKey, token))
	create := func(s *vault.Service, name, value string) {
		t.Helper()
		if _, err := s.CreateSecret(member, &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: name, Kind: "integration", Value: value,
			ExpiresAt: ts(time.Now().Add(time.Hour))}); err != nil {
			t.Fatal(err)
		}
	}
	resolve := func(s *vault.Service, name, want string) {
		t.Helper()
		r, err := s.Resolve(internal, &vaultv1.ResolveRequest{WorkspaceId: ws, Name: name})
		if err != nil || r.GetValue() != want {
			t.Fatalf("resolve %s: right value %v, %v", name, r.GetValue() == want, err)
		}
	}
	create(a, "before", "value-before-rotation")

	resp, err := a.RotateKek(internal, &vaultv1.RotateKekRequest{Pkcs11: &vaultv1.Pkcs11Kek{
		Module: hsm.Module, Token: hsm.Token, Key: hsm.Key, PinFile: hsm.PINFile}})
	if err != nil || resp.GetDataKeysRewrapped() != 1 {
		t.Fatalf("rotate: %v %v", resp, err)
	}
	resolve(b, "before", "value-before-rotation")
	create(b, "after", "value-after-rotation")
	resolve(a, "after", "value-after-rotation")
	for deadline := time.Now().Add(5 * time.Second); b.KEKID() != resp.GetKekId(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("replica B uses %s, not %s", b.KEKID(), resp.GetKekId())
		}
	}
	// The old key file is not needed by either replica any more.
	os.Remove(kek)
	resolve(b, "before", "value-before-rotation")
	resolve(a, "after", "value-after-rotation")

	// The store records where the key is, never the PIN.
	raw, err := os.ReadFile(filepath.Join(dir, "vault.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(hsm.PINFile)) || !bytes.Contains(raw, []byte(hsm.Key)) {
		t.Fatal("the store holds no record of the token key: the scan proves nothing")
	}
	if bytes.Contains(raw, []byte(softhsm.pin)) {
		t.Fatal("the store holds the PIN")
	}
	for _, e := range logs.All() {
		line := e.Message
		for _, f := range e.Context {
			line += " " + f.String
			if f.Interface != nil {
				if err, ok := f.Interface.(error); ok {
					line += " " + err.Error()
				}
			}
		}
		if strings.Contains(line, softhsm.pin) {
			t.Fatal("the PIN was logged")
		}
	}
}
