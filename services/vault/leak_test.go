package vault_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/vault"
)

// TestNoValueAtRestOrInLogs drives every path that handles a value —
// create, rotation, use (echoed back, failing, timing out), resolve,
// revoke, delete, KEK rotation, a sealed restart — then looks for each value
// (and its base64 form) in the debug-level logs, every response and error
// message the vault sent (as protojson), the audit trail and the raw bytes
// of vault.db.
func TestNoValueAtRestOrInLogs(t *testing.T) {
	h := newHarness(t, func(c *vault.Config) { c.EgressTimeout = 300 * time.Millisecond })
	ws, owner := h.env.NewWorkspace(t, "acme")
	var values []string
	add := func(prefix string) string { v := newValue(prefix); values = append(values, v); return v }

	for i := range 3 {
		h.create(t, ws, owner, fmt.Sprintf("hook%d", i), "webhook", add("hook_"))
	}
	h.create(t, ws, owner, "db", "integration", add("db_"))
	h.create(t, ws, owner, "multi", "integration", add("line1_")+"\n"+add("line2_"))
	for i := range 3 {
		if _, err := h.update(ws, owner, fmt.Sprintf("hook%d", i), &vaultv1.Secret{Value: add("rotated_")}, "value"); err != nil {
			t.Fatal(err)
		}
	}
	hdr := map[string]string{"X-Api-Key": "{secret:hook0}", "Authorization": "Bearer {{secret:hook1}}"}
	if _, err := h.run(ws, owner, "/echo", hdr); err != nil {
		t.Fatal(err)
	}
	h.run(ws, owner, "/slow", hdr)
	h.run(ws, owner, "/redirect", hdr)
	h.run(ws, owner, "/", map[string]string{"X-Key": "{secret:multi}"})      // wrong kind
	h.run(ws, owner, "/", map[string]string{"X-Key": "{secret:hook0"})       // malformed
	h.client.RunHttpRequest(as(bg(), owner), &vaultv1.RunHttpRequestRequest{ // refused: plain http
		WorkspaceId: ws, Method: "GET", Url: h.plain.srv.URL, Headers: hdr})
	if _, err := h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db", Caller: "integrations"}); err != nil {
		t.Fatal(err)
	}
	// Bad input that carries a value: its errors must not quote it.
	h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "bad name", Kind: "webhook", Value: add("refused_")})
	h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "hook0", Kind: "webhook", Value: add("dup_")})
	h.update(ws, owner, "hook2", &vaultv1.Secret{Value: add("badmask_")}, "value", "name")
	h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "hook1"})
	h.run(ws, owner, "/", hdr) // revoked
	h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "hook2"})
	newKEK := filepath.Join(t.TempDir(), "kek2")
	vault.GenerateKEKFile(newKEK)
	if _, err := h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: newKEK}); err != nil {
		t.Fatal(err)
	}
	h.run(ws, owner, "/echo", map[string]string{"X-Api-Key": "{secret:hook0}"})
	h.restart(func(c *vault.Config) { c.KEKFile = "" })
	h.run(ws, owner, "/", hdr) // sealed

	events := h.auditEvents(t, ws, owner)
	var trail bytes.Buffer
	for _, ev := range events {
		b, _ := protojson.Marshal(ev)
		trail.Write(b)
	}
	if !strings.Contains(trail.String(), "secret.use") {
		t.Fatal("no use in the trail")
	}
	lists, _ := h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws})
	if len(lists.GetSecrets()) == 0 {
		t.Fatal("nothing listed")
	}
	h.proc.stop()
	db, err := os.ReadFile(filepath.Join(h.cfg.DataDir, "vault.db"))
	if err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, `"level":"debug"`) || !strings.Contains(logs, "http request step sent") {
		t.Fatal("the log capture did not see the service's logs at debug level")
	}
	responses := h.responsesSeen()
	if !strings.Contains(responses, "[REDACTED:hook0]") {
		t.Fatal("the response capture did not see the echo")
	}
	for _, needle := range []string{h.env.ServiceToken} {
		if strings.Contains(logs, needle) || strings.Contains(responses, needle) || strings.Contains(trail.String(), needle) || bytes.Contains(db, []byte(needle)) {
			t.Error("the service credential leaked")
		}
	}
	for _, v := range values {
		for _, needle := range []string{v, base64.StdEncoding.EncodeToString([]byte(v)), v[len(v)-16:]} {
			if strings.Contains(logs, needle) {
				t.Errorf("a value (%s…) appears in the logs", v[:4])
			}
			if strings.Contains(responses, needle) {
				t.Errorf("a value (%s…) appears in a response or error", v[:4])
			}
			if strings.Contains(trail.String(), needle) {
				t.Errorf("a value (%s…) appears in the audit trail", v[:4])
			}
			if bytes.Contains(db, []byte(needle)) {
				t.Errorf("a value (%s…) appears in vault.db", v[:4])
			}
		}
	}
}
