package audit_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// runExporter runs an exporter of db into sink until stop is called.
func runExporter(db store.Backend, sink *audit.Sink) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&audit.Exporter{DB: db, Sink: sink, CheckpointEvery: 20 * time.Millisecond}).Run(ctx)
	}()
	return func() { cancel(); <-done }
}

func readExportFiles(t *testing.T, path string) []*auditv1.AuditEvent {
	t.Helper()
	files, _ := filepath.Glob(path + ".*")
	slices.SortFunc(files, func(a, b string) int { // oldest rotated file (highest number) first
		na, _ := strconv.Atoi(strings.TrimPrefix(a, path+"."))
		nb, _ := strconv.Atoi(strings.TrimPrefix(b, path+"."))
		return nb - na
	})
	files = append(files, path)
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	evs, err := audit.ReadExport(bytes.NewReader(all))
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// Events written before the exporter starts, while it runs, and while it is
// stopped all reach the export exactly once over a clean restart (the
// checkpoint is in the store), in chain order, and the export verifies; a
// change to a line is found.
func TestAuditExportResumesFromCheckpoint(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openStore(t, filepath.Join(dir, "things.db"))
	defer db.Close()
	var want []string
	record := func(n int) {
		for i := range n {
			ev := testEvent("ws_x", i)
			if err := audit.Record(ctx, db, ev); err != nil {
				t.Fatal(err)
			}
			want = append(want, ev.Id)
		}
	}
	record(5)
	out := filepath.Join(dir, "audit.jsonl")
	sink, err := audit.OpenSink(out, 4096, 50) // small: rotates
	if err != nil {
		t.Fatal(err)
	}
	stop := runExporter(db, sink)
	record(20)
	waitFor(t, func() bool { return len(readExportFiles(t, out)) == 25 })
	stop()
	record(15) // while no exporter runs
	stop = runExporter(db, sink)
	record(10)
	waitFor(t, func() bool { return len(readExportFiles(t, out)) >= 50 })
	stop()
	sink.Close()

	got := readExportFiles(t, out)
	var ids []string
	for i, ev := range got {
		ids = append(ids, ev.Id)
		if ev.ChainSeq != uint64(i+1) {
			t.Fatalf("line %d has position %d", i+1, ev.ChainSeq)
		}
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("exported %d events %v, want %d %v", len(ids), ids, len(want), want)
	}
	if files, _ := filepath.Glob(out + ".*"); len(files) == 0 {
		t.Fatal("no rotated file: the export never rotated")
	}
	rs := audit.VerifyExport(got)
	if len(rs) != 1 || !rs[0].Intact() || rs[0].Events != 50 {
		t.Fatalf("verify export: %v", rs)
	}
	got[17].TargetId = "thing_other"
	if rs := audit.VerifyExport(got); rs[0].Intact() || !strings.Contains(rs[0].Problem, got[17].Id) {
		t.Fatalf("altered line not found: %v", rs)
	}
	got[17] = nil
	if rs := audit.VerifyExport(slices.DeleteFunc(got, func(e *auditv1.AuditEvent) bool { return e == nil })); rs[0].Intact() ||
		!strings.Contains(rs[0].Problem, "missing: the event at position 18") {
		t.Fatalf("missing line not found: %v", rs)
	}
}

// A stopped exporter that died before its checkpoint (at least once) writes
// the unconfirmed events again; verification counts a repeated line once.
func TestAuditExportAtLeastOnceDuplicatesVerify(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openStore(t, filepath.Join(dir, "things.db"))
	defer db.Close()
	for i := range 6 {
		if err := audit.Record(ctx, db, testEvent("ws_y", i)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "audit.jsonl")
	sink, err := audit.OpenSink(out, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	stop := runExporter(db, sink)
	waitFor(t, func() bool { return len(readExportFiles(t, out)) == 6 })
	stop()
	// Forget the checkpoint, as if the process had died before writing it.
	if err := db.Update(ctx, func(tx store.WriteTx) error {
		return tx.Delete(audit.ChainBucket, []byte("export/checkpoint"))
	}); err != nil {
		t.Fatal(err)
	}
	stop = runExporter(db, sink)
	waitFor(t, func() bool { return len(readExportFiles(t, out)) == 12 })
	stop()
	rs := audit.VerifyExport(readExportFiles(t, out))
	if len(rs) != 1 || !rs[0].Intact() || rs[0].Events != 6 {
		t.Fatalf("verify export: %v", rs)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
