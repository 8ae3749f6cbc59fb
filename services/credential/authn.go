package credential

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/store"
)

func newCredentialID() string { return ids.New("cred") }

var kindOf = map[credfmt.Kind]credentialv1.CredentialKind{
	credfmt.Operator:       credentialv1.CredentialKind_CREDENTIAL_KIND_OPERATOR,
	credfmt.Personal:       credentialv1.CredentialKind_CREDENTIAL_KIND_PERSONAL,
	credfmt.Automation:     credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET,
	credfmt.AccessToken:    credentialv1.CredentialKind_CREDENTIAL_KIND_ACCESS_TOKEN,
	credfmt.AgentKey:       credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY,
	credfmt.RotationSecret: credentialv1.CredentialKind_CREDENTIAL_KIND_ROTATION_SECRET,
}

var prefixOf = map[credentialv1.CredentialKind]credfmt.Kind{}

func init() {
	for k, v := range kindOf {
		prefixOf[v] = k
	}
}

type localAuth struct{ s *Service }

// Authenticate implements auth.Authenticator without a network hop. A
// refusal of a known credential is audited (see auditRefusal).
func (l localAuth) Authenticate(ctx context.Context, raw string) (*auth.Principal, error) {
	p, ref, err := l.s.authenticate(ctx, raw)
	if ref != nil {
		l.s.auditRefusal(ctx, actionAuthenticate, ref)
	}
	return p, err
}

var errInvalid = errs.Unauthenticated(auth.MsgInvalid)

// authenticate resolves any raw credential. An unknown credential and a wrong
// one get the same answer. When a credential that the store knows is refused
// (its subject suspended or revoked, or the credential itself revoked), the
// refusal describes it for the audit trail; it is nil otherwise.
func (s *Service) authenticate(ctx context.Context, raw string) (*auth.Principal, *refusal, error) {
	parsed, err := credfmt.Parse(raw)
	if err != nil {
		return nil, nil, errs.Unauthenticated(err.Error())
	}
	if parsed.Kind == credfmt.AccessToken {
		return s.verifyAccessToken(ctx, parsed)
	}
	h := s.hash(raw)
	rec, subj, err := s.credentialAndSubject(ctx, h)
	if err != nil {
		return nil, nil, err
	}
	if subj == nil || subtle.ConstantTimeCompare(rec.Hash, h) != 1 || rec.Kind != kindOf[parsed.Kind] {
		return nil, nil, errInvalid
	}
	if class, reason, err := checkSubject(subj, rec.RevokedAt != nil); err != nil {
		return nil, &refusal{subject: subj.Subject, credentialID: rec.Id, credentialKind: rec.Kind, class: class, reason: reason}, err
	}
	s.touch(rec.Id)
	return principalOf(subj.Subject, rec.Kind, rec.Id, nil, false, nil), nil, nil
}

// Refusal classes: a refused credential's audit records are coalesced per
// credential and class (see refusalLog).
const (
	refusedSuspended = "suspended"
	refusedRevoked   = "revoked"
	refusedTTL       = "ttl"
	refusedScope     = "scope"
)

// checkSubject applies revocation and suspension: a revoked agent is 403 (the
// agent still exists, and is told so); any other dead credential is 401. A
// refusal also returns its class and a reason for the audit trail.
func checkSubject(subj *credentialstorev1.SubjectRecord, credRevoked bool) (class, reason string, err error) {
	kind := subj.GetSubject().GetKind()
	noun := subjectNoun(kind)
	switch {
	case subj.Revoked && kind == credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		return refusedRevoked, "agent revoked", errs.Forbidden("this agent has been revoked; its credentials no longer work")
	case subj.Revoked:
		return refusedRevoked, noun + " revoked or deleted", errInvalid
	case credRevoked:
		return refusedRevoked, "credential revoked (rotated or replaced)", errInvalid
	case subj.GetSubject().GetSuspended():
		return refusedSuspended, noun + " suspended", errs.Forbidden(fmt.Sprintf("this %s is suspended; an owner or admin can resume it", noun))
	}
	return "", "", nil
}

func subjectNoun(k credentialv1.SubjectKind) string {
	switch k {
	case credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION:
		return "automation"
	case credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		return "agent"
	case credentialv1.SubjectKind_SUBJECT_KIND_MEMBER:
		return "member"
	}
	return "subject"
}

// principalOf builds the principal a credential of subj stands for.
func principalOf(subj *credentialv1.Subject, kind credentialv1.CredentialKind, credID string, exp *timestamppb.Timestamp, restricted bool, tokenScopes []string) *auth.Principal {
	p := &auth.Principal{
		CredentialKind: kind, SubjectKind: subj.Kind, SubjectId: subj.Id, WorkspaceId: subj.WorkspaceId,
		Role: subj.Role, TeamIds: subj.TeamIds, CredentialId: credID, ExpiresAt: exp, Name: subj.Name,
	}
	switch subj.Kind {
	case credentialv1.SubjectKind_SUBJECT_KIND_MEMBER, credentialv1.SubjectKind_SUBJECT_KIND_AGENT:
		p.Scopes = auth.ScopesForRole(subj.Role)
	case credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION:
		p.Scopes = subj.Scopes
		if restricted {
			// A narrowed token keeps only what the automation still holds.
			p.Scopes = nil
			for _, sc := range tokenScopes {
				if slices.Contains(subj.Scopes, sc) {
					p.Scopes = append(p.Scopes, sc)
				}
			}
		}
	}
	return p
}

const tagLen = 32

// mintAccessToken makes a MAC-protected token naming its parent secret. It is
// never stored: verification recomputes the MAC and checks the parent.
func (s *Service) mintAccessToken(credID string, now time.Time, ttl time.Duration, restricted bool, scopes []string) (string, time.Time, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", time.Time{}, err
	}
	exp := now.Add(ttl).Truncate(time.Second)
	claims := &credentialstorev1.AccessTokenClaims{
		CredentialId: credID, IssuedAt: now.Unix(), ExpiresAt: exp.Unix(),
		Restricted: restricted, Scopes: scopes, Nonce: nonce,
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(claims)
	if err != nil {
		return "", time.Time{}, err
	}
	m := hmac.New(sha256.New, s.tokenKey)
	m.Write(body)
	return credfmt.Encode(credfmt.AccessToken, m.Sum(body)), exp, nil
}

// credentialAndSubject reads the credential whose keyed hash is h and its
// subject; subj is nil when either is missing.
func (s *Service) credentialAndSubject(ctx context.Context, h []byte) (rec *credentialstorev1.CredentialRecord, subj *credentialstorev1.SubjectRecord, err error) {
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		rec, subj = nil, nil
		r, err := credentialByHash(tx, h)
		if err != nil || r == nil {
			return err
		}
		sr, ok, err := findSubject(tx, r.SubjectId)
		if err != nil || !ok {
			return err
		}
		rec, subj = r, sr
		return nil
	})
	return rec, subj, err
}

func (s *Service) verifyAccessToken(ctx context.Context, parsed credfmt.Parsed) (*auth.Principal, *refusal, error) {
	payload, err := parsed.Payload()
	if err != nil || len(payload) <= tagLen {
		return nil, nil, errInvalid
	}
	body, tag := payload[:len(payload)-tagLen], payload[len(payload)-tagLen:]
	m := hmac.New(sha256.New, s.tokenKey)
	m.Write(body)
	if !hmac.Equal(m.Sum(nil), tag) {
		return nil, nil, errInvalid
	}
	claims := &credentialstorev1.AccessTokenClaims{}
	if err := proto.Unmarshal(body, claims); err != nil {
		return nil, nil, errInvalid
	}
	exp := time.Unix(claims.ExpiresAt, 0)
	if !s.cfg.Now().Before(exp) {
		return nil, nil, errs.Unauthenticated("access token expired at " + exp.UTC().Format(time.RFC3339) + ": exchange the automation secret for a new one (POST /v1/auth/exchange)")
	}
	var rec *credentialstorev1.CredentialRecord
	var subj *credentialstorev1.SubjectRecord
	err = s.db.View(ctx, func(tx store.ReadTx) error {
		rec, subj = nil, nil
		r, ok, err := getCredential(tx, claims.CredentialId)
		if err != nil || !ok {
			return err
		}
		sr, ok, err := findSubject(tx, r.SubjectId)
		if err != nil || !ok {
			return err
		}
		rec, subj = r, sr
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if subj == nil {
		return nil, nil, errInvalid
	}
	tokenKind := credentialv1.CredentialKind_CREDENTIAL_KIND_ACCESS_TOKEN
	if rec.RevokedAt != nil && !subj.Revoked {
		ref := &refusal{subject: subj.Subject, credentialID: rec.Id, credentialKind: tokenKind, class: refusedRevoked,
			reason: "the automation secret the access token was exchanged from was rotated or revoked"}
		return nil, ref, errs.Unauthenticated("access token is no longer valid: the automation secret it was exchanged from was rotated or revoked")
	}
	if class, reason, err := checkSubject(subj, rec.RevokedAt != nil); err != nil {
		return nil, &refusal{subject: subj.Subject, credentialID: rec.Id, credentialKind: tokenKind, class: class, reason: reason}, err
	}
	return principalOf(subj.Subject, tokenKind, rec.Id, timestamppb.New(exp), claims.Restricted, claims.Scopes), nil, nil
}
