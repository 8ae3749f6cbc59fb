package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"
)

const auditPath = "/v1/workspaces/%s/audit-events"

// followOverlap is how far back each poll of `audit list --follow` looks
// before the newest event it has shown: the trail merges four services, and
// an event can be stored a little after a later-stamped one of another.
const followOverlap = 10 * time.Second

type auditEvent struct {
	ID          string `json:"id"`
	WorkspaceID string `json:"workspaceId"`
	Time        string `json:"time"`
	Action      string `json:"action"`
	Outcome     string `json:"outcome"`
	ActorKind   string `json:"actorKind"`
	ActorID     string `json:"actorId"`
	TargetKind  string `json:"targetKind"`
	TargetID    string `json:"targetId"`
	ClientIP    string `json:"clientIp"`
	RequestID   string `json:"requestId"`
	Service     string `json:"service"`
	Detail      string `json:"detail"`
}

type auditPage struct {
	AuditEvents   []json.RawMessage `json:"auditEvents"`
	NextPageToken string            `json:"nextPageToken"`
}

// timeFlag reads --since/--until: RFC 3339, or a duration before now ("1h").
func timeFlag(name, v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usageErrorf("--%s %q is neither an RFC 3339 time (2026-01-31T00:00:00Z) nor a duration before now (1h, 30m)", name, v)
}

func (a *app) auditCommand() *cobra.Command {
	cmd := a.group("audit", "Read the workspace's audit trail (owner/admin)", `  backlog audit list --since 24h
  backlog audit list --action secret.use --all -o json
  backlog audit list --follow`)
	cmd.AddCommand(a.auditListCommand())
	return cmd
}

func (a *app) auditListCommand() *cobra.Command {
	var (
		pf             pageFlags
		action, target string
		since, until   string
		follow         bool
		interval       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List audit events, oldest first; --follow waits for new ones",
		Long: `List the workspace's audit trail: one time-ordered trail across every
service (actor, action, target, outcome, client IP, request id), never any
secret material. Owners and admins, or tokens with the audit:read scope.

--action and --target filter by action (e.g. automation.rotate_secret) and
target id; --since and --until by time (an RFC 3339 time, or a duration before
now such as 24h). --follow prints the matching events and then every new one
as it is recorded, until interrupted (Ctrl-C); with -o json it prints one JSON
event per line.`,
		Example: `  backlog audit list --since 24h
  backlog audit list --action automation.delete --target auto_123
  backlog audit list --all -o json > trail.json
  backlog audit list --follow --action secret.use`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := pf.query()
			if action != "" {
				q.Set("action", action)
			}
			if target != "" {
				q.Set("targetId", target)
			}
			now := a.env.Now()
			var start time.Time
			if since != "" {
				t, err := timeFlag("since", since, now)
				if err != nil {
					return err
				}
				start = t
				q.Set("startTime", t.UTC().Format(time.RFC3339Nano))
			}
			if until != "" {
				if follow {
					return usageErrorf("--until and --follow do not go together: --follow waits for events after now")
				}
				t, err := timeFlag("until", until, now)
				if err != nil {
					return err
				}
				q.Set("endTime", t.UTC().Format(time.RFC3339Nano))
			}
			if follow {
				if pf.token != "" {
					return usageErrorf("--page-token and --follow do not go together")
				}
				if interval < 100*time.Millisecond {
					return usageErrorf("--interval must be at least 100ms (got %s)", interval)
				}
				return a.followAudit(cmd.Context(), q, start, interval)
			}
			raw, err := a.listCall(cmd.Context(), &pf, auditPath, nil, q, "auditEvents")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				AuditEvents   []auditEvent `json:"auditEvents"`
				NextPageToken string       `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.AuditEvents))
			for _, e := range r.AuditEvents {
				rows = append(rows, auditRow(e))
			}
			if err := a.listTable("audit events", auditHeader, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&action, "action", "", "only events of this action, e.g. automation.create, secret.use")
	f.StringVar(&target, "target", "", "only events about this target id")
	f.StringVar(&since, "since", "", "only events at or after this time: RFC 3339, or a duration before now (24h)")
	f.StringVar(&until, "until", "", "only events before this time: RFC 3339, or a duration before now")
	f.BoolVarP(&follow, "follow", "f", false, "after the matching events, print new ones as they are recorded until interrupted")
	f.DurationVar(&interval, "interval", 2*time.Second, "with --follow, how often to ask for new events")
	return cmd
}

var auditHeader = []string{"TIME", "ACTION", "OUTCOME", "ACTOR", "TARGET", "CLIENT IP", "DETAIL"}

func auditRow(e auditEvent) []string {
	return []string{showTime(e.Time), e.Action, showStr(e.Outcome), kindID(e.ActorKind, e.ActorID), kindID(e.TargetKind, e.TargetID), showStr(e.ClientIP), showStr(e.Detail)}
}

func kindID(kind, id string) string {
	switch {
	case kind == "" && id == "":
		return "-"
	case kind == "":
		return id
	case id == "":
		return kind
	}
	return kind + ":" + id
}

// followAudit prints the events matching q, then polls for new ones every
// interval until ctx ends (an interrupt: exit 0). Each poll reads every page
// from a little before the newest event shown, and skips those shown.
func (a *app) followAudit(ctx context.Context, q url.Values, since time.Time, interval time.Duration) error {
	shown := map[string]time.Time{} // id → event time, for the overlap window
	var newest time.Time
	headerDone := false
	print := func(raw json.RawMessage, e auditEvent) error {
		if a.jsonOut() {
			b, err := compactJSON(raw)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout(), "%s\n", b)
			return err
		}
		if !headerDone {
			headerDone = true
			fmt.Fprintf(a.stdout(), "%-20s  %-32s  %-7s  %-28s  %-28s  %s\n", "TIME", "ACTION", "OUTCOME", "ACTOR", "TARGET", "DETAIL")
		}
		r := auditRow(e)
		_, err := fmt.Fprintf(a.stdout(), "%-20s  %-32s  %-7s  %-28s  %-28s  %s\n", r[0], r[1], r[2], r[3], r[4], r[6])
		return err
	}
	poll := func() error {
		pq := url.Values{}
		for k, v := range q {
			pq[k] = append([]string(nil), v...)
		}
		pq.Del("pageToken")
		if !newest.IsZero() {
			from := newest.Add(-followOverlap)
			if from.Before(since) {
				from = since
			}
			pq.Set("startTime", from.UTC().Format(time.RFC3339Nano))
		}
		all := pageFlags{all: true}
		raw, err := a.listCall(ctx, &all, auditPath, nil, pq, "auditEvents")
		if err != nil {
			return err
		}
		var page auditPage
		if err := decode(raw, &page); err != nil {
			return err
		}
		for _, item := range page.AuditEvents {
			var e auditEvent
			if err := json.Unmarshal(item, &e); err != nil {
				return fmt.Errorf("unexpected answer from the API: %v", err)
			}
			if _, ok := shown[e.ID]; ok {
				continue
			}
			t, _ := time.Parse(time.RFC3339Nano, e.Time)
			shown[e.ID] = t
			if t.After(newest) {
				newest = t
			}
			if err := print(item, e); err != nil {
				return err
			}
		}
		// Forget what is older than the next poll can return.
		for id, t := range shown {
			if t.Before(newest.Add(-followOverlap)) {
				delete(shown, id)
			}
		}
		return nil
	}
	if err := poll(); err != nil {
		return err
	}
	if !a.jsonOut() && !headerDone {
		fmt.Fprintln(a.stderr(), "No matching events yet; waiting for new ones (Ctrl-C to stop).")
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := poll(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ae *APIError
			var ee *exitError
			if errors.As(err, &ae) || errors.As(err, &ee) {
				return err
			}
			// The server went away for a moment: say so and keep trying.
			fmt.Fprintf(a.stderr(), "Warning: %s\n", Redact(err.Error()))
		}
	}
}

func compactJSON(raw []byte) ([]byte, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("unexpected answer from the API: %v", err)
	}
	return buf.Bytes(), nil
}
