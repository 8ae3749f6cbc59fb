package automation_test

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
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/kit/store"
)

// withKey adds an Idempotency-Key, as the gateway forwards the header.
func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, idem.MetadataKey, key)
}

// issued is how many automation secrets the credential service has handed
// the automation service so far (the harness records each one it receives).
func (h *harness) issued() int { return len(h.secrets()) }

// secrets lists the automation secrets seen so far, each once, in order.
func (h *harness) secrets() []string {
	var out []string
	for _, s := range h.seen.list() {
		if strings.HasPrefix(s, "blg_auto_") && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// record reads an automation's record.
func (h *harness) record(t *testing.T, ws, token, id string) *automationv1.Automation {
	t.Helper()
	resp, err := h.client.GetAutomation(as(bg(), token), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	if err != nil {
		t.Fatalf("get automation: %v", err)
	}
	return resp.GetAutomation()
}

// TestIdempotentCreate: the same key and body give the first response again
// and issue nothing; another body under the key is refused; another key,
// another caller or no key is a new request (here: a duplicate name).
func TestIdempotentCreate(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, admin := h.env.NewMember(t, ws, owner, auth.RoleAdmin)
	req := &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "nightly", Scopes: []string{"issues:write"}, CredentialLabel: "ci"}

	first, err := h.client.CreateAutomation(withKey(as(bg(), owner), "create-1"), req)
	if err != nil {
		t.Fatal(err)
	}
	if h.issued() != 1 {
		t.Fatalf("%d secrets issued, want 1", h.issued())
	}
	// The response was "lost": the client retries, with the same key and body.
	for range 3 {
		again, err := h.client.CreateAutomation(withKey(as(bg(), owner), "create-1"), req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if !proto.Equal(again, first) {
			t.Fatal("a retry got a different response")
		}
	}
	if h.issued() != 1 {
		t.Fatalf("retries issued secrets: %d issued, want 1", h.issued())
	}
	h.mustExchange(t, first.GetSecret()) // the secret the client finally saw works
	list, err := h.client.ListAutomations(as(bg(), owner), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetAutomations()) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}

	// The same key with another body: 422 at the gateway, nothing issued.
	other := proto.CloneOf(req)
	other.Name = "weekly"
	_, err = h.client.CreateAutomation(withKey(as(bg(), owner), "create-1"), other)
	wantCode(t, err, codes.FailedPrecondition, idem.Reason)
	// Another key, another caller with the key, or no key: a new request,
	// which finds the name taken.
	for _, ctx := range []context.Context{withKey(as(bg(), owner), "create-2"), withKey(as(bg(), admin), "create-1"), as(bg(), owner)} {
		_, err = h.client.CreateAutomation(ctx, req)
		wantCode(t, err, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN")
	}
	if h.issued() != 1 {
		t.Fatalf("%d secrets issued, want 1", h.issued())
	}
	// A malformed key is a 400.
	_, err = h.client.CreateAutomation(withKey(as(bg(), owner), "has space"), req)
	wantCode(t, err, codes.InvalidArgument, "")

	if got := h.auditActions(t, ws, owner, first.GetAutomation().GetId()); !slices.Equal(got, []string{
		"automation.create:success", "automation.create_replay:success", "automation.create_replay:success", "automation.create_replay:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestIdempotentRotate: a retried rotation returns the same new secret and
// does not rotate again (which would kill the secret the client has not
// seen yet).
func TestIdempotentRotate(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	a := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
	b := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "other"})
	id := a.GetAutomation().GetId()
	before := h.issued()
	req := &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id, CredentialLabel: "v2"}

	first, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "rotate-1"), req)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "rotate-1"), req)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		if !proto.Equal(again, first) {
			t.Fatal("a retry got a different response")
		}
	}
	if got := h.issued() - before; got != 1 {
		t.Fatalf("%d rotations, want 1", got)
	}
	if !h.live(t, first.GetSecret()) || h.live(t, a.GetSecret()) {
		t.Fatal("after the retries, the first rotation's secret must be the live one")
	}
	if got := h.record(t, ws, owner, id).GetCredential(); got.GetId() != first.GetCredential().GetId() || got.GetLabel() != "v2" {
		t.Fatalf("record names %v", got)
	}

	// The key with another label, or for another automation: refused.
	for _, other := range []*automationv1.RotateAutomationSecretRequest{
		{WorkspaceId: ws, AutomationId: id, CredentialLabel: "v3"},
		{WorkspaceId: ws, AutomationId: b.GetAutomation().GetId(), CredentialLabel: "v2"},
	} {
		_, err = h.client.RotateAutomationSecret(withKey(as(bg(), owner), "rotate-1"), other)
		wantCode(t, err, codes.FailedPrecondition, idem.Reason)
	}
	if !h.live(t, first.GetSecret()) || !h.live(t, b.GetSecret()) {
		t.Fatal("a refused request rotated")
	}
	// A new key rotates.
	second, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "rotate-2"), req)
	if err != nil {
		t.Fatal(err)
	}
	if h.live(t, first.GetSecret()) || !h.live(t, second.GetSecret()) {
		t.Fatal("a new key did not rotate")
	}
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"automation.create:success", "automation.rotate_secret:success",
		"automation.rotate_secret_replay:success", "automation.rotate_secret_replay:success", "automation.rotate_secret_replay:success",
		"automation.rotate_secret:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestIdempotentConcurrentDuplicates: duplicates that arrive together get
// one response, and one secret is issued.
func TestIdempotentConcurrentDuplicates(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	const n = 8

	creates := make([]*automationv1.CreateAutomationResponse, n)
	errsOut := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			creates[i], errsOut[i] = h.client.CreateAutomation(withKey(as(bg(), owner), "same"),
				&automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "bot", Scopes: []string{"issues:read"}})
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
	if h.issued() != 1 {
		t.Fatalf("%d secrets issued, want 1", h.issued())
	}

	id := creates[0].GetAutomation().GetId()
	rotations := make([]*automationv1.RotateAutomationSecretResponse, n)
	for i := range n {
		wg.Go(func() {
			rotations[i], errsOut[i] = h.client.RotateAutomationSecret(withKey(as(bg(), owner), "same"),
				&automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
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
	if h.issued() != 2 {
		t.Fatalf("%d secrets issued, want 2 (one create, one rotation)", h.issued())
	}
	if !h.live(t, rotations[0].GetSecret()) {
		t.Fatal("the rotated secret is not live")
	}
}

// sharedStore lends one open store to a second service, as two replicas
// share one etcd store; closing it is left to its owner.
type sharedStore struct{ store.Backend }

func (sharedStore) Close() error { return nil }

// replica starts a second automation service on the harness's store, with
// a lock table of its own (as another process has), and returns a client.
func (h *harness) replica(t *testing.T) automationv1.AutomationServiceClient {
	t.Helper()
	lg := zaptest.NewLogger(t)
	// Its own connection to the credential service, recording every
	// secret it receives, as the harness's does.
	capture := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		switch r := reply.(type) {
		case *credentialv1.IssueCredentialResponse:
			h.seen.add(r.GetCredential())
		case *credentialv1.RotateCredentialResponse:
			h.seen.add(r.GetCredential())
		}
		return err
	}
	credConn, err := grpc.NewClient(h.env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(capture),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := automation.New(automation.Config{
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
	srv := mount.New(svc, mount.Options{Name: "automation", Logger: lg, Auth: remote, ServiceToken: h.env.ServiceToken})
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
	return automationv1.NewAutomationServiceClient(conn)
}

// TestIdempotentDuplicatesAcrossReplicas: duplicates sent to two replicas
// at once (no shared lock table: the store decides creates, and a lease in
// it keyed rotations) get one response, with the one live secret.
func TestIdempotentDuplicatesAcrossReplicas(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	clients := []automationv1.AutomationServiceClient{h.client, h.replica(t)}
	const rounds, n = 5, 6

	for round := range rounds {
		name := fmt.Sprintf("bot-%d", round)
		before := h.secrets()
		creates := make([]*automationv1.CreateAutomationResponse, n)
		errsOut := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				creates[i], errsOut[i] = clients[i%2].CreateAutomation(withKey(as(bg(), owner), "create-"+name),
					&automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: name})
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
		live := 0
		for _, s := range h.secrets()[len(before):] {
			if h.live(t, s) {
				live++
				if s != creates[0].GetSecret() {
					t.Fatal("the live secret is not the one returned")
				}
			}
		}
		if live != 1 {
			t.Fatalf("%d live secrets, want 1", live)
		}

		id := creates[0].GetAutomation().GetId()
		before = h.secrets()
		rotations := make([]*automationv1.RotateAutomationSecretResponse, n)
		for i := range n {
			wg.Go(func() {
				rotations[i], errsOut[i] = clients[i%2].RotateAutomationSecret(withKey(as(bg(), owner), "rotate-"+name),
					&automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
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
		if got := len(h.secrets()) - len(before); got != 1 {
			t.Fatalf("%d rotations, want 1", got)
		}
		if !h.live(t, rotations[0].GetSecret()) || h.record(t, ws, owner, id).GetCredential().GetId() != rotations[0].GetCredential().GetId() {
			t.Fatal("the secret returned is not the live one the record names")
		}
		// A later retry gets the key's replay and rotates nothing.
		n0 := h.issued()
		if _, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "rotate-"+name),
			&automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id}); err != nil {
			t.Fatal(err)
		}
		if h.issued() != n0 {
			t.Fatal("a retry rotated")
		}
	}
}

// TestIdempotentCreateWithLostStoreReply: the store applied the commit but
// its reply was lost; the replay, written with the record, shows it applied,
// and the caller gets its secret (which stays live) instead of an error (a
// create would have revoked it, a rotation failed after killing the old).
func TestIdempotentCreateWithLostStoreReply(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.svc.DB().(store.Faults).SetLoseReply(true)
	resp, err := h.client.CreateAutomation(withKey(as(bg(), owner), "k"), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "bot"})
	h.svc.DB().(store.Faults).SetLoseReply(false)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if !h.live(t, resp.GetSecret()) {
		t.Fatal("the secret handed out is not live")
	}
	if h.record(t, ws, owner, resp.GetAutomation().GetId()).GetCredential().GetId() != resp.GetAutomation().GetCredential().GetId() {
		t.Fatal("the record does not name the secret")
	}

	// The same for a rotation; and the retry still replays it.
	req := &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: resp.GetAutomation().GetId()}
	h.svc.DB().(store.Faults).SetLoseReply(true)
	rot, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "r"), req)
	h.svc.DB().(store.Faults).SetLoseReply(false)
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	again, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "r"), req)
	if err != nil || !proto.Equal(again, rot) {
		t.Fatalf("retry: %v", err)
	}
	if !h.live(t, rot.GetSecret()) || h.record(t, ws, owner, req.AutomationId).GetCredential().GetId() != rot.GetCredential().GetId() {
		t.Fatal("the secret handed out is not the live one the record names")
	}
}

// TestReplaysNeverHoldASecretInPlaintext: the store file holds no secret,
// Idempotency-Key or caller token after keyed creates, rotations and
// replays; nor do the logs or the audit trail.
func TestReplaysNeverHoldASecretInPlaintext(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.seen.add(owner)
	keys := []string{"0f8e3a2c-uuid-create-0", "0f8e3a2c-uuid-create-1", "0f8e3a2c-uuid-rotate-0", "0f8e3a2c-uuid-rotate-1"}
	for i := range 2 {
		req := &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: fmt.Sprintf("bot-%d", i), CredentialLabel: "ci"}
		c, err := h.client.CreateAutomation(withKey(as(bg(), owner), keys[i]), req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.client.CreateAutomation(withKey(as(bg(), owner), keys[i]), req); err != nil {
			t.Fatal(err)
		}
		rreq := &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: c.GetAutomation().GetId()}
		for range 2 {
			if _, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), keys[2+i]), rreq); err != nil {
				t.Fatal(err)
			}
		}
	}
	events, err := h.audit.ListAuditEvents(as(bg(), owner), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.GetAuditEvents()) < 8 {
		t.Fatalf("only %d audit events", len(events.GetAuditEvents()))
	}
	trail := fmt.Sprint(events.GetAuditEvents())
	h.stop()
	db, err := os.ReadFile(filepath.Join(h.dataDir, "automation.db"))
	if err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "replayed for a retry") {
		t.Fatal("no replay was logged")
	}
	all := h.seen.list()
	if len(all) < 5 {
		t.Fatalf("only %d secrets seen", len(all))
	}
	for _, s := range append(all, keys...) {
		body := s
		if i := strings.LastIndexByte(s, '_'); i >= 0 && len(s)-6 > i+1 {
			body = s[i+1 : len(s)-6]
		}
		for _, needle := range []string{s, body} {
			if bytes.Contains(db, []byte(needle)) {
				t.Errorf("automation.db holds %s in plaintext", redactFor(s))
			}
			if strings.Contains(logs, needle) {
				t.Errorf("the logs hold %s", redactFor(s))
			}
			if strings.Contains(trail, needle) {
				t.Errorf("the audit trail holds %s", redactFor(s))
			}
		}
	}
}

// redactFor names what leaked without printing it.
func redactFor(s string) string {
	if i := strings.LastIndexByte(s, '_'); i > 0 && strings.HasPrefix(s, "blg_") {
		return "a " + s[:i] + " credential"
	}
	return "an Idempotency-Key"
}

// TestKeyedRotationWaitsForAnotherReplicasLease: while another replica
// holds an automation's rotation lease (its keyed rotation is running), a
// keyed rotation here waits for it instead of rotating too; a rotation
// without a key does not wait.
func TestKeyedRotationWaitsForAnotherReplicasLease(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	a := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
	id := a.GetAutomation().GetId()
	req := &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id}
	if err := automation.HoldRotationLease(h.svc, ws, id); err != nil {
		t.Fatal(err)
	}
	before := h.issued()
	ctx, cancel := context.WithTimeout(withKey(as(bg(), owner), "k"), 300*time.Millisecond)
	defer cancel()
	_, err := h.client.RotateAutomationSecret(ctx, req)
	wantCode(t, err, codes.DeadlineExceeded, "")
	if h.issued() != before {
		t.Fatal("a keyed rotation rotated while another replica held the lease")
	}
	h.rotate(t, ws, owner, id, "") // no key: no lease
	before = h.issued()

	done := make(chan error, 1)
	go func() {
		_, err := h.client.RotateAutomationSecret(withKey(as(bg(), owner), "k2"), req)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the keyed rotation did not wait for the lease: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := automation.DropRotationLease(h.svc, ws, id); err != nil {
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
	if h.issued() != before+1 {
		t.Fatalf("%d rotations, want 1", h.issued()-before)
	}
	if n, err := automation.RotationLeases(h.svc); err != nil || n != 0 {
		t.Fatalf("%d leases left (%v), want 0", n, err)
	}

	// A lease left by a process that died (the embedded store has one
	// writer) ends when the service starts again.
	if err := automation.HoldRotationLease(h.svc, ws, id); err != nil {
		t.Fatal(err)
	}
	h.stop()
	svc, err := h.restart(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := automation.RotationLeases(svc); err != nil || n != 0 {
		t.Fatalf("%d leases after a restart (%v), want 0", n, err)
	}
}
