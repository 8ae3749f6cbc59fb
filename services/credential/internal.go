package credential

import (
	"context"
	"crypto/subtle"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/page"
	"github.com/backlog/controlplane/services/kit/store"
)

// Authenticate implements the internal API: resolve a raw credential.
func (s *Service) Authenticate(ctx context.Context, req *credentialv1.AuthenticateRequest) (*credentialv1.AuthenticateResponse, error) {
	p, ref, err := s.authenticate(ctx, req.GetCredential())
	if ref != nil {
		s.auditRefusal(ctx, actionAuthenticate, ref)
	}
	if err != nil {
		return nil, err
	}
	return &credentialv1.AuthenticateResponse{Principal: p}, nil
}

// issuable are the kinds sibling services may issue for their subjects.
var issuable = map[credentialv1.CredentialKind]credentialv1.SubjectKind{
	credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION,
	credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY:         credentialv1.SubjectKind_SUBJECT_KIND_AGENT,
	credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET:   credentialv1.SubjectKind_SUBJECT_KIND_AGENT,
}

func validateSubject(subj *credentialv1.Subject) error {
	if subj == nil || subj.Id == "" || subj.WorkspaceId == "" {
		return errs.Invalid("subject", "id and workspace id are required")
	}
	if _, err := auth.ValidateScopes("subject.scopes", subj.Scopes); err != nil {
		return err
	}
	if _, err := auth.ValidateTeamIDs("subject.team_ids", subj.TeamIds); err != nil {
		return err
	}
	if subj.Kind == credentialv1.SubjectKind_SUBJECT_KIND_AGENT && subj.Role != auth.RoleMember && subj.Role != auth.RoleAdmin {
		return errs.Invalid("subject.role", "an agent's role is member or admin")
	}
	return nil
}

// IssueCredential issues credentials for a (new or existing) subject. The
// subject's grant is created or replaced in the same transaction.
func (s *Service) IssueCredential(ctx context.Context, req *credentialv1.IssueCredentialRequest) (*credentialv1.IssueCredentialResponse, error) {
	subj := req.GetSubject()
	if err := validateSubject(subj); err != nil {
		return nil, err
	}
	kinds := req.GetKinds()
	if len(kinds) == 0 {
		kinds = []credentialv1.CredentialKind{req.GetKind()}
	}
	if err := checkKinds(kinds, subj.Kind); err != nil {
		return nil, err
	}
	if len(req.GetLabel()) > 100 {
		return nil, errs.Invalid("label", "at most 100 characters")
	}
	chosen, err := s.checkChosen(req.GetCredentialId(), req.GetCreatedAt())
	if err != nil {
		return nil, err
	}
	if chosen.id != "" && len(kinds) != 1 {
		return nil, errs.Invalid("credential_id", "is taken only with one kind")
	}
	raws := newRaws(kinds)
	var out []*credentialv1.IssuedCredential
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		out = out[:0]
		existing, ok, err := findSubject(tx, subj.Id)
		if err != nil {
			return err
		}
		if ok && (existing.Revoked || existing.Subject.WorkspaceId != subj.WorkspaceId || existing.Subject.Kind != subj.Kind) {
			return fmt.Errorf("subject %s: %w", subj.Id, errSubjectNotFound)
		}
		created := existing.GetCreatedAt()
		if !ok {
			created = timestamppb.New(s.cfg.Now())
		}
		if err := putSubject(tx, &credentialstorev1.SubjectRecord{Subject: subj, CreatedAt: created}); err != nil {
			return err
		}
		for i, k := range kinds {
			rec, err := s.issueAs(tx, subj, k, raws[i], req.GetLabel(), chosen)
			if err != nil {
				return err
			}
			out = append(out, &credentialv1.IssuedCredential{Credential: raws[i], Info: infoOf(rec)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &credentialv1.IssueCredentialResponse{Credential: out[0].Credential, Info: out[0].Info, Credentials: out}, nil
}

func checkKinds(kinds []credentialv1.CredentialKind, subjectKind credentialv1.SubjectKind) error {
	seen := map[credentialv1.CredentialKind]bool{}
	for _, k := range kinds {
		want, ok := issuable[k]
		if !ok || (subjectKind != credentialv1.SubjectKind_SUBJECT_KIND_UNSPECIFIED && want != subjectKind) {
			return errs.Invalid("kinds", "cannot issue %s for a %s", k, subjectKind)
		}
		if seen[k] {
			return errs.Invalid("kinds", "%s asked twice", k)
		}
		seen[k] = true
	}
	return nil
}

func newRaws(kinds []credentialv1.CredentialKind) []string {
	raws := make([]string, len(kinds))
	for i, k := range kinds {
		raws[i] = credfmt.New(prefixOf[k])
	}
	return raws
}

// RotateCredentials rotates several kinds together, optionally as a
// compare-and-swap on credentials the caller presented: of two concurrent
// self-rotations with the same pair, exactly one wins.
func (s *Service) RotateCredentials(ctx context.Context, req *credentialv1.RotateCredentialsRequest) (*credentialv1.RotateCredentialsResponse, error) {
	kinds := req.GetKinds()
	if len(kinds) == 0 {
		return nil, errs.Invalid("kinds", "name at least one credential kind to rotate")
	}
	if err := checkKinds(kinds, credentialv1.SubjectKind_SUBJECT_KIND_UNSPECIFIED); err != nil {
		return nil, err
	}
	if len(req.GetLabel()) > 100 {
		return nil, errs.Invalid("label", "at most 100 characters")
	}
	expect := make([][]byte, len(req.GetExpectCredentials()))
	for i, raw := range req.GetExpectCredentials() {
		if _, err := credfmt.Parse(raw); err != nil {
			return nil, errInvalid
		}
		expect[i] = s.hash(raw)
	}
	raws := newRaws(kinds)
	var out []*credentialv1.IssuedCredential
	var rotated *credentialv1.Subject
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		out = out[:0]
		subj, err := getSubject(tx, req.GetWorkspaceId(), req.GetSubjectId())
		if err != nil {
			return err
		}
		rotated = subj.Subject
		if subj.Revoked {
			return fmt.Errorf("subject %s: %w", req.GetSubjectId(), errSubjectNotFound)
		}
		for _, h := range expect {
			if live, err := liveCredentialOf(tx, h, subj.Subject.Id); err != nil {
				return err
			} else if !live {
				return errInvalid
			}
		}
		for i, k := range kinds {
			if _, err := revokeLive(tx, subj.Subject.Id, k, s.cfg.Now(), 0); err != nil {
				return err
			}
			rec, err := s.issue(tx, subj.Subject, k, raws[i], req.GetLabel())
			if err != nil {
				return err
			}
			out = append(out, &credentialv1.IssuedCredential{Credential: raws[i], Info: infoOf(rec)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.hub.publish(ctx, []string{req.GetSubjectId()})
	s.publishEvent(req.GetWorkspaceId(), rotationEvent(rotated.GetKind()), subjectData(rotated))
	return &credentialv1.RotateCredentialsResponse{Credentials: out}, nil
}

// liveCredentialOf reports whether the credential with keyed hash h is live
// and belongs to subjectID.
func liveCredentialOf(tx store.ReadTx, h []byte, subjectID string) (bool, error) {
	rec, err := credentialByHash(tx, h)
	if err != nil || rec == nil {
		return false, err
	}
	return rec.RevokedAt == nil && rec.SubjectId == subjectID && subtle.ConstantTimeCompare(rec.Hash, h) == 1, nil
}

func infoOf(rec *credentialstorev1.CredentialRecord) *credentialv1.CredentialInfo {
	return &credentialv1.CredentialInfo{Id: rec.Id, Label: rec.Label, Kind: rec.Kind, CreatedAt: rec.CreatedAt, LastUsedAt: rec.LastUsedAt}
}

// revokeLive marks the live credentials of subjectID (of kind, or of every
// kind when kind is unspecified) revoked at now, at most limit of them (0: all;
// each is 2 writes). It reports whether matching live credentials remain.
func revokeLive(tx store.WriteTx, subjectID string, kind credentialv1.CredentialKind, now time.Time, limit int) (bool, error) {
	ids, err := liveCredentialIDs(tx, subjectID, 0)
	if err != nil {
		return false, err
	}
	n := 0
	for _, id := range ids {
		rec, ok, err := getCredential(tx, id)
		if err != nil {
			return false, err
		}
		if !ok || (kind != credentialv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED && rec.Kind != kind) {
			continue
		}
		if limit > 0 && n == limit {
			return true, nil
		}
		if err := revokeCredential(tx, rec, now); err != nil {
			return false, err
		}
		n++
	}
	return false, nil
}

// revokeBatch is how many credentials one update revokes along with a
// subject, leaving room for the handler's own writes.
func (s *Service) revokeBatch() int { return (s.db.Limits().MaxOpsPerUpdate - 8) / 2 }

// RotateCredential revokes the subject's live credentials of a kind and
// issues one new one in a single transaction: concurrent rotations serialize
// and exactly one credential is live afterwards. Returns once every service
// has dropped what it cached for the subject.
func (s *Service) RotateCredential(ctx context.Context, req *credentialv1.RotateCredentialRequest) (*credentialv1.RotateCredentialResponse, error) {
	if _, ok := issuable[req.GetKind()]; !ok {
		return nil, errs.Invalid("kind", "cannot rotate %s", req.GetKind())
	}
	if len(req.GetLabel()) > 100 {
		return nil, errs.Invalid("label", "at most 100 characters")
	}
	chosen, err := s.checkChosen(req.GetCredentialId(), req.GetCreatedAt())
	if err != nil {
		return nil, err
	}
	raw := credfmt.New(prefixOf[req.GetKind()])
	var rec *credentialstorev1.CredentialRecord
	var rotated *credentialv1.Subject
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		subj, err := getSubject(tx, req.GetWorkspaceId(), req.GetSubjectId())
		if err != nil {
			return err
		}
		rotated = subj.Subject
		if subj.Revoked {
			return fmt.Errorf("subject %s: %w", req.GetSubjectId(), errSubjectNotFound)
		}
		if _, err := revokeLive(tx, subj.Subject.Id, req.GetKind(), s.cfg.Now(), 0); err != nil {
			return err
		}
		rec, err = s.issueAs(tx, subj.Subject, req.GetKind(), raw, req.GetLabel(), chosen)
		return err
	})
	if err != nil {
		return nil, err
	}
	s.hub.publish(ctx, []string{req.GetSubjectId()})
	data := subjectData(rotated)
	data["credentialId"] = rec.GetId()
	s.publishEvent(req.GetWorkspaceId(), rotationEvent(rotated.GetKind()), data)
	return &credentialv1.RotateCredentialResponse{Credential: raw, Info: infoOf(rec)}, nil
}

// UpdateSubject replaces a subject's grant; every cache drops it before return.
func (s *Service) UpdateSubject(ctx context.Context, req *credentialv1.UpdateSubjectRequest) (*credentialv1.UpdateSubjectResponse, error) {
	subj := req.GetSubject()
	if err := validateSubject(subj); err != nil {
		return nil, err
	}
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		cur, err := getSubject(tx, subj.WorkspaceId, subj.Id)
		if err != nil {
			return err
		}
		if cur.Revoked || cur.Subject.Kind != subj.Kind {
			return fmt.Errorf("subject %s: %w", subj.Id, errSubjectNotFound)
		}
		return putSubject(tx, &credentialstorev1.SubjectRecord{Subject: subj, CreatedAt: cur.CreatedAt})
	})
	if err != nil {
		return nil, err
	}
	s.hub.publish(ctx, []string{subj.Id})
	return &credentialv1.UpdateSubjectResponse{}, nil
}

// RevokeSubject revokes a subject and all its credentials for good.
func (s *Service) RevokeSubject(ctx context.Context, req *credentialv1.RevokeSubjectRequest) (*credentialv1.RevokeSubjectResponse, error) {
	now := s.cfg.Now()
	var more bool
	var revoked *credentialv1.Subject
	err := s.db.Update(ctx, func(tx store.WriteTx) (err error) {
		revoked = nil
		if subj, err := getSubject(tx, req.GetWorkspaceId(), req.GetSubjectId()); err == nil && !subj.Revoked {
			revoked = subj.Subject
		}
		more, err = s.revokeSubjectTx(tx, req.GetWorkspaceId(), req.GetSubjectId(), now)
		return err
	})
	if err != nil {
		return nil, err
	}
	if revoked != nil {
		s.publishEvent(req.GetWorkspaceId(), eventCredentialRevoked, subjectData(revoked))
	}
	if more {
		// The subject is revoked: every credential of it is refused already.
		// A failure here is reported so that the caller's retry finishes.
		err = s.finishRevocation(ctx, req.GetSubjectId(), now)
	}
	s.hub.publish(ctx, []string{req.GetSubjectId()})
	if err != nil {
		return nil, err
	}
	return &credentialv1.RevokeSubjectResponse{}, nil
}

// revokeSubjectTx marks a subject revoked, and as many of its live
// credentials as fit one update (see finishRevocation for the rest). It
// reports whether live credentials remain.
func (s *Service) revokeSubjectTx(tx store.WriteTx, ws, id string, now time.Time) (bool, error) {
	subj, err := getSubject(tx, ws, id)
	if err != nil {
		return false, err
	}
	subj.Revoked = true
	if err := putSubject(tx, subj); err != nil {
		return false, err
	}
	return revokeLive(tx, id, credentialv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED, now, s.revokeBatch())
}

// finishRevocation marks the live credentials of a revoked subject revoked,
// one batch per update.
func (s *Service) finishRevocation(ctx context.Context, subjectID string, now time.Time) error {
	for more := true; more; {
		err := s.db.Update(ctx, func(tx store.WriteTx) (err error) {
			more, err = revokeLive(tx, subjectID, credentialv1.CredentialKind_CREDENTIAL_KIND_UNSPECIFIED, now, s.revokeBatch())
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// VerifyCredential checks that raw is a live credential of kind belonging to
// the subject (e.g. an agent's rotation secret). Any mismatch is the same 401.
func (s *Service) VerifyCredential(ctx context.Context, req *credentialv1.VerifyCredentialRequest) (*credentialv1.VerifyCredentialResponse, error) {
	parsed, err := credfmt.Parse(req.GetCredential())
	if err != nil {
		return nil, errs.Unauthenticated(err.Error())
	}
	if kindOf[parsed.Kind] != req.GetKind() {
		return nil, errInvalid
	}
	h := s.hash(req.GetCredential())
	rec, subj, err := s.credentialAndSubject(ctx, h)
	if err != nil {
		return nil, err
	}
	if subj == nil || subtle.ConstantTimeCompare(rec.Hash, h) != 1 || rec.SubjectId != req.GetSubjectId() ||
		rec.WorkspaceId != req.GetWorkspaceId() || rec.Kind != req.GetKind() {
		return nil, errInvalid
	}
	if _, _, err := checkSubject(subj, rec.RevokedAt != nil); err != nil {
		return nil, err
	}
	return &credentialv1.VerifyCredentialResponse{Info: infoOf(rec)}, nil
}

// ListSubjects pages through the live subjects of one kind.
func (s *Service) ListSubjects(ctx context.Context, req *credentialv1.ListSubjectsRequest) (*credentialv1.ListSubjectsResponse, error) {
	if req.GetKind() == credentialv1.SubjectKind_SUBJECT_KIND_UNSPECIFIED {
		return nil, errs.Invalid("kind", "is required")
	}
	size, err := page.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	scope := "subjects|" + req.GetKind().String()
	after, err := page.Decode(ctx, scope, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &credentialv1.ListSubjectsResponse{}
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		resp.Subjects = resp.Subjects[:0]
		next, err := scanSubjects(tx, after, size, func(rec *credentialstorev1.SubjectRecord) (_ bool, err error) {
			if rec.Revoked || rec.GetSubject().GetKind() != req.GetKind() {
				return false, nil
			}
			sum := &credentialv1.SubjectSummary{Id: rec.Subject.Id, WorkspaceId: rec.Subject.WorkspaceId, CreatedAt: rec.CreatedAt}
			if sum.LiveCredentials, err = liveCredentials(tx, rec.Subject.Id); err != nil {
				return false, err
			}
			resp.Subjects = append(resp.Subjects, sum)
			return true, nil
		})
		resp.NextPageToken = page.Encode(ctx, scope, next)
		return err
	})
	return resp, err
}

// GetSubject returns one live subject of a workspace with its live
// credentials, and the one asked for by id if it was issued to it;
// NotFound when the subject does not exist or is revoked.
func (s *Service) GetSubject(ctx context.Context, req *credentialv1.GetSubjectRequest) (*credentialv1.GetSubjectResponse, error) {
	if req.GetWorkspaceId() == "" || req.GetSubjectId() == "" {
		return nil, errs.Invalid("subject_id", "workspace_id and subject_id are required")
	}
	resp := &credentialv1.GetSubjectResponse{}
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		rec, err := getSubject(tx, req.GetWorkspaceId(), req.GetSubjectId())
		if err != nil {
			return err
		}
		if rec.Revoked {
			return fmt.Errorf("subject %s: %w", req.GetSubjectId(), errSubjectNotFound)
		}
		sum := &credentialv1.SubjectSummary{Id: rec.Subject.Id, WorkspaceId: rec.Subject.WorkspaceId, CreatedAt: rec.CreatedAt}
		if sum.LiveCredentials, err = liveCredentials(tx, rec.Subject.Id); err != nil {
			return err
		}
		resp.Subject = sum
		if id := req.GetCredentialId(); id != "" {
			c, ok, err := getCredential(tx, id)
			if err != nil {
				return err
			}
			if ok && c.SubjectId == rec.Subject.Id {
				resp.Credential = infoOf(c)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// liveCredentials lists the metadata of a subject's live credentials.
func liveCredentials(tx store.ReadTx, subjectID string) ([]*credentialv1.CredentialInfo, error) {
	ids, err := liveCredentialIDs(tx, subjectID, 0)
	if err != nil {
		return nil, err
	}
	var out []*credentialv1.CredentialInfo
	for _, id := range ids {
		rec, ok, err := getCredential(tx, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, infoOf(rec))
		}
	}
	return out, nil
}

// WatchRevocations streams invalidations to a sibling service and reads its
// acknowledgements.
func (s *Service) WatchRevocations(stream credentialv1.CredentialInternalService_WatchRevocationsServer) error {
	w := s.hub.add()
	defer s.hub.remove(w)
	ctx := stream.Context()
	if err := stream.Send(&credentialv1.WatchRevocationsResponse{Sequence: 0}); err != nil {
		return err
	}
	go func() {
		for {
			ack, err := stream.Recv()
			if err != nil {
				w.cancel()
				return
			}
			w.ack(ack.GetAckSequence())
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.ctx.Done():
			return errs.Unauthenticated("watch dropped: acknowledgements too slow")
		case ev := <-w.events:
			if err := stream.Send(w.coalesce(ev)); err != nil {
				return err
			}
		}
	}
}
