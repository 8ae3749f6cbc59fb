package agent_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/mount/mounttest"
	"github.com/backlog/controlplane/services/kit/ratelimit"
	"github.com/backlog/controlplane/services/kit/store"
)

const rotationMessage = "API key and rotation secret rotated successfully. Save both — they will not be shown again."

func TestInstallations(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, auth.RoleMember)
	ws2, owner2 := h.env.NewWorkspace(t, "rival")

	var made []string
	for i := range 3 {
		resp, err := h.client.CreateInstallation(as(bg(), owner), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: fmt.Sprintf("  Triage %d ", i), AppId: "app_42"})
		if err != nil {
			t.Fatal(err)
		}
		in := resp.GetInstallation()
		if in.GetName() != fmt.Sprintf("Triage %d", i) || in.GetAppId() != "app_42" || in.GetWorkspaceId() != ws || !strings.HasPrefix(in.GetId(), "inst_") || in.GetCreatedAt() == nil {
			t.Fatalf("installation = %v", in)
		}
		made = append(made, in.GetId())
	}
	// appId is optional.
	if _, err := h.client.CreateInstallation(as(bg(), owner), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "no app"}); err != nil {
		t.Fatal(err)
	}
	made = append(made, "")

	// Members list, paginated, oldest first.
	var listed []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 4 {
			t.Fatal("pagination does not end")
		}
		resp, err := h.client.ListInstallations(as(bg(), member), &agentv1.ListInstallationsRequest{WorkspaceId: ws, PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range resp.GetInstallations() {
			listed = append(listed, in.GetId())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(listed) != 4 || !slices.Equal(listed[:3], made[:3]) {
		t.Fatalf("listed %v, want %v first", listed, made[:3])
	}

	for _, c := range []struct {
		name   string
		req    *agentv1.CreateInstallationRequest
		code   codes.Code
		reason string
	}{
		{"empty name", &agentv1.CreateInstallationRequest{Name: "  "}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"name too long", &agentv1.CreateInstallationRequest{Name: strings.Repeat("n", 101)}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"app id with a space", &agentv1.CreateInstallationRequest{Name: "x", AppId: "app 1"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"duplicate name", &agentv1.CreateInstallationRequest{Name: "triage 0"}, codes.AlreadyExists, "INSTALLATION_NAME_TAKEN"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.req.WorkspaceId = ws
			_, err := h.client.CreateInstallation(as(bg(), owner), c.req)
			wantCode(t, err, c.code, c.reason)
		})
	}
	_, err := h.client.CreateInstallation(as(bg(), member), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "member-made"})
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.client.CreateInstallation(as(bg(), owner2), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "foreign"})
	wantCode(t, err, codes.NotFound, "")
	_, err = h.client.ListInstallations(as(bg(), owner2), &agentv1.ListInstallationsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.NotFound, "")
	if resp, err := h.client.ListInstallations(as(bg(), owner2), &agentv1.ListInstallationsRequest{WorkspaceId: ws2}); err != nil || len(resp.GetInstallations()) != 0 {
		t.Fatalf("other workspace sees %v %v", resp, err)
	}
	_, err = h.client.ListInstallations(bg(), &agentv1.ListInstallationsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.Unauthenticated, "")
	if got := h.auditActions(t, ws, owner, made[0]); !slices.Equal(got, []string{"installation.create:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestCreateGetListAgents(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	instA := h.installation(t, ws, owner, "app a")
	instB := h.installation(t, ws, owner, "app b")

	var inA, inB, all []string
	for i := range 5 {
		inst := instA
		if i%2 == 1 {
			inst = instB
		}
		resp := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: fmt.Sprintf(" bot-%d ", i), TeamIds: []string{"team-a", "team-a", "team-b"}})
		a := resp.GetAgent()
		if !strings.HasPrefix(resp.GetApiKey(), "blg_agk_") || !strings.HasPrefix(resp.GetRotationSecret(), "blg_rot_") {
			t.Fatal("create did not return an API key and a rotation secret")
		}
		if a.GetName() != fmt.Sprintf("bot-%d", i) || a.GetWorkspaceId() != ws || a.GetInstallationId() != inst || !strings.HasPrefix(a.GetId(), "agt_") ||
			a.GetRole() != auth.RoleMember || a.GetSuspended() || a.GetRevoked() || a.GetCreatedAt() == nil || a.GetKeyRotatedAt() == nil {
			t.Fatalf("agent = %v (an agent created without a role is a member)", a)
		}
		if !slices.Equal(a.GetTeamIds(), []string{"team-a", "team-b"}) {
			t.Fatalf("teams not normalised: %v", a.GetTeamIds())
		}
		all = append(all, a.GetId())
		if inst == instA {
			inA = append(inA, a.GetId())
		} else {
			inB = append(inB, a.GetId())
		}
	}

	list := func(inst string, size int32) []string {
		t.Helper()
		var out []string
		token := ""
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatal("pagination does not end")
			}
			resp, err := h.client.ListAgents(as(bg(), owner), &agentv1.ListAgentsRequest{WorkspaceId: ws, InstallationId: inst, PageSize: size, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetAgents()) > int(size) {
				t.Fatalf("page of %d", len(resp.GetAgents()))
			}
			for _, a := range resp.GetAgents() {
				out = append(out, a.GetId())
			}
			if token = resp.GetNextPageToken(); token == "" {
				return out
			}
		}
	}
	if got := list("", 2); !slices.Equal(got, all) {
		t.Fatalf("list = %v, want %v", got, all)
	}
	if got := list(instA, 2); !slices.Equal(got, inA) {
		t.Fatalf("list of A = %v, want %v", got, inA)
	}
	if got := list(instB, 1); !slices.Equal(got, inB) {
		t.Fatalf("list of B = %v, want %v", got, inB)
	}
	// A page token belongs to its list: its workspace and its filter.
	first, err := h.client.ListAgents(as(bg(), owner), &agentv1.ListAgentsRequest{WorkspaceId: ws, InstallationId: instA, PageSize: 1})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("first page: %v %v", first, err)
	}
	for name, req := range map[string]*agentv1.ListAgentsRequest{
		"no filter":    {WorkspaceId: ws, PageToken: first.GetNextPageToken()},
		"other filter": {WorkspaceId: ws, InstallationId: instB, PageToken: first.GetNextPageToken()},
		"garbage":      {WorkspaceId: ws, PageToken: "garbage"},
	} {
		_, err := h.client.ListAgents(as(bg(), owner), req)
		if t.Run(name, func(t *testing.T) { wantCode(t, err, codes.InvalidArgument, "") }) == false {
			return
		}
	}
	_, err = h.client.ListAgents(as(bg(), owner), &agentv1.ListAgentsRequest{WorkspaceId: ws, InstallationId: "inst_00000000000000000000000000"})
	wantCode(t, err, codes.NotFound, "INSTALLATION_NOT_FOUND")

	got := h.get(t, ws, owner, all[2])
	if got.GetName() != "bot-2" || got.GetInstallationId() != instA {
		t.Fatalf("get = %v", got)
	}
	_, err = h.client.GetAgent(as(bg(), owner), &agentv1.GetAgentRequest{WorkspaceId: ws, AgentId: "agt_00000000000000000000000000"})
	wantCode(t, err, codes.NotFound, "AGENT_NOT_FOUND")
	_, err = h.client.GetAgent(as(bg(), owner), &agentv1.GetAgentRequest{WorkspaceId: ws, AgentId: "../x"})
	wantCode(t, err, codes.NotFound, "AGENT_NOT_FOUND")
	if got := h.auditActions(t, ws, owner, all[0]); !slices.Equal(got, []string{"agent.create:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestAgentKeysAuthenticateByRole: the API key is accepted by the kit
// interceptor like any token, with the scopes of the agent's role.
func TestAgentKeysAuthenticateByRole(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	member := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "reader", Role: auth.RoleMember, TeamIds: []string{"t1"}})
	admin := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "manager", Role: auth.RoleAdmin})

	self, err := h.self(member.GetApiKey())
	if err != nil || self.GetId() != member.GetAgent().GetId() {
		t.Fatalf("GetSelf = %v %v", self, err)
	}
	who, err := h.env.Public.WhoAmI(as(bg(), member.GetApiKey()), &credentialv1.WhoAmIRequest{})
	if err != nil || who.GetKind() != "agent" || who.GetSubjectId() != member.GetAgent().GetId() || who.GetRole() != auth.RoleMember ||
		!slices.Equal(who.GetScopes(), auth.MemberScopes) || !slices.Equal(who.GetTeamIds(), []string{"t1"}) {
		t.Fatalf("whoami = %v %v", who, err)
	}
	// A member agent reads; it cannot write.
	if _, err := h.client.ListAgents(as(bg(), member.GetApiKey()), &agentv1.ListAgentsRequest{WorkspaceId: ws}); err != nil {
		t.Fatalf("member agent list: %v", err)
	}
	_, err = h.client.CreateInstallation(as(bg(), member.GetApiKey()), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "nope"})
	wantCode(t, err, codes.PermissionDenied, "")
	// An admin agent manages agents, but rotates its own credentials only
	// through the self route (rotation secret and rate limit apply).
	if _, err := h.client.CreateInstallation(as(bg(), admin.GetApiKey()), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "by agent"}); err != nil {
		t.Fatalf("admin agent: %v", err)
	}
	h.adminRotate(t, ws, admin.GetApiKey(), member.GetAgent().GetId())
	_, err = h.client.RotateAgentKey(as(bg(), admin.GetApiKey()), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: admin.GetAgent().GetId()})
	wantCode(t, err, codes.PermissionDenied, "SELF_ROTATION_REQUIRED")
	// A person's token is no agent.
	_, err = h.client.GetSelf(as(bg(), owner), &agentv1.GetSelfRequest{})
	wantCode(t, err, codes.PermissionDenied, "NOT_AN_AGENT")
	_, err = h.client.GetSelf(bg(), &agentv1.GetSelfRequest{})
	wantCode(t, err, codes.Unauthenticated, "")
	// A rotation secret is never a bearer credential.
	_, err = h.client.GetSelf(as(bg(), member.GetRotationSecret()), &agentv1.GetSelfRequest{})
	wantCode(t, err, codes.Unauthenticated, "")
}

func TestCreateAgentRejectsBadInput(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	foreignInst := h.installation(t, ws2, owner2, "their app")
	h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "Triage"})
	issued := len(h.seen.list())

	cases := []struct {
		name   string
		inst   string
		req    *agentv1.CreateAgentRequest
		code   codes.Code
		reason string
	}{
		{"missing installation", "inst_00000000000000000000000000", &agentv1.CreateAgentRequest{Name: "x"}, codes.NotFound, "INSTALLATION_NOT_FOUND"},
		{"not an installation id", "nope", &agentv1.CreateAgentRequest{Name: "x"}, codes.NotFound, "INSTALLATION_NOT_FOUND"},
		{"another workspace's installation", foreignInst, &agentv1.CreateAgentRequest{Name: "x"}, codes.NotFound, "INSTALLATION_NOT_FOUND"},
		{"empty name", inst, &agentv1.CreateAgentRequest{Name: "   "}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"name with control char", inst, &agentv1.CreateAgentRequest{Name: "a\x07b"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"unknown role", inst, &agentv1.CreateAgentRequest{Name: "x", Role: "superuser"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"owner is no agent role", inst, &agentv1.CreateAgentRequest{Name: "x", Role: auth.RoleOwner}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"role in upper case", inst, &agentv1.CreateAgentRequest{Name: "x", Role: "Admin"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"bad team id", inst, &agentv1.CreateAgentRequest{Name: "x", TeamIds: []string{"team one"}}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"duplicate name", inst, &agentv1.CreateAgentRequest{Name: " triage "}, codes.AlreadyExists, "AGENT_NAME_TAKEN"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.req.WorkspaceId, c.req.InstallationId = ws, c.inst
			_, err := h.client.CreateAgent(as(bg(), owner), c.req)
			wantCode(t, err, c.code, c.reason)
		})
	}
	list, err := h.client.ListAgents(as(bg(), owner), &agentv1.ListAgentsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetAgents()) != 1 {
		t.Fatalf("refused creates left records: %v %v", list, err)
	}
	if n := len(h.seen.list()); n != issued {
		t.Fatalf("refused creates issued %d credentials", n-issued)
	}
	_, err = h.client.CreateAgent(bg(), &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "anon"})
	wantCode(t, err, codes.Unauthenticated, "")
}

func TestPermissions(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, auth.RoleMember)
	_, admin := h.env.NewMember(t, ws, owner, auth.RoleAdmin)
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	inst := h.installation(t, ws, owner, "app")
	inst2 := h.installation(t, ws2, owner2, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id := created.GetAgent().GetId()

	// Members read.
	if _, err := h.client.ListAgents(as(bg(), member), &agentv1.ListAgentsRequest{WorkspaceId: ws, InstallationId: inst}); err != nil {
		t.Fatalf("member list: %v", err)
	}
	if _, err := h.client.GetAgent(as(bg(), member), &agentv1.GetAgentRequest{WorkspaceId: ws, AgentId: id}); err != nil {
		t.Fatalf("member get: %v", err)
	}
	// Admins write.
	h.createAgent(t, ws, admin, inst, &agentv1.CreateAgentRequest{Name: "admin-made", Role: auth.RoleAdmin})
	h.adminRotate(t, ws, admin, id)

	writes := func(ws, inst, id string) map[string]func(ctx context.Context) error {
		return map[string]func(ctx context.Context) error{
			"create installation": func(ctx context.Context) error {
				_, err := h.client.CreateInstallation(ctx, &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "nope"})
				return err
			},
			"create agent": func(ctx context.Context) error {
				_, err := h.client.CreateAgent(ctx, &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "nope"})
				return err
			},
			"update": func(ctx context.Context) error {
				_, err := h.client.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id, Agent: &agentv1.Agent{Name: "x"}, UpdateMask: mask("name")})
				return err
			},
			"rotate": func(ctx context.Context) error {
				_, err := h.client.RotateAgentKey(ctx, &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id})
				return err
			},
			"revoke": func(ctx context.Context) error {
				_, err := h.client.RevokeAgent(ctx, &agentv1.RevokeAgentRequest{WorkspaceId: ws, AgentId: id})
				return err
			},
		}
	}
	for name, call := range writes(ws, inst, id) {
		t.Run("member cannot "+name, func(t *testing.T) {
			wantCode(t, call(as(bg(), member)), codes.PermissionDenied, "")
		})
		t.Run("other workspace cannot "+name+" via our workspace", func(t *testing.T) {
			wantCode(t, call(as(bg(), owner2)), codes.NotFound, "")
		})
	}
	// Naming its own workspace with our ids: still 404, never a hint.
	for name, call := range writes(ws2, inst, id) {
		if name == "create installation" {
			continue
		}
		t.Run("other workspace cannot "+name+" via its own workspace", func(t *testing.T) {
			wantCode(t, call(as(bg(), owner2)), codes.NotFound, "")
		})
	}
	_, err := h.client.GetAgent(as(bg(), owner2), &agentv1.GetAgentRequest{WorkspaceId: ws2, AgentId: id})
	wantCode(t, err, codes.NotFound, "AGENT_NOT_FOUND")
	_, err = h.client.ListAgents(as(bg(), owner2), &agentv1.ListAgentsRequest{WorkspaceId: ws2, InstallationId: inst})
	wantCode(t, err, codes.NotFound, "INSTALLATION_NOT_FOUND")
	_, err = h.client.CreateAgent(as(bg(), owner), &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst2, Name: "cross"})
	wantCode(t, err, codes.NotFound, "INSTALLATION_NOT_FOUND")

	// Nothing changed.
	got := h.get(t, ws, owner, id)
	if got.GetName() != "bot" || got.GetRevoked() {
		t.Fatalf("agent changed: %v", got)
	}
}

// TestAccessTokensCannotMintWiderAgents: an automation's access token with
// agents:write may register agents only within its own grant.
func TestAccessTokensCannotMintWiderAgents(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	scopes := append(slices.Clone(auth.MemberScopes), auth.AgentsWrite)
	issued, err := h.env.Internal.IssueCredential(bg(), &credentialv1.IssueCredentialRequest{
		Subject: &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: "auto_ci", WorkspaceId: ws, Name: "ci", Scopes: scopes, TeamIds: []string{"t1"}},
		Kind:    credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
	})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := h.env.Public.Exchange(as(bg(), issued.GetCredential()), &credentialv1.ExchangeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tok := ex.GetAccessToken()
	h.seen.add(issued.GetCredential(), tok)

	m := h.createAgent(t, ws, tok, inst, &agentv1.CreateAgentRequest{Name: "ok", TeamIds: []string{"t1"}})
	for name, req := range map[string]*agentv1.CreateAgentRequest{
		"an admin agent":               {Name: "admin", Role: auth.RoleAdmin, TeamIds: []string{"t1"}},
		"an agent without team bounds": {Name: "unbounded"},
		"an agent of another team":     {Name: "other", TeamIds: []string{"t2"}},
	} {
		t.Run(name, func(t *testing.T) {
			req.WorkspaceId, req.InstallationId = ws, inst
			_, err := h.client.CreateAgent(as(bg(), tok), req)
			wantCode(t, err, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
		})
	}
	_, err = h.client.UpdateAgent(as(bg(), tok), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: m.GetAgent().GetId(),
		Agent: &agentv1.Agent{Role: auth.RoleAdmin}, UpdateMask: mask("role")})
	wantCode(t, err, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
}

// TestTeamBoundAgentsHeldToTheirTeams: an agent bounded to teams is held to
// them like a team-bound access token — it registers, changes, rotates and
// revokes only agents bounded to a subset of its teams — though it acts by
// role (an admin agent may register an admin agent).
func TestTeamBoundAgentsHeldToTheirTeams(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	bound := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bound", Role: auth.RoleAdmin, TeamIds: []string{"t1", "t2"}})
	free := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "free", Role: auth.RoleAdmin})
	unbounded := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "unbounded"}).GetAgent().GetId()
	other := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "other", TeamIds: []string{"t3"}}).GetAgent().GetId()
	key := bound.GetApiKey()

	for name, req := range map[string]*agentv1.CreateAgentRequest{
		"without team bounds":     {Name: "x1"},
		"of another team":         {Name: "x2", TeamIds: []string{"t3"}},
		"of its team and another": {Name: "x3", TeamIds: []string{"t1", "t3"}},
	} {
		t.Run("create "+name, func(t *testing.T) {
			req.WorkspaceId, req.InstallationId = ws, inst
			_, err := h.client.CreateAgent(as(bg(), key), req)
			wantCode(t, err, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
		})
	}
	mine := h.createAgent(t, ws, key, inst, &agentv1.CreateAgentRequest{Name: "mine", Role: auth.RoleAdmin, TeamIds: []string{"t2"}}).GetAgent().GetId()
	update := func(id string, a *agentv1.Agent, paths ...string) error {
		_, err := h.client.UpdateAgent(as(bg(), key), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id, Agent: a, UpdateMask: mask(paths...)})
		return err
	}
	wantCode(t, update(mine, &agentv1.Agent{}, "teamIds"), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	wantCode(t, update(mine, &agentv1.Agent{TeamIds: []string{"t3"}}, "teamIds"), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	wantCode(t, update(unbounded, &agentv1.Agent{Name: "taken"}, "name"), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	wantCode(t, update(other, &agentv1.Agent{TeamIds: []string{"t1"}}, "teamIds"), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	// Nor may it lift its own boundary.
	wantCode(t, update(bound.GetAgent().GetId(), &agentv1.Agent{}, "teamIds"), codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	_, err := h.client.RotateAgentKey(as(bg(), key), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: unbounded})
	wantCode(t, err, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	_, err = h.client.RevokeAgent(as(bg(), key), &agentv1.RevokeAgentRequest{WorkspaceId: ws, AgentId: other})
	wantCode(t, err, codes.PermissionDenied, "GRANT_EXCEEDS_CALLER")
	if h.get(t, ws, owner, other).GetRevoked() || h.get(t, ws, owner, unbounded).GetName() != "unbounded" {
		t.Fatal("an agent outside the caller's teams was changed")
	}
	// Inside its teams it works as before.
	if err := update(mine, &agentv1.Agent{TeamIds: []string{"t1", "t2"}}, "teamIds"); err != nil {
		t.Fatal(err)
	}
	h.adminRotate(t, ws, key, mine)
	// An agent without team bounds is not held to any.
	h.createAgent(t, ws, free.GetApiKey(), inst, &agentv1.CreateAgentRequest{Name: "anywhere", Role: auth.RoleAdmin})
	if _, err := h.client.UpdateAgent(as(bg(), free.GetApiKey()), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: other,
		Agent: &agentv1.Agent{Name: "renamed"}, UpdateMask: mask("name")}); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateAgent(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot", TeamIds: []string{"t1"}})
	h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "other"})
	id, key := created.GetAgent().GetId(), created.GetApiKey()
	update := func(a *agentv1.Agent, paths ...string) (*agentv1.Agent, error) {
		resp, err := h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id, Agent: a, UpdateMask: mask(paths...)})
		return resp.GetAgent(), err
	}

	// A member agent cannot write; made admin, it can, on its next request.
	_, err := h.client.CreateInstallation(as(bg(), key), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "by bot"})
	wantCode(t, err, codes.PermissionDenied, "")
	a, err := update(&agentv1.Agent{Role: auth.RoleAdmin, Name: "ignored"}, "role")
	if err != nil || a.GetRole() != auth.RoleAdmin || a.GetName() != "bot" || !slices.Equal(a.GetTeamIds(), []string{"t1"}) {
		t.Fatalf("update role = %v %v", a, err)
	}
	if _, err := h.client.CreateInstallation(as(bg(), key), &agentv1.CreateInstallationRequest{WorkspaceId: ws, Name: "by bot"}); err != nil {
		t.Fatalf("admin agent after update: %v", err)
	}
	// Name and team scope, in JSON or proto spelling; the binding stays.
	a, err = update(&agentv1.Agent{Name: " Renamed ", TeamIds: []string{"t2", "t3"}, InstallationId: "ignored"}, "name", "teamIds")
	if err != nil || a.GetName() != "Renamed" || !slices.Equal(a.GetTeamIds(), []string{"t2", "t3"}) || a.GetInstallationId() != inst || a.GetId() != id {
		t.Fatalf("update name/teams = %v %v", a, err)
	}
	who, err := h.env.Public.WhoAmI(as(bg(), key), &credentialv1.WhoAmIRequest{})
	if err != nil || who.GetName() != "Renamed" || !slices.Equal(who.GetTeamIds(), []string{"t2", "t3"}) || !slices.Equal(who.GetScopes(), auth.AdminScopes) {
		t.Fatalf("the key does not carry the update: %v %v", who, err)
	}
	if a, err = update(&agentv1.Agent{}, "team_ids"); err != nil || len(a.GetTeamIds()) != 0 {
		t.Fatalf("clear teams = %v %v", a, err)
	}
	// The old name is free, the other agent's is not.
	h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})

	for _, c := range []struct {
		name   string
		a      *agentv1.Agent
		paths  []string
		code   codes.Code
		reason string
	}{
		{"unknown mask path", &agentv1.Agent{}, []string{"installation_id"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"revoked is not settable", &agentv1.Agent{Revoked: true}, []string{"revoked"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"empty mask", &agentv1.Agent{Name: "x"}, nil, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"empty name", &agentv1.Agent{Name: " "}, []string{"name"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"unknown role", &agentv1.Agent{Role: "root"}, []string{"role"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"role named but empty", &agentv1.Agent{}, []string{"role"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"bad team", &agentv1.Agent{TeamIds: []string{"a b"}}, []string{"teamIds"}, codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"duplicate name", &agentv1.Agent{Name: "OTHER"}, []string{"name"}, codes.AlreadyExists, "AGENT_NAME_TAKEN"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := update(c.a, c.paths...)
			wantCode(t, err, c.code, c.reason)
		})
	}
	_, err = h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id, UpdateMask: mask("name")})
	wantCode(t, err, codes.InvalidArgument, "")
	_, err = h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: "agt_00000000000000000000000000", Agent: &agentv1.Agent{Name: "x"}, UpdateMask: mask("name")})
	wantCode(t, err, codes.NotFound, "AGENT_NOT_FOUND")
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.update:success", "agent.update:success", "agent.update:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestSuspensionIsImmediateEverywhere: when UpdateAgent returns, the key is
// refused by every service, this one included (its principal cache too).
func TestSuspensionIsImmediateEverywhere(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id, key, secret := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	setSuspended := func(v bool) *agentv1.Agent {
		t.Helper()
		resp, err := h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id,
			Agent: &agentv1.Agent{Suspended: v, Name: "ignored"}, UpdateMask: mask("suspended")})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAgent()
	}

	for range 3 { // warm the principal cache
		if _, err := h.self(key); err != nil {
			t.Fatal(err)
		}
	}
	if a := setSuspended(true); !a.GetSuspended() || a.GetName() != "bot" {
		t.Fatalf("suspend: %v", a)
	}
	_, err := h.self(key)
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.client.ListAgents(as(bg(), key), &agentv1.ListAgentsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.env.Public.WhoAmI(as(bg(), key), &credentialv1.WhoAmIRequest{})
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.selfRotate(fromIP(bg(), "198.51.100.1"), key, secret)
	wantCode(t, err, codes.PermissionDenied, "")

	if a := setSuspended(false); a.GetSuspended() {
		t.Fatalf("resume: %v", a)
	}
	if _, err := h.self(key); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.1"), key, secret)
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.suspend:success", "agent.resume:success", "agent.rotate_key_self:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestRevokeKeepsTheRecordAndKillsTheCredentials(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id, key, secret := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	if _, err := h.self(key); err != nil {
		t.Fatal(err)
	}

	resp, err := h.client.RevokeAgent(as(bg(), owner), &agentv1.RevokeAgentRequest{WorkspaceId: ws, AgentId: id})
	if err != nil || !resp.GetAgent().GetRevoked() {
		t.Fatalf("revoke = %v %v", resp, err)
	}
	// 403 everywhere: the agent exists and is told it was revoked.
	_, err = h.self(key)
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.env.Public.WhoAmI(as(bg(), key), &credentialv1.WhoAmIRequest{})
	wantCode(t, err, codes.PermissionDenied, "")
	_, err = h.selfRotate(fromIP(bg(), "198.51.100.2"), key, secret)
	wantCode(t, err, codes.PermissionDenied, "")

	// The record stays, marked; it can no longer change.
	if got := h.get(t, ws, owner, id); !got.GetRevoked() || got.GetName() != "bot" {
		t.Fatalf("record = %v", got)
	}
	_, err = h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id, Agent: &agentv1.Agent{Suspended: false}, UpdateMask: mask("suspended")})
	wantCode(t, err, codes.FailedPrecondition, "AGENT_REVOKED")
	_, err = h.client.RotateAgentKey(as(bg(), owner), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: id})
	wantCode(t, err, codes.FailedPrecondition, "AGENT_REVOKED")
	// Revoking again is harmless.
	if resp, err := h.client.RevokeAgent(as(bg(), owner), &agentv1.RevokeAgentRequest{WorkspaceId: ws, AgentId: id}); err != nil || !resp.GetAgent().GetRevoked() {
		t.Fatalf("second revoke = %v %v", resp, err)
	}
	// The name is free for a successor.
	h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	// (The refused self-rotation is not in the trail: the credential
	// service refuses a revoked agent's key without saying whose it is.)
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.revoke:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestSelfRotation(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id, oldKey, oldSecret := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	ctx := fromIP(bg(), "198.51.100.10")
	if _, err := h.self(oldKey); err != nil { // cached from here
		t.Fatal(err)
	}
	h.clock.Advance(time.Second) // so that key_rotated_at moves visibly

	r := h.mustSelfRotate(t, ctx, oldKey, oldSecret)
	if r.GetMessage() != rotationMessage || r.GetAgentId() != id || r.GetAgentName() != "bot" {
		t.Fatalf("response = message %q agent %q name %q", r.GetMessage(), r.GetAgentId(), r.GetAgentName())
	}
	if !strings.HasPrefix(r.GetApiKey(), "blg_agk_") || !strings.HasPrefix(r.GetRotationSecret(), "blg_rot_") || r.GetApiKey() == oldKey || r.GetRotationSecret() == oldSecret {
		t.Fatal("rotation did not return a new API key and rotation secret")
	}
	// The old key is dead at once, here and at the credential service.
	_, err := h.self(oldKey)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: oldKey})
	wantCode(t, err, codes.Unauthenticated, "")
	// The new key works.
	self, err := h.self(r.GetApiKey())
	if err != nil || self.GetId() != id {
		t.Fatalf("new key: %v %v", self, err)
	}
	if !self.GetKeyRotatedAt().AsTime().After(created.GetAgent().GetKeyRotatedAt().AsTime()) {
		t.Fatalf("key_rotated_at %v not after %v", self.GetKeyRotatedAt().AsTime(), created.GetAgent().GetKeyRotatedAt().AsTime())
	}
	// The old rotation secret is dead too: with the new key it is refused.
	_, err = h.selfRotate(ctx, r.GetApiKey(), oldSecret)
	wantCode(t, err, codes.Unauthenticated, "INVALID_ROTATION_SECRET")
	_, err = h.selfRotate(ctx, oldKey, oldSecret)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.env.Internal.VerifyCredential(bg(), &credentialv1.VerifyCredentialRequest{WorkspaceId: ws, SubjectId: id,
		Kind: credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET, Credential: oldSecret})
	wantCode(t, err, codes.Unauthenticated, "")
	// The new rotation secret works (from another address: this one has
	// used its three attempts).
	r2 := h.mustSelfRotate(t, fromIP(bg(), "198.51.100.11"), r.GetApiKey(), r.GetRotationSecret())
	if _, err := h.self(r2.GetApiKey()); err != nil {
		t.Fatal(err)
	}
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.rotate_key_self:success",
		"agent.rotate_key_self:failure", "agent.rotate_key_self:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

func TestSelfRotationErrors(t *testing.T) {
	h := newHarness(t, func(c *agent.Config) { c.SelfRotationsPerIP = 1000 })
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	other := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "other"})
	key, secret := created.GetApiKey(), created.GetRotationSecret()
	call := func(ctx context.Context, secret string) error {
		_, err := h.client.RotateSelfKey(ctx, &agentv1.RotateSelfKeyRequest{RotationSecret: secret})
		return err
	}
	mangled := secret[:len(secret)-1] + "A"
	if secret[len(secret)-1] == 'A' {
		mangled = secret[:len(secret)-1] + "B"
	}
	cases := []struct {
		name   string
		ctx    context.Context
		secret string
		code   codes.Code
		reason string
	}{
		{"no rotation secret", as(bg(), key), "", codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"no rotation secret, no key either", bg(), " ", codes.InvalidArgument, "INVALID_ARGUMENT"},
		{"no API key", bg(), secret, codes.Unauthenticated, ""},
		{"a person's token", as(bg(), owner), secret, codes.Unauthenticated, "INVALID_API_KEY"},
		{"the rotation secret as bearer", as(bg(), secret), secret, codes.Unauthenticated, ""},
		{"a mistyped API key", as(bg(), key[:len(key)-2]), secret, codes.Unauthenticated, ""},
		{"an unknown API key", as(bg(), "blg_agk_"+strings.Repeat("A", 40)), secret, codes.Unauthenticated, ""},
		{"the API key in the body", as(bg(), key), key, codes.Unauthenticated, "INVALID_ROTATION_SECRET"},
		{"a mistyped rotation secret", as(bg(), key), mangled, codes.Unauthenticated, "INVALID_ROTATION_SECRET"},
		{"another agent's rotation secret", as(bg(), key), other.GetRotationSecret(), codes.Unauthenticated, "INVALID_ROTATION_SECRET"},
		{"a bad Idempotency-Key", withIdem(as(bg(), key), "has space"), secret, codes.InvalidArgument, "INVALID_ARGUMENT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantCode(t, call(fromIP(c.ctx, "198.51.100.20"), c.secret), c.code, c.reason)
		})
	}
	// None of that rotated anything: the pair still works.
	if h.rotated.Load() != 0 {
		t.Fatalf("%d rotations happened", h.rotated.Load())
	}
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.20"), key, secret)
	if got := h.auditActions(t, ws, owner, created.GetAgent().GetId()); !slices.Equal(got, []string{"agent.create:success",
		"agent.rotate_key_self:failure", "agent.rotate_key_self:success"}) {
		t.Fatalf("audit = %v (only the wrong secret of an authenticated agent is attributable)", got)
	}
}

func TestSelfRotationRateLimitPerIP(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	other := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "other"})
	id := created.GetAgent().GetId()
	key, secret := created.GetApiKey(), created.GetRotationSecret()
	ipA := fromIP(bg(), "203.0.113.7")

	// Made-up keys from the address spend none of its budget: only attempts
	// with a valid API key count towards the contract's 3 per 15 minutes.
	for range 10 {
		_, err := h.selfRotate(ipA, credfmt.New(credfmt.AgentKey), secret)
		wantCode(t, err, codes.Unauthenticated, "INVALID_API_KEY")
	}
	for range 3 {
		r := h.mustSelfRotate(t, ipA, key, secret)
		key, secret = r.GetApiKey(), r.GetRotationSecret()
		h.clock.Advance(time.Minute)
	}
	// The fourth within 15 minutes from the same address: 429, whoever asks.
	before := h.rotated.Load()
	for _, pair := range [][2]string{{key, secret}, {other.GetApiKey(), other.GetRotationSecret()}} {
		_, err := h.selfRotate(ipA, pair[0], pair[1])
		wantCode(t, err, codes.ResourceExhausted, "ROTATION_RATE_LIMITED")
		wait, ok := retryDelay(err)
		if !ok || wait < 11*time.Minute+55*time.Second || wait > 12*time.Minute+time.Second {
			t.Fatalf("retry delay = %v %v, want about 12m (until the first attempt is 15m old)", wait, ok)
		}
	}
	if h.rotated.Load() != before {
		t.Fatal("a refused attempt rotated")
	}
	// The pair still works: a refusal does not burn it.
	if _, err := h.self(key); err != nil {
		t.Fatal(err)
	}
	// Another address is not limited by this one (an IPv6 client by its /64).
	r := h.mustSelfRotate(t, fromIP(bg(), "2001:db8:1:2::1"), key, secret)
	key, secret = r.GetApiKey(), r.GetRotationSecret()
	for i := range 2 {
		r := h.mustSelfRotate(t, fromIP(bg(), fmt.Sprintf("2001:db8:1:2::%x", 100+i)), key, secret)
		key, secret = r.GetApiKey(), r.GetRotationSecret()
	}
	_, err := h.selfRotate(fromIP(bg(), "2001:db8:1:2:ffff::9"), key, secret)
	wantCode(t, err, codes.ResourceExhausted, "ROTATION_RATE_LIMITED")

	// An owner or admin rotates regardless of any address's limit.
	for range 4 {
		a := h.adminRotate(t, ws, owner, id)
		if a.GetMessage() != rotationMessage || a.GetAgentId() != id || a.GetAgentName() != "bot" {
			t.Fatalf("admin rotation = %q %q %q", a.GetMessage(), a.GetAgentId(), a.GetAgentName())
		}
		key, secret = a.GetApiKey(), a.GetRotationSecret()
	}
	// Once the window has passed, the address may rotate again.
	h.clock.Advance(12*time.Minute + time.Second)
	h.mustSelfRotate(t, ipA, key, secret)
	// The refusals of a known agent are in its trail, with the address.
	want := []string{"agent.create:success"}
	for range 2 {
		want = append(want, "agent.rotate_key_self:success", "agent.rotate_key_self:success", "agent.rotate_key_self:success", "agent.rotate_key_self:failure")
	}
	want = append(want, "agent.rotate_key:success", "agent.rotate_key:success", "agent.rotate_key:success", "agent.rotate_key:success", "agent.rotate_key_self:success")
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, want) {
		t.Fatalf("audit = %v\nwant %v", got, want)
	}
	for i, ev := range h.auditFailures(t, ws, owner, id) {
		ip := []string{"203.0.113.7", "2001:db8:1:2:ffff::9"}[i]
		if ev.GetClientIp() != ip || !strings.Contains(ev.GetDetail(), "ROTATION_RATE_LIMITED") || ev.GetActorId() != id {
			t.Fatalf("refusal %d: client IP %q detail %q actor %q; want %s, the reason, the agent", i, ev.GetClientIp(), ev.GetDetail(), ev.GetActorId(), ip)
		}
	}
	if got := h.auditActions(t, ws, owner, other.GetAgent().GetId()); !slices.Equal(got, []string{"agent.create:success", "agent.rotate_key_self:failure"}) {
		t.Fatalf("audit of the other agent = %v", got)
	}
}

// TestSelfRotationFailuresPerIP: attempts whose API key does not
// authenticate have a budget of their own per address (30 per 15 minutes);
// beyond it the address is refused before any key is looked at. Attempts
// with a valid key, suspended keys and replays do not spend it.
func TestSelfRotationFailuresPerIP(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	sleepy := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "sleepy"})
	key, secret := created.GetApiKey(), created.GetRotationSecret()
	flooded := fromIP(bg(), "198.51.100.50")
	madeUp := func(ctx context.Context) error {
		_, err := h.selfRotate(ctx, credfmt.New(credfmt.AgentKey), credfmt.New(credfmt.RotationSecret))
		return err
	}

	// Valid keys in between give back what they took: 29 failures, two
	// rotations, and the 30th failure is still answered 401.
	for range 29 {
		wantCode(t, madeUp(flooded), codes.Unauthenticated, "INVALID_API_KEY")
	}
	for range 2 {
		r := h.mustSelfRotate(t, flooded, key, secret)
		key, secret = r.GetApiKey(), r.GetRotationSecret()
	}
	wantCode(t, madeUp(flooded), codes.Unauthenticated, "INVALID_API_KEY")
	// The 31st failure, and then anything from the address: 429.
	wantCode(t, madeUp(flooded), codes.ResourceExhausted, "ROTATION_FAILURES_RATE_LIMITED")
	_, err := h.selfRotate(flooded, key, secret)
	wantCode(t, err, codes.ResourceExhausted, "ROTATION_FAILURES_RATE_LIMITED")
	if wait, ok := retryDelay(err); !ok || wait < 14*time.Minute || wait > 15*time.Minute+time.Second {
		t.Fatalf("retry delay = %v %v, want about 15m", wait, ok)
	}
	// Other addresses are not limited by it.
	r := h.mustSelfRotate(t, fromIP(bg(), "198.51.100.51"), key, secret)
	key, secret = r.GetApiKey(), r.GetRotationSecret()
	// At most 30 in any 15 minutes: one more once the first is 15 minutes
	// old, as the Retry-After said.
	wait, _ := retryDelay(madeUp(flooded))
	h.clock.Advance(wait)
	wantCode(t, madeUp(flooded), codes.Unauthenticated, "INVALID_API_KEY")
	wantCode(t, madeUp(flooded), codes.ResourceExhausted, "ROTATION_FAILURES_RATE_LIMITED")

	// A suspended agent's key is genuine: its 403s do not spend the budget.
	if _, err := h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: sleepy.GetAgent().GetId(),
		Agent: &agentv1.Agent{Suspended: true}, UpdateMask: mask("suspended")}); err != nil {
		t.Fatal(err)
	}
	for range 40 {
		_, err := h.selfRotate(fromIP(bg(), "198.51.100.52"), sleepy.GetApiKey(), sleepy.GetRotationSecret())
		wantCode(t, err, codes.PermissionDenied, "")
	}
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.52"), key, secret)
}

// TestLockoutPerAddressAndKey: wrong rotation secrets lock self-rotation
// with that API key from that address only. A holder of the API key alone
// cannot lock the holder of both credentials out from anywhere else, from
// however many addresses it guesses; the locked address is refused even the
// right pair, so that a lock answers no guess.
func TestLockoutPerAddressAndKey(t *testing.T) {
	// Budgets wide enough that the lockout, not the per-address budget, is
	// what an address meets first.
	h := newHarness(t, func(c *agent.Config) { c.SelfRotationsPerIP = 1000 })
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	decoy := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "decoy"})
	id, key, secret := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	guesser := fromIP(bg(), "192.0.2.1")
	guess := func(ctx context.Context, key string) error {
		_, err := h.selfRotate(ctx, key, credfmt.New(credfmt.RotationSecret))
		return err
	}

	// Five wrong secrets from one address lock the key there...
	for range 5 {
		wantCode(t, guess(guesser, key), codes.Unauthenticated, "INVALID_ROTATION_SECRET")
	}
	_, err := h.selfRotate(guesser, key, secret)
	wantCode(t, err, codes.ResourceExhausted, "ROTATION_LOCKED_OUT")
	if wait, ok := retryDelay(err); !ok || wait <= 14*time.Minute || wait > 15*time.Minute+time.Second {
		t.Fatalf("retry delay = %v %v", wait, ok)
	}
	// ... and nowhere else: other addresses' guesses are still checked, and
	// other agents from the locked address are not locked.
	wantCode(t, guess(fromIP(bg(), "192.0.2.2"), key), codes.Unauthenticated, "INVALID_ROTATION_SECRET")
	d := h.mustSelfRotate(t, guesser, decoy.GetApiKey(), decoy.GetRotationSecret())
	// The lock runs out.
	h.clock.Advance(15*time.Minute + time.Second)
	r := h.mustSelfRotate(t, guesser, key, secret)
	key, secret = r.GetApiKey(), r.GetRotationSecret()

	// A distributed guesser with the new key: four wrong secrets from each
	// of ten addresses, forty in all, lock nothing; the holder of both
	// rotates from its own address.
	for i := range 10 {
		for range 4 {
			wantCode(t, guess(fromIP(bg(), fmt.Sprintf("192.0.2.%d", 10+i)), key), codes.Unauthenticated, "INVALID_ROTATION_SECRET")
		}
	}
	home := fromIP(bg(), "198.51.100.9")
	r = h.mustSelfRotate(t, home, key, secret)
	key, secret = r.GetApiKey(), r.GetRotationSecret()

	// Even at the holder's own address, a lock holds only the locked key: a
	// new pair (from a self- or admin rotation) is locked nowhere.
	for range 5 {
		wantCode(t, guess(home, key), codes.Unauthenticated, "INVALID_ROTATION_SECRET")
	}
	_, err = h.selfRotate(home, key, secret)
	wantCode(t, err, codes.ResourceExhausted, "ROTATION_LOCKED_OUT")
	r = h.mustSelfRotate(t, fromIP(bg(), "198.51.100.10"), key, secret)
	h.mustSelfRotate(t, home, r.GetApiKey(), r.GetRotationSecret())
	for range 5 {
		wantCode(t, guess(guesser, d.GetApiKey()), codes.Unauthenticated, "INVALID_ROTATION_SECRET")
	}
	a := h.adminRotate(t, ws, owner, decoy.GetAgent().GetId())
	h.mustSelfRotate(t, guesser, a.GetApiKey(), a.GetRotationSecret())

	// Every refusal is in the trail: 5 + 1 + 40 + 5 wrong secrets and the
	// two lockouts, each with the address it came from.
	var wrong, locked int
	for _, ev := range h.auditFailures(t, ws, owner, id) {
		switch {
		case strings.Contains(ev.GetDetail(), "INVALID_ROTATION_SECRET"):
			wrong++
		case strings.Contains(ev.GetDetail(), "ROTATION_LOCKED_OUT"):
			locked++
			if ip := ev.GetClientIp(); ip != "192.0.2.1" && ip != "198.51.100.9" {
				t.Fatalf("lockout recorded with client IP %q", ip)
			}
		default:
			t.Fatalf("unexpected failure %q", ev.GetDetail())
		}
		if ev.GetClientIp() == "" || ev.GetActorId() != id {
			t.Fatalf("failure without client IP or actor: %v", ev)
		}
	}
	if wrong != 51 || locked != 2 {
		t.Fatalf("trail: %d wrong secrets and %d lockouts, want 51 and 2", wrong, locked)
	}
}

// TestRefusalsCoalesced: a 429 spends nothing, so a holder of the API key
// could ask for one as often as it likes; the trail gains one record per
// agent, address, reason and minute, and a summary with the count.
func TestRefusalsCoalesced(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id, key, secret := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	ip := fromIP(bg(), "203.0.113.99")
	for range 3 {
		r := h.mustSelfRotate(t, ip, key, secret)
		key, secret = r.GetApiKey(), r.GetRotationSecret()
	}
	for range 50 {
		_, err := h.selfRotate(ip, key, secret)
		wantCode(t, err, codes.ResourceExhausted, "ROTATION_RATE_LIMITED")
	}
	if got := len(h.auditFailures(t, ws, owner, id)); got != 1 {
		t.Fatalf("50 refusals within a minute: %d records, want 1", got)
	}
	// Within the window nothing more is written; once it has ended, one
	// summary with the count.
	h.svc.FlushRefusals()
	if got := len(h.auditFailures(t, ws, owner, id)); got != 1 {
		t.Fatalf("flushed before the window ended: %d records", got)
	}
	h.clock.Advance(agent.RefusalWindow)
	h.svc.FlushRefusals()
	evs := h.auditFailures(t, ws, owner, id)
	if len(evs) != 2 || !strings.Contains(evs[1].GetDetail(), "49 refusal(s)") || !strings.Contains(evs[1].GetDetail(), "ROTATION_RATE_LIMITED") ||
		evs[1].GetClientIp() != "203.0.113.99" || evs[1].GetActorId() != id {
		t.Fatalf("after the window: %v", evs)
	}
	// A quiet window ends without a record; the next refusal is recorded
	// at once again.
	h.clock.Advance(agent.RefusalWindow)
	h.svc.FlushRefusals()
	_, err := h.selfRotate(ip, key, secret)
	wantCode(t, err, codes.ResourceExhausted, "ROTATION_RATE_LIMITED")
	if got := len(h.auditFailures(t, ws, owner, id)); got != 3 {
		t.Fatalf("%d records, want 3", got)
	}
	for _, ev := range h.auditFailures(t, ws, owner, id) {
		if strings.Contains(ev.GetDetail(), "blg_") {
			t.Fatalf("a credential in the trail: %q", ev.GetDetail())
		}
	}
}

// TestConcurrentSelfRotationsOneWins: of concurrent self-rotations with the
// same pair, exactly one succeeds; the others get 401 and do not count
// towards the lockout (their pair was good a moment ago).
func TestConcurrentSelfRotationsOneWins(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	key, secret := created.GetApiKey(), created.GetRotationSecret()

	const n = 12
	results := make([]*agentv1.RotateSelfKeyResponse, n)
	errsOut := make([]error, n)
	start := make(chan struct{})
	done := make(chan struct{}, n)
	for i := range n {
		go func() {
			<-start
			results[i], errsOut[i] = h.selfRotate(fromIP(bg(), fmt.Sprintf("198.51.100.%d", 100+i)), key, secret)
			done <- struct{}{}
		}()
	}
	close(start)
	for range n {
		<-done
	}
	var winner *agentv1.RotateSelfKeyResponse
	for i := range n {
		if errsOut[i] == nil {
			if winner != nil {
				t.Fatal("two concurrent self-rotations with one pair succeeded")
			}
			winner = results[i]
			continue
		}
		wantCode(t, errsOut[i], codes.Unauthenticated, "")
	}
	if winner == nil {
		t.Fatal("no self-rotation succeeded")
	}
	if h.rotated.Load() != 1 {
		t.Fatalf("%d rotations at the credential service, want 1", h.rotated.Load())
	}
	if _, err := h.self(winner.GetApiKey()); err != nil {
		t.Fatal(err)
	}
	// The losers did not lock the agent out.
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.200"), winner.GetApiKey(), winner.GetRotationSecret())
}

// TestIdempotentRetry: a retry with the same Idempotency-Key and the same
// presented pair gets the same new pair back, without a second rotation and
// without counting against the address's limit.
func TestIdempotentRetry(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id, key0, secret0 := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	ip := fromIP(bg(), "198.51.100.50")

	first := h.mustSelfRotate(t, withIdem(ip, "retry-1"), key0, secret0)
	if h.rotated.Load() != 1 {
		t.Fatalf("rotations = %d", h.rotated.Load())
	}
	// The response was "lost": the client retries, more than the address's
	// limit would allow, and gets the same pair each time.
	for range 5 {
		again := h.mustSelfRotate(t, withIdem(ip, "retry-1"), key0, secret0)
		if again.GetApiKey() != first.GetApiKey() || again.GetRotationSecret() != first.GetRotationSecret() ||
			again.GetAgentId() != id || again.GetMessage() != rotationMessage {
			t.Fatal("a retry got a different result")
		}
	}
	if h.rotated.Load() != 1 {
		t.Fatalf("retries rotated again: %d rotations", h.rotated.Load())
	}
	if _, err := h.self(first.GetApiKey()); err != nil {
		t.Fatal(err)
	}
	// The old pair under another Idempotency-Key, or none, is a new request
	// (from another address here: attempts count, even failed ones).
	elsewhere := fromIP(bg(), "198.51.100.52")
	_, err := h.selfRotate(withIdem(elsewhere, "retry-2"), key0, secret0)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.selfRotate(elsewhere, key0, secret0)
	wantCode(t, err, codes.Unauthenticated, "")
	// A different key with the new pair rotates (the address has used one
	// of its three attempts: the retries were free).
	second := h.mustSelfRotate(t, withIdem(ip, "retry-2"), first.GetApiKey(), first.GetRotationSecret())
	if second.GetApiKey() == first.GetApiKey() || h.rotated.Load() != 2 {
		t.Fatal("a new Idempotency-Key did not rotate")
	}
	// Reusing the first key with the new pair rotates too: the pair is part
	// of what is remembered.
	third := h.mustSelfRotate(t, withIdem(ip, "retry-1"), second.GetApiKey(), second.GetRotationSecret())
	if third.GetApiKey() == second.GetApiKey() || h.rotated.Load() != 3 {
		t.Fatal("the first key with another pair did not rotate")
	}
	// The first rotation's pair is no longer live: its replay ends.
	_, err = h.selfRotate(withIdem(elsewhere, "retry-1"), key0, secret0)
	wantCode(t, err, codes.Unauthenticated, "")

	// Replays expire after the window.
	r := h.mustSelfRotate(t, withIdem(fromIP(bg(), "198.51.100.51"), "late"), third.GetApiKey(), third.GetRotationSecret())
	h.mustSelfRotate(t, withIdem(fromIP(bg(), "198.51.100.51"), "late"), third.GetApiKey(), third.GetRotationSecret())
	h.clock.Advance(10*time.Minute + time.Second)
	_, err = h.selfRotate(withIdem(fromIP(bg(), "198.51.100.51"), "late"), third.GetApiKey(), third.GetRotationSecret())
	wantCode(t, err, codes.Unauthenticated, "")
	if _, err := h.self(r.GetApiKey()); err != nil {
		t.Fatal(err)
	}

	got := h.auditActions(t, ws, owner, id)
	replays := 0
	for _, a := range got {
		if a == "agent.rotate_key_self_replay:success" {
			replays++
		}
	}
	if replays != 6 {
		t.Fatalf("%d replays in the trail, want 6: %v", replays, got)
	}
}

// TestIdempotentConcurrentRetries: retries that arrive while the first
// request is still in flight wait for it and get its result.
func TestIdempotentConcurrentRetries(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	key, secret := created.GetApiKey(), created.GetRotationSecret()

	const n = 8
	results := make([]*agentv1.RotateSelfKeyResponse, n)
	errsOut := make([]error, n)
	start := make(chan struct{})
	done := make(chan struct{}, n)
	for i := range n {
		go func() {
			<-start
			results[i], errsOut[i] = h.selfRotate(withIdem(fromIP(bg(), "198.51.100.60"), "same"), key, secret)
			done <- struct{}{}
		}()
	}
	close(start)
	for range n {
		<-done
	}
	for i := range n {
		if errsOut[i] != nil {
			t.Fatalf("request %d: %v", i, errsOut[i])
		}
		if results[i].GetApiKey() != results[0].GetApiKey() {
			t.Fatal("concurrent retries got different pairs")
		}
	}
	if h.rotated.Load() != 1 {
		t.Fatalf("%d rotations, want 1", h.rotated.Load())
	}
}

func TestAdminRotation(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot", Role: auth.RoleAdmin})
	id, oldKey, oldSecret := created.GetAgent().GetId(), created.GetApiKey(), created.GetRotationSecret()
	if _, err := h.self(oldKey); err != nil {
		t.Fatal(err)
	}

	r := h.adminRotate(t, ws, owner, id)
	if r.GetMessage() != rotationMessage || r.GetAgentId() != id || r.GetAgentName() != "bot" ||
		!strings.HasPrefix(r.GetApiKey(), "blg_agk_") || !strings.HasPrefix(r.GetRotationSecret(), "blg_rot_") {
		t.Fatalf("response = %q %q %q", r.GetMessage(), r.GetAgentId(), r.GetAgentName())
	}
	_, err := h.self(oldKey)
	wantCode(t, err, codes.Unauthenticated, "")
	_, err = h.selfRotate(fromIP(bg(), "198.51.100.70"), r.GetApiKey(), oldSecret)
	wantCode(t, err, codes.Unauthenticated, "INVALID_ROTATION_SECRET")
	if _, err := h.self(r.GetApiKey()); err != nil {
		t.Fatal(err)
	}
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.70"), r.GetApiKey(), r.GetRotationSecret())

	_, err = h.client.RotateAgentKey(as(bg(), owner2), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws2, AgentId: id})
	wantCode(t, err, codes.NotFound, "")
	_, err = h.client.RotateAgentKey(as(bg(), owner), &agentv1.RotateAgentKeyRequest{WorkspaceId: ws, AgentId: "agt_00000000000000000000000000"})
	wantCode(t, err, codes.NotFound, "AGENT_NOT_FOUND")
	if got := h.auditActions(t, ws, owner, id); !slices.Equal(got, []string{"agent.create:success", "agent.rotate_key:success",
		"agent.rotate_key_self:failure", "agent.rotate_key_self:success"}) {
		t.Fatalf("audit = %v", got)
	}
}

// TestAuditTrailAcrossServices: the credential service's one trail holds
// this service's events, with actor, client IP and request id.
func TestAuditTrailAcrossServices(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id := created.GetAgent().GetId()
	h.mustSelfRotate(t, fromIP(bg(), "198.51.100.80"), created.GetApiKey(), created.GetRotationSecret())

	trail, err := auditv1.NewAuditServiceClient(h.env.Conn).ListAuditEvents(as(bg(), owner), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, TargetId: id})
	if err != nil {
		t.Fatal(err)
	}
	var self *auditv1.AuditEvent
	var actions []string
	for _, ev := range trail.GetAuditEvents() {
		actions = append(actions, ev.GetAction())
		if ev.GetAction() == "agent.rotate_key_self" {
			self = ev
		}
	}
	if !slices.Equal(actions, []string{"agent.create", "agent.rotate_key_self"}) {
		t.Fatalf("trail = %v", actions)
	}
	if self.GetService() != "agent" || self.GetActorKind() != "agent" || self.GetActorId() != id || self.GetClientIp() != "198.51.100.80" ||
		self.GetRequestId() == "" || self.GetOutcome() != "success" || !strings.Contains(self.GetDetail(), "credentials=cred_") {
		t.Fatalf("event = %v", self)
	}
}

func TestFailedCreateRevokesTheIssuedCredentials(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
	_, err := h.client.CreateAgent(as(bg(), owner), &agentv1.CreateAgentRequest{WorkspaceId: ws, InstallationId: inst, Name: "bot"})
	wantCode(t, err, codes.Unavailable, "STORE_UNAVAILABLE")
	h.svc.DB().(store.Faults).SetFault(nil)

	issued := h.seen.list()
	if len(issued) != 2 {
		t.Fatalf("%d credentials issued, want 2", len(issued))
	}
	for _, c := range issued {
		_, err := h.env.Internal.Authenticate(bg(), &credentialv1.AuthenticateRequest{Credential: c})
		if err == nil {
			t.Fatal("a credential of an unrecorded agent is live")
		}
	}
	list, err := h.client.ListAgents(as(bg(), owner), &agentv1.ListAgentsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetAgents()) != 0 {
		t.Fatalf("list after failed create: %v %v", list, err)
	}
	h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
}

// TestSuspendFailsClosed injects a store failure between the two writes of
// a suspension and of a resumption: the key ends up no more powerful than
// the record says.
func TestSuspendFailsClosed(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	id, key := created.GetAgent().GetId(), created.GetApiKey()
	update := func(a *agentv1.Agent, paths ...string) error {
		_, err := h.client.UpdateAgent(as(bg(), owner), &agentv1.UpdateAgentRequest{WorkspaceId: ws, AgentId: id, Agent: a, UpdateMask: mask(paths...)})
		return err
	}
	fault := func(on bool) {
		if on {
			h.svc.DB().(store.Faults).SetFault(func() error { return errors.New("disk full") })
		} else {
			h.svc.DB().(store.Faults).SetFault(nil)
		}
	}

	fault(true)
	wantCode(t, update(&agentv1.Agent{Suspended: true}, "suspended"), codes.Unavailable, "STORE_UNAVAILABLE")
	fault(false)
	if h.get(t, ws, owner, id).GetSuspended() {
		t.Fatal("record says suspended although its write failed")
	}
	_, err := h.self(key)
	wantCode(t, err, codes.PermissionDenied, "")
	if err := update(&agentv1.Agent{Suspended: true}, "suspended"); err != nil {
		t.Fatal(err)
	}

	fault(true)
	wantCode(t, update(&agentv1.Agent{Suspended: false}, "suspended"), codes.Unavailable, "STORE_UNAVAILABLE")
	fault(false)
	if !h.get(t, ws, owner, id).GetSuspended() {
		t.Fatal("record says resumed although its write failed")
	}
	_, err = h.self(key)
	wantCode(t, err, codes.PermissionDenied, "")
	if err := update(&agentv1.Agent{Suspended: false}, "suspended"); err != nil {
		t.Fatal(err)
	}

	// Widening (member → admin) writes the record first: when that fails,
	// the key keeps the narrower role.
	fault(true)
	wantCode(t, update(&agentv1.Agent{Role: auth.RoleAdmin}, "role"), codes.Unavailable, "STORE_UNAVAILABLE")
	fault(false)
	who, err := h.env.Public.WhoAmI(as(bg(), key), &credentialv1.WhoAmIRequest{})
	if err != nil || who.GetRole() != auth.RoleMember {
		t.Fatalf("the key was widened although the record was not: %v %v", who, err)
	}
}

// TestInternalMethodsRequireServiceCredential: AdminService, mounted as
// backlogd mounts it, answers only a caller presenting the service
// credential (the agent service has no other internal method).
func TestInternalMethodsRequireServiceCredential(t *testing.T) {
	h := newHarness(t)
	_, owner := h.env.NewWorkspace(t, "acme")
	bare, sibling := h.dial(t), h.dial(t, grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
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
			if err == nil && (name != "agent.db" || len(b) == 0) {
				t.Fatalf("snapshot of %q, %d bytes", name, len(b))
			}
		})
	}
}

func TestNewNeedsItsParts(t *testing.T) {
	if _, err := agent.New(agent.Config{DataDir: t.TempDir()}); err == nil {
		t.Fatal("New without a credential client succeeded")
	}
	if _, err := agent.New(agent.Config{Credential: credentialv1.NewCredentialInternalServiceClient(nil)}); err == nil {
		t.Fatal("New without a data dir succeeded")
	}
	if _, err := agent.New(agent.Config{DataDir: t.TempDir(), Credential: credentialv1.NewCredentialInternalServiceClient(nil), SelfRotationsPerIP: -1}); err == nil {
		t.Fatal("New with a negative limit succeeded")
	}
	svc, err := agent.New(agent.Config{DataDir: t.TempDir(), Credential: credentialv1.NewCredentialInternalServiceClient(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	for _, m := range []string{agentv1.AgentService_CreateAgent_FullMethodName, agentv1.AgentService_GetSelf_FullMethodName,
		agentv1.AgentService_RotateAgentKey_FullMethodName, agentv1.AgentService_ListAgents_FullMethodName, auditv1.AuditService_ListAuditEvents_FullMethodName} {
		if svc.NoAuth(m) {
			t.Errorf("%s skips authentication", m)
		}
	}
	if !svc.NoAuth(agentv1.AgentService_RotateSelfKey_FullMethodName) {
		t.Error("RotateSelfKey must authenticate its (possibly already rotated) key itself")
	}
}

// retryDelay reads the RetryInfo the gateway turns into Retry-After.
func retryDelay(err error) (time.Duration, bool) { return ratelimit.RetryDelay(err) }
