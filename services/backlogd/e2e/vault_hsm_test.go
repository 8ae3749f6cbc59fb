package e2e

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// hsmSoftHSM is one SoftHSM v2 token for this test binary and the backlogd
// processes it starts (they inherit SOFTHSM2_CONF).
var hsmSoftHSM struct {
	once                  sync.Once
	module, token, pinDir string
	pin, skip, err        string
}

// hsmToken returns the module, token label and PIN file. With
// BACKLOG_REQUIRE_SOFTHSM=1 (CI) a missing SoftHSM fails the test.
func hsmToken(t *testing.T) (module, token, pinFile string) {
	t.Helper()
	s := &hsmSoftHSM
	s.once.Do(func() {
		for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"} {
			if _, err := os.Stat(m); err == nil {
				s.module = m
				break
			}
		}
		util, err := exec.LookPath("softhsm2-util")
		if s.module == "" || err != nil {
			s.skip = "SoftHSM v2 is not installed (apt-get install softhsm2): the PKCS#11 key-encryption key is NOT TESTED end to end"
			return
		}
		dir, err := os.MkdirTemp("", "backlog-e2e-softhsm-")
		if err != nil {
			s.err = err.Error()
			return
		}
		os.MkdirAll(filepath.Join(dir, "tokens"), 0o700)
		conf := filepath.Join(dir, "softhsm2.conf")
		os.WriteFile(conf, fmt.Appendf(nil, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", filepath.Join(dir, "tokens")), 0o600)
		os.Setenv("SOFTHSM2_CONF", conf)
		s.token, s.pin, s.pinDir = "backlog-e2e", "e2e-pin-2718", dir
		if out, err := exec.Command(util, "--init-token", "--free", "--label", s.token, "--pin", s.pin, "--so-pin", "e2e-so-3141").CombinedOutput(); err != nil {
			s.err = fmt.Sprintf("softhsm2-util --init-token: %v: %s", err, out)
			return
		}
		os.WriteFile(filepath.Join(dir, "pin"), []byte(s.pin+"\n"), 0o600)
	})
	switch {
	case s.err != "":
		t.Fatal(s.err)
	case s.skip != "" && os.Getenv("BACKLOG_REQUIRE_SOFTHSM") == "1":
		t.Fatal(s.skip + " (BACKLOG_REQUIRE_SOFTHSM=1)")
	case s.skip != "":
		t.Log("!!!!! " + s.skip)
		t.Skip(s.skip)
	}
	return s.module, s.token, filepath.Join(s.pinDir, "pin")
}

// A real backlogd whose vault key is in SoftHSM: `vault gen-kek` makes the
// key in the token, a secret written before a restart is used after it,
// `vault rotate-kek` moves it to another token key online (restarting on
// the rotated key: services/vault's TestPKCS11KEKRestartAndMigration), and
// the data dir holds no key file and no PIN.
func TestVaultHSMKeyAcrossRestartAndRotation(t *testing.T) {
	t.Parallel()
	module, token, pinFile := hsmToken(t)
	var mu sync.Mutex
	var lastAuth string
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastAuth = r.Header.Get("Authorization")
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	defer target.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: target.Certificate().Raw}), 0o600)

	hsmFlags := func(key string) []string {
		return []string{"-vault-kek-pkcs11-module=" + module, "-vault-kek-pkcs11-token=" + token,
			"-vault-kek-pkcs11-key=" + key, "-vault-kek-pkcs11-pin-file=" + pinFile}
	}
	// Labels of their own: the token lives as long as the test binary.
	run := time.Now().UnixNano()
	key1, key2 := fmt.Sprintf("e2e-kek-%d-1", run), fmt.Sprintf("e2e-kek-%d-2", run)
	for _, key := range []string{key1, key2} {
		out, err := exec.Command(binary, append([]string{"vault", "gen-kek"}, hsmFlags(key)...)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "non-extractable") {
			t.Fatalf("gen-kek %s: %v %s", key, err, out)
		}
	}
	c := startCluster(t, layoutAll, append(hsmFlags(key1), "-vault-egress-ca-file="+caFile, "-vault-egress-allow-private")...)
	ws := c.createWorkspace(t, "HSM")
	base := "/v1/workspaces/" + ws.ID
	value := "sk_live_hsm_" + strings.Repeat("h", 24)
	c.creds.add(value)
	c.expect(t, 200, "POST", base+"/secrets", ws.OwnerToken, map[string]any{"name": "stripe", "kind": "webhook", "value": value})
	step := map[string]any{"method": "GET", "url": target.URL + "/x", "headers": map[string]string{"Authorization": "Bearer {secret:stripe}"}}
	use := func(what string) {
		t.Helper()
		mu.Lock()
		lastAuth = ""
		mu.Unlock()
		c.expect(t, 200, "POST", base+"/http-requests", ws.OwnerToken, step)
		mu.Lock()
		defer mu.Unlock()
		if lastAuth != "Bearer "+value {
			t.Fatalf("%s: the target did not receive the secret's value", what)
		}
	}
	use("before the restart")
	c.restart(t)
	use("after the restart")

	// Online rotation to the token's second key, through the running vault.
	p := c.ProcFor("vault")
	args := append([]string{"vault", "rotate-kek", "-new-kek-pkcs11-key=" + key2, "-vault-addr=" + c.Addr("vault"),
		"-data-dir=" + p.DataDir}, hsmFlags(key1)...)
	out, err := exec.Command(binary, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "rewrapped 1 data keys") {
		t.Fatalf("rotate-kek: %v %s", err, out)
	}
	use("after the rotation")
	c.stop(t)

	// The key and the PIN are nowhere in the data dir.
	filepath.Walk(p.DataDir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return nil
		}
		if strings.Contains(fi.Name(), "kek") {
			t.Errorf("key file in the data dir: %s", path)
		}
		if b, _ := os.ReadFile(path); bytes.Contains(b, []byte(hsmSoftHSM.pin)) {
			t.Errorf("the token PIN is in %s", path)
		}
		return nil
	})
}
