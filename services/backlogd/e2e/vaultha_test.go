package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/vault"
)

// An online key-encryption key rotation asked of one vault replica (real
// processes, HA layout on etcd) is followed by the other: every secret,
// written before or after, through either replica, resolves on both, and
// neither needs the old key file afterwards.
func TestVaultHAKEKRotation(t *testing.T) {
	t.Parallel()
	keys := t.TempDir()
	kek1, kek2 := filepath.Join(keys, "vault.kek"), filepath.Join(keys, "vault.kek.next")
	for _, k := range []string{kek1, kek2} {
		if err := vault.GenerateKEKFile(k); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, layoutHA, "-vault-kek-file="+kek1)
	ws := c.createWorkspace(t, "KEK HA")
	svc, err := os.ReadFile(c.ServiceTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	replicas := c.Addrs(proctest.TargetVault)
	if len(replicas) != 2 {
		t.Fatalf("vault replicas: %v", replicas)
	}
	values := map[string]string{}
	create := func(name string) {
		t.Helper()
		v := fmt.Sprintf("sk_live_vaultha_%s_%s", name, strings.Repeat("v", 20))
		c.creds.add(v)
		c.expect(t, 200, "POST", "/v1/workspaces/"+ws.ID+"/secrets", ws.OwnerToken, map[string]any{"name": name, "kind": "integration", "value": v})
		values[name] = v
	}
	resolveAll := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, auth.ServiceTokenKey, strings.TrimSpace(string(svc)))
		for _, addr := range replicas {
			cl := vaultv1.NewVaultInternalServiceClient(c.Conn(addr))
			for name, want := range values {
				r, err := cl.Resolve(ctx, &vaultv1.ResolveRequest{WorkspaceId: ws.ID, Name: name})
				if err != nil || r.GetValue() != want {
					t.Fatalf("%s: resolve %s on replica %s: right value %v, %v", what, name, addr, r.GetValue() == want, err)
				}
			}
		}
	}
	for i := range 4 {
		create(fmt.Sprintf("before-%d", i))
	}
	resolveAll("before the rotation")

	out, err := exec.Command(binary, "vault", "rotate-kek", "-new-kek-file="+kek2, "-vault-addr="+replicas[0],
		"-service-token-file="+c.ServiceTokenPath()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "rewrapped 1 data keys") {
		t.Fatalf("rotate-kek: %v %s", err, out)
	}
	resolveAll("after the rotation")
	for i := range 4 {
		create(fmt.Sprintf("after-%d", i))
	}
	resolveAll("secrets created after the rotation")

	// The other replica followed the rotation and dropped the old key.
	other := c.ProcsFor(proctest.TargetVault)[1]
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(string(other.Log()), "dropped key-encryption keys retired by a rotation"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second vault replica did not drop the retired key")
		}
	}
	os.Remove(kek1)
	resolveAll("without the old key file")
}
