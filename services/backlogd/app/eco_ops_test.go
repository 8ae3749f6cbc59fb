package app

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/vault"
)

// testKEK writes a vault key-encryption key for a test (a sealed vault is
// not ready) and returns its path.
func testKEK(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vault.kek")
	if err := vault.GenerateKEKFile(p); err != nil {
		t.Fatal(err)
	}
	return p
}

// ecoLeaf writes a certificate for 127.0.0.1 named cn, signed by the CA in
// caCert/caKey, to cert and key.
func ecoLeaf(t *testing.T, caCert *x509.Certificate, caKey *ecdsa.PrivateKey, cn, cert, key string) {
	t.Helper()
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(leafKey)
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ecoCA makes a CA and writes its certificate to dir/ca.pem.
func ecoCA(t *testing.T, dir string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "eco test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(der)
	path := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caCert, caKey, path
}

// TestEcoRESTListenerTLS: with -http-tls-*, the REST listener speaks TLS
// 1.2+ only, sends HSTS, refuses plain HTTP, and serves a renewed
// certificate after Reload (SIGHUP) without a restart; curl --cacert works.
func TestEcoRESTListenerTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, caFile := ecoCA(t, dir)
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	ecoLeaf(t, caCert, caKey, "first", cert, key)

	if _, err := ParseFlags("t", []string{"-http-tls-cert-file", cert}, func(string) string { return "" }); err == nil {
		t.Error("-http-tls-cert-file without -http-tls-key-file was accepted")
	}
	cfg, err := ParseFlags("t", []string{"-target", "gateway", "-data-dir", dir, "-http-addr", freeAddr(t), "-metrics-addr", freeAddr(t),
		"-http-tls-cert-file", cert, "-http-tls-key-file", key,
		"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	get := func(tc *tls.Config) (*http.Response, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
		resp, err := c.Get("https://" + cfg.HTTPAddr + "/healthz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	resp, err := get(&tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("a client trusting only the test CA: %v", err)
	}
	if resp.StatusCode != 200 || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("GET /healthz over TLS: %d %+v", resp.StatusCode, resp.TLS)
	}
	if h := resp.Header.Get("Strict-Transport-Security"); h != hstsValue {
		t.Errorf("Strict-Transport-Security = %q, want %q", h, hstsValue)
	}
	if cn := resp.TLS.PeerCertificates[0].Subject.CommonName; cn != "first" {
		t.Errorf("served certificate %q, want first", cn)
	}
	if _, err := get(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("a TLS 1.1 client was served")
	}
	if _, err := get(&tls.Config{}); err == nil {
		t.Error("a client that does not trust the test CA was served")
	}
	if r, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + cfg.HTTPAddr + "/healthz"); err == nil {
		r.Body.Close()
		if r.StatusCode == 200 {
			t.Error("plain HTTP was served on the TLS listener")
		}
	}

	// Renewal: new files, Reload (what SIGHUP does), new connections see them.
	ecoLeaf(t, caCert, caKey, "renewed", cert, key)
	if err := a.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	resp, err = get(&tls.Config{RootCAs: pool})
	if err != nil || resp.TLS.PeerCertificates[0].Subject.CommonName != "renewed" {
		t.Fatalf("after reload: %v %v", err, resp)
	}
	// A broken renewal keeps the certificate in use.
	os.WriteFile(key, []byte("not a key"), 0o600)
	if err := a.Reload(); err == nil {
		t.Error("reload of a broken key succeeded")
	}
	if resp, err = get(&tls.Config{RootCAs: pool}); err != nil || resp.TLS.PeerCertificates[0].Subject.CommonName != "renewed" {
		t.Fatalf("after a failed reload: %v", err)
	}

	// The real curl, trusting only the test CA.
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "-sS", "--cacert", caFile, "-D", "-", "-o", "/dev/null", "https://"+cfg.HTTPAddr+"/healthz").CombinedOutput()
		if err != nil || !strings.Contains(string(out), " 200") || !strings.Contains(strings.ToLower(string(out)), "strict-transport-security: "+hstsValue) {
			t.Errorf("curl --cacert: %v\n%s", err, out)
		}
		if out, err := exec.Command(curl, "-sS", "-o", "/dev/null", "https://"+cfg.HTTPAddr+"/healthz").CombinedOutput(); err == nil {
			t.Errorf("curl without --cacert trusted the test certificate: %s", out)
		}
	} else {
		t.Log("no curl on this machine: the Go clients above stand in for it")
	}

	// The build-info metric.
	r, err := http.Get("http://" + cfg.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if !bytes.Contains(body, []byte(`backlog_build_info{goversion="`)) || !bytes.Contains(body, []byte(`version="`+Build().Version+`"} 1`)) {
		t.Errorf("no backlog_build_info in /metrics")
	}
}

// TestEcoHelp: --help lists every subcommand and every flag with its
// BACKLOG_* variable; every subcommand answers --help.
func TestEcoHelp(t *testing.T) {
	var buf bytes.Buffer
	prev := UsageOutput
	UsageOutput = &buf
	defer func() { UsageOutput = prev }()
	if _, err := ParseFlags("backlogd", []string{"--help"}, func(string) string { return "" }); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	usage := buf.String()
	for _, c := range Subcommands {
		if !strings.Contains(usage, c.Name) {
			t.Errorf("--help does not list %q", c.Name)
		}
		var sub bytes.Buffer
		handled, err := Help(&sub, append(strings.Fields(c.Name), "--help"))
		if !handled || err != nil || !strings.HasPrefix(sub.String(), "Usage: backlogd "+c.Name) {
			t.Errorf("backlogd %s --help: %v %v %q", c.Name, handled, err, sub.String())
		}
	}
	for _, f := range []string{"data-dir", "http-tls-cert-file", "vault-kek-file", "log-level"} {
		if !strings.Contains(usage, "-"+f) || !strings.Contains(usage, EnvName(f)) {
			t.Errorf("--help does not list -%s with %s", f, EnvName(f))
		}
	}
	var top bytes.Buffer
	if handled, err := Help(&top, []string{"help"}); !handled || err != nil || top.String() != usage {
		t.Errorf("backlogd help differs from --help: %v %v", handled, err)
	}
	if handled, _ := Help(io.Discard, []string{"backup", "-out", "x"}); handled {
		t.Error("backup without --help was taken for help")
	}
	if _, err := ParseFlags("backlogd", []string{"-nope"}, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "--help") {
		t.Errorf("unknown flag: %v", err)
	}
	if !strings.HasPrefix(Build().String(), "backlogd "+Build().Version) {
		t.Errorf("version line %q", Build().String())
	}
}

// TestEcoServiceTokenCreate: a new service credential, 0600, never
// overwritten, never printed.
func TestEcoServiceTokenCreate(t *testing.T) {
	out := filepath.Join(t.TempDir(), "sub", "service-token")
	msg, err := ServiceTokenCommand("create", []string{"-out", out})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(string(b))
	if credfmt.KindOf(tok) != credfmt.Service {
		t.Fatalf("%s holds %q, not a service credential", out, credfmt.KindOf(tok))
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if strings.Contains(msg, tok) {
		t.Error("the message shows the credential")
	}
	if msg, err := ServiceTokenCommand("create", []string{"-out", out}); err != nil || !strings.Contains(msg, "exists") {
		t.Errorf("second create: %q %v", msg, err)
	}
	if b2, _ := os.ReadFile(out); !bytes.Equal(b, b2) {
		t.Error("an existing service token was overwritten")
	}
	if _, err := ServiceTokenCommand("create", nil); err == nil {
		t.Error("create without -out succeeded")
	}
	if _, err := ServiceTokenCommand("rotate", []string{"-out", out}); err == nil {
		t.Error("an unknown service-token command succeeded")
	}
}

// TestEcoBackupChecksums: the manifest holds each store's SHA-256; restore
// refuses a damaged file or a manifest without its checksum, and leaves the
// data dir as it was.
func TestEcoBackupChecksums(t *testing.T) {
	dir := t.TempDir()
	cfg, a := startAll(t, dir)
	out := filepath.Join(t.TempDir(), "backup")
	m, err := Backup(context.Background(), cfg, out)
	a.Stop()
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	var onDisk Manifest
	b, _ := os.ReadFile(filepath.Join(out, "MANIFEST.json"))
	if err := json.Unmarshal(b, &onDisk); err != nil {
		t.Fatal(err)
	}
	if len(onDisk.SHA256) != 4 || len(m.SHA256) != 4 {
		t.Fatalf("manifest checksums: %v", onDisk.SHA256)
	}
	for name, sum := range onDisk.SHA256 {
		f, _ := os.ReadFile(filepath.Join(out, name))
		got := sha256.Sum256(f)
		if hex.EncodeToString(got[:]) != sum {
			t.Errorf("%s: manifest SHA-256 %s, file %x", name, sum, got)
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, "automation.db"))

	// One flipped byte in a backed-up store.
	victim := filepath.Join(out, "automation.db")
	orig, _ := os.ReadFile(victim)
	damaged := bytes.Clone(orig)
	damaged[len(damaged)/2] ^= 0x01
	os.WriteFile(victim, damaged, 0o600)
	if _, err := Restore(out, dir); err == nil || !strings.Contains(err.Error(), "automation.db does not match") {
		t.Fatalf("restore of a damaged backup: %v", err)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "automation.db")); !bytes.Equal(now, before) {
		t.Error("a refused restore changed the data dir")
	}
	os.WriteFile(victim, orig, 0o600)

	// A manifest that lost a checksum.
	delete(onDisk.SHA256, "vault.db")
	b, _ = json.Marshal(onDisk)
	os.WriteFile(filepath.Join(out, "MANIFEST.json"), b, 0o600)
	if _, err := Restore(out, dir); err == nil || !strings.Contains(err.Error(), "no SHA-256 for vault.db") {
		t.Fatalf("restore with a checksum missing: %v", err)
	}

	// The intact backup restores.
	onDisk.SHA256 = m.SHA256
	b, _ = json.Marshal(onDisk)
	os.WriteFile(filepath.Join(out, "MANIFEST.json"), b, 0o600)
	if restored, err := Restore(out, dir); err != nil || len(restored) != 4 {
		t.Fatalf("restore: %v %v", restored, err)
	}
}
