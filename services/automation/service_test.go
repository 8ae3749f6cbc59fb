package automation_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/credential/credentialtest"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/kit/mount/mounttest"
	"github.com/backlog/controlplane/services/kit/store"
)

// syncBuffer collects every log line, at debug level, for "never logged" checks.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Sync() error { return nil }

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// secrets remembers every raw credential the test saw, wherever it came
// from, so that the test can prove none of them rests anywhere.
type secrets struct {
	mu  sync.Mutex
	all []string
}

func (s *secrets) add(v ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range v {
		if x != "" {
			s.all = append(s.all, x)
		}
	}
}

func (s *secrets) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

// harness is a real credential service and a real automation service, each on
// its own loopback gRPC listener, talking over gRPC.
type harness struct {
	env     *credentialtest.Env
	svc     *automation.Service
	client  automationv1.AutomationServiceClient
	audit   auditv1.AuditServiceClient
	logs    *syncBuffer
	seen    *secrets
	dataDir string
	addr    string // the automation server's
	stop    func() // stops the automation server and closes its store (idempotent)
	// faults makes the automation service's next call of a credential
	// service method fail (see credFaults).
	faults *credFaults
}

// Faults injected into the automation service's calls to the (real)
// credential service.
const (
	faultNone       = iota
	faultRefuse     // the call fails without reaching the credential service
	faultLoseAnswer // the call is made, then its answer is lost
)

// credFaults holds one fault per credential service method, used once.
type credFaults struct {
	mu sync.Mutex
	m  map[string]int
}

// set makes the next call of method (e.g. "IssueCredential") fail with mode.
func (f *credFaults) set(method string, mode int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]int{}
	}
	f.m["/backlog.credential.v1.CredentialInternalService/"+method] = mode
}

func (f *credFaults) take(fullMethod string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	mode := f.m[fullMethod]
	delete(f.m, fullMethod)
	return mode
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	logs := &syncBuffer{}
	enc := zap.NewProductionEncoderConfig()
	lg := zap.New(zapcore.NewTee(
		zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Core(),
		zapcore.NewCore(zapcore.NewJSONEncoder(enc), logs, zap.DebugLevel),
	))
	env := credentialtest.StartWith(t, credentialtest.Options{Logger: lg})
	seen := &secrets{}

	// The automation service's own connection to the credential service,
	// recording every raw credential it receives (so that the test knows
	// even secrets the service never returned to anyone).
	faults := &credFaults{}
	capture := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		mode := faults.take(method)
		if mode == faultRefuse {
			return status.Error(codes.Unavailable, "injected: the call did not reach the credential service")
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if mode == faultLoseAnswer {
			switch r := reply.(type) {
			case *credentialv1.IssueCredentialResponse:
				seen.add(r.GetCredential())
			case *credentialv1.RotateCredentialResponse:
				seen.add(r.GetCredential())
			}
			return status.Error(codes.Unavailable, "injected: the credential service's answer was lost")
		}
		switch r := reply.(type) {
		case *credentialv1.IssueCredentialResponse:
			seen.add(r.GetCredential())
		case *credentialv1.RotateCredentialResponse:
			seen.add(r.GetCredential())
		}
		return err
	}
	credConn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(capture),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	internal := credentialv1.NewCredentialInternalServiceClient(credConn)

	dir := t.TempDir()
	svc, err := automation.New(automation.Config{DataDir: dir, Logger: lg, Credential: internal})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	remote := auth.NewRemote(internal, lg)
	go remote.Watch(ctx)
	// Mounted as backlogd mounts it, with the service credential the
	// credential service's siblings share; the listener is ours so that
	// stop can end the server before the test does.
	srv := mount.New(svc, mount.Options{Name: "automation", Logger: lg, Auth: remote, ServiceToken: env.ServiceToken})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			conn.Close()
			srv.Stop(time.Second)
			cancel()
			if err := svc.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			credConn.Close()
		})
	}
	t.Cleanup(stop)
	return &harness{
		env: env, svc: svc, logs: logs, seen: seen, dataDir: dir, addr: lis.Addr().String(), stop: stop, faults: faults,
		client: automationv1.NewAutomationServiceClient(conn),
		audit:  auditv1.NewAuditServiceClient(conn),
	}
}

var as = credentialtest.As

func bg() context.Context { return context.Background() }

// wantCode fails unless err has the code (and, when set, the reason).
func wantCode(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v (%v), want %v", status.Code(err), err, code)
	}
	if reason != "" && errs.Reason(err) != reason {
		t.Fatalf("got reason %q (%v), want %q", errs.Reason(err), err, reason)
	}
}

func (h *harness) create(t *testing.T, ws, token string, req *automationv1.CreateAutomationRequest) *automationv1.CreateAutomationResponse {
	t.Helper()
	req.WorkspaceId = ws
	resp, err := h.client.CreateAutomation(as(bg(), token), req)
	if err != nil {
		t.Fatalf("create %q: %v", req.Name, err)
	}
	h.seen.add(resp.GetSecret())
	return resp
}

func (h *harness) rotate(t *testing.T, ws, token, id, label string) *automationv1.RotateAutomationSecretResponse {
	t.Helper()
	resp, err := h.client.RotateAutomationSecret(as(bg(), token), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id, CredentialLabel: label})
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	h.seen.add(resp.GetSecret())
	return resp
}

// exchange trades a secret for an access token at the credential service.
func (h *harness) exchange(secret string) (string, error) {
	resp, err := h.env.Public.Exchange(as(bg(), secret), &credentialv1.ExchangeRequest{})
	if err != nil {
		return "", err
	}
	h.seen.add(resp.GetAccessToken())
	return resp.GetAccessToken(), nil
}

func (h *harness) mustExchange(t *testing.T, secret string) string {
	t.Helper()
	tok, err := h.exchange(secret)
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	return tok
}

func (h *harness) auditActions(t *testing.T, ws, token, target string) []string {
	t.Helper()
	resp, err := h.audit.ListAuditEvents(as(bg(), token), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, TargetId: target, LocalOnly: true})
	if err != nil {
		t.Fatalf("audit list: %v", err)
	}
	var out []string
	for _, ev := range resp.GetAuditEvents() {
		out = append(out, ev.GetAction()+":"+ev.GetOutcome())
	}
	return out
}

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

func TestCreateGetListPaginates(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")

	var made []*automationv1.Automation
	for i := range 5 {
		resp := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{
			Name: fmt.Sprintf("  deploy-%d  ", i), Description: "ships builds",
			TeamIds: []string{"team-a", "team-a"}, Scopes: []string{"issues:write", auth.AutomationsRead}, CredentialLabel: "ci",
		})
		a := resp.GetAutomation()
		if !strings.HasPrefix(resp.GetSecret(), "blg_auto_") {
			t.Fatalf("secret has no blg_auto_ prefix")
		}
		if a.GetName() != fmt.Sprintf("deploy-%d", i) || a.GetWorkspaceId() != ws || !strings.HasPrefix(a.GetId(), "auto_") {
			t.Fatalf("automation = %v", a)
		}
		if !slices.Equal(a.GetTeamIds(), []string{"team-a"}) || !slices.Equal(a.GetScopes(), []string{"issues:write", auth.AutomationsRead}) {
			t.Fatalf("teams/scopes not normalised: %v %v", a.GetTeamIds(), a.GetScopes())
		}
		if c := a.GetCredential(); c.GetId() == "" || c.GetLabel() != "ci" || c.GetCreatedAt() == nil {
			t.Fatalf("credential metadata = %v", c)
		}
		made = append(made, a)
	}

	got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: made[2].Id})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetAutomation().GetName() != "deploy-2" || got.GetAutomation().GetCredential().GetId() != made[2].GetCredential().GetId() {
		t.Fatalf("get = %v", got.GetAutomation())
	}

	var ids []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatal("pagination does not end")
		}
		resp, err := h.client.ListAutomations(as(bg(), owner), &automationv1.ListAutomationsRequest{WorkspaceId: ws, PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetAutomations()) > 2 {
			t.Fatalf("page of %d", len(resp.GetAutomations()))
		}
		for _, a := range resp.GetAutomations() {
			ids = append(ids, a.GetId())
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	var want []string
	for _, a := range made {
		want = append(want, a.GetId())
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("listed %v, want (creation order) %v", ids, want)
	}

	// A token of one list is no good for another workspace's list.
	ws2, owner2 := h.env.NewWorkspace(t, "other")
	first, err := h.client.ListAutomations(as(bg(), owner), &automationv1.ListAutomationsRequest{WorkspaceId: ws, PageSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.client.ListAutomations(as(bg(), owner2), &automationv1.ListAutomationsRequest{WorkspaceId: ws2, PageToken: first.GetNextPageToken()})
	wantCode(t, err, codes.InvalidArgument, "")
	_, err = h.client.ListAutomations(as(bg(), owner), &automationv1.ListAutomationsRequest{WorkspaceId: ws, PageToken: "garbage"})
	wantCode(t, err, codes.InvalidArgument, "")

	// The secret works for exchange, and the access token for this service.
	tok := h.mustExchange(t, h.seen.list()[0])
	if _, err := h.client.ListAutomations(as(bg(), tok), &automationv1.ListAutomationsRequest{WorkspaceId: ws}); err != nil {
		t.Fatalf("access token with automations:read cannot list: %v", err)
	}
	if got := h.auditActions(t, ws, owner, made[0].Id); !slices.Equal(got, []string{"automation.create:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "Deploy"})

	cases := []struct {
		name   string
		req    *automationv1.CreateAutomationRequest
		code   codes.Code
		reason string
	}{
		{"missing name", &automationv1.CreateAutomationRequest{Name: "   "}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"name too long", &automationv1.CreateAutomationRequest{Name: strings.Repeat("é", 101)}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"name with control char", &automationv1.CreateAutomationRequest{Name: "a\x00b"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"description too long", &automationv1.CreateAutomationRequest{Name: "x", Description: strings.Repeat("d", 1001)}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"scope not resource:action", &automationv1.CreateAutomationRequest{Name: "x", Scopes: []string{"issues"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"scope upper case", &automationv1.CreateAutomationRequest{Name: "x", Scopes: []string{"Issues:Write"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"bad team id", &automationv1.CreateAutomationRequest{Name: "x", TeamIds: []string{"team one!"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"label too long", &automationv1.CreateAutomationRequest{Name: "x", CredentialLabel: strings.Repeat("l", 101)}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"duplicate name", &automationv1.CreateAutomationRequest{Name: "Deploy"}, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN"},
		{"duplicate name, other case", &automationv1.CreateAutomationRequest{Name: " deploy "}, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.WorkspaceId = ws
			_, err := h.client.CreateAutomation(as(bg(), owner), c.req)
			wantCode(t, err, c.code, c.reason)
		})
	}
	list, err := h.client.ListAutomations(as(bg(), owner), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetAutomations()) != 1 {
		t.Fatalf("refused creates left records: %v %v", list, err)
	}
	_, err = h.client.CreateAutomation(bg(), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "anon"})
	wantCode(t, err, codes.Unauthenticated, "")
}

func TestPermissions(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, auth.RoleMember)
	_, admin := h.env.NewMember(t, ws, owner, auth.RoleAdmin)
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot", Scopes: []string{auth.AutomationsRead, "issues:read"}})
	id := created.GetAutomation().GetId()

	// Members read.
	if _, err := h.client.ListAutomations(as(bg(), member), &automationv1.ListAutomationsRequest{WorkspaceId: ws}); err != nil {
		t.Fatalf("member list: %v", err)
	}
	if _, err := h.client.GetAutomation(as(bg(), member), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id}); err != nil {
		t.Fatalf("member get: %v", err)
	}
	// Admins write.
	h.create(t, ws, admin, &automationv1.CreateAutomationRequest{Name: "admin-made"})

	writes := func(ws, id string) map[string]func(ctx context.Context) error {
		return map[string]func(ctx context.Context) error{
			"create": func(ctx context.Context) error {
				_, err := h.client.CreateAutomation(ctx, &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "nope"})
				return err
			},
			"update": func(ctx context.Context) error {
				_, err := h.client.UpdateAutomation(ctx, &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: id, Automation: &automationv1.Automation{Name: "x"}, UpdateMask: mask("name")})
				return err
			},
			"delete": func(ctx context.Context) error {
				_, err := h.client.DeleteAutomation(ctx, &automationv1.DeleteAutomationRequest{WorkspaceId: ws, AutomationId: id})
				return err
			},
			"rotate": func(ctx context.Context) error {
				_, err := h.client.RotateAutomationSecret(ctx, &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
				return err
			},
		}
	}
	for name, call := range writes(ws, id) {
		t.Run("member cannot "+name, func(t *testing.T) {
			wantCode(t, call(as(bg(), member)), codes.PermissionDenied, "")
		})
	}
	// Another workspace's owner: never 403, always 404, whether it names our
	// workspace or its own with our automation's id.
	for name, call := range writes(ws, id) {
		t.Run("other workspace "+name+" via foreign ws", func(t *testing.T) {
			wantCode(t, call(as(bg(), owner2)), codes.NotFound, "")
		})
	}
	for name, call := range writes(ws2, id) {
		if name == "create" {
			continue
		}
		t.Run("other workspace "+name+" via own ws", func(t *testing.T) {
			wantCode(t, call(as(bg(), owner2)), codes.NotFound, "")
		})
	}
	_, err := h.client.GetAutomation(as(bg(), owner2), &automationv1.GetAutomationRequest{WorkspaceId: ws2, AutomationId: id})
	wantCode(t, err, codes.NotFound, "AUTOMATION_NOT_FOUND")
	_, err = h.client.GetAutomation(as(bg(), owner2), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.NotFound, "")
	_, err = h.client.ListAutomations(as(bg(), owner2), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.NotFound, "")
	_, err = h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: "not-an-id"})
	wantCode(t, err, codes.NotFound, "AUTOMATION_NOT_FOUND")

	// Nothing changed.
	got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	if err != nil || got.GetAutomation().GetName() != "bot" {
		t.Fatalf("after refused writes: %v %v", got, err)
	}

	// An automation secret is not a bearer credential here.
	_, err = h.client.ListAutomations(as(bg(), created.GetSecret()), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.Unauthenticated, "")
	// An access token with automations:read only reads.
	tok := h.mustExchange(t, created.GetSecret())
	_, err = h.client.CreateAutomation(as(bg(), tok), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "by token"})
	wantCode(t, err, codes.PermissionDenied, "")
	// Only owners and admins read this service's audit trail.
	_, err = h.audit.ListAuditEvents(as(bg(), member), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true})
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.audit.ListAuditEvents(bg(), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true})
	wantCode(t, err, codes.Unauthenticated, "")
}

func TestAccessTokenCannotGrantMoreThanItHolds(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	mgr := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "manager", TeamIds: []string{"t1"},
		Scopes: []string{auth.AutomationsRead, auth.AutomationsWrite, "issues:read"}})
	wide := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "wide", Scopes: []string{auth.SecretsUse}})
	tok := h.mustExchange(t, mgr.GetSecret())

	ok := h.create(t, ws, tok, &automationv1.CreateAutomationRequest{Name: "narrow", TeamIds: []string{"t1"}, Scopes: []string{"issues:read"}})
	cases := []struct {
		name string
		call func() error
	}{
		{"create with a scope it lacks", func() error {
			_, err := h.client.CreateAutomation(as(bg(), tok), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "x", TeamIds: []string{"t1"}, Scopes: []string{auth.SecretsUse}})
			return err
		}},
		{"create outside its teams", func() error {
			_, err := h.client.CreateAutomation(as(bg(), tok), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "x", TeamIds: []string{"t2"}})
			return err
		}},
		{"create without a team boundary", func() error {
			_, err := h.client.CreateAutomation(as(bg(), tok), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "x"})
			return err
		}},
		{"widen an automation", func() error {
			_, err := h.client.UpdateAutomation(as(bg(), tok), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: ok.GetAutomation().GetId(),
				Automation: &automationv1.Automation{Scopes: []string{auth.AuditRead}}, UpdateMask: mask("scopes")})
			return err
		}},
		{"rotate a wider automation's secret", func() error {
			_, err := h.client.RotateAutomationSecret(as(bg(), tok), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: wide.GetAutomation().GetId()})
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { wantCode(t, c.call(), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER") })
	}
	// Within its grant it may manage.
	h.rotate(t, ws, tok, ok.GetAutomation().GetId(), "")
}

func TestAccessTokenCannotTurnItselfIntoALongLivedSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	self := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "self",
		Scopes: []string{auth.AutomationsRead, auth.AutomationsWrite, "issues:read"}})
	manager := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "manager", Scopes: []string{auth.AutomationsWrite}})
	plain := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "plain", Scopes: []string{"issues:read"}})
	tok := h.mustExchange(t, self.GetSecret())
	selfID := self.GetAutomation().GetId()

	cases := []struct {
		name, reason string
		call         func() error
	}{
		{"rotate its own secret", "OWN_SECRET_ROTATION", func() error {
			_, err := h.client.RotateAutomationSecret(as(bg(), tok), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: selfID})
			return err
		}},
		{"create a manager", "MANAGER_SECRET_FROM_TOKEN", func() error {
			_, err := h.client.CreateAutomation(as(bg(), tok), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "clone",
				Scopes: []string{auth.AutomationsWrite, "issues:read"}})
			return err
		}},
		{"rotate a manager's secret", "MANAGER_SECRET_FROM_TOKEN", func() error {
			_, err := h.client.RotateAutomationSecret(as(bg(), tok), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: manager.GetAutomation().GetId()})
			return err
		}},
		{"make a manager", "MANAGER_SECRET_FROM_TOKEN", func() error {
			_, err := h.client.UpdateAutomation(as(bg(), tok), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: plain.GetAutomation().GetId(),
				Automation: &automationv1.Automation{Scopes: []string{"issues:read", auth.AutomationsWrite}}, UpdateMask: mask("scopes")})
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { wantCode(t, c.call(), codes.PermissionDenied, c.reason) })
	}
	// The old secret still works, and each refusal is in the trail.
	h.mustExchange(t, self.GetSecret())
	acts := h.auditActions(t, ws, owner, selfID)
	if n := strings.Count(strings.Join(acts, " "), "automation.rotate_secret:failure"); n != 1 {
		t.Fatalf("want one refused self-rotation in the trail, got %v", acts)
	}
	// Within the rules it manages; a person rotates its secret.
	h.rotate(t, ws, tok, plain.GetAutomation().GetId(), "")
	narrow := h.create(t, ws, tok, &automationv1.CreateAutomationRequest{Name: "narrow", Scopes: []string{"issues:read"}})
	h.rotate(t, ws, tok, narrow.GetAutomation().GetId(), "")
	h.rotate(t, ws, owner, selfID, "")
}

func TestTeamBoundAgentHeldToItsTeams(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	agentKey := func(id string, teams ...string) string {
		resp, err := h.env.Internal.IssueCredential(bg(), &credentialv1.IssueCredentialRequest{
			Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AGENT, Id: id, WorkspaceId: ws, Name: id, Role: auth.RoleAdmin, TeamIds: teams},
			Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY,
		})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetCredential()
	}
	bound, free := agentKey("agt_bound", "team-a"), agentKey("agt_free")
	unbounded := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "unbounded"})
	mine := h.create(t, ws, bound, &automationv1.CreateAutomationRequest{Name: "mine", TeamIds: []string{"team-a"}, Scopes: []string{auth.AutomationsWrite}})
	refused := map[string]func() error{
		"create without a team boundary": func() error {
			_, err := h.client.CreateAutomation(as(bg(), bound), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "x"})
			return err
		},
		"create for another team": func() error {
			_, err := h.client.CreateAutomation(as(bg(), bound), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "x", TeamIds: []string{"team-b"}})
			return err
		},
		"grant a scope it lacks": func() error {
			_, err := h.client.CreateAutomation(as(bg(), bound), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "x", TeamIds: []string{"team-a"}, Scopes: []string{"issues:write"}})
			return err
		},
		"widen its automation's teams": func() error {
			_, err := h.client.UpdateAutomation(as(bg(), bound), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: mine.GetAutomation().GetId(),
				Automation: &automationv1.Automation{TeamIds: []string{"team-a", "team-b"}}, UpdateMask: mask("team_ids")})
			return err
		},
		"rotate an unbounded automation": func() error {
			_, err := h.client.RotateAutomationSecret(as(bg(), bound), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: unbounded.GetAutomation().GetId()})
			return err
		},
	}
	for name, call := range refused {
		t.Run(name, func(t *testing.T) { wantCode(t, call(), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER") })
	}
	// Within its team it manages (its key is long-lived: it may hand out
	// managers); an agent without a team scope is not team-bound.
	h.rotate(t, ws, bound, mine.GetAutomation().GetId(), "")
	h.create(t, ws, free, &automationv1.CreateAutomationRequest{Name: "anywhere", Scopes: []string{auth.AutomationsWrite}})
}

func TestUpdateChangesOnlyMaskedFields(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot", Description: "keep me",
		TeamIds: []string{"t1"}, Scopes: []string{auth.AutomationsRead}})
	other := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "taken"})
	id := created.GetAutomation().GetId()
	update := func(a *automationv1.Automation, paths ...string) (*automationv1.Automation, error) {
		resp, err := h.client.UpdateAutomation(as(bg(), owner), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: id, Automation: a, UpdateMask: mask(paths...)})
		return resp.GetAutomation(), err
	}

	// Fields sent but not in the mask are ignored.
	a, err := update(&automationv1.Automation{Name: "renamed", Description: "ignored", Scopes: []string{"x:y"}}, "name")
	if err != nil {
		t.Fatal(err)
	}
	if a.GetName() != "renamed" || a.GetDescription() != "keep me" || !slices.Equal(a.GetScopes(), []string{auth.AutomationsRead}) ||
		!slices.Equal(a.GetTeamIds(), []string{"t1"}) || a.GetCredential().GetId() != created.GetAutomation().GetCredential().GetId() {
		t.Fatalf("after name update: %v", a)
	}
	// JSON spelling of paths; scopes reach the tokens at once.
	a, err = update(&automationv1.Automation{TeamIds: []string{"t2", "t3"}, Scopes: []string{"issues:write", auth.AutomationsRead}}, "teamIds", "scopes")
	if err != nil {
		t.Fatal(err)
	}
	if a.GetName() != "renamed" || !slices.Equal(a.GetTeamIds(), []string{"t2", "t3"}) {
		t.Fatalf("after teams update: %v", a)
	}
	ex, err := h.env.Public.Exchange(as(bg(), created.GetSecret()), &credentialv1.ExchangeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h.seen.add(ex.GetAccessToken())
	if !slices.Equal(ex.GetScopes(), []string{"issues:write", auth.AutomationsRead}) || !slices.Equal(ex.GetTeamIds(), []string{"t2", "t3"}) {
		t.Fatalf("exchange after update carries %v %v", ex.GetScopes(), ex.GetTeamIds())
	}
	// Clearing a field is sending it empty, in the mask.
	a, err = update(&automationv1.Automation{}, "description")
	if err != nil || a.GetDescription() != "" || a.GetName() != "renamed" {
		t.Fatalf("clear description: %v %v", a, err)
	}
	// Renaming to a case variant of itself is fine.
	if a, err = update(&automationv1.Automation{Name: "RENAMED"}, "name"); err != nil || a.GetName() != "RENAMED" {
		t.Fatalf("case rename: %v %v", a, err)
	}

	cases := []struct {
		name   string
		a      *automationv1.Automation
		paths  []string
		code   codes.Code
		reason string
		naming string
	}{
		{"unknown path", &automationv1.Automation{Name: "x"}, []string{"name", "colour"}, codes.InvalidArgument, "INVALID_ARGUMENT", "colour"},
		{"output-only path", &automationv1.Automation{Id: "auto_x"}, []string{"id"}, codes.InvalidArgument, "INVALID_ARGUMENT", `"id"`},
		{"nested path", &automationv1.Automation{}, []string{"credential.label"}, codes.InvalidArgument, "INVALID_ARGUMENT", "credential.label"},
		{"empty mask", &automationv1.Automation{Name: "x"}, nil, codes.InvalidArgument, "INVALID_ARGUMENT", "nothing to update"},
		{"no automation", nil, []string{"name"}, codes.InvalidArgument, "INVALID_ARGUMENT", "automation"},
		{"empty name", &automationv1.Automation{Name: " "}, []string{"name"}, codes.InvalidArgument, "INVALID_ARGUMENT", "name"},
		{"malformed scope", &automationv1.Automation{Scopes: []string{"write"}}, []string{"scopes"}, codes.InvalidArgument, "INVALID_ARGUMENT", "scopes"},
		{"bad team id", &automationv1.Automation{TeamIds: []string{"a/b"}}, []string{"team_ids"}, codes.InvalidArgument, "INVALID_ARGUMENT", "teamIds"},
		{"name taken", &automationv1.Automation{Name: "Taken"}, []string{"name"}, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := update(c.a, c.paths...)
			wantCode(t, err, c.code, c.reason)
			if !strings.Contains(status.Convert(err).Message(), c.naming) {
				t.Fatalf("message %q does not name %q", status.Convert(err).Message(), c.naming)
			}
		})
	}
	got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	if err != nil || got.GetAutomation().GetName() != "RENAMED" || !slices.Equal(got.GetAutomation().GetScopes(), []string{"issues:write", auth.AutomationsRead}) {
		t.Fatalf("refused updates changed the record: %v %v", got, err)
	}
	// The old name is free again; the other automation kept its own.
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
	_, err = h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: other.GetAutomation().GetName()})
	wantCode(t, err, codes.AlreadyExists, "")
	if got := h.auditActions(t, ws, owner, id); len(got) != 5 || got[0] != "automation.create:success" || got[1] != "automation.update:success" {
		t.Fatalf("audit = %v", got)
	}
}

func TestSuspendRefusesTokensAtOnce(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot", Scopes: []string{auth.AutomationsRead}})
	id := created.GetAutomation().GetId()
	tok := h.mustExchange(t, created.GetSecret())
	list := func() error {
		_, err := h.client.ListAutomations(as(bg(), tok), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
		return err
	}
	for range 3 { // warm this service's principal cache
		if err := list(); err != nil {
			t.Fatal(err)
		}
	}
	setSuspended := func(v bool) *automationv1.Automation {
		resp, err := h.client.UpdateAutomation(as(bg(), owner), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: id,
			Automation: &automationv1.Automation{Suspended: v, Name: "ignored"}, UpdateMask: mask("suspended")})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAutomation()
	}
	if a := setSuspended(true); !a.GetSuspended() || a.GetName() != "bot" {
		t.Fatalf("suspend: %v", a)
	}
	wantCode(t, list(), codes.PermissionDenied, "")
	_, err := h.exchange(created.GetSecret())
	wantCode(t, err, codes.PermissionDenied, "")

	if a := setSuspended(false); a.GetSuspended() {
		t.Fatalf("resume: %v", a)
	}
	h.mustExchange(t, created.GetSecret())
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"automation.create:success", "automation.suspend:success", "automation.resume:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestRotateKillsOldSecretAndTokens(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot", Scopes: []string{auth.AutomationsRead}, CredentialLabel: "first"})
	id := created.GetAutomation().GetId()
	old := created.GetSecret()
	oldTok := h.mustExchange(t, old)
	if _, err := h.client.GetAutomation(as(bg(), oldTok), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id}); err != nil {
		t.Fatal(err)
	}

	r := h.rotate(t, ws, owner, id, "")
	if r.GetSecret() == old || !strings.HasPrefix(r.GetSecret(), "blg_auto_") {
		t.Fatal("rotation did not return a new automation secret")
	}
	if c := r.GetCredential(); c.GetId() == "" || c.GetId() == created.GetAutomation().GetCredential().GetId() || c.GetLabel() != "first" || c.GetCreatedAt() == nil {
		t.Fatalf("credential = %v (label should be kept when none is sent)", c)
	}
	// The old secret and everything exchanged from it are dead at once.
	_, err := h.exchange(old)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: old})
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.client.GetAutomation(as(bg(), oldTok), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.Unauthenticated, "")
	// The new one works.
	newTok := h.mustExchange(t, r.GetSecret())
	if _, err := h.client.GetAutomation(as(bg(), newTok), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id}); err != nil {
		t.Fatal(err)
	}
	got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	if err != nil || got.GetAutomation().GetCredential().GetId() != r.GetCredential().GetId() {
		t.Fatalf("record not updated: %v %v", got, err)
	}
	if r2 := h.rotate(t, ws, owner, id, "second"); r2.GetCredential().GetLabel() != "second" {
		t.Fatalf("label = %q", r2.GetCredential().GetLabel())
	}

	_, err = h.client.RotateAutomationSecret(as(bg(), owner2), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws2, AutomationId: id})
	wantCode(t, err, codes.NotFound, "")
	_, err = h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id, CredentialLabel: "bad\nlabel"})
	wantCode(t, err, codes.InvalidArgument, "")
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"automation.create:success", "automation.rotate_secret:success", "automation.rotate_secret:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestConcurrentRotationsLeaveOneLiveSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
	id := created.GetAutomation().GetId()

	const n = 20
	results := make([]*automationv1.RotateAutomationSecretResponse, n)
	errsOut := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i], errsOut[i] = h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
		})
	}
	wg.Wait()
	var live []*automationv1.RotateAutomationSecretResponse
	for i := range n {
		if errsOut[i] != nil {
			t.Fatalf("rotation %d: %v", i, errsOut[i])
		}
		h.seen.add(results[i].GetSecret())
		if _, err := h.exchange(results[i].GetSecret()); err == nil {
			live = append(live, results[i])
		} else {
			wantCode(t, err, codes.Unauthenticated, "")
		}
	}
	if _, err := h.exchange(created.GetSecret()); err == nil {
		t.Fatal("the original secret survived")
	}
	if len(live) != 1 {
		t.Fatalf("%d secrets live after %d concurrent rotations, want 1", len(live), n)
	}
	got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	if err != nil || got.GetAutomation().GetCredential().GetId() != live[0].GetCredential().GetId() {
		t.Fatalf("record describes credential %s, the live one is %s (%v)", got.GetAutomation().GetCredential().GetId(), live[0].GetCredential().GetId(), err)
	}
	if events := h.auditActions(t, ws, owner, id); len(events) != n+1 {
		t.Fatalf("%d audit events, want %d", len(events), n+1)
	}
}

func TestDeleteKillsEverything(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot", Scopes: []string{auth.AutomationsRead}})
	id := created.GetAutomation().GetId()
	tok := h.mustExchange(t, created.GetSecret())
	if _, err := h.client.ListAutomations(as(bg(), tok), &automationv1.ListAutomationsRequest{WorkspaceId: ws}); err != nil {
		t.Fatal(err)
	}

	if _, err := h.client.DeleteAutomation(as(bg(), owner), &automationv1.DeleteAutomationRequest{WorkspaceId: ws, AutomationId: id}); err != nil {
		t.Fatal(err)
	}
	_, err := h.client.ListAutomations(as(bg(), tok), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.exchange(created.GetSecret())
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.NotFound, "AUTOMATION_NOT_FOUND")
	_, err = h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.NotFound, "AUTOMATION_NOT_FOUND")
	_, err = h.client.UpdateAutomation(as(bg(), owner), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: id, Automation: &automationv1.Automation{Suspended: false}, UpdateMask: mask("suspended")})
	wantCode(t, err, codes.NotFound, "AUTOMATION_NOT_FOUND")
	_, err = h.client.DeleteAutomation(as(bg(), owner), &automationv1.DeleteAutomationRequest{WorkspaceId: ws, AutomationId: id})
	wantCode(t, err, codes.NotFound, "AUTOMATION_NOT_FOUND")
	// The name is free again.
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"automation.create:success", "automation.delete:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestFailedCreateRevokesTheIssuedSecret(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
	_, err := h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "bot"})
	wantCode(t, err, codes.Unavailable, "STORE_UNAVAILABLE")
	h.svc.DB().(store.Faults).SetFault(nil)

	issued := h.seen.list()
	if len(issued) != 1 {
		t.Fatalf("%d credentials issued, want 1", len(issued))
	}
	_, err = h.exchange(issued[0])
	wantCode(t, err, codes.Unauthenticated, "")
	list, err := h.client.ListAutomations(as(bg(), owner), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetAutomations()) != 0 {
		t.Fatalf("list after failed create: %v %v", list, err)
	}
	// The name was not taken by the failed attempt.
	h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
}

// TestNoSecretAtRestOrInLogs drives every path that handles a raw secret,
// then looks for each secret in the debug-level logs, the audit trail and the
// raw bytes of the store file.
func TestNoSecretAtRestOrInLogs(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.seen.add(owner)
	var ids []string
	for i := range 3 {
		c := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: fmt.Sprintf("bot-%d", i), Scopes: []string{auth.AutomationsRead}, CredentialLabel: "label"})
		ids = append(ids, c.GetAutomation().GetId())
		tok := h.mustExchange(t, c.GetSecret())
		h.client.ListAutomations(as(bg(), tok), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	}
	for _, id := range ids {
		r := h.rotate(t, ws, owner, id, "")
		h.mustExchange(t, r.GetSecret())
	}
	// Failure paths log too.
	h.client.ListAutomations(as(bg(), h.seen.list()[1]), &automationv1.ListAutomationsRequest{WorkspaceId: ws})
	h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
	h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "doomed"})
	h.client.RotateAutomationSecret(as(bg(), owner), &automationv1.RotateAutomationSecretRequest{WorkspaceId: ws, AutomationId: ids[0]})
	h.svc.DB().(store.Faults).SetFault(nil)
	if _, err := h.client.UpdateAutomation(as(bg(), owner), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: ids[1],
		Automation: &automationv1.Automation{Suspended: true}, UpdateMask: mask("suspended")}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DeleteAutomation(as(bg(), owner), &automationv1.DeleteAutomationRequest{WorkspaceId: ws, AutomationId: ids[2]}); err != nil {
		t.Fatal(err)
	}
	events, err := h.audit.ListAuditEvents(as(bg(), owner), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	trail := fmt.Sprint(events.GetAuditEvents())
	h.stop()

	db, err := os.ReadFile(filepath.Join(h.dataDir, "automation.db"))
	if err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "automation secret rotated") || !strings.Contains(logs, `"level":"debug"`) {
		t.Fatal("the log capture did not see the service's logs at debug level")
	}
	all := h.seen.list()
	if len(all) < 14 {
		t.Fatalf("only %d secrets seen", len(all))
	}
	for _, s := range all {
		// The body without its prefix and checksum, too: an encoding that
		// kept the middle would still be a leak.
		body := s[strings.LastIndexByte(s, '_')+1 : len(s)-6]
		for _, needle := range []string{s, body} {
			if strings.Contains(logs, needle) {
				t.Errorf("a %s credential appears in the logs", s[:strings.LastIndexByte(s, '_')])
			}
			if bytes.Contains(db, []byte(needle)) {
				t.Errorf("a %s credential appears in automation.db", s[:strings.LastIndexByte(s, '_')])
			}
			if strings.Contains(trail, needle) {
				t.Errorf("a %s credential appears in the audit trail", s[:strings.LastIndexByte(s, '_')])
			}
		}
	}
}

// TestInternalMethodsRequireServiceCredential: AdminService, mounted as
// backlogd mounts it, answers only a caller presenting the service
// credential (the automation service has no other internal method).
func TestInternalMethodsRequireServiceCredential(t *testing.T) {
	h := newHarness(t)
	_, owner := h.env.NewWorkspace(t, "Acme")
	dial := func(opts ...grpc.DialOption) *grpc.ClientConn {
		conn, err := grpc.NewClient(h.addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	bare, sibling := dial(), dial(grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	for _, tc := range []struct {
		name string
		conn *grpc.ClientConn
		ctx  context.Context
		want codes.Code
	}{
		{"no service credential", bare, bg(), codes.Unauthenticated},
		{"a member's token", bare, as(bg(), owner), codes.Unauthenticated},
		{"wrong service credential", bare, metadata.AppendToOutgoingContext(bg(), auth.ServiceTokenKey, credfmt.New(credfmt.Service)), codes.Unauthenticated},
		{"the service credential", sibling, bg(), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, b, err := mounttest.Snapshot(tc.ctx, tc.conn)
			if status.Code(err) != tc.want {
				t.Fatalf("AdminService.Snapshot = %v, want %v", err, tc.want)
			}
			if err == nil && (name != "automation.db" || len(b) == 0) {
				t.Fatalf("snapshot of %q, %d bytes", name, len(b))
			}
		})
	}
}

func TestNewNeedsItsParts(t *testing.T) {
	if _, err := automation.New(automation.Config{DataDir: t.TempDir()}); err == nil {
		t.Fatal("New without a credential client succeeded")
	}
	if _, err := automation.New(automation.Config{Credential: credentialv1.NewCredentialInternalServiceClient(nil)}); err == nil {
		t.Fatal("New without a data dir succeeded")
	}
	svc, err := automation.New(automation.Config{DataDir: t.TempDir(), Credential: credentialv1.NewCredentialInternalServiceClient(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	for _, m := range []string{automationv1.AutomationService_CreateAutomation_FullMethodName, automationv1.AutomationService_ListAutomations_FullMethodName, auditv1.AuditService_ListAuditEvents_FullMethodName} {
		if svc.NoAuth(m) {
			t.Errorf("%s skips authentication", m)
		}
	}
}

// TestSuspendAndResumeFailClosed injects a store failure between the two
// writes of a suspension or resumption: either way the credentials must end
// up no more powerful than the record says.
func TestSuspendAndResumeFailClosed(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	created := h.create(t, ws, owner, &automationv1.CreateAutomationRequest{Name: "bot"})
	id := created.GetAutomation().GetId()
	setSuspended := func(v bool) error {
		_, err := h.client.UpdateAutomation(as(bg(), owner), &automationv1.UpdateAutomationRequest{WorkspaceId: ws, AutomationId: id,
			Automation: &automationv1.Automation{Suspended: v}, UpdateMask: mask("suspended")})
		return err
	}
	stored := func() bool {
		got, err := h.client.GetAutomation(as(bg(), owner), &automationv1.GetAutomationRequest{WorkspaceId: ws, AutomationId: id})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetAutomation().GetSuspended()
	}

	// Suspend: the credentials are suspended first, so even though the
	// record could not be written, the secret is already refused.
	h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
	wantCode(t, setSuspended(true), codes.Unavailable, "STORE_UNAVAILABLE")
	h.svc.DB().(store.Faults).SetFault(nil)
	if stored() {
		t.Fatal("record says suspended although its write failed")
	}
	_, err := h.exchange(created.GetSecret())
	wantCode(t, err, codes.PermissionDenied, "")
	// Repeating the request converges.
	if err := setSuspended(true); err != nil || !stored() {
		t.Fatalf("retry: %v", err)
	}

	// Resume: the record is written first; when that fails the credentials
	// stay suspended.
	h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
	wantCode(t, setSuspended(false), codes.Unavailable, "STORE_UNAVAILABLE")
	h.svc.DB().(store.Faults).SetFault(nil)
	if !stored() {
		t.Fatal("record says resumed although its write failed")
	}
	_, err = h.exchange(created.GetSecret())
	wantCode(t, err, codes.PermissionDenied, "")
	if err := setSuspended(false); err != nil || stored() {
		t.Fatalf("retry: %v", err)
	}
	h.mustExchange(t, created.GetSecret())
}

// TestConcurrentCreatesOfOneName: one wins; every loser's already issued
// secret is revoked again.
func TestConcurrentCreatesOfOneName(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	const n = 10
	errsOut := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errsOut[i] = h.client.CreateAutomation(as(bg(), owner), &automationv1.CreateAutomationRequest{WorkspaceId: ws, Name: "same"})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errsOut {
		if err == nil {
			won++
		} else {
			wantCode(t, err, codes.AlreadyExists, "AUTOMATION_NAME_TAKEN")
		}
	}
	if won != 1 {
		t.Fatalf("%d creates of one name succeeded", won)
	}
	live := 0
	for _, s := range h.seen.list() {
		if _, err := h.exchange(s); err == nil {
			live++
		}
	}
	if live != 1 {
		t.Fatalf("%d issued secrets live, want 1", live)
	}
}
