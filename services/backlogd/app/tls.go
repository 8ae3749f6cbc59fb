package app

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// tlsConfigured reports whether the -tls-* flags ask for mTLS between the
// gateway and the services and among the services.
func (c Config) tlsConfigured() bool {
	return c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSCAFile != ""
}

// loadTLS reads the process's certificate and the CA that signs every
// control-plane certificate. Both ends of every gRPC connection present a
// certificate the CA signed (mutual TLS, TLS 1.3).
func (c Config) loadTLS() (serverOpt grpc.ServerOption, client credentials.TransportCredentials, err error) {
	if !c.tlsConfigured() {
		return nil, nil, nil
	}
	if c.TLSCertFile == "" || c.TLSKeyFile == "" || c.TLSCAFile == "" {
		return nil, nil, errors.New("mTLS needs all of -tls-cert-file, -tls-key-file and -tls-ca-file")
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("-tls-cert-file/-tls-key-file: %w", err)
	}
	pem, err := os.ReadFile(c.TLSCAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("-tls-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("-tls-ca-file %s holds no PEM certificate", c.TLSCAFile)
	}
	srv := &tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	}
	cli := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	return grpc.Creds(credentials.NewTLS(srv)), credentials.NewTLS(cli), nil
}
