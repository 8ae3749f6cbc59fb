package credential

import (
	"context"
	"fmt"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/page"
)

// ListAuditEvents serves the workspace's one trail: this service's events
// merged with every peer's. Event ids sort by time in every service, so one
// cursor (the last id returned) pages through all of them at once.
func (s *Service) ListAuditEvents(ctx context.Context, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	if _, err := auth.Require(ctx, req.GetWorkspaceId(), auth.AuditRead); err != nil {
		return nil, err
	}
	local, err := audit.List(ctx, s.db, req)
	if err != nil || req.GetLocalOnly() {
		return local, err
	}
	size, _ := page.Size(req.GetPageSize())
	events := local.AuditEvents
	more := local.NextPageToken != ""
	peerReq := &auditv1.ListAuditEventsRequest{
		WorkspaceId: req.WorkspaceId, Action: req.Action, TargetId: req.TargetId, StartTime: req.StartTime,
		EndTime: req.EndTime, PageSize: req.PageSize, PageToken: req.PageToken, LocalOnly: true,
	}
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.NewOutgoingContext(ctx, metadata.Pairs("authorization", "Bearer "+auth.Bearer(ctx)))
	if v := md.Get("x-request-id"); len(v) > 0 {
		out = metadata.AppendToOutgoingContext(out, "x-request-id", v[0])
	}
	for name, peer := range s.cfg.AuditPeers {
		resp, err := peer.ListAuditEvents(out, peerReq)
		if err != nil {
			return nil, errs.WithReason(codes.Unavailable, "credential.backlog", "AUDIT_INCOMPLETE",
				fmt.Sprintf("the audit trail is incomplete: the %s service did not answer; try again", name))
		}
		events = append(events, resp.AuditEvents...)
		more = more || resp.NextPageToken != ""
	}
	sort.Slice(events, func(i, j int) bool { return events[i].Id < events[j].Id })
	if len(events) > size {
		events, more = events[:size], true
	}
	resp := &auditv1.ListAuditEventsResponse{AuditEvents: events}
	if more && len(events) > 0 {
		last := events[len(events)-1]
		resp.NextPageToken = page.Encode(ctx, audit.Scope(req), auditCursor(last))
	}
	return resp, nil
}
