package credential

// Workspace events of credentials: when an automation's secret or an
// agent's key pair is rotated, or a subject's credentials are revoked for
// good, the credential service — through which every such change goes —
// tells the vault (VaultInternalService.PublishEvent), which delivers the
// event to the workspace's event subscriptions and followers. Names and
// ids only, never a credential.
//
// Publishing is best effort, after the commit, by the replica that made
// the change (so once per change), in bursts (see eventLinger): a few
// retries over about half a minute; an event is lost if the vault stays
// unreachable that long or this process dies in between, which the log
// says.

import (
	"context"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
)

// EventPublisher is the part of the vault's internal API events go to.
type EventPublisher interface {
	PublishEvent(ctx context.Context, in *vaultv1.PublishEventRequest, opts ...grpc.CallOption) (*vaultv1.PublishEventResponse, error)
}

// Event types published.
const (
	eventAutomationSecretRotated = "automation.secret_rotated"
	eventAgentKeyRotated         = "agent.key_rotated"
	eventCredentialRevoked       = "credential.revoked"
)

// rotationEvent is the event type of a rotation of subject's credentials,
// or "" when it has none.
func rotationEvent(kind credentialv1.SubjectKind) string {
	switch kind {
	case credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION:
		return eventAutomationSecretRotated
	case credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		return eventAgentKeyRotated
	}
	return ""
}

func subjectKindName(kind credentialv1.SubjectKind) string {
	switch kind {
	case credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION:
		return "automation"
	case credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		return "agent"
	case credentialv1.SubjectKind_SUBJECT_KIND_MEMBER:
		return "member"
	}
	return "other"
}

// subjectData is an event's data about subj.
func subjectData(subj *credentialv1.Subject) map[string]string {
	d := map[string]string{"subjectKind": subjectKindName(subj.GetKind()), "subjectId": subj.GetId()}
	switch subj.GetKind() {
	case credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION:
		d["automationId"] = subj.GetId()
	case credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		d["agentId"] = subj.GetId()
	}
	if n := subj.GetName(); n != "" && len(n) <= 256 {
		d["name"] = n
	}
	return d
}

// eventLinger is how long a published event waits for others to go with
// it: the events of a burst reach the vault together and share its commits
// (its store commits concurrent writes as one), instead of each costing a
// commit of its own on the disk the next write waits for.
const eventLinger = 50 * time.Millisecond

// eventQueue bounds the events waiting for their burst; beyond it an event
// is sent at once.
const eventQueue = 4096

// maxEventSends bounds the events of a burst in flight at once.
const maxEventSends = 64

type pendingEvent struct {
	ws, typ string
	data    map[string]string
}

// publishEvent queues an event for the vault; publishLoop sends it.
func (s *Service) publishEvent(ws, typ string, data map[string]string) {
	if s.cfg.Events == nil || typ == "" {
		return
	}
	select {
	case s.events <- pendingEvent{ws: ws, typ: typ, data: data}:
	default:
		go func() {
			ev := pendingEvent{ws: ws, typ: typ, data: data}
			if s.sendOnce(ev, 5*time.Second) != nil {
				s.sendEvent(ev, true)
			}
		}()
	}
}

// publishLoop sends queued events in bursts, until stop; then what is
// queued, once.
func (s *Service) publishLoop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		var first pendingEvent
		select {
		case first = <-s.events:
		case <-stop:
			s.sendBurst(s.drainEvents(nil), false)
			return
		}
		select {
		case <-time.After(eventLinger):
		case <-stop:
		}
		s.sendBurst(s.drainEvents([]pendingEvent{first}), true)
	}
}

func (s *Service) drainEvents(burst []pendingEvent) []pendingEvent {
	for {
		select {
		case ev := <-s.events:
			burst = append(burst, ev)
		default:
			return burst
		}
	}
}

// sendBurst sends events concurrently (at most maxEventSends at a time)
// and waits for their first attempts; those that fail are retried in the
// background when retry is set (the loop never waits for a retry).
func (s *Service) sendBurst(burst []pendingEvent, retry bool) {
	timeout := 5 * time.Second
	if !retry {
		timeout = time.Second // the last burst, at close
	}
	sem := make(chan struct{}, maxEventSends)
	for _, ev := range burst {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			if err := s.sendOnce(ev, timeout); err != nil {
				if retry {
					go s.sendEvent(ev, true)
					return
				}
				s.lg.Warn("could not publish a workspace event to the vault; it is lost", zap.String("workspace-id", ev.ws), zap.String("type", ev.typ), zap.Error(err))
			}
		}()
	}
	for range maxEventSends {
		sem <- struct{}{}
	}
}

func (s *Service) sendOnce(ev pendingEvent, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := s.cfg.Events.PublishEvent(ctx, &vaultv1.PublishEventRequest{WorkspaceId: ev.ws, Type: ev.typ, Data: ev.data, Caller: "credential"})
	return err
}

// sendEvent publishes one event: a few attempts over about half a minute
// (the first after a second) when retry is set, else one at once.
func (s *Service) sendEvent(ev pendingEvent, retry bool) {
	wait := time.Second
	for attempt := 1; ; attempt++ {
		if retry {
			time.Sleep(wait)
			wait *= 2
		}
		err := s.sendOnce(ev, 5*time.Second)
		if err == nil {
			return
		}
		if attempt == 4 || !retry {
			s.lg.Warn("could not publish a workspace event to the vault; it is lost", zap.String("workspace-id", ev.ws), zap.String("type", ev.typ), zap.Error(err))
			return
		}
	}
}
