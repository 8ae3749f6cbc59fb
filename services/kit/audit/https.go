package audit

// Signed HTTPS deliveries of the export: each batch of JSON lines is one
// POST, signed with the audit signing key, retried (at least once) until
// the endpoint answers 2xx.
//
//	POST <url>
//	Content-Type: application/x-ndjson
//	Backlog-Audit-Timestamp: <unix seconds>
//	Backlog-Audit-Key-Id: <KeyID of the signing key>
//	Backlog-Audit-Signature: base64(Ed25519("backlog-audit-delivery-v1\n" + timestamp + "\n" + body))
//	Idempotency-Key: hex SHA-256 of the body (the same batch retried has the same key)

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

// Delivery headers.
const (
	HeaderTimestamp = "Backlog-Audit-Timestamp"
	HeaderKeyID     = "Backlog-Audit-Key-Id"
	HeaderSignature = "Backlog-Audit-Signature"
)

// HTTPSink delivers exported lines to an HTTPS endpoint.
type HTTPSink struct {
	url    *url.URL
	key    ed25519.PrivateKey
	client *http.Client
	now    func() time.Time
}

// NewHTTPSink delivers to rawURL (https only), trusting the system roots
// and the PEM certificates in caFile (optional), signing with key.
func NewHTTPSink(rawURL string, key ed25519.PrivateKey, caFile string, timeout time.Duration) (*HTTPSink, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, errors.New("audit export URL: want https://host/path")
	}
	if u.User != nil {
		return nil, errors.New("audit export URL: must not hold credentials")
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("audit export CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("audit export CA file %s: no PEM certificate", caFile)
		}
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, Proxy: http.ProxyFromEnvironment}
	return &HTTPSink{url: u, key: key, now: time.Now,
		client: &http.Client{Timeout: timeout, Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

func deliverySigned(ts string, body []byte) []byte {
	b := []byte("backlog-audit-delivery-v1\n" + ts + "\n")
	return append(b, body...)
}

// Write POSTs lines as one signed batch; any answer but 2xx is an error
// (the exporter retries from its checkpoint).
func (h *HTTPSink) Write(lines [][]byte) error {
	body := bytes.Join(lines, nil)
	ts := strconv.FormatInt(h.now().Unix(), 10)
	req, err := http.NewRequest(http.MethodPost, h.url.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(body)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderKeyID, KeyID(h.key.Public().(ed25519.PublicKey)))
	req.Header.Set(HeaderSignature, base64.StdEncoding.EncodeToString(ed25519.Sign(h.key, deliverySigned(ts, body))))
	req.Header.Set("Idempotency-Key", hex.EncodeToString(sum[:]))
	resp, err := h.client.Do(req)
	if err != nil {
		// The URL's path and query stay out of messages: only the host.
		return fmt.Errorf("audit delivery to %s: %w", h.url.Host, unwrapURLError(err))
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("audit delivery to %s: status %d", h.url.Host, resp.StatusCode)
	}
	return nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// VerifyDelivery checks a delivery's signature (for receivers, with the
// audit signing key's public key): the timestamp header, the signature
// header and the body as received.
func VerifyDelivery(pub ed25519.PublicKey, timestamp, signature string, body []byte) bool {
	sig, err := base64.StdEncoding.DecodeString(signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(pub, deliverySigned(timestamp, body), sig)
}
