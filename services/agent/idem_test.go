package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/kit/store"
)

// apiKeys lists the API keys the credential service has handed the agent
// service so far, each once, in order (the harness records each one).
func (h *harness) apiKeys() []string {
	var out []string
	for _, s := range h.seen.list() {
		if strings.HasPrefix(s, "blg_agk_") && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// TestIdempotentCreateAgent: the same key and body give the first response
// again and issue nothing; another body under the key is refused; another
// key, another caller or no key is a new request (here: a duplicate name).
func TestIdempotentCreateAgent(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, admin := h.env.NewMember(t, ws, owner, auth.RoleAdmin)
	inst := h.installation(t, ws, owner, "app")
	req := &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "bot", Role: auth.RoleMember, TeamIds: []string{"t1"}}

	first, err := h.client.CreateAgent(withIdem(as(bg(), owner), "create-1"), req)
	if err != nil {
		t.Fatal(err)
	}
	// The response was "lost": the client retries, with the same key and body.
	for range 3 {
		again, err := h.client.CreateAgent(withIdem(as(bg(), owner), "create-1"), req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if !proto.Equal(again, first) {
			t.Fatal("a retry got a different response")
		}
	}
	if n := len(h.apiKeys()); n != 1 {
		t.Fatalf("%d API keys issued, want 1", n)
	}
	if _, err := h.self(first.GetApiKey()); err != nil {
		t.Fatalf("the key the client finally saw: %v", err)
	}

	// The same key with another body: 422 at the gateway, nothing issued.
	other := proto.CloneOf(req)
	other.Role = auth.RoleAdmin
	_, err = h.client.CreateAgent(withIdem(as(bg(), owner), "create-1"), other)
	wantCode(t, err, codes.FailedPrecondition, idem.Reason)
	// Another key, another caller with the key, or no key: a new request,
	// which finds the name taken.
	for _, ctx := range []context.Context{withIdem(as(bg(), owner), "create-2"), withIdem(as(bg(), admin), "create-1"), as(bg(), owner)} {
		_, err = h.client.CreateAgent(ctx, req)
		wantCode(t, err, codes.AlreadyExists, "AGENT_NAME_TAKEN")
	}
	_, err = h.client.CreateAgent(withIdem(as(bg(), owner), "has space"), req)
	wantCode(t, err, codes.InvalidArgument, "")
	if n := len(h.apiKeys()); n != 1 {
		t.Fatalf("%d API keys issued, want 1", n)
	}
	if got := h.auditActions(t, ws, owner, first.GetAgent().GetId()); !slices.Equal(got, []string{
		"agent.create:success", "agent.create_replay:success", "agent.create_replay:success", "agent.create_replay:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestIdempotentAdminRotation: a retried admin rotation returns the same
// new pair and does not rotate again (which would kill the pair the client
// has not seen yet).
func TestIdempotentAdminRotation(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	a := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	b := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "other"})
	id := a.GetAgent().GetId()
	req := &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id}

	first, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), "rotate-1"), req)
	if err != nil {
		t.Fatal(err)
	}
	h.seen.add(first.GetApiKey(), first.GetRotationSecret())
	for range 3 {
		again, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), "rotate-1"), req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if !proto.Equal(again, first) {
			t.Fatal("a retry got a different response")
		}
	}
	if h.rotated.Load() != 1 {
		t.Fatalf("%d rotations, want 1", h.rotated.Load())
	}
	if !h.live(t, first.GetApiKey()) || h.live(t, a.GetApiKey()) {
		t.Fatal("after the retries, the first rotation's key must be the live one")
	}
	// The pair works: the agent rotates itself with it.
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.90"), first.GetApiKey(), first.GetRotationSecret())

	// The key for another agent: refused, nothing rotated.
	_, err = h.client.RotateAgentKey(withIdem(as(bg(), owner), "rotate-1"), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: b.GetAgent().GetId()})
	wantCode(t, err, codes.FailedPrecondition, idem.Reason)
	if !h.live(t, b.GetApiKey()) || h.rotated.Load() != 2 {
		t.Fatal("a refused request rotated")
	}
	// A new key rotates.
	second, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), "rotate-2"), req)
	if err != nil {
		t.Fatal(err)
	}
	h.seen.add(second.GetApiKey(), second.GetRotationSecret())
	if !h.live(t, second.GetApiKey()) || h.rotated.Load() != 3 {
		t.Fatal("a new key did not rotate")
	}
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.rotate_key:success",
		"agent.rotate_key_replay:success", "agent.rotate_key_replay:success", "agent.rotate_key_replay:success",
		"agent.rotate_key_self:success", "agent.rotate_key:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestIdempotentAdminConcurrentDuplicates: duplicates that arrive together
// get one response, and one pair is issued.
func TestIdempotentAdminConcurrentDuplicates(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	const n = 8

	creates := make([]*agentv1.CreateAgentResponse, n)
	errsOut := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			creates[i], errsOut[i] = h.client.CreateAgent(withIdem(as(bg(), owner), "same"),
				&agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "bot"})
		})
	}
	wg.Wait()
	for i := range n {
		if errsOut[i] != nil {
			t.Fatalf("create %d: %v", i, errsOut[i])
		}
		if !proto.Equal(creates[i], creates[0]) {
			t.Fatal("concurrent duplicates got different responses")
		}
	}
	if k := len(h.apiKeys()); k != 1 {
		t.Fatalf("%d API keys issued, want 1", k)
	}

	id := creates[0].GetAgent().GetId()
	rotations := make([]*agentv1.RotateAgentKeyResponse, n)
	for i := range n {
		wg.Go(func() {
			rotations[i], errsOut[i] = h.client.RotateAgentKey(withIdem(as(bg(), owner), "same"), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id})
		})
	}
	wg.Wait()
	for i := range n {
		if errsOut[i] != nil {
			t.Fatalf("rotate %d: %v", i, errsOut[i])
		}
		if !proto.Equal(rotations[i], rotations[0]) {
			t.Fatal("concurrent duplicates got different responses")
		}
	}
	if h.rotated.Load() != 1 {
		t.Fatalf("%d rotations, want 1", h.rotated.Load())
	}
	if !h.live(t, rotations[0].GetApiKey()) {
		t.Fatal("the rotated key is not live")
	}
}

// sharedStore lends one open store to a second service, as two replicas
// share one etcd store; closing it is left to its owner.
type sharedStore struct{ store.Backend }

func (sharedStore) Close() error { return nil }

// replica starts a second agent service on the harness's store, with a
// lock table of its own (as another process has), and returns a client.
func (h *harness) replica(t *testing.T) agentv1.AgentServiceClient {
	t.Helper()
	lg := zaptest.NewLogger(t)
	// Its own connection to the credential service, recording every
	// credential it receives, as the harness's does.
	capture := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		switch r := reply.(type) {
		case *credentialv1.IssueCredentialResponse:
			for _, c := range r.GetCredentials() {
				h.seen.add(c.GetCredential())
			}
		case *credentialv1.RotateCredentialsResponse:
			for _, c := range r.GetCredentials() {
				h.seen.add(c.GetCredential())
			}
		}
		return err
	}
	credConn, err := grpc.NewClient(h.env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(capture),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := agent.New(agent.Config{
		Store:      func(string, []store.Bucket) (store.Backend, error) { return sharedStore{h.svc.DB()}, nil },
		Logger:     lg,
		Credential: credentialv1.NewCredentialInternalServiceClient(credConn),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	remote := auth.NewRemote(h.env.Internal, lg)
	go remote.Watch(ctx)
	srv := mount.New(svc, mount.Options{Name: "agent", Logger: lg, Auth: remote, ServiceToken: harnessServiceToken})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop(time.Second)
		cancel()
		svc.Close()
		credConn.Close()
	})
	return agentv1.NewAgentServiceClient(conn)
}

// TestIdempotentDuplicatesAcrossReplicas: duplicates sent to two replicas
// at once (no shared lock table: the store decides creates, and a lease in
// it keyed rotations) get one response, with the one live pair.
func TestIdempotentDuplicatesAcrossReplicas(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	clients := []agentv1.AgentServiceClient{h.client, h.replica(t)}
	const rounds, n = 5, 6

	liveOf := func(before int) string {
		t.Helper()
		var live string
		for _, k := range h.apiKeys()[before:] {
			if h.live(t, k) {
				if live != "" {
					t.Fatal("two live API keys")
				}
				live = k
			}
		}
		if live == "" {
			t.Fatal("no live API key")
		}
		return live
	}
	for round := range rounds {
		name := fmt.Sprintf("bot-%d", round)
		before := len(h.apiKeys())
		creates := make([]*agentv1.CreateAgentResponse, n)
		errsOut := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				creates[i], errsOut[i] = clients[i%2].CreateAgent(withIdem(as(bg(), owner), "create-"+name),
					&agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: name})
			})
		}
		wg.Wait()
		for i := range n {
			if errsOut[i] != nil {
				t.Fatalf("create %d: %v", i, errsOut[i])
			}
			if !proto.Equal(creates[i], creates[0]) {
				t.Fatal("duplicates got different responses")
			}
		}
		if liveOf(before) != creates[0].GetApiKey() {
			t.Fatal("the live API key is not the one returned")
		}

		id := creates[0].GetAgent().GetId()
		before = len(h.apiKeys())
		rotations := make([]*agentv1.RotateAgentKeyResponse, n)
		for i := range n {
			wg.Go(func() {
				rotations[i], errsOut[i] = clients[i%2].RotateAgentKey(withIdem(as(bg(), owner), "rotate-"+name),
					&agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id})
			})
		}
		wg.Wait()
		for i := range n {
			if errsOut[i] != nil {
				t.Fatalf("rotate %d: %v", i, errsOut[i])
			}
			if !proto.Equal(rotations[i], rotations[0]) {
				t.Fatal("duplicates got different responses")
			}
		}
		if got := len(h.apiKeys()) - before; got != 1 {
			t.Fatalf("%d rotations, want 1", got)
		}
		if liveOf(before) != rotations[0].GetApiKey() {
			t.Fatal("the live API key is not the one returned")
		}
		// The record notes the live pair: the agent rotates itself with it.
		h.mustSelfRotate(t, fromIP(bg(), fmt.Sprintf("198.51.100.%d", 120+round)), rotations[0].GetApiKey(), rotations[0].GetRotationSecret())
	}
}

// TestIdempotentCreateAgentWithLostStoreReply: the store applied the commit
// but its reply was lost; the replay, written with the record, shows it
// applied, and the caller gets its credentials (which stay live) instead of
// an error (a create would have revoked them, a rotation failed after
// killing the old pair).
func TestIdempotentCreateAgentWithLostStoreReply(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	h.svc.DB().(store.Faults).SetLoseReply(true)
	resp, err := h.client.CreateAgent(withIdem(as(bg(), owner), "k"), &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "bot"})
	h.svc.DB().(store.Faults).SetLoseReply(false)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := h.self(resp.GetApiKey()); err != nil {
		t.Fatalf("the key handed out: %v", err)
	}

	// The same for an admin rotation; and the retry still replays it.
	req := &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: resp.GetAgent().GetId()}
	h.svc.DB().(store.Faults).SetLoseReply(true)
	rot, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), "r"), req)
	h.svc.DB().(store.Faults).SetLoseReply(false)
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	again, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), "r"), req)
	if err != nil || !proto.Equal(again, rot) {
		t.Fatalf("retry: %v", err)
	}
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.99"), rot.GetApiKey(), rot.GetRotationSecret())
}

// TestReplaysNeverHoldACredentialInPlaintext: the store file holds no
// credential, Idempotency-Key or caller token after keyed creates, admin
// rotations and replays; nor do the logs or the audit trail.
func TestReplaysNeverHoldACredentialInPlaintext(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.seen.add(owner)
	inst := h.installation(t, ws, owner, "app")
	keys := []string{"7c1d-uuid-create-0", "7c1d-uuid-create-1", "7c1d-uuid-rotate-0", "7c1d-uuid-rotate-1"}
	for i := range 2 {
		req := &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: fmt.Sprintf("bot-%d", i)}
		c, err := h.client.CreateAgent(withIdem(as(bg(), owner), keys[i]), req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.CreateAgent(withIdem(as(bg(), owner), keys[i]), req); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), keys[2+i]), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: c.GetAgent().GetId()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	events, err := h.audit.ListAuditEvents(as(bg(), owner), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.GetAuditEvents()) < 9 {
		t.Fatalf("only %d audit events", len(events.GetAuditEvents()))
	}
	trail := fmt.Sprint(events.GetAuditEvents())
	h.stop()
	db, err := os.ReadFile(filepath.Join(h.dataDir, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "replayed for a retry") {
		t.Fatal("no replay was logged")
	}
	all := h.seen.list()
	if len(all) < 9 {
		t.Fatalf("only %d credentials seen", len(all))
	}
	for _, s := range append(all, keys...) {
		what := "an Idempotency-Key"
		body := s
		if i := strings.LastIndexByte(s, '_'); strings.HasPrefix(s, "blg_") && i > 0 {
			what = "a " + s[:i] + " credential"
			body = s[i+1 : len(s)-6]
		}
		for _, needle := range []string{s, body} {
			if bytes.Contains(db, []byte(needle)) {
				t.Errorf("agent.db holds %s in plaintext", what)
			}
			if strings.Contains(logs, needle) {
				t.Errorf("the logs hold %s", what)
			}
			if strings.Contains(trail, needle) {
				t.Errorf("the audit trail holds %s", what)
			}
		}
	}
}

// TestKeyedRotationWaitsForAnotherReplicasLease: while another replica
// holds an agent's rotation lease (its keyed admin rotation is running), a
// keyed admin rotation here waits for it instead of rotating too; a
// rotation without a key does not wait.
func TestKeyedRotationWaitsForAnotherReplicasLease(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	id := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"}).GetAgent().GetId()
	req := &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id}
	if err := h.svc.HoldRotationLease(ws, id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(withIdem(as(bg(), owner), "k"), 300*time.Millisecond)
	defer cancel()
	_, err := h.client.RotateAgentKey(ctx, req)
	wantCode(t, err, codes.DeadlineExceeded, "")
	if h.rotated.Load() != 0 {
		t.Fatal("a keyed rotation rotated while another replica held the lease")
	}
	h.adminRotate(t, ws, owner, id) // no key: no lease

	done := make(chan error, 1)
	go func() {
		_, err := h.client.RotateAgentKey(withIdem(as(bg(), owner), "k2"), req)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the keyed rotation did not wait for the lease: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := h.svc.DropRotationLease(ws, id); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the keyed rotation did not go on once the lease ended")
	}
	if h.rotated.Load() != 2 {
		t.Fatalf("%d rotations, want 2", h.rotated.Load())
	}
	if n, err := h.svc.RotationLeases(); err != nil || n != 0 {
		t.Fatalf("%d leases left (%v), want 0", n, err)
	}

	// A lease left by a process that died (the embedded store has one
	// writer) ends when the service starts again.
	if err := h.svc.HoldRotationLease(ws, id); err != nil {
		t.Fatal(err)
	}
	h.stop()
	svc, err := h.start(t, h.dataDir, nil, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := svc.RotationLeases(); err != nil || n != 0 {
		t.Fatalf("%d leases after a restart (%v), want 0", n, err)
	}
}
