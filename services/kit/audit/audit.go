// Package audit records audit events in a service's own store, in the same
// transaction as the change they describe, and serves them back.
package audit

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/server"
	"github.com/backlog/controlplane/services/kit/store"
)

// Bucket holds a service's audit events, keyed workspace/event-id (time-sorted).
var Bucket = store.Bucket("audit_events")

// Outcomes.
const (
	Success = "success"
	Failure = "failure"
)

// Recorder builds one service's events on its clock.
type Recorder struct {
	Service string
	Now     func() time.Time // default time.Now
}

// Event builds an event for the call in ctx: actor, client IP and request id
// come from the call, the time from the recorder's clock. detail must never
// hold secret material.
func (r Recorder) Event(ctx context.Context, ws, action, targetKind, targetID, outcome, detail string) *auditv1.AuditEvent {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	return newEvent(ctx, now(), r.Service, ws, action, targetKind, targetID, outcome, detail)
}

func newEvent(ctx context.Context, at time.Time, service, ws, action, targetKind, targetID, outcome, detail string) *auditv1.AuditEvent {
	ev := &auditv1.AuditEvent{
		Id:          ids.New("evt"),
		WorkspaceId: ws,
		Time:        timestamppb.New(at),
		Action:      action,
		Outcome:     outcome,
		TargetKind:  targetKind,
		TargetId:    targetID,
		ClientIp:    server.ClientIP(ctx),
		RequestId:   server.RequestID(ctx),
		Service:     service,
		Detail:      detail,
	}
	if p := auth.FromContext(ctx); p != nil {
		ev.ActorKind = ActorKind(p)
		ev.ActorId = p.SubjectId
	}
	return ev
}

// ActorKind names the kind of principal for the trail.
func ActorKind(p *auth.Principal) string {
	switch p.GetSubjectKind() {
	case credentialv1.SubjectKind_SUBJECT_KIND_MEMBER:
		return "member"
	case credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION:
		return "automation"
	case credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		return "agent"
	case credentialv1.SubjectKind_SUBJECT_KIND_OPERATOR:
		return "operator"
	}
	return "anonymous"
}

// Put writes ev inside tx, as the next event of the store's hash chain (it
// sets ev's chain fields; see chain.go). It makes OpsPerEvent writes.
func Put(tx store.WriteTx, ev *auditv1.AuditEvent) error {
	if err := link(tx, ev); err != nil {
		return err
	}
	return store.Put(tx, Bucket, eventKey(ev), ev)
}

// Record writes ev in a transaction of its own (for failures, where there is
// no other write to join).
func Record(ctx context.Context, db store.Backend, ev *auditv1.AuditEvent) error {
	return db.Update(ctx, func(tx store.WriteTx) error { return Put(tx, ev) })
}

// Server serves one service's own events (AuditService with local_only).
type Server struct {
	auditv1.UnsafeAuditServiceServer
	DB store.Backend
}

// Register registers s on g.
func (s *Server) Register(g grpc.ServiceRegistrar) { auditv1.RegisterAuditServiceServer(g, s) }

// ListAuditEvents implements auditv1.AuditServiceServer for this store only.
func (s *Server) ListAuditEvents(ctx context.Context, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	if _, err := auth.Require(ctx, req.GetWorkspaceId(), auth.AuditRead); err != nil {
		return nil, err
	}
	return List(ctx, s.DB, req)
}

// List reads events of req's workspace matching its filters, oldest first.
func List(ctx context.Context, db store.Backend, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	scope := Scope(req)
	after, err := page.Decode(ctx, scope, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	prefix := store.Key(req.GetWorkspaceId(), "")
	if len(after) > 0 && !bytes.HasPrefix(after, prefix) {
		return nil, errs.Invalid("pageToken", "does not belong to this workspace")
	}
	var start, end time.Time
	if req.GetStartTime() != nil {
		start = req.GetStartTime().AsTime()
	}
	if req.GetEndTime() != nil {
		end = req.GetEndTime().AsTime()
	}
	resp := &auditv1.ListAuditEventsResponse{}
	err = db.View(ctx, func(tx store.ReadTx) error {
		next, err := store.Scan(tx, Bucket, prefix, after, size, func(k, v []byte) (bool, error) {
			ev := &auditv1.AuditEvent{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return false, fmt.Errorf("decode audit event: %w", err)
			}
			if !Match(ev, req, start, end) {
				return false, nil
			}
			resp.AuditEvents = append(resp.AuditEvents, ev)
			return true, nil
		})
		resp.NextPageToken = page.Encode(ctx, scope, next)
		return err
	})
	return resp, err
}

// Scope is the page-token scope of a list request: its workspace and filters.
func Scope(req *auditv1.ListAuditEventsRequest) string {
	return fmt.Sprintf("%s|%s|%s|%d|%d", req.GetWorkspaceId(), req.GetAction(), req.GetTargetId(),
		req.GetStartTime().GetSeconds(), req.GetEndTime().GetSeconds())
}

// Match applies the request's filters to ev.
func Match(ev *auditv1.AuditEvent, req *auditv1.ListAuditEventsRequest, start, end time.Time) bool {
	if req.GetAction() != "" && ev.Action != req.GetAction() {
		return false
	}
	if req.GetTargetId() != "" && ev.TargetId != req.GetTargetId() {
		return false
	}
	t := ev.GetTime().AsTime()
	if !start.IsZero() && t.Before(start) {
		return false
	}
	if !end.IsZero() && !t.Before(end) {
		return false
	}
	return true
}
