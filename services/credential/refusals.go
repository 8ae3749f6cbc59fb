package credential

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/ids"
)

// Audit actions of refused credentials.
const (
	// actionAuthenticate: a request refused because its credential, known to
	// the store, is suspended or revoked.
	actionAuthenticate = "auth.authenticate"
	// actionExchange: an exchange refused (suspended or revoked secret, a
	// too-long ttl, an ungranted or malformed scope).
	actionExchange = "auth.exchange"
)

// RefusalWindow is how long the refusals of one credential (per action and
// class) are coalesced into one audit record: a revoked token hammering the
// API adds at most one record per window to the trail, whatever the rate.
const RefusalWindow = time.Minute

// maxRefusalKeys bounds the coalescing table. Only credentials the store
// knows get an entry (unknown ones are never audited: they name no
// workspace), and an entry lives about two windows; past the bound, a
// refusal of a credential without an entry is not recorded (and logged).
const maxRefusalKeys = 100_000

// refusal describes a refused credential that the store knows. It never
// holds the credential, only its id.
type refusal struct {
	subject        *credentialv1.Subject
	credentialID   string
	credentialKind credentialv1.CredentialKind
	class          string // one of the refused* constants: part of the coalescing key
	reason         string // for the audit detail
}

// auditRefusal records a refusal in the audit trail: actor and target are the
// credential's subject, with the call's client IP and request id, outcome
// failure, the reason and the credential's id (never the credential). Records
// are coalesced per credential, action and class: the first refusal in a
// window is recorded at once; the others are counted, and when the window
// ends one summary record (the latest refusal's client IP and request id,
// and the count) is written, opening the next window. Best effort: the
// request is refused whether or not the record is written.
func (s *Service) auditRefusal(ctx context.Context, action string, r *refusal) {
	ws := r.subject.GetWorkspaceId()
	if ws == "" {
		return // the operator: no workspace trail to write to
	}
	actor := &auth.Principal{SubjectKind: r.subject.GetKind(), SubjectId: r.subject.GetId(), WorkspaceId: ws}
	detail := fmt.Sprintf("refused: %s (credential %s, %s)", r.reason, r.credentialID, credentialNoun(r.credentialKind))
	ev := s.event(auth.WithPrincipal(ctx, actor), ws, action, subjectNoun(r.subject.GetKind()), r.subject.GetId(), audit.Failure, detail)
	key := action + "|" + r.credentialID + "|" + r.class
	out, dropped := s.refusals.note(key, ev, s.cfg.Now())
	if dropped {
		s.lg.Warn("refusal not audited: too many refused credentials at once", zap.String("credential-id", r.credentialID), zap.String("action", action))
	}
	s.writeRefusals(ctx, out)
}

// writeRefusals writes audit records of refusals, each in its own update.
func (s *Service) writeRefusals(ctx context.Context, evs []*auditv1.AuditEvent) {
	if len(evs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, ev := range evs {
		if err := audit.Record(ctx, s.db, ev); err != nil {
			s.lg.Warn("could not record a refusal in the audit trail", zap.String("action", ev.GetAction()), zap.String("target-id", ev.GetTargetId()), errField(err))
		}
	}
}

// flushRefusals writes the summaries of coalescing windows that have ended.
func (s *Service) flushRefusals() {
	s.writeRefusals(context.Background(), s.refusals.sweep(s.cfg.Now()))
}

func credentialNoun(k credentialv1.CredentialKind) string {
	switch k {
	case credentialv1.CredentialKind_CREDENTIAL_KIND_ACCESS_TOKEN:
		return "an access token of that automation secret"
	case credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET:
		return "automation secret"
	case credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL:
		return "personal access token"
	case credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY:
		return "agent API key"
	case credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET:
		return "agent rotation secret"
	}
	return "credential"
}

// refusalLog coalesces refusal records per key (credential, action, class).
type refusalLog struct {
	mu sync.Mutex
	m  map[string]*refusalEntry
}

type refusalEntry struct {
	opened time.Time           // start of the current window
	n      int                 // refusals in the window not yet recorded
	latest *auditv1.AuditEvent // the latest of those
}

// note registers a refusal at now and returns what to record: ev itself when
// no window is open for key; nothing while one is (the refusal is counted);
// the summary of the window when it has ended (the refusal is counted in the
// next one, which the summary opens). dropped reports a refusal the table had
// no room for.
func (l *refusalLog) note(key string, ev *auditv1.AuditEvent, now time.Time) (out []*auditv1.AuditEvent, dropped bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*refusalEntry{}
	}
	e := l.m[key]
	switch {
	case e == nil:
		if len(l.m) >= maxRefusalKeys {
			return nil, true
		}
		l.m[key] = &refusalEntry{opened: now}
		return []*auditv1.AuditEvent{ev}, false
	case now.Sub(e.opened) < RefusalWindow:
		e.n++
		e.latest = ev
		return nil, false
	case e.n > 0:
		sum := e.summary(now)
		*e = refusalEntry{opened: now, n: 1, latest: ev}
		return []*auditv1.AuditEvent{sum}, false
	default:
		*e = refusalEntry{opened: now}
		return []*auditv1.AuditEvent{ev}, false
	}
}

// sweep ends every window older than RefusalWindow: one with refusals not
// yet recorded yields its summary and opens a new (empty) window; an empty
// one is dropped.
func (l *refusalLog) sweep(now time.Time) []*auditv1.AuditEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*auditv1.AuditEvent
	for k, e := range l.m {
		if now.Sub(e.opened) < RefusalWindow {
			continue
		}
		if e.n == 0 {
			delete(l.m, k)
			continue
		}
		out = append(out, e.summary(now))
		*e = refusalEntry{opened: now}
	}
	return out
}

// summary is one record for the refusals counted in the window: the latest
// one's actor, target, client IP and request id, and how many there were.
func (e *refusalEntry) summary(now time.Time) *auditv1.AuditEvent {
	ev := proto.CloneOf(e.latest)
	ev.Id = ids.New("evt")
	ev.Time = timestamppb.New(now)
	ev.Detail = fmt.Sprintf("%s; %d refusal(s) since %s coalesced into this record (at most one record per credential and minute)",
		e.latest.GetDetail(), e.n, e.opened.UTC().Format(time.RFC3339))
	return ev
}
