package audit

// Export: every audit event of a store, as one JSON line each, to a file
// rotated by size or to stdout, at least once. The position of the last
// event written (and synced) is kept in the store as a checkpoint; a start
// resumes after it, so a restart neither loses events nor writes the whole
// trail again (only the events after the last checkpoint may be written
// twice).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/store"
)

// ExportedEvent is the exported form of an event: one JSON object per line.
// Field by field it is documented in docs/operations.md ("Audit export").
type ExportedEvent struct {
	ID            string `json:"id"`
	WorkspaceID   string `json:"workspaceId"`
	Time          string `json:"time"`
	Service       string `json:"service"`
	Action        string `json:"action"`
	Outcome       string `json:"outcome"`
	ActorKind     string `json:"actorKind"`
	ActorID       string `json:"actorId"`
	TargetKind    string `json:"targetKind"`
	TargetID      string `json:"targetId"`
	ClientIP      string `json:"clientIp"`
	RequestID     string `json:"requestId"`
	Detail        string `json:"detail"`
	ChainSeq      uint64 `json:"chainSeq"`
	ChainPrevHash string `json:"chainPrevHash"`
	ChainHash     string `json:"chainHash"`
}

// Exported turns ev into its exported form.
func Exported(ev *auditv1.AuditEvent) *ExportedEvent {
	return &ExportedEvent{
		ID: ev.GetId(), WorkspaceID: ev.GetWorkspaceId(), Time: ev.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
		Service: ev.GetService(), Action: ev.GetAction(), Outcome: ev.GetOutcome(), ActorKind: ev.GetActorKind(),
		ActorID: ev.GetActorId(), TargetKind: ev.GetTargetKind(), TargetID: ev.GetTargetId(), ClientIP: ev.GetClientIp(),
		RequestID: ev.GetRequestId(), Detail: ev.GetDetail(),
		ChainSeq: ev.GetChainSeq(), ChainPrevHash: ev.GetChainPrevHash(), ChainHash: ev.GetChainHash(),
	}
}

// Event turns an exported line back into an event.
func (x *ExportedEvent) Event() (*auditv1.AuditEvent, error) {
	t, err := time.Parse(time.RFC3339Nano, x.Time)
	if err != nil {
		return nil, fmt.Errorf("event %s: time: %w", x.ID, err)
	}
	return &auditv1.AuditEvent{
		Id: x.ID, WorkspaceId: x.WorkspaceID, Time: timestamppb.New(t), Service: x.Service, Action: x.Action,
		Outcome: x.Outcome, ActorKind: x.ActorKind, ActorId: x.ActorID, TargetKind: x.TargetKind, TargetId: x.TargetID,
		ClientIp: x.ClientIP, RequestId: x.RequestID, Detail: x.Detail,
		ChainSeq: x.ChainSeq, ChainPrevHash: x.ChainPrevHash, ChainHash: x.ChainHash,
	}, nil
}

// ReadExport reads exported JSON lines from r.
func ReadExport(r io.Reader) ([]*auditv1.AuditEvent, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	var out []*auditv1.AuditEvent
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		x := &ExportedEvent{}
		if err := json.Unmarshal(sc.Bytes(), x); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		ev, err := x.Event()
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, ev)
	}
	return out, sc.Err()
}

// VerifyExport checks the chains of exported events (every service's,
// from one or more files of an export): each event's hash and the links
// between them. An event exported twice (at least once) counts once.
// Digests are not exported: the chain may start anywhere.
func VerifyExport(evs []*auditv1.AuditEvent) []*Report {
	by := map[string]*chainInput{}
	var services []string
	var reports []*Report
	for _, ev := range evs {
		in := by[ev.GetService()]
		if in == nil {
			in = &chainInput{events: map[uint64][]*auditv1.AuditEvent{}, digests: map[uint64]*Digest{}}
			by[ev.GetService()] = in
			services = append(services, ev.GetService())
		}
		if ev.GetChainSeq() == 0 {
			continue
		}
		dup := false
		for _, o := range in.events[ev.GetChainSeq()] {
			if proto.Equal(o, ev) {
				dup = true
			}
		}
		if !dup {
			in.events[ev.GetChainSeq()] = append(in.events[ev.GetChainSeq()], ev)
		}
	}
	slices.Sort(services)
	for _, s := range services {
		r := &Report{Service: s}
		walk(r, by[s])
		reports = append(reports, r)
	}
	return reports
}

// Sink is where exported lines go: a file rotated by size, or stdout.
// Exporters of several stores may share one.
type Sink struct {
	mu       sync.Mutex
	path     string // "" for w
	maxBytes int64
	keep     int
	f        *os.File
	w        io.Writer
	size     int64
}

// Export defaults.
const (
	DefaultExportMaxBytes = 100 << 20
	DefaultExportKeep     = 10
)

// OpenSink opens path for appending ("-": stdout). Past maxBytes the file is
// renamed path.1 (path.1 to path.2, …, keeping keep old files) and a new
// one started.
func OpenSink(path string, maxBytes int64, keep int) (*Sink, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultExportMaxBytes
	}
	if keep <= 0 {
		keep = DefaultExportKeep
	}
	s := &Sink{maxBytes: maxBytes, keep: keep}
	if path == "-" {
		s.w = os.Stdout
		return s, nil
	}
	s.path = path
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Sink) open() error {
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit export file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit export file: %w", err)
	}
	s.f, s.w, s.size = f, f, fi.Size()
	return nil
}

func (s *Sink) rotate() error {
	if err := s.f.Close(); err != nil {
		return err
	}
	for i := s.keep - 1; i >= 1; i-- {
		from := s.path + "." + strconv.Itoa(i)
		if _, err := os.Stat(from); err == nil {
			if err := os.Rename(from, s.path+"."+strconv.Itoa(i+1)); err != nil {
				return err
			}
		}
	}
	if err := os.Rename(s.path, s.path+".1"); err != nil {
		return err
	}
	return s.open()
}

// Write appends lines (each one JSON object and a newline) and syncs the file.
func (s *Sink) Write(lines [][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return errors.New("audit export sink closed")
	}
	for _, l := range lines {
		if s.f != nil && s.size > 0 && s.size+int64(len(l)) > s.maxBytes {
			if err := s.f.Sync(); err != nil {
				return err
			}
			if err := s.rotate(); err != nil {
				return fmt.Errorf("audit export: rotate %s: %w", s.path, err)
			}
		}
		n, err := s.w.Write(l)
		s.size += int64(n)
		if err != nil {
			return fmt.Errorf("audit export: %w", err)
		}
	}
	if s.f != nil {
		return s.f.Sync()
	}
	return nil
}

// Close closes the file.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.w = nil
	if s.f != nil {
		return s.f.Close()
	}
	return nil
}

// checkpoint is the stored export position.
type checkpoint struct {
	Seq uint64 `json:"seq"`
	// LegacyDone: the events written before the chain began were exported.
	LegacyDone bool `json:"legacyDone"`
}

// LineWriter takes batches of exported lines: a Sink (file or stdout) or
// an HTTPSink. Write returns once the lines are durable at the other end.
type LineWriter interface {
	Write(lines [][]byte) error
}

// Exporter exports one store's events to a LineWriter.
type Exporter struct {
	DB   store.Backend
	Sink LineWriter
	// Name tells exporters of one store apart: each keeps a checkpoint of
	// its own ("" for the file export, "https" for deliveries).
	Name   string
	Logger *zap.Logger
	// CheckpointEvery bounds how often the checkpoint is written (default 1s).
	CheckpointEvery time.Duration

	last    checkpoint
	written checkpoint // last stored
}

// Run exports until ctx ends: first what the checkpoint says is missing,
// then every new event as its commit is seen.
func (e *Exporter) Run(ctx context.Context) {
	lg := e.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	every := e.CheckpointEvery
	if every <= 0 {
		every = time.Second
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		rev, err := e.catchUp(ctx)
		if err == nil {
			err = e.follow(ctx, rev, every)
		}
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, store.ErrClosed) {
			return
		}
		lg.Warn("audit export interrupted; resuming from its checkpoint", zap.String("store", e.DB.Info().Name), zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := e.saveCheckpoint(fctx); err != nil && !errors.Is(err, store.ErrClosed) {
		lg.Warn("could not save the audit export checkpoint", zap.Error(err))
	}
}

// catchUp writes every event after the stored checkpoint and returns the
// revision it read at.
func (e *Exporter) catchUp(ctx context.Context) (int64, error) {
	var rev int64
	var legacy, chained []*auditv1.AuditEvent
	err := e.DB.View(ctx, func(tx store.ReadTx) error {
		legacy, chained = nil, nil
		rev = tx.Revision()
		v, err := tx.Get(ChainBucket, e.checkpointKey())
		if err != nil {
			return err
		}
		e.last = checkpoint{}
		if v != nil {
			if err := json.Unmarshal(v, &e.last); err != nil {
				return fmt.Errorf("audit export checkpoint: %w", err)
			}
		}
		e.written = e.last
		_, err = tx.Scan(Bucket, store.ScanOptions{}, func(k, v []byte) (bool, error) {
			ev := &auditv1.AuditEvent{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return false, fmt.Errorf("decode audit event %q: %w", k, err)
			}
			switch {
			case ev.GetChainSeq() == 0 && !e.last.LegacyDone:
				legacy = append(legacy, ev)
			case ev.GetChainSeq() > e.last.Seq:
				chained = append(chained, ev)
			}
			return false, nil
		})
		return err
	})
	if err != nil {
		return 0, err
	}
	slices.SortStableFunc(legacy, func(a, b *auditv1.AuditEvent) int { return a.GetTime().AsTime().Compare(b.GetTime().AsTime()) })
	if err := e.write(legacy); err != nil {
		return 0, err
	}
	e.last.LegacyDone = true
	if err := e.write(chained); err != nil {
		return 0, err
	}
	return rev, e.saveCheckpoint(ctx)
}

// follow writes the events of every commit after rev.
func (e *Exporter) follow(ctx context.Context, rev int64, every time.Duration) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := e.DB.Watch(wctx, rev)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := e.saveCheckpoint(ctx); err != nil {
				return err
			}
		case r, ok := <-ch:
			if !ok {
				return store.ErrClosed
			}
			if r.Err != nil {
				return r.Err
			}
			var evs []*auditv1.AuditEvent
			for _, c := range r.Changes {
				if c.Delete || c.Bucket != string(Bucket) {
					continue
				}
				ev := &auditv1.AuditEvent{}
				if err := proto.Unmarshal(c.Value, ev); err != nil {
					return fmt.Errorf("decode audit event %q: %w", c.Key, err)
				}
				if ev.GetChainSeq() > e.last.Seq {
					evs = append(evs, ev)
				}
			}
			if err := e.write(evs); err != nil {
				return err
			}
		}
	}
}

// write writes evs (chained ones in chain order) and advances the position.
func (e *Exporter) write(evs []*auditv1.AuditEvent) error {
	if len(evs) == 0 {
		return nil
	}
	slices.SortStableFunc(evs, func(a, b *auditv1.AuditEvent) int {
		switch {
		case a.GetChainSeq() < b.GetChainSeq():
			return -1
		case a.GetChainSeq() > b.GetChainSeq():
			return 1
		}
		return 0
	})
	for chunk := range slices.Chunk(evs, 1000) {
		lines := make([][]byte, 0, len(chunk))
		for _, ev := range chunk {
			b, err := json.Marshal(Exported(ev))
			if err != nil {
				return err
			}
			lines = append(lines, append(b, '\n'))
		}
		if err := e.Sink.Write(lines); err != nil {
			return err
		}
		e.last.Seq = max(e.last.Seq, chunk[len(chunk)-1].GetChainSeq())
	}
	return nil
}

func (e *Exporter) checkpointKey() []byte {
	if e.Name == "" {
		return checkpointKey
	}
	return append(append(bytes.Clone(checkpointKey), '/'), e.Name...)
}

// saveCheckpoint stores the position reached, if it moved; never backwards.
func (e *Exporter) saveCheckpoint(ctx context.Context) error {
	if e.last == e.written {
		return nil
	}
	want := e.last
	err := e.DB.Update(ctx, func(tx store.WriteTx) error {
		v, err := tx.Get(ChainBucket, e.checkpointKey())
		if err != nil {
			return err
		}
		cp := want
		if v != nil {
			var old checkpoint
			if json.Unmarshal(v, &old) == nil {
				cp.Seq = max(cp.Seq, old.Seq)
				cp.LegacyDone = cp.LegacyDone || old.LegacyDone
			}
		}
		b, err := json.Marshal(cp)
		if err != nil {
			return err
		}
		return tx.Put(ChainBucket, e.checkpointKey(), b)
	})
	if err == nil {
		e.written = want
	}
	return err
}
