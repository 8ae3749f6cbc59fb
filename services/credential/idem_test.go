package credential_test

// Idempotency-Key on the two POSTs of the credential service that return a
// one-time credential: CreateWorkspace (the first owner's token) and
// CreateMember (the member's token). A retry with the same key and body gets
// the first response again and issues nothing; the same key with another
// body is refused; concurrent duplicates issue one credential.

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/idem"
)

// withKey adds an Idempotency-Key, as the gateway forwards it.
func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, idem.MetadataKey, key)
}

// wantReused checks that err is the refusal of a reused key.
func wantReused(t *testing.T, what string, err error) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition {
		t.Fatalf("%s: %v, want FailedPrecondition", what, err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == idem.Reason {
			return
		}
	}
	t.Fatalf("%s: %v carries no ErrorInfo reason %s", what, err, idem.Reason)
}

// liveMembers maps the live member subjects of ws to their number of live
// credentials.
func liveMembers(t *testing.T, env *credentialtest.Env, ws string) map[string]int {
	t.Helper()
	out := map[string]int{}
	req := &credentialv1.ListSubjectsRequest{Kind: credentialv1.SubjectKind_SUBJECT_KIND_MEMBER, PageSize: 100}
	for {
		resp, err := env.Internal.ListSubjects(context.Background(), req)
		if err != nil {
			t.Fatalf("ListSubjects: %v", err)
		}
		for _, s := range resp.GetSubjects() {
			if s.GetWorkspaceId() == ws {
				out[s.GetId()] = len(s.GetLiveCredentials())
			}
		}
		if resp.GetNextPageToken() == "" {
			return out
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// countWorkspaces counts the workspaces with a live member subject.
func countWorkspaces(t *testing.T, env *credentialtest.Env) int {
	t.Helper()
	seen := map[string]bool{}
	req := &credentialv1.ListSubjectsRequest{Kind: credentialv1.SubjectKind_SUBJECT_KIND_MEMBER, PageSize: 100}
	for {
		resp, err := env.Internal.ListSubjects(context.Background(), req)
		if err != nil {
			t.Fatalf("ListSubjects: %v", err)
		}
		for _, s := range resp.GetSubjects() {
			seen[s.GetWorkspaceId()] = true
		}
		if resp.GetNextPageToken() == "" {
			return len(seen)
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// whoami checks that token works and names subject.
func whoami(t *testing.T, env *credentialtest.Env, token, subject string) {
	t.Helper()
	w, err := env.Public.WhoAmI(as(context.Background(), token), &credentialv1.WhoAmIRequest{})
	if err != nil || w.GetSubjectId() != subject {
		t.Fatalf("the returned token does not work as %s: %v %v", subject, w.GetSubjectId(), err)
	}
}

// countAudit counts the events of ws with action.
func countAudit(t *testing.T, env *credentialtest.Env, ownerToken, ws, action string) int {
	t.Helper()
	resp, err := auditv1.NewAuditServiceClient(env.Conn).ListAuditEvents(as(context.Background(), ownerToken),
		&auditv1.ListAuditEventsRequest{WorkspaceId: ws, Action: action, PageSize: 100})
	if err != nil {
		t.Fatalf("ListAuditEvents: %v", err)
	}
	return len(resp.GetAuditEvents())
}

func TestIdempotentCreateWorkspace(t *testing.T) {
	env := credentialtest.Start(t)
	op := as(context.Background(), env.OperatorToken)
	body := &credentialv1.CreateWorkspaceRequest{Name: "Acme", OwnerName: "Ada", OwnerEmail: "ada@example.com"}

	first, err := env.Public.CreateWorkspace(withKey(op, "ws-key-1"), body)
	if err != nil {
		t.Fatal(err)
	}
	again, err := env.Public.CreateWorkspace(withKey(op, "ws-key-1"), body)
	if err != nil {
		t.Fatalf("retry with the same key and body: %v", err)
	}
	if !proto.Equal(first, again) {
		t.Fatal("the retry got another response than the first call")
	}
	if n := countWorkspaces(t, env); n != 1 {
		t.Fatalf("%d workspaces after a create and its retry, want 1", n)
	}
	ws := first.GetWorkspace().GetId()
	if m := liveMembers(t, env, ws); len(m) != 1 || m[first.GetOwner().GetId()] != 1 {
		t.Fatalf("members and live credentials after a retry: %v, want the one owner with one token", m)
	}
	whoami(t, env, again.GetToken(), first.GetOwner().GetId())
	if n := countAudit(t, env, first.GetToken(), ws, "workspace.create_replay"); n != 1 {
		t.Errorf("%d workspace.create_replay events, want 1", n)
	}
	if n := countAudit(t, env, first.GetToken(), ws, "workspace.create"); n != 1 {
		t.Errorf("%d workspace.create events, want 1", n)
	}

	// The same key with another body: refused, nothing created.
	_, err = env.Public.CreateWorkspace(withKey(op, "ws-key-1"), &credentialv1.CreateWorkspaceRequest{Name: "Other"})
	wantReused(t, "same key, other body", err)
	if n := countWorkspaces(t, env); n != 1 {
		t.Fatalf("%d workspaces after a refused reuse, want 1", n)
	}

	// Another key, and no key at all: new workspaces, as before.
	if _, err := env.Public.CreateWorkspace(withKey(op, "ws-key-2"), body); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := env.Public.CreateWorkspace(op, body); err != nil {
			t.Fatal(err)
		}
	}
	if n := countWorkspaces(t, env); n != 4 {
		t.Fatalf("%d workspaces, want 4 (one per key, one per call without a key)", n)
	}

	// A bad key is 400 before anything happens.
	if _, err := env.Public.CreateWorkspace(withKey(op, "has space"), body); code(err) != codes.InvalidArgument {
		t.Fatalf("bad key: %v, want InvalidArgument", err)
	}
}

func TestIdempotentCreateMember(t *testing.T) {
	env := credentialtest.Start(t)
	ws, owner := env.NewWorkspace(t, "Acme")
	_, admin := env.NewMember(t, ws, owner, "admin")
	ctx := as(context.Background(), owner)
	body := &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "Bob", Email: "bob@example.com", Role: "member"}

	first, err := env.Public.CreateMember(withKey(ctx, "mem-key-1"), body)
	if err != nil {
		t.Fatal(err)
	}
	again, err := env.Public.CreateMember(withKey(ctx, "mem-key-1"), body)
	if err != nil {
		t.Fatalf("retry with the same key and body: %v (before: 409 for the duplicate email, the token lost)", err)
	}
	if !proto.Equal(first, again) {
		t.Fatal("the retry got another response than the first call")
	}
	if m := liveMembers(t, env, ws); len(m) != 3 || m[first.GetMember().GetId()] != 1 {
		t.Fatalf("members after a create and its retry: %v, want owner, admin and Bob with one token", m)
	}
	whoami(t, env, again.GetToken(), first.GetMember().GetId())
	if n := countAudit(t, env, owner, ws, "member.create_replay"); n != 1 {
		t.Errorf("%d member.create_replay events, want 1", n)
	}

	// The same key with another body: refused.
	other := proto.Clone(body).(*credentialv1.CreateMemberRequest)
	other.Name, other.Email = "Carol", ""
	_, err = env.Public.CreateMember(withKey(ctx, "mem-key-1"), other)
	wantReused(t, "same key, other body", err)

	// The same key from another caller is that caller's own request (the
	// key is bound to the credential that sent it): it cannot read the
	// owner's replay, and creates its own member.
	carol, err := env.Public.CreateMember(withKey(as(context.Background(), admin), "mem-key-1"), other)
	if err != nil {
		t.Fatalf("another caller with the same key: %v", err)
	}
	if carol.GetToken() == first.GetToken() || carol.GetMember().GetId() == first.GetMember().GetId() {
		t.Fatal("another caller got the owner's replay")
	}
	// Without a key: unchanged (a duplicate email is 409).
	if _, err := env.Public.CreateMember(ctx, body); code(err) != codes.AlreadyExists {
		t.Fatalf("no key, duplicate email: %v, want AlreadyExists", err)
	}
	if m := liveMembers(t, env, ws); len(m) != 4 {
		t.Fatalf("%d members, want 4", len(m))
	}
}

// Concurrent duplicates (a client that retries before the first answer came
// back): one credential is issued and every call gets the same response.
func TestIdempotentConcurrentDuplicates(t *testing.T) {
	env := credentialtest.Start(t)
	ws, owner := env.NewWorkspace(t, "Acme")
	const n = 12
	type result struct {
		member *credentialv1.CreateMemberResponse
		ws     *credentialv1.CreateWorkspaceResponse
		err    error
	}
	var wg sync.WaitGroup
	results := make([]result, 2*n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			r, err := env.Public.CreateMember(withKey(as(context.Background(), owner), "race"),
				&credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "Racer", Role: "admin"})
			results[i] = result{member: r, err: err}
		}()
		go func() {
			defer wg.Done()
			<-start
			r, err := env.Public.CreateWorkspace(withKey(as(context.Background(), env.OperatorToken), "race"),
				&credentialv1.CreateWorkspaceRequest{Name: "Raced"})
			results[n+i] = result{ws: r, err: err}
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("call %d: %v", i, r.err)
		}
		if i < n && !proto.Equal(r.member, results[0].member) {
			t.Fatalf("member call %d got another response", i)
		}
		if i >= n && !proto.Equal(r.ws, results[n].ws) {
			t.Fatalf("workspace call %d got another response", i)
		}
	}
	if m := liveMembers(t, env, ws); len(m) != 2 || m[results[0].member.GetMember().GetId()] != 1 {
		t.Fatalf("members after %d concurrent duplicates: %v, want owner and one racer", n, m)
	}
	if c := countWorkspaces(t, env); c != 2 {
		t.Fatalf("%d workspaces after %d concurrent duplicates, want 2", c, n)
	}
	whoami(t, env, results[0].member.GetToken(), results[0].member.GetMember().GetId())
	whoami(t, env, results[n].ws.GetToken(), results[n].ws.GetOwner().GetId())
}

// A replay survives a restart, and the store never holds the token it
// returns (nor the key) in plaintext.
func TestIdempotentReplaySealedAndDurable(t *testing.T) {
	env := credentialtest.Start(t)
	ws, owner := env.NewWorkspace(t, "Acme")
	const key = "uuid-5e1f0c3a-durable"
	body := &credentialv1.CreateMemberRequest{WorkspaceId: ws, Name: "Bob", Role: "member"}
	first, err := env.Public.CreateMember(withKey(as(context.Background(), owner), key), body)
	if err != nil {
		t.Fatal(err)
	}
	dir := env.DataDir
	env.Stop()

	b, err := os.ReadFile(filepath.Join(dir, "credential.db"))
	if err != nil {
		t.Fatal(err)
	}
	for what, needle := range map[string]string{"the member's token": first.GetToken(), "the Idempotency-Key": key, "the caller's token": owner} {
		if bytes.Contains(b, []byte(needle)) {
			t.Errorf("credential.db holds %s in plaintext", what)
		}
	}

	env2 := credentialtest.StartWith(t, credentialtest.Options{DataDir: dir, ServiceToken: env.ServiceToken})
	again, err := env2.Public.CreateMember(withKey(as(context.Background(), owner), key), body)
	if err != nil {
		t.Fatalf("retry after a restart: %v", err)
	}
	if !proto.Equal(first, again) {
		t.Fatal("the retry after a restart got another response")
	}
	if m := liveMembers(t, env2, ws); len(m) != 2 {
		t.Fatalf("members after a retry across a restart: %v, want 2", m)
	}
}
