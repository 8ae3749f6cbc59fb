package vault_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/auth"
)

func TestCreateGetListLifecycle(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	value := newValue("sk_live_")

	exp := h.clock.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	resp, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{
		WorkspaceId: ws, Name: "stripe.api-key_1", Kind: "webhook", Value: value,
		Description: "  Stripe live key  ", ExpiresAt: ts(exp),
	})
	if err != nil {
		t.Fatal(err)
	}
	s := resp.GetSecret()
	if s.GetName() != "stripe.api-key_1" || s.GetKind() != "webhook" || s.GetDescription() != "Stripe live key" ||
		s.GetState() != "active" || s.GetVersion() != 1 || s.GetValue() != "" || s.GetWorkspaceId() != ws ||
		!s.GetExpiresAt().AsTime().Equal(exp) || s.GetCreatedAt() == nil || s.GetLastUsedAt() != nil {
		t.Fatalf("created = %v", s)
	}
	got := h.get(t, ws, owner, "stripe.api-key_1")
	if got.GetValue() != "" || got.GetState() != "active" || got.GetVersion() != 1 {
		t.Fatalf("get = %v", got)
	}
	// Names are unique and looked up regardless of case.
	if g := h.get(t, ws, owner, "STRIPE.API-KEY_1"); g.GetName() != "stripe.api-key_1" {
		t.Fatalf("case-insensitive get = %v", g)
	}

	// Several more, to filter and paginate.
	for i := range 5 {
		kind := "integration"
		if i%2 == 0 {
			kind = "webhook"
		}
		h.create(t, ws, owner, fmt.Sprintf("k%d", i), kind, newValue("v"))
	}
	var all []string
	token := ""
	for {
		page, err := h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.GetSecrets() {
			if s.GetValue() != "" {
				t.Fatal("list returned a value")
			}
		}
		all = append(all, names(page.GetSecrets())...)
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if !equal(all, []string{"k0", "k1", "k2", "k3", "k4", "stripe.api-key_1"}) {
		t.Fatalf("paginated list = %v", all)
	}
	list, err := h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, Kind: "integration"})
	if err != nil || !equal(names(list.GetSecrets()), []string{"k1", "k3"}) {
		t.Fatalf("kind filter = %v %v", names(list.GetSecrets()), err)
	}
	_, err = h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, Kind: "other"})
	wantCode(t, err, codes.InvalidArgument, "")
	_, err = h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, ExpiringWithin: durationpb.New(-time.Hour)})
	wantCode(t, err, codes.InvalidArgument, "")

	// Expiring within a window, and expired state.
	list, err = h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, ExpiringWithin: durationpb.New(7 * 24 * time.Hour)})
	if err != nil || len(list.GetSecrets()) != 0 {
		t.Fatalf("nothing expires within 7 days: %v %v", names(list.GetSecrets()), err)
	}
	list, err = h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, ExpiringWithin: durationpb.New(31 * 24 * time.Hour)})
	if err != nil || !equal(names(list.GetSecrets()), []string{"stripe.api-key_1"}) {
		t.Fatalf("expiring within 31 days = %v %v", names(list.GetSecrets()), err)
	}
	h.clock.Advance(31 * 24 * time.Hour)
	if g := h.get(t, ws, owner, "stripe.api-key_1"); g.GetState() != "expired" {
		t.Fatalf("state after expiry = %q", g.GetState())
	}
	list, err = h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws, ExpiringWithin: durationpb.New(time.Hour)})
	if err != nil || !equal(names(list.GetSecrets()), []string{"stripe.api-key_1"}) {
		t.Fatalf("an expired secret is due: %v %v", names(list.GetSecrets()), err)
	}

	// Revoke keeps the record; delete removes it.
	rv, err := h.client.RevokeSecret(as(bg(), owner), &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "k0"})
	if err != nil || rv.GetSecret().GetState() != "revoked" || rv.GetSecret().GetRevokedAt() == nil {
		t.Fatalf("revoke = %v %v", rv, err)
	}
	if g := h.get(t, ws, owner, "k0"); g.GetState() != "revoked" {
		t.Fatalf("state after revoke = %q", g.GetState())
	}
	if _, err := h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "k1"}); err != nil {
		t.Fatal(err)
	}
	_, err = h.client.GetSecret(as(bg(), owner), &vaultv1.GetSecretRequest{WorkspaceId: ws, Name: "k1"})
	wantCode(t, err, codes.NotFound, "SECRET_NOT_FOUND")
	_, err = h.client.DeleteSecret(as(bg(), owner), &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "k1"})
	wantCode(t, err, codes.NotFound, "SECRET_NOT_FOUND")
	// The name is free again.
	h.create(t, ws, owner, "k1", "webhook", newValue("again"))

	if got := h.auditActions(t, ws, owner, "k0"); !equal(got, []string{"secret.create:success", "secret.revoke:success"}) {
		t.Fatalf("k0 audit = %v", got)
	}
	if got := h.auditActions(t, ws, owner, "k1"); !equal(got, []string{"secret.create:success", "secret.delete:success", "secret.create:success"}) {
		t.Fatalf("k1 audit = %v", got)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "taken", "webhook", "v")
	future := ts(h.clock.Now().Add(time.Hour))
	for _, tc := range []struct {
		name   string
		req    *vaultv1.CreateSecretRequest
		code   codes.Code
		reason string
	}{
		{"duplicate", &vaultv1.CreateSecretRequest{Name: "taken", Kind: "webhook", Value: "v"}, codes.AlreadyExists, "SECRET_NAME_TAKEN"},
		{"duplicate in another case", &vaultv1.CreateSecretRequest{Name: "TAKEN", Kind: "webhook", Value: "v"}, codes.AlreadyExists, "SECRET_NAME_TAKEN"},
		{"name with a leading space", &vaultv1.CreateSecretRequest{Name: " my key", Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"name with a line break", &vaultv1.CreateSecretRequest{Name: "my\nkey", Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"name with a bidi override", &vaultv1.CreateSecretRequest{Name: "my\u202ekey", Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"name over 100", &vaultv1.CreateSecretRequest{Name: strings.Repeat("é", 101), Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"empty name", &vaultv1.CreateSecretRequest{Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"name of dots", &vaultv1.CreateSecretRequest{Name: "..", Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"name with slash", &vaultv1.CreateSecretRequest{Name: "a/b", Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"name with braces", &vaultv1.CreateSecretRequest{Name: "a}b", Kind: "webhook", Value: "v"}, codes.InvalidArgument, ""},
		{"empty value", &vaultv1.CreateSecretRequest{Name: "a", Kind: "webhook"}, codes.InvalidArgument, ""},
		{"whitespace value", &vaultv1.CreateSecretRequest{Name: "a", Kind: "webhook", Value: " \n\t"}, codes.InvalidArgument, ""},
		{"value over 64 KiB", &vaultv1.CreateSecretRequest{Name: "a", Kind: "webhook", Value: strings.Repeat("x", 64<<10+1)}, codes.InvalidArgument, ""},
		{"no kind", &vaultv1.CreateSecretRequest{Name: "a", Value: "v"}, codes.InvalidArgument, ""},
		{"bad kind", &vaultv1.CreateSecretRequest{Name: "a", Kind: "password", Value: "v"}, codes.InvalidArgument, ""},
		{"expiry in the past", &vaultv1.CreateSecretRequest{Name: "a", Kind: "webhook", Value: "v", ExpiresAt: ts(h.clock.Now().Add(-time.Minute))}, codes.InvalidArgument, ""},
		{"expiry now", &vaultv1.CreateSecretRequest{Name: "a", Kind: "webhook", Value: "v", ExpiresAt: ts(h.clock.Now())}, codes.InvalidArgument, ""},
		{"description over 1000", &vaultv1.CreateSecretRequest{Name: "a", Kind: "webhook", Value: "v", Description: strings.Repeat("d", 1001)}, codes.InvalidArgument, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.WorkspaceId = ws
			_, err := h.client.CreateSecret(as(bg(), owner), tc.req)
			wantCode(t, err, tc.code, tc.reason)
		})
	}
	// Exactly at the limits is fine.
	if _, err := h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: strings.Repeat("é", 100), Kind: "integration",
		Value: strings.Repeat("x", 64<<10), ExpiresAt: future}); err != nil {
		t.Fatalf("limits: %v", err)
	}
	list, err := h.client.ListSecrets(as(bg(), owner), &vaultv1.ListSecretsRequest{WorkspaceId: ws})
	if err != nil || len(list.GetSecrets()) != 2 {
		t.Fatalf("refused creates left records: %v %v", names(list.GetSecrets()), err)
	}
}

func TestUpdateMask(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	h.create(t, ws, owner, "api", "webhook", newValue("old"))

	for _, tc := range []struct {
		name  string
		in    *vaultv1.Secret
		paths []string
	}{
		{"empty mask", &vaultv1.Secret{Description: "x"}, nil},
		{"mask of an empty path (PATCH {})", &vaultv1.Secret{Description: "x"}, []string{""}},
		{"unknown path", &vaultv1.Secret{Name: "x"}, []string{"name"}},
		{"kind", &vaultv1.Secret{Kind: "integration"}, []string{"kind"}},
		{"state", &vaultv1.Secret{State: "active"}, []string{"state"}},
		{"garbage path", &vaultv1.Secret{}, []string{"value.nested"}},
		{"empty value", &vaultv1.Secret{}, []string{"value"}},
		{"value over 64 KiB", &vaultv1.Secret{Value: strings.Repeat("x", 64<<10+1)}, []string{"value"}},
		{"past expiry", &vaultv1.Secret{ExpiresAt: ts(h.clock.Now().Add(-time.Second))}, []string{"expiresAt"}},
		{"long description", &vaultv1.Secret{Description: strings.Repeat("d", 1001)}, []string{"description"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.update(ws, owner, "api", tc.in, tc.paths...)
			wantCode(t, err, codes.InvalidArgument, "")
		})
	}
	_, err := h.client.UpdateSecret(as(bg(), owner), &vaultv1.UpdateSecretRequest{WorkspaceId: ws, Name: "api"})
	wantCode(t, err, codes.InvalidArgument, "")

	// Description only: version unchanged; the value field is ignored when
	// not in the mask.
	s, err := h.update(ws, owner, "api", &vaultv1.Secret{Description: "new words", Value: "ignored"}, "description")
	if err != nil || s.GetDescription() != "new words" || s.GetVersion() != 1 {
		t.Fatalf("description update = %v %v", s, err)
	}
	// Value: rotation bumps the version.
	s, err = h.update(ws, owner, "api", &vaultv1.Secret{Value: newValue("new")}, "value")
	if err != nil || s.GetVersion() != 2 || s.GetValue() != "" || s.GetDescription() != "new words" {
		t.Fatalf("value update = %v %v", s, err)
	}
	// Expiry set (JSON spelling) and cleared (proto spelling, unset value).
	exp := h.clock.Now().Add(48 * time.Hour).Truncate(time.Second)
	s, err = h.update(ws, owner, "api", &vaultv1.Secret{ExpiresAt: ts(exp)}, "expiresAt")
	if err != nil || !s.GetExpiresAt().AsTime().Equal(exp) {
		t.Fatalf("expiry update = %v %v", s, err)
	}
	s, err = h.update(ws, owner, "api", &vaultv1.Secret{}, "expires_at")
	if err != nil || s.GetExpiresAt() != nil {
		t.Fatalf("expiry clear = %v %v", s, err)
	}
	_, err = h.update(ws, owner, "missing", &vaultv1.Secret{Description: "x"}, "description")
	wantCode(t, err, codes.NotFound, "SECRET_NOT_FOUND")
	if got := h.auditActions(t, ws, owner, "api"); len(got) != 5 {
		t.Fatalf("audit = %v", got)
	}
}

func TestPermissions(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	_, member := h.env.NewMember(t, ws, owner, auth.RoleMember)
	_, admin := h.env.NewMember(t, ws, owner, auth.RoleAdmin)
	ws2, owner2 := h.env.NewWorkspace(t, "rival")
	h.create(t, ws, owner, "api", "webhook", newValue("v"))
	h.create(t, ws, admin, "by-admin", "webhook", newValue("v")) // admins write

	// Members read metadata.
	if _, err := h.client.ListSecrets(as(bg(), member), &vaultv1.ListSecretsRequest{WorkspaceId: ws}); err != nil {
		t.Fatalf("member list: %v", err)
	}
	if s := h.get(t, ws, member, "api"); s.GetValue() != "" || s.GetName() != "api" {
		t.Fatalf("member get = %v", s)
	}

	ops := func(ws string) map[string]func(context.Context) error {
		return map[string]func(context.Context) error{
			"create": func(ctx context.Context) error {
				_, err := h.client.CreateSecret(ctx, &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "nope", Kind: "webhook", Value: "v"})
				return err
			},
			"update": func(ctx context.Context) error {
				_, err := h.client.UpdateSecret(ctx, &vaultv1.UpdateSecretRequest{WorkspaceId: ws, Name: "api", Secret: &vaultv1.Secret{Value: "x"}, UpdateMask: mask("value")})
				return err
			},
			"revoke": func(ctx context.Context) error {
				_, err := h.client.RevokeSecret(ctx, &vaultv1.RevokeSecretRequest{WorkspaceId: ws, Name: "api"})
				return err
			},
			"delete": func(ctx context.Context) error {
				_, err := h.client.DeleteSecret(ctx, &vaultv1.DeleteSecretRequest{WorkspaceId: ws, Name: "api"})
				return err
			},
			"run": func(ctx context.Context) error {
				_, err := h.client.RunHttpRequest(ctx, &vaultv1.RunHttpRequestRequest{WorkspaceId: ws, Method: "GET", Url: h.tls.srv.URL, Headers: map[string]string{"X-Api-Key": "{secret:api}"}})
				return err
			},
		}
	}
	before := h.tls.requests()
	for name, call := range ops(ws) {
		t.Run("member cannot "+name, func(t *testing.T) {
			wantCode(t, call(as(bg(), member)), codes.PermissionDenied, "")
		})
		t.Run("other workspace cannot "+name, func(t *testing.T) {
			wantCode(t, call(as(bg(), owner2)), codes.NotFound, "")
		})
	}
	// Another workspace sees nothing of ours, even naming its own workspace.
	for name, call := range ops(ws2) {
		if name == "create" || name == "run" {
			continue
		}
		t.Run("own workspace, our secret: "+name, func(t *testing.T) {
			wantCode(t, call(as(bg(), owner2)), codes.NotFound, "SECRET_NOT_FOUND")
		})
	}
	_, err := h.client.GetSecret(as(bg(), owner2), &vaultv1.GetSecretRequest{WorkspaceId: ws, Name: "api"})
	wantCode(t, err, codes.NotFound, "")
	_, err = h.client.ListSecrets(as(bg(), owner2), &vaultv1.ListSecretsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.NotFound, "")
	// A secret of another workspace cannot be referenced either.
	_, err = h.client.RunHttpRequest(as(bg(), owner2), &vaultv1.RunHttpRequestRequest{WorkspaceId: ws2, Method: "GET", Url: h.tls.srv.URL, Headers: map[string]string{"X-Api-Key": "{secret:api}"}})
	wantCode(t, err, codes.NotFound, "SECRET_NOT_FOUND")
	if n := h.tls.requests(); n != before {
		t.Fatalf("%d requests were sent by refused steps", n-before)
	}
	if s := h.get(t, ws, owner, "api"); s.GetVersion() != 1 || s.GetState() != "active" {
		t.Fatalf("refused writes changed the secret: %v", s)
	}

	// Access tokens act by scope.
	reader := h.accessToken(t, ws, auth.SecretsRead)
	user := h.accessToken(t, ws, auth.SecretsUse)
	writer := h.accessToken(t, ws, auth.SecretsWrite)
	if _, err := h.client.ListSecrets(as(bg(), reader), &vaultv1.ListSecretsRequest{WorkspaceId: ws}); err != nil {
		t.Fatalf("secrets:read list: %v", err)
	}
	wantCode(t, ops(ws)["create"](as(bg(), reader)), codes.PermissionDenied, "")
	wantCode(t, ops(ws)["run"](as(bg(), reader)), codes.PermissionDenied, "")
	wantCode(t, ops(ws)["create"](as(bg(), user)), codes.PermissionDenied, "")
	_, err = h.client.ListSecrets(as(bg(), user), &vaultv1.ListSecretsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.PermissionDenied, "")
	if err := ops(ws)["run"](as(bg(), user)); err != nil {
		t.Fatalf("secrets:use run: %v", err)
	}
	if err := ops(ws)["create"](as(bg(), writer)); err != nil {
		t.Fatalf("secrets:write create: %v", err)
	}
	wantCode(t, ops(ws)["run"](as(bg(), writer)), codes.PermissionDenied, "")

	// No credential at all.
	_, err = h.client.ListSecrets(bg(), &vaultv1.ListSecretsRequest{WorkspaceId: ws})
	wantCode(t, err, codes.Unauthenticated, "")
	// Members don't read the audit trail.
	_, err = h.audit.ListAuditEvents(as(bg(), member), &auditv1.ListAuditEventsRequest{WorkspaceId: ws, LocalOnly: true})
	wantCode(t, err, codes.PermissionDenied, "")
}

func TestConcurrentCreatesOfOneName(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	var wg sync.WaitGroup
	results := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: "race", Kind: "webhook", Value: newValue("v")})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range results {
		if err == nil {
			ok++
		} else {
			wantCode(t, err, codes.AlreadyExists, "SECRET_NAME_TAKEN")
		}
	}
	if ok != 1 {
		t.Fatalf("%d concurrent creates of one name succeeded", ok)
	}
	// A new workspace's first secrets race to create its data key: all of
	// them end up under the one that won.
	ws, owner = h.env.NewWorkspace(t, "fresh")
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.client.CreateSecret(as(bg(), owner), &vaultv1.CreateSecretRequest{WorkspaceId: ws, Name: fmt.Sprintf("s%d", i), Kind: "webhook", Value: newValue("v")})
		}()
	}
	wg.Wait()
	for i := range 8 {
		if _, err := h.run(ws, owner, "/", map[string]string{"X-Api-Key": fmt.Sprintf("{secret:s%d}", i)}); err != nil {
			t.Fatalf("use s%d: %v", i, err)
		}
	}
}
