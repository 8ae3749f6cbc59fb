package credential

// Workspace events of credentials: when an automation's secret or an
// agent's key pair is rotated, or a subject's credentials are revoked for
// good, the credential service — through which every such change goes —
// tells the vault (VaultInternalService.PublishEvent), which delivers the
// event to the workspace's event subscriptions and followers. Names and
// ids only, never a credential.
//
// Publishing is best effort, after the commit, by the replica that made
// the change (so once per change): a few retries over about half a minute;
// an event is lost if the vault stays unreachable that long or this
// process dies in between, which the log says.

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

// publishEvent sends an event to the vault in the background.
func (s *Service) publishEvent(ws, typ string, data map[string]string) {
	pub := s.cfg.Events
	if pub == nil || typ == "" {
		return
	}
	go func() {
		wait := time.Second
		for attempt := 1; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := pub.PublishEvent(ctx, &vaultv1.PublishEventRequest{WorkspaceId: ws, Type: typ, Data: data, Caller: "credential"})
			cancel()
			if err == nil {
				return
			}
			if attempt == 5 {
				s.lg.Warn("could not publish a workspace event to the vault; it is lost", zap.String("workspace-id", ws), zap.String("type", typ), zap.Error(err))
				return
			}
			time.Sleep(wait)
			wait *= 2
		}
	}()
}
