package credential

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/validate"
)

// ValidateName checks a display name: 1 to 100 characters, no control characters.
func ValidateName(field, s string) (string, error) { return validate.Name(field, s, 100) }

func validateEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || len(s) > 254 {
		return "", errs.Invalid("email", "is not an email address like name@example.com")
	}
	return strings.ToLower(s), nil
}

func validateRole(s string, dflt string) (string, error) {
	if s == "" {
		return dflt, nil
	}
	switch s {
	case auth.RoleOwner, auth.RoleAdmin, auth.RoleMember:
		return s, nil
	}
	return "", errs.Invalid("role", "%q is not a role: use owner, admin or member", clip(s))
}

func clip(s string) string { return validate.Clip(s) }

var memberMask = validate.MaskSpellings("name", "email", "role")

// CreateWorkspace implements credentialv1.CredentialServiceServer.
func (s *Service) CreateWorkspace(ctx context.Context, req *credentialv1.CreateWorkspaceRequest) (*credentialv1.CreateWorkspaceResponse, error) {
	name, err := ValidateName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	ownerName := req.GetOwnerName()
	if strings.TrimSpace(ownerName) == "" {
		ownerName = "Owner"
	}
	if ownerName, err = ValidateName("ownerName", ownerName); err != nil {
		return nil, err
	}
	email, err := validateEmail(req.GetOwnerEmail())
	if err != nil {
		return nil, err
	}
	p := auth.FromContext(ctx)
	if p.GetSubjectKind() != credentialv1.SubjectKind_SUBJECT_KIND_OPERATOR {
		return nil, errs.Forbidden("only the operator token can create workspaces")
	}
	r, err := idem.FromContext(ctx, "operator|CreateWorkspace", req)
	if err != nil {
		return nil, err
	}
	replayed := func(resp *credentialv1.CreateWorkspaceResponse) (*credentialv1.CreateWorkspaceResponse, error) {
		id := resp.GetWorkspace().GetId()
		if err := s.auditReplay(ctx, id, actionCreateWorkspaceReplay, "workspace", id); err != nil {
			return nil, err
		}
		return resp, nil
	}
	if resp, found, err := lookupReplay(ctx, s, r, &credentialv1.CreateWorkspaceResponse{}); err != nil {
		return nil, err
	} else if found {
		return replayed(resp)
	}
	now := timestamppb.New(s.cfg.Now())
	ws := &credentialv1.Workspace{Id: ids.New("ws"), Name: name, CreatedAt: now}
	owner := &credentialv1.Member{Id: ids.New("mem"), WorkspaceId: ws.Id, Name: ownerName, Email: email, Role: auth.RoleOwner, CreatedAt: now, UpdatedAt: now}
	raw := credfmt.New(credfmt.Personal)
	resp := &credentialv1.CreateWorkspaceResponse{Workspace: ws, Owner: owner, Token: raw}
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := putWorkspace(tx, ws); err != nil {
			return err
		}
		if err := s.addMember(tx, owner, raw); err != nil {
			return err
		}
		if err := audit.Put(tx, s.event(ctx, ws.Id, "workspace.create", "workspace", ws.Id, audit.Success, "")); err != nil {
			return err
		}
		if err := audit.Put(tx, s.event(ctx, ws.Id, "member.create", "member", owner.Id, audit.Success, "role owner")); err != nil {
			return err
		}
		return s.saveReplay(tx, r, resp)
	})
	if err != nil {
		// A concurrent request with the same key won: nothing of this one
		// was written (the token was issued in the same update), and the
		// winner's response is the answer.
		if won, found, lerr := lostRace(ctx, s, err, r, &credentialv1.CreateWorkspaceResponse{}); lerr != nil || found {
			if lerr != nil {
				return nil, lerr
			}
			return replayed(won)
		}
		return nil, err
	}
	return resp, nil
}

// addMember stores a new member, its subject and its personal token (6 writes).
func (s *Service) addMember(tx store.WriteTx, m *credentialv1.Member, raw string) error {
	if err := putMember(tx, m); err != nil {
		return err
	}
	subj := memberSubject(m)
	if err := putSubject(tx, &credentialstorev1.SubjectRecord{Subject: subj, CreatedAt: m.CreatedAt}); err != nil {
		return err
	}
	_, err := s.issue(tx, subj, credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL, raw, "personal")
	return err
}

func memberSubject(m *credentialv1.Member) *credentialv1.Subject {
	return &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_MEMBER, Id: m.Id, WorkspaceId: m.WorkspaceId, Name: m.Name, Role: m.Role}
}

// GetWorkspace implements credentialv1.CredentialServiceServer.
func (s *Service) GetWorkspace(ctx context.Context, req *credentialv1.GetWorkspaceRequest) (*credentialv1.GetWorkspaceResponse, error) {
	if _, err := auth.Require(ctx, req.GetWorkspaceId(), ""); err != nil {
		return nil, err
	}
	var ws *credentialv1.Workspace
	err := s.db.View(ctx, func(tx store.ReadTx) (err error) {
		ws, err = getWorkspace(tx, req.GetWorkspaceId())
		return err
	})
	if err != nil {
		return nil, err
	}
	return &credentialv1.GetWorkspaceResponse{Workspace: ws}, nil
}

// ListMembers implements credentialv1.CredentialServiceServer.
func (s *Service) ListMembers(ctx context.Context, req *credentialv1.ListMembersRequest) (*credentialv1.ListMembersResponse, error) {
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := page.Decode(ctx, req.GetWorkspaceId(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	if _, err := auth.RequireRole(ctx, req.GetWorkspaceId(), auth.RoleAdmin); err != nil {
		return nil, err
	}
	resp := &credentialv1.ListMembersResponse{}
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		members, next, err := listMembers(tx, req.GetWorkspaceId(), after, size)
		resp.Members, resp.NextPageToken = members, page.Encode(ctx, req.GetWorkspaceId(), next)
		return err
	})
	return resp, err
}

// CreateMember implements credentialv1.CredentialServiceServer.
func (s *Service) CreateMember(ctx context.Context, req *credentialv1.CreateMemberRequest) (*credentialv1.CreateMemberResponse, error) {
	name, err := ValidateName("name", req.GetName())
	if err != nil {
		return nil, err
	}
	email, err := validateEmail(req.GetEmail())
	if err != nil {
		return nil, err
	}
	role, err := validateRole(req.GetRole(), auth.RoleMember)
	if err != nil {
		return nil, err
	}
	p, err := auth.RequireRole(ctx, req.GetWorkspaceId(), auth.RoleAdmin)
	if err != nil {
		return nil, err
	}
	if role == auth.RoleOwner && p.Role != auth.RoleOwner {
		return nil, errNotOwner
	}
	r, err := idem.FromContext(ctx, req.GetWorkspaceId()+"|CreateMember", req)
	if err != nil {
		return nil, err
	}
	replayed := func(resp *credentialv1.CreateMemberResponse) (*credentialv1.CreateMemberResponse, error) {
		if err := s.auditReplay(ctx, req.GetWorkspaceId(), actionCreateMemberReplay, "member", resp.GetMember().GetId()); err != nil {
			return nil, err
		}
		return resp, nil
	}
	if resp, found, err := lookupReplay(ctx, s, r, &credentialv1.CreateMemberResponse{}); err != nil {
		return nil, err
	} else if found {
		return replayed(resp)
	}
	now := timestamppb.New(s.cfg.Now())
	m := &credentialv1.Member{Id: ids.New("mem"), WorkspaceId: req.GetWorkspaceId(), Name: name, Email: email, Role: role, CreatedAt: now, UpdatedAt: now}
	raw := credfmt.New(credfmt.Personal)
	resp := &credentialv1.CreateMemberResponse{Member: m, Token: raw}
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if email != "" {
			if err := checkEmailFree(tx, m.WorkspaceId, "", email); err != nil {
				return err
			}
		}
		if err := s.addMember(tx, m, raw); err != nil {
			return err
		}
		if err := audit.Put(tx, s.event(ctx, m.WorkspaceId, "member.create", "member", m.Id, audit.Success, "role "+role)); err != nil {
			return err
		}
		return s.saveReplay(tx, r, resp)
	})
	if err != nil {
		if won, found, lerr := lostRace(ctx, s, err, r, &credentialv1.CreateMemberResponse{}); lerr != nil || found {
			if lerr != nil {
				return nil, lerr
			}
			return replayed(won)
		}
		return nil, err
	}
	return resp, nil
}

func checkEmailFree(tx store.ReadTx, ws, self, email string) error {
	return eachMember(tx, ws, func(m *credentialv1.Member) error {
		if m.Email == email && m.Id != self {
			return errDuplicateEmail
		}
		return nil
	})
}

func countOwners(tx store.ReadTx, ws string) (int, error) {
	n := 0
	err := eachMember(tx, ws, func(m *credentialv1.Member) error {
		if m.Role == auth.RoleOwner {
			n++
		}
		return nil
	})
	return n, err
}

// UpdateMember implements credentialv1.CredentialServiceServer.
func (s *Service) UpdateMember(ctx context.Context, req *credentialv1.UpdateMemberRequest) (*credentialv1.UpdateMemberResponse, error) {
	set, err := validate.Mask(req.GetUpdateMask().GetPaths(), memberMask)
	if err != nil {
		return nil, err
	}
	paths := make([]string, 0, len(set))
	for _, p := range []string{"name", "email", "role"} { // a fixed order for the audit detail
		if set[p] {
			paths = append(paths, p)
		}
	}
	in := req.GetMember()
	var name, email, role string
	for _, p := range paths {
		switch p {
		case "name":
			if name, err = ValidateName("name", in.GetName()); err != nil {
				return nil, err
			}
		case "email":
			if email, err = validateEmail(in.GetEmail()); err != nil {
				return nil, err
			}
		case "role":
			if role, err = validateRole(in.GetRole(), ""); err != nil {
				return nil, err
			}
			if role == "" {
				return nil, errs.Invalid("role", "is required: owner, admin or member")
			}
		}
	}
	caller, err := auth.RequireRole(ctx, req.GetWorkspaceId(), auth.RoleAdmin)
	if err != nil {
		return nil, err
	}
	var out *credentialv1.Member
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		m, err := getMember(tx, req.GetWorkspaceId(), req.GetMemberId())
		if err != nil {
			return err
		}
		// Only owners manage owners: an admin may not change any field of
		// an owner's record (its name and email identify the owner).
		if m.Role == auth.RoleOwner && caller.Role != auth.RoleOwner {
			return errNotOwner
		}
		for _, p := range paths {
			switch p {
			case "name":
				m.Name = name
			case "email":
				if email != "" {
					if err := checkEmailFree(tx, m.WorkspaceId, m.Id, email); err != nil {
						return err
					}
				}
				m.Email = email
			case "role":
				if (role == auth.RoleOwner || m.Role == auth.RoleOwner) && role != m.Role {
					if caller.Role != auth.RoleOwner {
						return errNotOwner
					}
					if m.Role == auth.RoleOwner {
						if n, err := countOwners(tx, m.WorkspaceId); err != nil {
							return err
						} else if n <= 1 {
							return errLastOwner
						}
					}
				}
				m.Role = role
			}
		}
		m.UpdatedAt = timestamppb.New(s.cfg.Now())
		if err := putMember(tx, m); err != nil {
			return err
		}
		subj, err := getSubject(tx, m.WorkspaceId, m.Id)
		if err != nil {
			return err
		}
		subj.Subject.Name, subj.Subject.Role = m.Name, m.Role
		if err := putSubject(tx, subj); err != nil {
			return err
		}
		out = m
		return audit.Put(tx, s.event(ctx, m.WorkspaceId, "member.update", "member", m.Id, audit.Success, "fields "+strings.Join(paths, ",")))
	})
	if err != nil {
		s.auditDenied(ctx, req.GetWorkspaceId(), "member.update", req.GetMemberId(), err)
		return nil, err
	}
	s.hub.publish(ctx, []string{out.Id})
	return &credentialv1.UpdateMemberResponse{Member: out}, nil
}

// DeleteMember implements credentialv1.CredentialServiceServer.
func (s *Service) DeleteMember(ctx context.Context, req *credentialv1.DeleteMemberRequest) (*credentialv1.DeleteMemberResponse, error) {
	caller, err := auth.RequireRole(ctx, req.GetWorkspaceId(), auth.RoleAdmin)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	var more bool
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		m, err := getMember(tx, req.GetWorkspaceId(), req.GetMemberId())
		if err != nil {
			return err
		}
		if m.Role == auth.RoleOwner {
			if caller.Role != auth.RoleOwner {
				return errNotOwner
			}
			if n, err := countOwners(tx, m.WorkspaceId); err != nil {
				return err
			} else if n <= 1 {
				return errLastOwner
			}
		}
		if err := deleteMember(tx, m.WorkspaceId, m.Id); err != nil {
			return err
		}
		if more, err = s.revokeSubjectTx(tx, m.WorkspaceId, m.Id, now); err != nil {
			return err
		}
		return audit.Put(tx, s.event(ctx, m.WorkspaceId, "member.delete", "member", m.Id, audit.Success, ""))
	})
	if err != nil {
		s.auditDenied(ctx, req.GetWorkspaceId(), "member.delete", req.GetMemberId(), err)
		return nil, err
	}
	if more {
		// The member is gone and its subject revoked: every credential of it
		// is refused already. What remains only marks the records.
		if err := s.finishRevocation(ctx, req.GetMemberId(), now); err != nil {
			s.lg.Warn("could not mark every credential of a deleted member revoked", zap.String("member-id", req.GetMemberId()), zap.Error(err))
		}
	}
	s.hub.publish(ctx, []string{req.GetMemberId()})
	return &credentialv1.DeleteMemberResponse{}, nil
}

// auditDenied records a change of a member refused because only an owner may
// make it (the caller is an authenticated admin: one record per request).
func (s *Service) auditDenied(ctx context.Context, ws, action, memberID string, err error) {
	if !errors.Is(err, errNotOwner) {
		return
	}
	ev := s.event(ctx, ws, action, "member", memberID, audit.Failure, "refused: "+errNotOwner.Error())
	s.writeRefusals(ctx, []*auditv1.AuditEvent{ev})
}

// Exchange implements credentialv1.CredentialServiceServer: an automation
// secret (the Bearer credential) for a short-lived access token. It writes
// nothing to disk on success.
func (s *Service) Exchange(ctx context.Context, req *credentialv1.ExchangeRequest) (resp *credentialv1.ExchangeResponse, err error) {
	defer func() { metrics.Exchanges.WithLabelValues(exchangeOutcome(err)).Inc() }()
	raw := auth.Bearer(ctx)
	if raw == "" {
		return nil, errs.Unauthenticated("missing credential: send the automation secret as Authorization: Bearer blg_auto_…")
	}
	parsed, err := credfmt.Parse(raw)
	if err != nil {
		return nil, errs.Unauthenticated(err.Error())
	}
	if parsed.Kind != credfmt.Automation {
		return nil, errs.Unauthenticated(fmt.Sprintf("exchange takes an automation secret (blg_auto_…); this credential is of kind %q", parsed.Kind))
	}
	// The request is checked before the credential, as ever; the credential
	// is still resolved so that a refusal of a known automation is audited.
	ttl := s.cfg.DefaultTokenTTL
	var reqErr error
	var reqRefusal *refusal
	if n := req.GetTtlSeconds(); n < 0 {
		reqErr = errs.Invalid("ttlSeconds", "must be positive")
		reqRefusal = &refusal{class: refusedTTL, reason: fmt.Sprintf("ttlSeconds %d is not positive", n)}
	} else if n > 0 {
		ttl = time.Duration(n) * time.Second
		if max := int64(s.cfg.MaxTokenTTL / time.Second); int64(n) > max {
			reqErr = errs.Invalid("ttlSeconds", "at most %d (the configured maximum)", max)
			reqRefusal = &refusal{class: refusedTTL, reason: fmt.Sprintf("ttlSeconds %d exceeds the maximum %d", n, max)}
		}
	}
	scopes, err := auth.ValidateScopes("scopes", req.GetScopes())
	if err != nil && reqErr == nil {
		reqErr, reqRefusal = err, &refusal{class: refusedScope, reason: "a malformed scope was asked for"}
	}
	p, ref, err := s.authenticate(ctx, raw)
	if ref != nil {
		s.auditRefusal(ctx, actionExchange, ref)
	}
	if reqErr != nil {
		if err == nil {
			s.auditRefusal(ctx, actionExchange, exchangeRefusal(p, reqRefusal))
		}
		return nil, reqErr
	}
	if err != nil {
		return nil, err
	}
	restricted := len(scopes) > 0
	for _, sc := range scopes {
		if !slices.Contains(p.Scopes, sc) {
			s.auditRefusal(ctx, actionExchange, exchangeRefusal(p, &refusal{class: refusedScope, reason: "scope " + sc + " is not granted to the automation"}))
			return nil, errs.Invalid("scopes", "%q is not granted to this automation; ask for a subset of %s", sc, strings.Join(p.Scopes, ", "))
		}
	}
	now := s.cfg.Now().Truncate(time.Second) // tokens carry whole seconds
	tok, exp, err := s.mintAccessToken(p.CredentialId, now, ttl, restricted, scopes)
	if err != nil {
		return nil, err
	}
	granted := p.Scopes
	if restricted {
		granted = scopes
	}
	return &credentialv1.ExchangeResponse{
		AccessToken: tok, TokenType: "Bearer", ExpiresAt: timestamppb.New(exp),
		ExpiresIn: int32(exp.Sub(now).Round(time.Second) / time.Second), AutomationId: p.SubjectId,
		WorkspaceId: p.WorkspaceId, Scopes: granted, TeamIds: p.TeamIds,
	}, nil
}

// exchangeRefusal completes r, a refused exchange, with the automation and
// secret p stands for.
func exchangeRefusal(p *auth.Principal, r *refusal) *refusal {
	r.subject = &credentialv1.Subject{Kind: p.GetSubjectKind(), Id: p.GetSubjectId(), WorkspaceId: p.GetWorkspaceId()}
	r.credentialID, r.credentialKind = p.GetCredentialId(), p.GetCredentialKind()
	return r
}

func exchangeOutcome(err error) string {
	switch status.Code(err) {
	case codes.OK:
		return "issued"
	case codes.Unauthenticated:
		return "unauthenticated"
	case codes.PermissionDenied:
		return "forbidden"
	case codes.InvalidArgument:
		return "invalid"
	}
	return "error"
}

// WhoAmI implements credentialv1.CredentialServiceServer.
func (s *Service) WhoAmI(ctx context.Context, _ *credentialv1.WhoAmIRequest) (*credentialv1.WhoAmIResponse, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return nil, errs.Unauthenticated(auth.MsgMissing)
	}
	kind := map[credentialv1.CredentialKind]string{
		credentialv1.CredentialKind_CREDENTIAL_KIND_OPERATOR:     "operator",
		credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL:     "member",
		credentialv1.CredentialKind_CREDENTIAL_KIND_ACCESS_TOKEN: "access_token",
		credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY:    "agent",
	}[p.CredentialKind]
	return &credentialv1.WhoAmIResponse{
		Kind: kind, WorkspaceId: p.WorkspaceId, SubjectId: p.SubjectId, Name: p.Name, Role: p.Role,
		Scopes: p.Scopes, TeamIds: p.TeamIds, ExpiresAt: p.ExpiresAt, CredentialId: p.CredentialId,
	}, nil
}
