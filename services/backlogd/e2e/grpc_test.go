package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

// TestGRPCDirect calls the services' own gRPC ports with the generated
// clients and `authorization: Bearer` metadata, as a platform tool would,
// without the gateway in between.
func TestGRPCDirect(t *testing.T) {
	t.Parallel()
	forEachLayout(t, func(t *testing.T, c *cluster) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ws := c.createWorkspace(t, "Acme")
		other := c.createWorkspace(t, "Globex")
		autos, creds := c.automationClient(), c.credentialClient()

		created, err := autos.CreateAutomation(as(ctx, ws.OwnerToken), &automationv1.CreateAutomationRequest{
			WorkspaceId: ws.ID, Name: "grpc-job", Scopes: []string{"automations:read", "automations:write"}, CredentialLabel: "grpc",
		})
		if err != nil {
			t.Fatalf("CreateAutomation: %v", err)
		}
		c.track(created)
		id, secret := created.GetAutomation().GetId(), created.GetSecret()
		if kindOf(secret) != "auto" || created.GetAutomation().GetCredential().GetLabel() != "grpc" {
			t.Fatalf("CreateAutomation: automation %v, secret of kind %q", created.GetAutomation(), kindOf(secret))
		}

		ex, err := creds.Exchange(as(ctx, secret), &credentialv1.ExchangeRequest{TtlSeconds: 600})
		if err != nil {
			t.Fatalf("Exchange: %v", err)
		}
		c.track(ex)
		at := ex.GetAccessToken()
		if kindOf(at) != "at" || ex.GetTokenType() != "Bearer" || ex.GetExpiresIn() != 600 || ex.GetAutomationId() != id {
			t.Fatalf("Exchange: token of kind %q, type %q, expiresIn %d, automation %q", kindOf(at), ex.GetTokenType(), ex.GetExpiresIn(), ex.GetAutomationId())
		}

		get := &automationv1.GetAutomationRequest{WorkspaceId: ws.ID, AutomationId: id}
		for name, tok := range map[string]string{"access token": at, "owner token": ws.OwnerToken} {
			got, err := autos.GetAutomation(as(ctx, tok), get)
			if err != nil {
				t.Errorf("GetAutomation with the %s: %v", name, err)
			} else if got.GetAutomation().GetId() != id {
				t.Errorf("GetAutomation with the %s: %v", name, got.GetAutomation())
			}
		}
		me, err := creds.WhoAmI(as(ctx, at), &credentialv1.WhoAmIRequest{})
		if err != nil || me.GetKind() != "access_token" || me.GetSubjectId() != id {
			t.Errorf("WhoAmI with the access token: %v, %v", me, err)
		}

		// An access token writes when its scopes say so.
		upd, err := autos.UpdateAutomation(as(ctx, at), &automationv1.UpdateAutomationRequest{
			WorkspaceId: ws.ID, AutomationId: id,
			Automation: &automationv1.Automation{Description: "set over gRPC"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
		})
		if err != nil || upd.GetAutomation().GetDescription() != "set over gRPC" || upd.GetAutomation().GetName() != "grpc-job" {
			t.Errorf("UpdateAutomation with the access token: %v, %v", upd.GetAutomation(), err)
		}

		tests := []struct {
			name    string
			ctx     context.Context
			call    func(ctx context.Context) error
			code    codes.Code
			message string // a substring of the status message
		}{
			{"automation secret on GetAutomation", as(ctx, secret), getAutomation(autos, get), codes.Unauthenticated, "exchange"},
			{"automation secret on WhoAmI", as(ctx, secret), whoAmI(creds), codes.Unauthenticated, "exchange"},
			{"no metadata", ctx, getAutomation(autos, get), codes.Unauthenticated, ""},
			{"bad checksum", as(ctx, corrupt(at)), getAutomation(autos, get), codes.Unauthenticated, ""},
			{"other workspace", as(ctx, other.OwnerToken), getAutomation(autos, get), codes.NotFound, ""},
			{"operator token", as(ctx, c.OperatorToken), getAutomation(autos, get), codes.PermissionDenied, ""},
			{"unknown mask path", as(ctx, ws.OwnerToken), func(ctx context.Context) error {
				_, err := autos.UpdateAutomation(ctx, &automationv1.UpdateAutomationRequest{
					WorkspaceId: ws.ID, AutomationId: id, Automation: &automationv1.Automation{},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"credential"}},
				})
				return err
			}, codes.InvalidArgument, ""},
			{"exchange with a personal token", as(ctx, ws.OwnerToken), func(ctx context.Context) error {
				_, err := creds.Exchange(ctx, &credentialv1.ExchangeRequest{})
				return err
			}, codes.Unauthenticated, ""},
			{"negative ttl", as(ctx, secret), func(ctx context.Context) error {
				_, err := creds.Exchange(ctx, &credentialv1.ExchangeRequest{TtlSeconds: -5})
				return err
			}, codes.InvalidArgument, ""},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				err := tc.call(tc.ctx)
				st := status.Convert(err)
				if st.Code() != tc.code {
					t.Fatalf("got %v (%q), want %v", st.Code(), redact(st.Message()), tc.code)
				}
				if !strings.Contains(st.Message(), tc.message) {
					t.Errorf("message %q does not mention %q", redact(st.Message()), tc.message)
				}
				var info *errdetails.ErrorInfo
				for _, d := range st.Details() {
					if ei, ok := d.(*errdetails.ErrorInfo); ok {
						info = ei
					}
				}
				if info.GetReason() == "" || info.GetDomain() == "" {
					t.Errorf("status %v carries no ErrorInfo reason and domain", st.Code())
				}
				for _, what := range c.creds.findIn([]byte(st.Message())) {
					t.Errorf("the status message holds %s", what)
				}
			})
		}

		// Suspending over gRPC refuses the token at once on both services.
		if _, err := autos.UpdateAutomation(as(ctx, ws.OwnerToken), &automationv1.UpdateAutomationRequest{
			WorkspaceId: ws.ID, AutomationId: id, Automation: &automationv1.Automation{Suspended: true},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"suspended"}},
		}); err != nil {
			t.Fatalf("suspend: %v", err)
		}
		if err := getAutomation(autos, get)(as(ctx, at)); status.Code(err) != codes.PermissionDenied {
			t.Errorf("GetAutomation after suspending: %v, want PermissionDenied", status.Code(err))
		}
		if err := whoAmI(creds)(as(ctx, at)); status.Code(err) != codes.PermissionDenied {
			t.Errorf("WhoAmI after suspending: %v, want PermissionDenied", status.Code(err))
		}

		// Listing over gRPC pages like REST.
		list, err := autos.ListAutomations(as(ctx, ws.OwnerToken), &automationv1.ListAutomationsRequest{WorkspaceId: ws.ID, PageSize: 1})
		if err != nil || len(list.GetAutomations()) != 1 || list.GetAutomations()[0].GetId() != id {
			t.Errorf("ListAutomations: %v, %v", list, err)
		}
	})
}

func getAutomation(c automationv1.AutomationServiceClient, req *automationv1.GetAutomationRequest) func(context.Context) error {
	return func(ctx context.Context) error { _, err := c.GetAutomation(ctx, req); return err }
}

func whoAmI(c credentialv1.CredentialServiceClient) func(context.Context) error {
	return func(ctx context.Context) error { _, err := c.WhoAmI(ctx, &credentialv1.WhoAmIRequest{}); return err }
}
