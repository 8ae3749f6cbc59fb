package etcdstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
)

// tlsFiles writes a CA and a certificate it signed (for 127.0.0.1) as PEM
// files, returning their paths.
func tlsFiles(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (cert, key string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	cert, key = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key
}

// TestDialTLS: -etcd-ca-file, -etcd-cert-file and -etcd-key-file reach an
// etcd that serves clients over TLS and requires client certificates; a
// client without the certificate, or trusting another CA, is refused with
// an error naming the endpoint.
func TestDialTLS(t *testing.T) {
	root, err := proctest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := proctest.EtcdBinary(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test etcd CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	caFile := filepath.Join(dir, "ca.crt")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	srvCert, srvKey := tlsFiles(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := tlsFiles(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)

	addrs, err := proctest.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--name=tls", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls=https://"+addrs[0], "--advertise-client-urls=https://"+addrs[0],
		"--listen-peer-urls=http://"+addrs[1], "--initial-advertise-peer-urls=http://"+addrs[1],
		"--initial-cluster=tls=http://"+addrs[1],
		"--cert-file="+srvCert, "--key-file="+srvKey, "--trusted-ca-file="+caFile, "--client-cert-auth")
	logf, _ := os.Create(filepath.Join(dir, "etcd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	cfg := etcdstore.ClientConfig{Endpoints: []string{addrs[0]}, CAFile: caFile, CertFile: cliCert, KeyFile: cliKey, DialTimeout: 2 * time.Second}
	var cli interface{ Close() error }
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := etcdstore.Dial(context.Background(), cfg)
		if err == nil {
			cli = c
			db, err := etcdstore.Open(context.Background(), c, "/tls", "credential", []store.Bucket{store.Bucket("a")}, etcdstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(context.Background(), func(tx store.WriteTx) error { return tx.Put(store.Bucket("a"), []byte("k"), []byte("v")) }); err != nil {
				t.Fatalf("a write over TLS: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("dial over TLS: %v\n%s", err, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cli.Close()

	noCert := cfg
	noCert.CertFile, noCert.KeyFile = "", ""
	if _, err := etcdstore.Dial(context.Background(), noCert); err == nil || !strings.Contains(err.Error(), addrs[0]) {
		t.Fatalf("without a client certificate: %v, want a refusal naming the endpoint", err)
	}
	plain := cfg
	plain.CAFile, plain.CertFile, plain.KeyFile = "", "", ""
	if _, err := etcdstore.Dial(context.Background(), plain); err == nil {
		t.Fatal("a plaintext client reached a TLS-only etcd")
	}
	if _, err := etcdstore.Dial(context.Background(), etcdstore.ClientConfig{Endpoints: []string{addrs[0]}, CAFile: filepath.Join(dir, "none.crt")}); err == nil || !strings.Contains(err.Error(), "-etcd-ca-file") {
		t.Fatalf("a missing CA file: %v", err)
	}
}
