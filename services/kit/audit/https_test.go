package audit_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// Deliveries to a real HTTPS endpoint are signed, retried after a refusal
// (at least once), and resume from their own checkpoint after a restart.
func TestAuditHTTPSDeliveries(t *testing.T) {
	ctx := context.Background()
	key := signingKey(t)
	pub := key.Public().(ed25519.PublicKey)
	var mu sync.Mutex
	var got []string
	refuse := 2
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !audit.VerifyDelivery(pub, r.Header.Get(audit.HeaderTimestamp), r.Header.Get(audit.HeaderSignature), body) ||
			r.Header.Get(audit.HeaderKeyID) != audit.KeyID(pub) || r.Header.Get("Idempotency-Key") == "" {
			t.Errorf("unsigned or badly signed delivery")
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if audit.VerifyDelivery(pub, r.Header.Get(audit.HeaderTimestamp), r.Header.Get(audit.HeaderSignature), append(body, ' ')) {
			t.Errorf("a changed body verifies")
		}
		mu.Lock()
		defer mu.Unlock()
		if refuse > 0 {
			refuse--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		evs, err := audit.ReadExport(bytes.NewReader(body))
		if err != nil {
			t.Error(err)
		}
		for _, ev := range evs {
			got = append(got, ev.Id)
		}
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	if _, err := audit.NewHTTPSink(srv.URL, key, "", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.NewHTTPSink(strings.Replace(srv.URL, "https:", "http:", 1), key, ca, 0); err == nil {
		t.Fatal("plain http accepted")
	}
	sink, err := audit.NewHTTPSink(srv.URL+"/audit?token=abc", key, ca, 0)
	if err != nil {
		t.Fatal(err)
	}

	db := openStore(t, filepath.Join(t.TempDir(), "things.db"))
	defer db.Close()
	var want []string
	record := func(n int) {
		for i := range n {
			ev := testEvent("ws_h", i)
			if err := audit.Record(ctx, db, ev); err != nil {
				t.Fatal(err)
			}
			want = append(want, ev.Id)
		}
	}
	run := func() func() {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&audit.Exporter{DB: db, Sink: sink, Name: "https"}).Run(ctx)
		}()
		return func() { cancel(); <-done }
	}
	delivered := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	record(3)
	stop := run()
	record(4)
	waitFor(t, func() bool { return len(delivered()) >= 7 })
	stop()
	record(2)
	stop = run()
	waitFor(t, func() bool { return len(delivered()) >= 9 })
	stop()
	if d := delivered(); !slices.Equal(d, want) {
		t.Fatalf("delivered %v, want %v", d, want)
	}
	// The file export's checkpoint is its own: it starts from the beginning.
	var cp []byte
	db.View(ctx, func(tx store.ReadTx) error {
		v, _ := tx.Get(audit.ChainBucket, []byte("export/checkpoint"))
		cp = bytes.Clone(v)
		return nil
	})
	if cp != nil {
		t.Fatalf("the deliveries moved the file export's checkpoint: %s", cp)
	}
}
