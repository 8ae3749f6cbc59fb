package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backlog/controlplane/services/vault"
)

// `backlogd audit verify` refuses what it cannot check, with a message
// saying what to give.
func TestAuditVerifyCommandErrors(t *testing.T) {
	var out bytes.Buffer
	if err := AuditCommand("check", nil, &out); err == nil || !strings.Contains(err.Error(), "want verify") {
		t.Errorf("unknown command: %v", err)
	}
	if err := AuditCommand("verify", nil, &out); err == nil || !strings.Contains(err.Error(), "-data-dir") {
		t.Errorf("no dir: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "audit-signing.key.pub"), []byte("not a key"), 0o644)
	if err := AuditCommand("verify", []string{"-data-dir", dir}, &out); err == nil || !strings.Contains(err.Error(), "audit-signing.key.pub") {
		t.Errorf("bad key: %v", err)
	}
	os.Remove(filepath.Join(dir, "audit-signing.key.pub"))
	if err := AuditCommand("verify", []string{"-data-dir", dir}, &out); err == nil || !strings.Contains(err.Error(), "-audit-signing-key-file") {
		t.Errorf("no key: %v", err)
	}
	if err := AuditCommand("verify", []string{"-export-file", filepath.Join(dir, "none.jsonl")}, &out); err == nil || !strings.Contains(err.Error(), "none.jsonl") {
		t.Errorf("missing export: %v", err)
	}
}

// The PKCS#11 flags parse into the vault's config, and rotate-kek's new-key
// flags default to them.
func TestVaultPKCS11Flags(t *testing.T) {
	cfg, err := ParseFlags("backlogd", []string{"-vault-kek-pkcs11-module=/usr/lib/softhsm/libsofthsm2.so",
		"-vault-kek-pkcs11-token=tok", "-vault-kek-pkcs11-key=k1", "-vault-kek-pkcs11-pin-file=/etc/pin"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := vault.PKCS11Config{Module: "/usr/lib/softhsm/libsofthsm2.so", Token: "tok", Key: "k1", PINFile: "/etc/pin"}
	if cfg.VaultKEKPKCS11 != want {
		t.Fatalf("parsed %+v", cfg.VaultKEKPKCS11)
	}
	n, rest, err := takePKCS11Flags([]string{"-new-kek-pkcs11-key", "k2", "-vault-addr=x", "--new-kek-pkcs11-token=tok2"})
	if err != nil || n.Key != "k2" || n.Token != "tok2" || strings.Join(rest, " ") != "-vault-addr=x" {
		t.Fatalf("take: %+v %v %v", n, rest, err)
	}
	p, err := rotationTarget(n, want)
	if err != nil || p.GetModule() != want.Module || p.GetToken() != "tok2" || p.GetKey() != "k2" || p.GetPinFile() != "/etc/pin" {
		t.Fatalf("target: %v %v", p, err)
	}
	if _, _, err := takePKCS11Flags([]string{"-new-kek-pkcs11-token=t"}); err == nil {
		t.Fatal("a new token without a key label was accepted")
	}
	if _, err := rotationTarget(vault.PKCS11Config{Key: "k"}, vault.PKCS11Config{}); err == nil || !strings.Contains(err.Error(), "module") {
		t.Fatalf("no module: %v", err)
	}
}
