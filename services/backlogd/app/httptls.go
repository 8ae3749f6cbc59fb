package app

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
)

// hstsValue is the Strict-Transport-Security header the REST listener sends
// when it serves TLS: browsers keep to HTTPS for a year.
const hstsValue = "max-age=31536000"

// httpTLSConfigured reports whether the REST listener serves TLS.
func (c Config) httpTLSConfigured() bool { return c.HTTPTLSCertFile != "" || c.HTTPTLSKeyFile != "" }

// certReloader holds the REST listener's certificate; reload reads the
// files again (on SIGHUP), so that a renewed certificate is served to new
// connections without a restart.
type certReloader struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS on the REST listener needs both -http-tls-cert-file and -http-tls-key-file")
	}
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// reload reads the certificate and key again; on error the certificate in
// use stays.
func (r *certReloader) reload() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("-http-tls-cert-file %s / -http-tls-key-file %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert.Store(&cert)
	return nil
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// tlsConfig is the REST listener's TLS: 1.2 at least, Go's default (AEAD,
// forward-secret) cipher suites for 1.2.
func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.getCertificate}
}

// hsts adds Strict-Transport-Security to every response.
func hsts(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Strict-Transport-Security", hstsValue)
		next.ServeHTTP(w, r)
	})
}

// Reload re-reads what the process may renew without a restart (SIGHUP):
// the REST listener's TLS certificate and key. On error the old ones stay
// in use.
func (a *App) Reload() error {
	if a.httpCert == nil {
		return nil
	}
	return a.httpCert.reload()
}
