package credential_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/server"
)

// TestRefusalsAuditedOncePerCredentialAndMinute: a suspended automation's
// token refused through a sibling's Remote authenticator is audited with
// the end client's IP and request id the sibling forwards; a credential
// refused again and again adds one record per window (a summary with the
// count), never one per request; an idle credential's entry is dropped.
func TestRefusalsAuditedOncePerCredentialAndMinute(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	env := credentialtest.StartWith(t, credentialtest.Options{Config: func(c *credential.Config) { c.Now = clock }})
	bg := context.Background()
	ws, owner := env.NewWorkspace(t, "acme")
	id, secret := newAutomation(t, env, ws, auth.AutomationsRead)
	ex, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: id, WorkspaceId: ws, Name: "ci",
		Scopes: []string{auth.AutomationsRead}, TeamIds: []string{"team-a"}, Suspended: true}
	if _, err := env.Internal.UpdateSubject(bg, &credentialv1.UpdateSubjectRequest{Subject: subj}); err != nil {
		t.Fatal(err)
	}

	remote := auth.NewRemote(env.Internal, zap.NewNop())
	remote.Forward = func(context.Context) []string {
		return []string{clientip.MetadataKey, "203.0.113.9", server.RequestIDKey, "req-authz-1"}
	}
	refuse := func(n int) {
		t.Helper()
		for range n {
			if _, err := remote.Authenticate(bg, ex.GetAccessToken()); code(err) != codes.PermissionDenied {
				t.Fatalf("suspended automation's token: %v, want PermissionDenied", err)
			}
		}
	}
	audits := auditv1.NewAuditServiceClient(env.Conn)
	events := func(action string) []*auditv1.AuditEvent {
		t.Helper()
		resp, err := audits.ListAuditEvents(as(bg, owner), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, Action: action, LocalOnly: true, PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.GetAuditEvents() {
			if strings.Contains(ev.String(), "blg_") {
				t.Fatalf("an audit event holds a credential: %v", ev.GetId())
			}
		}
		return resp.GetAuditEvents()
	}
	want := func(step string, n int) []*auditv1.AuditEvent {
		t.Helper()
		evs := events("auth.authenticate")
		if len(evs) != n {
			t.Fatalf("%s: want %d auth.authenticate records, got %d: %v", step, n, len(evs), evs)
		}
		return evs
	}

	refuse(10)
	env.Service.FlushRefusals()
	ev := want("10 refusals within the window", 1)[0]
	if ev.GetOutcome() != "failure" || ev.GetActorKind() != "automation" || ev.GetActorId() != id || ev.GetTargetKind() != "automation" ||
		ev.GetTargetId() != id || ev.GetClientIp() != "203.0.113.9" || ev.GetRequestId() != "req-authz-1" ||
		!strings.Contains(ev.GetDetail(), "suspended") || !strings.Contains(ev.GetDetail(), "cred_") {
		t.Fatalf("refusal record: %v", ev)
	}

	advance(credential.RefusalWindow + time.Second)
	env.Service.FlushRefusals()
	sum := want("the window ended", 2)[1]
	if !strings.Contains(sum.GetDetail(), "9 refusal(s)") || sum.GetClientIp() != "203.0.113.9" || sum.GetActorId() != id {
		t.Fatalf("summary of the window: %v", sum)
	}
	refuse(1) // counted in the window the summary opened
	want("a refusal right after the summary", 2)
	advance(credential.RefusalWindow + time.Second)
	env.Service.FlushRefusals()
	if sum := want("the second window ended", 3)[2]; !strings.Contains(sum.GetDetail(), "1 refusal(s)") {
		t.Fatalf("summary of the second window: %v", sum)
	}
	advance(credential.RefusalWindow + time.Second)
	env.Service.FlushRefusals()
	want("an idle window ends without a record", 3)
	refuse(1)
	want("the next refusal opens a new window", 4)

	// Refused exchanges: each class once per window, however often.
	for range 3 {
		if _, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{TtlSeconds: 10 * 86400}); code(err) != codes.InvalidArgument {
			t.Fatalf("too-long ttl: %v", err)
		}
	}
	resume := proto.CloneOf(subj)
	resume.Suspended = false
	if _, err := env.Internal.UpdateSubject(bg, &credentialv1.UpdateSubjectRequest{Subject: resume}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{TtlSeconds: 10 * 86400}); code(err) != codes.InvalidArgument {
			t.Fatalf("too-long ttl: %v", err)
		}
		if _, err := env.Public.Exchange(as(bg, secret), &credentialv1.ExchangeRequest{Scopes: []string{auth.SecretsUse}}); code(err) != codes.InvalidArgument {
			t.Fatalf("ungranted scope: %v", err)
		}
	}
	ex3 := events("auth.exchange")
	if len(ex3) != 3 {
		t.Fatalf("refused exchanges: want 3 records (suspended, ttl, scope), got %v", ex3)
	}
	for i, w := range []string{"suspended", "ttlSeconds 864000 exceeds the maximum 86400", "scope secrets:use is not granted"} {
		if !strings.Contains(ex3[i].GetDetail(), w) || ex3[i].GetActorId() != id || ex3[i].GetOutcome() != "failure" {
			t.Fatalf("refused exchange %d: want %q in %v", i, w, ex3[i])
		}
	}
}
