package vault_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"google.golang.org/grpc/codes"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/vault"
)

// SoftHSM v2: one token for the whole test binary (the library reads its
// configuration once per process), in a temp dir.
var softhsm struct {
	once          sync.Once
	module, token string
	pinFile       string
	pin           string
	skip, err     string
}

// softhsmModules are where Debian and others install the SoftHSM v2 module.
var softhsmModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

// softhsmToken returns a SoftHSM token (module, token label, PIN file). With
// BACKLOG_REQUIRE_SOFTHSM=1 (CI) a missing SoftHSM fails the test.
func softhsmToken(t *testing.T) vault.PKCS11Config {
	t.Helper()
	softhsm.once.Do(func() {
		for _, m := range softhsmModules {
			if _, err := os.Stat(m); err == nil {
				softhsm.module = m
				break
			}
		}
		util, err := exec.LookPath("softhsm2-util")
		if softhsm.module == "" || err != nil {
			softhsm.skip = "SoftHSM v2 is not installed (apt-get install softhsm2): the PKCS#11 key-encryption key is NOT TESTED"
			return
		}
		dir, err := os.MkdirTemp("", "backlog-softhsm-")
		if err != nil {
			softhsm.err = err.Error()
			return
		}
		// Left for the process: the module may hold files open until exit.
		tokens := filepath.Join(dir, "tokens")
		conf := filepath.Join(dir, "softhsm2.conf")
		os.MkdirAll(tokens, 0o700)
		os.WriteFile(conf, fmt.Appendf(nil, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens), 0o600)
		os.Setenv("SOFTHSM2_CONF", conf)
		softhsm.token, softhsm.pin = "backlog-test", "4711-test-pin"
		out, err := exec.Command(util, "--init-token", "--free", "--label", softhsm.token, "--pin", softhsm.pin, "--so-pin", "so-pin-0815").CombinedOutput()
		if err != nil {
			softhsm.err = fmt.Sprintf("softhsm2-util --init-token: %v: %s", err, out)
			return
		}
		softhsm.pinFile = filepath.Join(dir, "pin")
		if err := os.WriteFile(softhsm.pinFile, []byte(softhsm.pin+"\n"), 0o600); err != nil {
			softhsm.err = err.Error()
		}
	})
	switch {
	case softhsm.err != "":
		t.Fatal(softhsm.err)
	case softhsm.skip != "" && os.Getenv("BACKLOG_REQUIRE_SOFTHSM") == "1":
		t.Fatal(softhsm.skip + " (BACKLOG_REQUIRE_SOFTHSM=1)")
	case softhsm.skip != "":
		t.Log("!!!!! " + softhsm.skip)
		t.Skip(softhsm.skip)
	}
	return vault.PKCS11Config{Module: softhsm.module, Token: softhsm.token, PINFile: softhsm.pinFile}
}

// hsmKey creates a new key labelled for this test in the token.
func hsmKey(t *testing.T, label string) vault.PKCS11Config {
	t.Helper()
	c := softhsmToken(t)
	// Labels of their own: the token lives as long as the test binary (-count).
	c.Key = fmt.Sprintf("%s-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), label, time.Now().UnixNano())
	id, existed, err := vault.GeneratePKCS11KEK(c)
	if err != nil || existed || !strings.HasPrefix(id, "kek-") {
		t.Fatalf("gen-kek %s: %q %v %v", c.Key, id, existed, err)
	}
	// Again: left as it is, same id.
	if id2, existed, err := vault.GeneratePKCS11KEK(c); err != nil || !existed || id2 != id {
		t.Fatalf("gen-kek again: %q %v %v (first %q)", id2, existed, err, id)
	}
	return c
}

// assertNoKeyMaterialIn fails if any file under dir holds a byte sequence
// that would be the KEK: the token's key is not extractable, so this checks
// the data dir holds no key file and no PIN.
func assertNoPINOrKeyFileIn(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		if strings.Contains(fi.Name(), "kek") {
			t.Errorf("key file in the data dir: %s", p)
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(softhsm.pin)) {
			t.Errorf("the token PIN is in %s", p)
		}
		return nil
	})
}

// A secret written with the token's key is readable after a restart; data
// keys rotate online file → token → token → file; the data dir never holds
// the key or the PIN.
func TestPKCS11KEKRestartAndMigration(t *testing.T) {
	hsm := hsmKey(t, "a")
	h := newHarness(t, func(c *vault.Config) { c.KEKFile = ""; c.KEKPKCS11 = hsm })
	ws, owner := h.env.NewWorkspace(t, "hsm")
	value := newValue("hsm")
	h.create(t, ws, owner, "db", "integration", value)
	resolve := func(t *testing.T, name, want string) {
		t.Helper()
		r, err := h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: name})
		if err != nil || r.GetValue() != want {
			t.Fatalf("resolve %s = %v %v", name, r.GetValue() == want, err)
		}
	}
	resolve(t, "db", value)
	hsmID := h.svc.KEKID()

	h.restart(nil)
	if h.svc.Sealed() || h.svc.KEKID() != hsmID {
		t.Fatalf("after restart: sealed %v, id %s (want %s)", h.svc.Sealed(), h.svc.KEKID(), hsmID)
	}
	resolve(t, "db", value)
	assertNoPINOrKeyFileIn(t, h.cfg.DataDir)

	// Another key of the token, online.
	hsm2 := hsmKey(t, "b")
	resp, err := h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{Pkcs11: &vaultv1.Pkcs11Kek{
		Module: hsm2.Module, Token: hsm2.Token, Key: hsm2.Key, PinFile: hsm2.PINFile}})
	if err != nil || resp.GetDataKeysRewrapped() != 1 || resp.GetKekId() == hsmID {
		t.Fatalf("rotate to %s: %v %v", hsm2.Key, resp, err)
	}
	resolve(t, "db", value)
	h.create(t, ws, owner, "api", "integration", value+"2")
	h.restart(func(c *vault.Config) { c.KEKPKCS11 = hsm2 })
	resolve(t, "db", value)

	// Token → file.
	file := filepath.Join(t.TempDir(), "file.kek")
	if err := vault.GenerateKEKFile(file); err != nil {
		t.Fatal(err)
	}
	if _, err := h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{KekFile: file}); err != nil {
		t.Fatal(err)
	}
	h.restart(func(c *vault.Config) { c.KEKPKCS11 = vault.PKCS11Config{}; c.KEKFile = file })
	resolve(t, "db", value)

	// File → token, and the vault started with the token key alone.
	hsm3 := hsmKey(t, "c")
	if _, err := h.internal.RotateKek(bg(), &vaultv1.RotateKekRequest{Pkcs11: &vaultv1.Pkcs11Kek{
		Module: hsm3.Module, Token: hsm3.Token, Key: hsm3.Key, PinFile: hsm3.PINFile}}); err != nil {
		t.Fatal(err)
	}
	os.Remove(file)
	h.restart(func(c *vault.Config) { c.KEKFile = ""; c.KEKPKCS11 = hsm3 })
	resolve(t, "db", value)
	resolve(t, "api", value+"2")

	// Started with a token key that wraps nothing here: the vault names
	// the key it needs.
	h.restart(func(c *vault.Config) { c.KEKFile = ""; c.KEKPKCS11 = hsm })
	_, err = h.internal.Resolve(bg(), &vaultv1.ResolveRequest{WorkspaceId: ws, Name: "db"})
	wantCode(t, err, codes.FailedPrecondition, "DATA_KEY_UNAVAILABLE")

	if strings.Contains(h.logs.String(), softhsm.pin) || strings.Contains(h.responsesSeen(), softhsm.pin) {
		t.Fatal("the PIN was logged or returned")
	}
}

// Bad settings stop the start with a message naming what to fix, never
// the PIN.
func TestPKCS11KEKBadSettings(t *testing.T) {
	tok := softhsmToken(t)
	dir := t.TempDir()
	wrongPIN := filepath.Join(dir, "wrong-pin")
	os.WriteFile(wrongPIN, []byte("not-the-pin"), 0o600)
	openPIN := filepath.Join(dir, "open-pin")
	os.WriteFile(openPIN, []byte(softhsm.pin), 0o644)
	// A module anyone in its group may replace is not loaded.
	lib, err := os.ReadFile(tok.Module)
	if err != nil {
		t.Fatal(err)
	}
	writable := filepath.Join(dir, "libpkcs11-writable.so")
	os.WriteFile(writable, lib, 0o600)
	os.Chmod(writable, 0o664)
	for _, c := range []struct {
		cfg  vault.PKCS11Config
		want string
	}{
		{vault.PKCS11Config{Module: tok.Module, Token: tok.Token, Key: "no-such-key", PINFile: tok.PINFile}, "no such key"},
		{vault.PKCS11Config{Module: tok.Module, Token: "no-such-token", Key: "k", PINFile: tok.PINFile}, "no-such-token"},
		{vault.PKCS11Config{Module: tok.Module, Token: tok.Token, Key: "k", PINFile: wrongPIN}, "PKCS#11 token"},
		{vault.PKCS11Config{Module: tok.Module, Token: tok.Token, Key: "k", PINFile: openPIN}, "chmod 600"},
		{vault.PKCS11Config{Module: tok.Module, Token: tok.Token, PINFile: tok.PINFile}, "-vault-kek-pkcs11-key"},
		{vault.PKCS11Config{Module: "/nonexistent/libpkcs11.so", Token: tok.Token, Key: "k", PINFile: tok.PINFile}, "/nonexistent/libpkcs11.so"},
		{vault.PKCS11Config{Module: writable, Token: tok.Token, Key: "k", PINFile: tok.PINFile}, "must not be writable by its group"},
	} {
		_, err := vault.New(vault.Config{DataDir: filepath.Join(dir, "data"), KEKPKCS11: c.cfg})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), softhsm.pin) {
			t.Errorf("%+v: err = %v, want it to name %q", c.cfg, err, c.want)
		}
	}
	_, err = vault.New(vault.Config{DataDir: filepath.Join(dir, "data"), KEKFile: filepath.Join(dir, "x.kek"),
		KEKPKCS11: vault.PKCS11Config{Module: tok.Module, Token: tok.Token, Key: "k", PINFile: tok.PINFile}})
	if err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("file and token: %v", err)
	}
}

// gen-kek makes a key the token keeps: sensitive, never extractable, its
// value unreadable.
func TestPKCS11GenKEKNotExtractable(t *testing.T) {
	c := hsmKey(t, "x")
	ctx, err := crypto11.Configure(&crypto11.Config{Path: c.Module, TokenLabel: c.Token, Pin: softhsm.pin})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	key, err := ctx.FindKey(nil, []byte(c.Key))
	if err != nil {
		t.Fatal(err)
	}
	for attr, want := range map[crypto11.AttributeType]byte{crypto11.CkaExtractable: 0, crypto11.CkaSensitive: 1, crypto11.CkaToken: 1} {
		a, err := ctx.GetAttribute(key, attr)
		if err != nil || len(a.Value) != 1 || a.Value[0] != want {
			t.Errorf("attribute %#x = %v %v, want %d", attr, a, err, want)
		}
	}
	if a, err := ctx.GetAttribute(key, crypto11.CkaValue); err == nil && len(a.Value) > 0 {
		t.Fatal("the key's value can be read out of the token")
	}
	if a, err := ctx.GetAttribute(key, crypto11.CkaValueLen); err != nil || len(a.Value) == 0 || a.Value[0] != 32 {
		t.Fatalf("CKA_VALUE_LEN = %v %v, want 32 (AES-256)", a, err)
	}
}
