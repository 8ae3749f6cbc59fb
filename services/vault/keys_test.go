package vault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/mount/mounttest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
	"github.com/backlog/controlplane/services/vault"
)

func TestSealedVaultRefusesValueOperations(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "api", "webhook", newValue("v"))
	h.create(t, ws, owner, "db", "integration", newValue("v"))

	h.restart(func(c *vault.Config) { c.KEKFile = "" })
	if !h.svc.Sealed() {
		t.Fatal("no KEK, not sealed")
	}
	wantSealed := func(t *testing.T, err error) {
		t.Helper()
		wantCode(t, err, codes.Unavailable, "VAULT_SEALED")
		if msg := status.Convert(err).Message(); msg != "vault is sealed: no key-encryption key loaded (-vault-kek-file)" {
			t.Fatalf("message = %q", msg)
		}
	}
	_, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "new", Kind: "webhook", Value: "v"})
	wantSealed(t, err)
	_, err = h.update(ws, owner, "api", &vaultv1.Secret{Value: "v2"}, "value")
	wantSealed(t, err)
	_, err = h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:api}"})
	wantSealed(t, err)
	_, err = h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db"})
	wantSealed(t, err)
	_, err = h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: h.kekFile})
	wantSealed(t, err)
	if h.tls.requests() != 0 {
		t.Fatal("a sealed vault sent a request")
	}
	// Metadata still works.
	list, err := h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetSecrets()) != 2 {
		t.Fatalf("sealed list = %v %v", list, err)
	}
	if _, err := h.update(ws, owner, "api", &vaultv1.Secret{Description: "still editable"}, "description"); err != nil {
		t.Fatalf("sealed description update: %v", err)
	}
	if _, err := h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "api"}); err != nil {
		t.Fatalf("sealed revoke: %v", err)
	}
	// Steps without references don't need a key.
	if _, err := h.run(ws, owner, "/", nil); err != nil {
		t.Fatalf("sealed plain step: %v", err)
	}
	if !strings.Contains(h.logs.String(), "vault is sealed") {
		t.Fatal("start did not log that the vault is sealed")
	}
}

func TestKEKFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "kek")
	if err := vault.GenerateKEKFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
	first, _ := os.ReadFile(path)
	if err := vault.GenerateKEKFile(path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second generate: %v", err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(first, again) {
		t.Fatal("GenerateKEKFile overwrote a key")
	}
	if k, err := vault.LoadKEKFile(path); err != nil || len(k) != 32 {
		t.Fatalf("load: %d %v", len(k), err)
	}
	// Raw 32 bytes are accepted too.
	raw := filepath.Join(dir, "raw")
	os.WriteFile(raw, bytes.Repeat([]byte{7}, 32), 0o600)
	if _, err := vault.LoadKEKFile(raw); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		content []byte
		mode    os.FileMode
	}{
		"readable by others": {first, 0o644},
		"short":              {[]byte("abcd"), 0o600},
		"not hex":            {bytes.Repeat([]byte("z"), 64), 0o600},
		"all zeros":          {make([]byte, 32), 0o600},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(p, c.content, c.mode)
		os.Chmod(p, c.mode)
		if _, err := vault.New(vault.Config{DataDir: t.TempDir(), KEKFile: p}); err == nil {
			t.Errorf("%s: New accepted the key file", name)
		}
	}
	if _, err := vault.New(vault.Config{DataDir: t.TempDir(), KEKFile: filepath.Join(dir, "missing")}); err == nil {
		t.Error("New accepted a missing key file")
	}
	if _, err := vault.New(vault.Config{}); err == nil {
		t.Error("New without a data dir")
	}
}

func TestKEKRotation(t *testing.T) {
	h := newHarness(t)
	var wss, owners []string
	for i := range 3 {
		ws, owner := h.env.NewWorkspace(t, fmt.Sprintf("ws%d", i))
		wss, owners = append(wss, ws), append(owners, owner)
		h.create(t, ws, owner, "api", "webhook", newValue("v"))
		h.create(t, ws, owner, "db", "integration", newValue("v"))
	}
	oldID := h.svc.KEKID()
	use := func(t *testing.T) {
		t.Helper()
		for i, ws := range wss {
			if _, err := h.run(ws, owners[i], "/", map[string]string{"X-Api-Key": "{secret:api}"}); err != nil {
				t.Fatalf("use in %s: %v", ws, err)
			}
			if _, err := h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db"}); err != nil {
				t.Fatalf("resolve in %s: %v", ws, err)
			}
		}
	}
	use(t)

	newKEK := filepath.Join(t.TempDir(), "new.kek")
	if err := vault.GenerateKEKFile(newKEK); err != nil {
		t.Fatal(err)
	}
	// Only the service token may rotate, and only with an absolute path.
	_, err := h.stranger.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: newKEK})
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.stranger.RotateKek(as(bg(), owners[0]), &vaultv1.RotateKekRequest{KekFile: newKEK})
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: "new.kek"})
	wantCode(t, err, codes.InvalidArgument, "")
	_, err = h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: "/nonexistent/kek"})
	wantCode(t, err, codes.FailedPrecondition, "KEK_ROTATION_FAILED")

	resp, err := h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: newKEK})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDataKeysRewrapped() != 3 || resp.GetKekId() == oldID || !equal(resp.GetRetiredKekIds(), []string{oldID}) || h.svc.KEKID() != resp.GetKekId() {
		t.Fatalf("rotate = %v (old %s)", resp, oldID)
	}
	use(t)
	// New secrets after rotation, too.
	h.create(t, wss[0], owners[0], "after", "webhook", newValue("v"))

	// The old key is no longer needed: remove it, restart with the new one.
	os.Remove(h.kekFile)
	h.restart(func(c *vault.Config) { c.KEKFile = newKEK })
	use(t)
	if _, err := h.run(wss[0], owners[0], "/", map[string]string{"X-Api-Key": "{secret:after}"}); err != nil {
		t.Fatal(err)
	}

	// Started with a key that wraps nothing here, the vault says which key
	// it needs instead of failing obscurely.
	wrong := filepath.Join(t.TempDir(), "wrong.kek")
	vault.GenerateKEKFile(wrong)
	h.restart(func(c *vault.Config) { c.KEKFile = wrong })
	_, err = h.run(wss[0], owners[0], "/", map[string]string{"X-Api-Key": "{secret:api}"})
	wantCode(t, err, codes.FailedPrecondition, "DATA_KEY_UNAVAILABLE")
	if !strings.Contains(status.Convert(err).Message(), resp.GetKekId()) {
		t.Fatalf("message does not name the needed key: %q", status.Convert(err).Message())
	}
	if !strings.Contains(h.logs.String(), "not loaded") {
		t.Fatal("start did not log the missing key")
	}

	// An interrupted rotation completes at start with the old key as a
	// previous key: here, "wrong" becomes current and the real one previous.
	h.restart(func(c *vault.Config) { c.KEKFile = wrong; c.PreviousKEKFiles = []string{newKEK} })
	use(t)
	h.restart(func(c *vault.Config) { c.KEKFile = wrong })
	use(t)
}

// TestRotationIsOnline rotates while requests run: none fails.
func TestRotationIsOnline(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "db", "integration", newValue("v"))
	for i := range 20 {
		other, o := h.env.NewWorkspace(t, fmt.Sprintf("w%d", i))
		h.create(t, other, o, "x", "webhook", newValue("v"))
	}
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db"}); err != nil {
				errc <- err
				return
			}
		}
	}()
	for range 3 {
		k := filepath.Join(t.TempDir(), "k")
		vault.GenerateKEKFile(k)
		if _, err := h.svc.RotateKEK(bg(), k); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("a request failed during rotation: %v", err)
	}
}

// The vault's buckets, by the names its store file has.
var (
	valuesBucket   = store.Bucket("secret_values")
	dataKeysBucket = store.Bucket("data_keys")
)

// tamper stops the vault, changes its store file directly (through the
// engine, behind the vault's back), and restarts it.
func (h *harness) tamper(t *testing.T, fn func(tx store.WriteTx) error) {
	t.Helper()
	h.proc.stop()
	db, err := boltstore.Open(filepath.Join(h.cfg.DataDir, "vault.db"), []store.Bucket{valuesBucket, dataKeysBucket}, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(bg(), fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	h.proc = h.start(h.cfg)
}

// get copies the value at key in b out of tx; an absent key is an error
// (tamper fails the test with it: fn runs on the store's own goroutine).
func get(tx store.ReadTx, b store.Bucket, key []byte) ([]byte, error) {
	v, err := tx.Get(b, key)
	if err == nil && v == nil {
		err = fmt.Errorf("%s/%s is absent", b, key)
	}
	return bytes.Clone(v), err
}

func TestTamperedCiphertextFailsCleanly(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	values := map[string]string{}
	for _, name := range []string{"body", "header", "nonce", "version", "last"} {
		values[name] = newValue("v_" + name + "_")
		h.create(t, ws, owner, name, "webhook", values[name])
	}
	h.create(t, ws, owner, "db", "integration", newValue("db"))
	// Offsets into the stored blob: 0 format, 1-4 data key version, 5-16
	// nonce, then ciphertext and tag.
	offsets := map[string]func(n int) int{
		"body": func(int) int { return 20 }, "header": func(int) int { return 0 }, "nonce": func(int) int { return 7 },
		"version": func(int) int { return 4 }, "last": func(n int) int { return n - 1 }, "db": func(int) int { return 25 },
	}
	h.tamper(t, func(tx store.WriteTx) error {
		for name, off := range offsets {
			k := store.Key(ws, name)
			v, err := get(tx, valuesBucket, k)
			if err != nil {
				return err
			}
			v[off(len(v))] ^= 0x01
			if err := tx.Put(valuesBucket, k, v); err != nil {
				return err
			}
		}
		return nil
	})
	for name := range values {
		t.Run(name, func(t *testing.T) {
			_, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:" + name + "}"})
			wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
			if msg := status.Convert(err).Message(); !strings.Contains(msg, `"`+name+`"`) || strings.Contains(msg, values[name]) {
				t.Fatalf("message = %q", msg)
			}
		})
	}
	_, err := h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db"})
	wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
	if h.tls.requests() != 0 {
		t.Fatal("a tampered secret was sent")
	}
	// Metadata is unaffected, and a new value repairs the secret.
	if _, err := h.update(ws, owner, "body", &vaultv1.Secret{Value: newValue("fixed")}, "value"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:body}"}); err != nil {
		t.Fatalf("after repair: %v", err)
	}
	// A tampered wrapped data key fails the workspace's uses cleanly too.
	h.tamper(t, func(tx store.WriteTx) error {
		k := store.Key(ws, "00000001")
		v, err := get(tx, dataKeysBucket, k)
		if err != nil {
			return err
		}
		v[30] ^= 0x80
		return tx.Put(dataKeysBucket, k, v)
	})
	_, err = h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:body}"})
	wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
	if h.tls.requests() != 1 {
		t.Fatal("sent with a tampered data key")
	}
}

func TestCiphertextBoundToItsRecord(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	a, b := newValue("a_"), newValue("b_")
	h.create(t, ws, owner, "a", "webhook", a)
	h.create(t, ws, owner, "b", "webhook", b)
	h.create(t, ws, owner, "rot", "webhook", newValue("rot1_"))
	h.create(t, ws2, owner2, "b", "webhook", newValue("theirs_"))
	var oldRot []byte
	h.tamper(t, func(tx store.WriteTx) error {
		var err error
		oldRot, err = get(tx, valuesBucket, store.Key(ws, "rot"))
		return err
	})
	if _, err := h.update(ws, owner, "rot", &vaultv1.Secret{Value: newValue("rot2_")}, "value"); err != nil {
		t.Fatal(err)
	}
	h.tamper(t, func(tx store.WriteTx) error {
		ca, err := get(tx, valuesBucket, store.Key(ws, "a"))
		if err != nil {
			return err
		}
		// a's ciphertext under b's name (same workspace, same data key) ...
		if err := tx.Put(valuesBucket, store.Key(ws, "b"), ca); err != nil {
			return err
		}
		// ... and under another workspace's b (whose data key differs) ...
		if err := tx.Put(valuesBucket, store.Key(ws2, "b"), ca); err != nil {
			return err
		}
		// ... and an older version of rot put back (a rollback).
		return tx.Put(valuesBucket, store.Key(ws, "rot"), oldRot)
	})
	_, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:b}"})
	wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
	_, err = h.run(ws2, owner2, "/", map[string]string{"X-Api-Key": "{secret:b}"})
	wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
	_, err = h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:rot}"})
	wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
	// A wrapped data key moved to another workspace does not open either.
	h.tamper(t, func(tx store.WriteTx) error {
		wrapped, err := get(tx, dataKeysBucket, store.Key(ws, "00000001"))
		if err != nil {
			return err
		}
		return tx.Put(dataKeysBucket, store.Key(ws2, "00000001"), wrapped)
	})
	_, err = h.run(ws2, owner2, "/", map[string]string{"X-Api-Key": "{secret:b}"})
	wantCode(t, err, codes.DataLoss, "SECRET_UNREADABLE")
	if h.tls.requests() != 0 {
		t.Fatal("a misplaced ciphertext was sent")
	}
	// The untouched secret still works.
	if _, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": "{secret:a}"}); err != nil || h.tls.lastHeader("X-Api-Key") != a {
		t.Fatalf("a: %v", err)
	}
}

func TestResolve(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	ws2, _ := h.env.NewWorkspace(t, "rival")
	dbValue := newValue("pg_")
	h.create(t, ws, owner, "db", "integration", dbValue)
	h.create(t, ws, owner, "hook", "webhook", newValue("wh_"))
	req := &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db", Caller: "integrations", Purpose: "connection conn_123"}

	_, err := h.stranger.Resolve(bg(), req)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.stranger.Resolve(withService(bg(), "wrong-token"), req)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.stranger.Resolve(withService(bg(), h.env.ServiceToken+"x"), req)
	wantCode(t, err, codes.Unauthenticated, "")
	// A member's bearer token is not a service credential.
	_, err = h.stranger.Resolve(as(bg(), owner), req)
	wantCode(t, err, codes.Unauthenticated, "")
	// The handler checks by itself too, not only the server's interceptor.
	_, err = h.svc.Resolve(metadata.NewIncomingContext(bg(), metadata.Pairs("authorization", "Bearer "+owner)), req)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.svc.Resolve(metadata.NewIncomingContext(bg(), metadata.Pairs(vault.ServiceTokenMetadataKey, "nope")), req)
	wantCode(t, err, codes.Unauthenticated, "")
	if got := h.auditActions(t, ws, owner, "db"); !equal(got, []string{"secret.create:success"}) {
		t.Fatalf("unauthenticated resolves were audited (or worse): %v", got)
	}

	resp, err := h.internal.Resolve(bg(), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetValue() != dbValue || resp.GetSecret().GetName() != "db" || resp.GetSecret().GetValue() != "" || resp.GetSecret().GetLastUsedAt() == nil {
		t.Fatalf("resolve = %v", resp.GetSecret())
	}
	_, err = h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "hook"})
	wantCode(t, err, codes.FailedPrecondition, "SECRET_WRONG_KIND")
	_, err = h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws2, Name: "db"})
	wantCode(t, err, codes.NotFound, "SECRET_NOT_FOUND")
	h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "db"})
	_, err = h.internal.Resolve(bg(), req)
	wantCode(t, err, codes.FailedPrecondition, "SECRET_REVOKED")

	var uses []*auditv1.AuditEvent
	for _, ev := range h.auditEvents(t, ws, owner) {
		if ev.GetAction() == "secret.use" {
			uses = append(uses, ev)
		}
	}
	if len(uses) != 3 || uses[0].GetActorKind() != "service" || uses[0].GetActorId() != "integrations" ||
		uses[0].GetOutcome() != "success" || !strings.Contains(uses[0].GetDetail(), "conn_123") || uses[2].GetOutcome() != "failure" {
		t.Fatalf("resolve audit = %v", uses)
	}

	// The gateway-facing service has no Resolve; without a configured token
	// the internal API is off.
	h.restart(func(c *vault.Config) { c.ServiceToken = "" })
	_, err = h.internal.Resolve(bg(), req)
	wantCode(t, err, codes.PermissionDenied, "")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "internal RPC disabled") {
		t.Fatalf("message = %q", msg)
	}
	_, err = h.svc.Resolve(metadata.NewIncomingContext(bg(), metadata.Pairs(vault.ServiceTokenMetadataKey, h.env.ServiceToken)), req)
	wantCode(t, err, codes.PermissionDenied, "")
}

// TestInternalMethodsRequireServiceCredential: the VaultInternalService and
// AdminService, mounted as backlogd mounts them, answer only a caller
// presenting the service credential.
func TestInternalMethodsRequireServiceCredential(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	value := newValue("pg_")
	h.create(t, ws, owner, "db", "integration", value)
	calls := map[string]func(ctx context.Context, cc *grpc.ClientConn) error{
		"Resolve": func(ctx context.Context, cc *grpc.ClientConn) error {
			resp, err := vaultv1.NewVaultInternalServiceClient(cc).Resolve(ctx, &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db", Caller: "integrations"})
			if err == nil && resp.GetValue() != value {
				t.Errorf("Resolve returned another value")
			}
			return err
		},
		"AdminService.Snapshot": func(ctx context.Context, cc *grpc.ClientConn) error {
			name, b, err := mounttest.Snapshot(ctx, cc)
			if err == nil && (name != "vault.db" || len(b) == 0) {
				t.Errorf("snapshot of %q, %d bytes", name, len(b))
			}
			return err
		},
	}
	for _, tc := range []struct {
		name string
		conn *grpc.ClientConn
		ctx  context.Context
		want codes.Code
	}{
		{"no service credential", h.conn, bg(), codes.Unauthenticated},
		{"a member's token", h.conn, as(bg(), owner), codes.Unauthenticated},
		{"wrong service credential", h.conn, withService(bg(), credfmt.New(credfmt.Service)), codes.Unauthenticated},
		{"the service credential", h.sibling, bg(), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for method, call := range calls {
				if err := call(tc.ctx, tc.conn); status.Code(err) != tc.want {
					t.Errorf("%s = %v, want %v", method, err, tc.want)
				}
			}
		})
	}
}
