package reliability

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// auditIntegrityExportIDs reads the export file and returns how often each
// event id appears.
func auditIntegrityExportIDs(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, l := range bytes.Split(b, []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var ev struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(l, &ev); err != nil {
			t.Fatalf("export line %q: %v", l, err)
		}
		out[ev.ID]++
	}
	return out
}

// auditIntegrityTrailIDs reads a workspace's whole trail through the API.
func auditIntegrityTrailIDs(t *testing.T, c *cluster, ws workspace) []string {
	t.Helper()
	var ids []string
	token := ""
	for {
		o := c.rest().expect(t, http.StatusOK, http.MethodGet, "/v1/workspaces/"+ws.ID+"/audit-events?pageSize=1000&pageToken="+token, ws.OwnerToken, nil)
		for _, e := range o.list("auditEvents") {
			ids = append(ids, e.str("id"))
		}
		if token = o.str("nextPageToken"); token == "" {
			return ids
		}
	}
}

func auditIntegrityVerify(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append([]string{"audit", "verify"}, args...)...).CombinedOutput()
	return string(out), err
}

// SIGKILL while every service records audit events: after the restart the
// stores' hash chains verify (each event was committed with its chain head,
// or neither was), and the JSON-lines export holds every event of the API's
// trail at least once (the checkpoint resumes it).
func TestAuditIntegrityAcrossCrash(t *testing.T) {
	export := filepath.Join(t.TempDir(), "audit.jsonl")
	c := startCluster(t, layoutAll, "-audit-export-file="+export, "-audit-digest-interval=100ms")
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "audit-crash")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				var r *reply
				var err error
				if n%3 == 2 {
					r, err = rc.do(ctx, http.MethodPost, "/v1/workspaces/"+ws.ID+"/secrets", ws.OwnerToken,
						map[string]any{"name": fmt.Sprintf("s-%d-%d", w, n), "kind": "webhook", "value": "v"})
				} else {
					r, err = rc.do(ctx, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken,
						map[string]any{"name": fmt.Sprintf("a-%d-%d", w, n), "scopes": []string{}})
				}
				if err != nil || r.Status != http.StatusOK {
					return // the crash
				}
			}
		})
	}
	time.Sleep(700 * time.Millisecond)
	c.kill()
	cancel()
	wg.Wait()
	c.start(t)
	for i := range 5 {
		rc.createAutomation(t, ws.ID, ws.OwnerToken, fmt.Sprintf("after-%d", i))
	}

	trail := auditIntegrityTrailIDs(t, c, ws)
	deadline := time.Now().Add(20 * time.Second)
	var missing []string
	for {
		got := auditIntegrityExportIDs(t, export)
		missing = missing[:0]
		for _, id := range trail {
			if got[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of the API's %d events are not in the export after the crash, e.g. %s", len(missing), len(trail), missing[0])
	}
	c.stop(t)

	out, err := auditIntegrityVerify(t, "-data-dir", c.ProcFor("credential").DataDir)
	if err != nil || !strings.Contains(out, "intact: 4 stores") {
		t.Fatalf("audit verify after a crash: %v\n%s", err, out)
	}
	t.Logf("%d events in the trail; %s", len(trail), out)
	if out, err := auditIntegrityVerify(t, "-export-file", export); err != nil {
		t.Fatalf("audit verify of the export after a crash: %v\n%s", err, out)
	}
}
