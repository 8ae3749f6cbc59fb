package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// auditIntegrityFlow makes audited changes in every service of ws: members
// (credential), an automation and a refused exchange (automation and
// credential), secrets (vault).
func auditIntegrityFlow(t *testing.T, c *cluster, ws workspace, n string) {
	t.Helper()
	c.createMember(t, ws, "Member "+n, "member")
	auto, secret := c.createAutomation(t, ws.ID, ws.OwnerToken, map[string]any{"name": "audited-" + n, "scopes": []string{"automations:read"}})
	path := "/v1/workspaces/" + ws.ID + "/automations/" + auto.str("id")
	c.exchange(t, secret, nil)
	c.expect(t, http.StatusOK, "POST", path+"/rotate-secret", ws.OwnerToken, map[string]any{"credentialLabel": "second"})
	c.call(t, "POST", "/v1/auth/exchange", secret, nil) // refused: rotated away
	value := "sk_live_audit_" + n + "_" + strings.Repeat("z", 20)
	c.creds.add(value)
	base := "/v1/workspaces/" + ws.ID
	c.expect(t, http.StatusOK, "POST", base+"/secrets", ws.OwnerToken, map[string]any{"name": "stripe-" + n, "kind": "webhook", "value": value})
	c.expect(t, http.StatusOK, "PATCH", base+"/secrets/stripe-"+n, ws.OwnerToken, map[string]any{"value": value + "-2"})
	c.creds.add(value + "-2")
	c.expect(t, http.StatusOK, "DELETE", path, ws.OwnerToken, nil)
}

// auditIntegrityTrail reads ws's whole audit trail through the REST API.
func auditIntegrityTrail(t *testing.T, c *cluster, ws workspace) []obj {
	t.Helper()
	var out []obj
	token := ""
	for {
		q := "?pageSize=100"
		if token != "" {
			q += "&pageToken=" + token
		}
		r := c.expect(t, http.StatusOK, "GET", "/v1/workspaces/"+ws.ID+"/audit-events"+q, ws.OwnerToken, nil)
		out = append(out, r.list("auditEvents")...)
		if token = r.str("nextPageToken"); token == "" {
			return out
		}
	}
}

// auditIntegrityExport reads the export (rotated files first) as lines.
func auditIntegrityExport(t *testing.T, path string) ([]map[string]any, []byte) {
	t.Helper()
	var all []byte
	for i := audit.DefaultExportKeep; i >= 1; i-- { // rotated files, oldest first
		if b, err := os.ReadFile(path + "." + strconv.Itoa(i)); err == nil {
			all = append(all, b...)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	all = append(all, b...)
	var lines []map[string]any
	for _, l := range bytes.Split(all, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("export line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines, all
}

// auditIntegrityMatch checks that the export holds exactly the API's events
// of ws, each once and field for field the same.
func auditIntegrityMatch(t *testing.T, c *cluster, ws workspace, exportPath string) {
	t.Helper()
	var trail []obj
	var byID map[string]map[string]any
	deadline := time.Now().Add(15 * time.Second)
	for {
		trail = auditIntegrityTrail(t, c, ws)
		lines, _ := auditIntegrityExport(t, exportPath)
		byID = map[string]map[string]any{}
		dups := 0
		for _, l := range lines {
			if l["workspaceId"] != ws.ID {
				continue
			}
			if _, ok := byID[l["id"].(string)]; ok {
				dups++
			}
			byID[l["id"].(string)] = l
		}
		if dups > 0 {
			t.Fatalf("%d events of %s exported twice over clean stops", dups, ws.ID)
		}
		if len(byID) >= len(trail) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(trail) < 8 {
		t.Fatalf("the API trail has only %d events", len(trail))
	}
	if len(byID) != len(trail) {
		t.Fatalf("the export has %d events of %s, the API %d", len(byID), ws.ID, len(trail))
	}
	fields := []string{"id", "workspaceId", "action", "outcome", "actorKind", "actorId", "targetKind", "targetId", "clientIp", "requestId", "service", "detail", "chainHash", "chainPrevHash"}
	for _, e := range trail {
		l := byID[e.str("id")]
		if l == nil {
			t.Fatalf("API event %s (%s) is not in the export", e.str("id"), e.str("action"))
		}
		for _, f := range fields {
			if got, _ := l[f].(string); got != e.str(f) {
				t.Errorf("event %s: export %s = %q, API %q", e.str("id"), f, got, e.str(f))
			}
		}
		if at, err := time.Parse(time.RFC3339Nano, l["time"].(string)); err != nil || !at.Equal(e.time(t, "time")) {
			t.Errorf("event %s: export time %v, API %v", e.str("id"), l["time"], e.str("time"))
		}
		if seq, _ := l["chainSeq"].(float64); seq < 1 || strconv.FormatUint(uint64(seq), 10) != e.str("chainSeq") {
			t.Errorf("event %s: export chainSeq %v, API %q", e.str("id"), l["chainSeq"], e.str("chainSeq"))
		}
	}
}

// auditVerify runs `backlogd audit verify` and returns its output and exit code.
func auditVerify(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append([]string{"audit", "verify"}, args...)...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// A full flow through a real backlogd: the JSON-lines export matches the
// API's audit trail event for event, across a restart (no loss, no
// repeat), holds no credential or secret value; `backlogd audit verify`
// passes on the stopped stores and on the export, and fails, naming the
// event, on a copy of a store with one event changed.
func TestAuditIntegrityExportMatchesAPIAndVerifies(t *testing.T) {
	t.Parallel()
	// A receiver of the signed HTTPS deliveries.
	type delivery struct {
		ts, sig string
		body    []byte
	}
	var mu sync.Mutex
	var deliveries []delivery
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		deliveries = append(deliveries, delivery{r.Header.Get(audit.HeaderTimestamp), r.Header.Get(audit.HeaderSignature), body})
		mu.Unlock()
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)

	exportPath := filepath.Join(t.TempDir(), "audit.jsonl")
	c := startCluster(t, layoutAll, "-audit-export-file="+exportPath, "-audit-digest-interval=200ms",
		"-audit-export-url="+srv.URL+"/ingest", "-audit-export-ca-file="+ca)
	ws := c.createWorkspace(t, "Audited")
	auditIntegrityFlow(t, c, ws, "one")
	auditIntegrityMatch(t, c, ws, exportPath)

	c.restart(t)
	auditIntegrityFlow(t, c, ws, "two")
	auditIntegrityMatch(t, c, ws, exportPath)
	_, raw := auditIntegrityExport(t, exportPath)
	for _, what := range c.creds.findIn(raw) {
		t.Errorf("the audit export holds %s", what)
	}
	deliveredIDs := func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		ids := map[string]bool{}
		for _, d := range deliveries {
			evs, err := audit.ReadExport(bytes.NewReader(d.body))
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs {
				ids[ev.Id] = true
			}
		}
		return ids
	}
	// Wait until every exported event was delivered and no new one has
	// been exported for a while (workspace events reach the vault in
	// bursts, each leaving an audit event of its own).
	settled, seen := time.Now(), -1
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		lines, _ := auditIntegrityExport(t, exportPath)
		if len(lines) != seen {
			seen, settled = len(lines), time.Now()
		}
		if len(deliveredIDs()) >= len(lines) && time.Since(settled) > 500*time.Millisecond {
			break
		}
	}
	c.stop(t)

	dataDir := c.ProcFor("credential").DataDir
	if _, err := os.Stat(filepath.Join(dataDir, audit.SigningKeyFile)); err != nil {
		t.Fatalf("no audit signing key: %v", err)
	}
	// The deliveries: signed by the key whose public half is in the data
	// dir, and the same events as the file.
	pub, err := audit.LoadVerifyKey(filepath.Join(dataDir, audit.SigningKeyFile+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, d := range deliveries {
		if !audit.VerifyDelivery(pub, d.ts, d.sig, d.body) {
			t.Fatalf("a delivery's signature does not verify")
		}
	}
	mu.Unlock()
	delivered := deliveredIDs()
	lines, _ := auditIntegrityExport(t, exportPath)
	for _, l := range lines {
		if !delivered[l["id"].(string)] {
			t.Fatalf("event %s is in the file export but was not delivered over HTTPS", l["id"])
		}
	}
	if len(delivered) != len(lines) {
		t.Fatalf("%d events delivered, %d in the file", len(delivered), len(lines))
	}

	out, code := auditVerify(t, "-data-dir", dataDir)
	if code != 0 || !strings.Contains(out, "intact: 4 stores") || !strings.Contains(out, "vault: intact") {
		t.Fatalf("verify of the untouched stores: exit %d:\n%s", code, out)
	}
	t.Log(out)
	out, code = auditVerify(t, "-export-file", exportPath)
	if code != 0 || !strings.Contains(out, "intact:") {
		t.Fatalf("verify of the export: exit %d:\n%s", code, out)
	}

	// A copy of the vault's store with one event's detail changed.
	copyDir := t.TempDir()
	for _, f := range []string{"vault.db", "vault.db.id", audit.SigningKeyFile, audit.SigningKeyFile + ".pub"} {
		b, err := os.ReadFile(filepath.Join(dataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(copyDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	db, err := boltstore.Open(filepath.Join(copyDir, "vault.db"), []store.Bucket{audit.Bucket, audit.ChainBucket}, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var changed string
	err = db.Update(context.Background(), func(tx store.WriteTx) error {
		var k, v []byte
		tx.Scan(audit.Bucket, store.ScanOptions{Prefix: []byte(ws.ID + "/"), Limit: 1}, func(key, val []byte) (bool, error) {
			k, v = bytes.Clone(key), bytes.Clone(val)
			return true, nil
		})
		ev := &auditv1.AuditEvent{}
		if err := proto.Unmarshal(v, ev); err != nil {
			return err
		}
		ev.Detail += " (edited)"
		changed = ev.Id
		b, _ := proto.Marshal(ev)
		return tx.Put(audit.Bucket, k, b)
	})
	db.Close()
	if err != nil || changed == "" {
		t.Fatalf("tamper: %v", err)
	}
	out, code = auditVerify(t, "-data-dir", copyDir)
	if code == 0 || !strings.Contains(out, "vault: TAMPERED: altered: event "+changed) {
		t.Fatalf("verify of the tampered copy: exit %d:\n%s", code, out)
	}
	// A line of the export edited.
	_, raw = auditIntegrityExport(t, exportPath)
	edited := filepath.Join(t.TempDir(), "edited.jsonl")
	os.WriteFile(edited, bytes.Replace(raw, []byte(`"action":"secret.create"`), []byte(`"action":"secret.get"`), 1), 0o600)
	if out, code = auditVerify(t, "-export-file", edited); code == 0 || !strings.Contains(out, "TAMPERED") {
		t.Fatalf("verify of an edited export: exit %d:\n%s", code, out)
	}
}
