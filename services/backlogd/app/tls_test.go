package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// writePKI makes a CA and a leaf certificate for 127.0.0.1 signed by it.
func writePKI(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "backlog test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "backlogd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(leafKey)
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return ca, cert, key
}

func TestMutualTLSBetweenServices(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writePKI(t, t.TempDir())
	cfg, err := ParseFlags("t", []string{
		"-data-dir", dir, "-http-addr", freeAddr(t), "-tls-ca-file", ca, "-tls-cert-file", cert, "-tls-key-file", key,
		"-vault-kek-file", testKEK(t), // a sealed vault is not ready
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
	// The gateway reaches every service over mTLS: ready, and a full flow works.
	waitReady(t, cfg)
	op, _ := os.ReadFile(filepath.Join(dir, "operator-token"))
	code, ws := call(t, "POST", "http://"+cfg.HTTPAddr+"/v1/workspaces", strings.TrimSpace(string(op)), `{"name":"Acme"}`)
	if code != 200 {
		t.Fatalf("create workspace through the gateway over mTLS: %d %v", code, ws)
	}
	wsID := ws["workspace"].(map[string]any)["id"].(string)
	if code, body := call(t, "POST", "http://"+cfg.HTTPAddr+"/v1/workspaces/"+wsID+"/automations", ws["token"].(string), `{"name":"ci"}`); code != 200 {
		t.Fatalf("create automation (automation → credential over mTLS): %d %v", code, body)
	}

	check := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(cfg.CredentialAddr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca)
	pool.AppendCertsFromPEM(caPEM)
	pair, _ := tls.LoadX509KeyPair(cert, key)
	if err := check(insecure.NewCredentials()); err == nil {
		t.Error("a plaintext client reached a service")
	}
	if err := check(credentials.NewTLS(&tls.Config{RootCAs: pool})); err == nil {
		t.Error("a TLS client without a certificate reached a service")
	}
	if err := check(credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}})); err != nil {
		t.Errorf("a client with a certificate the CA signed: %v", err)
	}
	if _, err := ParseFlags("t", []string{"-tls-ca-file", ca}, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	} else if c, _ := ParseFlags("t", []string{"-tls-ca-file", ca}, func(string) string { return "" }); func() error { _, _, err := c.loadTLS(); return err }() == nil {
		t.Error("a partial -tls-* configuration was accepted")
	}
}

func waitReady(t *testing.T, cfg Config) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _ := call(t, "GET", "http://"+cfg.HTTPAddr+"/readyz", "", "")
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
