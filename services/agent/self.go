package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/ratelimit"
	"github.com/backlog/controlplane/services/kit/server"
	"github.com/backlog/controlplane/services/kit/store"
)

// IdempotencyKeyMetadata is the gRPC metadata key the gateway forwards the
// Idempotency-Key header in.
const IdempotencyKeyMetadata = "idempotency-key"

// GetSelf returns the calling agent's own record (Bearer: its API key).
func (s *Service) GetSelf(ctx context.Context, _ *agentv1.GetSelfRequest) (*agentv1.GetSelfResponse, error) {
	p := auth.FromContext(ctx)
	if p == nil {
		return nil, errs.Unauthenticated(auth.MsgMissing)
	}
	if p.GetSubjectKind() != credentialv1.SubjectKind_SUBJECT_KIND_AGENT {
		return nil, ErrNotAgent
	}
	a, err := s.load(ctx, p.GetWorkspaceId(), p.GetSubjectId())
	if err != nil {
		return nil, err
	}
	if a.GetRevoked() {
		return nil, ErrAgentRevoked
	}
	return &agentv1.GetSelfResponse{Agent: a}, nil
}

// RotateSelfKey rotates the calling agent's API key and rotation secret
// together. The current API key is the Bearer credential and the current
// rotation secret is in the body; the old pair is dead when this returns.
//
// The kit interceptor skips this method (see NoAuth): the handler
// authenticates the key itself, with the credential service, after the
// steps that need no I/O. In order:
//
//  1. 400 without a rotation secret (or with a malformed Idempotency-Key);
//     401 without a well-formed API key as Bearer, or with a rotation secret
//     that is not one — all decided without I/O.
//  2. A retry with the same Idempotency-Key and the same presented pair
//     within the replay window gets the stored result (while its pair is
//     still live) and counts against no limit; a retry that arrives while
//     the first request is in flight waits for it. Replays are kept in the
//     store, sealed (see replay.go): a retry may land on any replica.
//  3. 429 when the client IP has spent its budget of attempts whose API key
//     did not authenticate (UnauthenticatedFailuresPerIP): checked before
//     any I/O, so that a flood of made-up keys costs nothing. The attempt
//     takes a token of that budget here and gives it back as soon as its
//     key authenticates (or the credential service cannot tell), so that
//     only failures spend it — exactly, however many run at once. This
//     budget is each replica's own: it exists to cost nothing.
//  4. The API key is authenticated (uncached): 401 invalid, 403 revoked or
//     suspended.
//  5. 429 while this API key is locked out at this client IP after
//     repeated wrong rotation secrets presented with it from there.
//  6. 429 when the client IP has made its attempts with a valid API key for
//     the window (SelfRotationsPerIP: the REST contract's 3 per 15
//     minutes). Only here, after authentication, is that budget spent: made
//     up keys cannot spend it for the agents behind an address. Steps 5
//     and 6 are one update of the store, so the budget holds across
//     replicas (see limits.go).
//  7. 403 when the agent is revoked or has no rotation secret configured.
//  8. The credential service rotates both as a compare-and-swap on the
//     presented pair: of concurrent rotations with one pair, exactly one
//     wins and the others get 401. When the swap fails while the API key is
//     still live, the rotation secret was wrong: 401, and a failure towards
//     the lockout of this key at this address. (A lost race is not counted:
//     its key is dead too.) Attempts for one agent take turns, on every
//     replica, from step 7 on (after checking the lock again); each is
//     counted as a failure before the swap and taken back unless it was
//     one, so that no guess goes uncounted whatever happens to the request.
//
// The lockout is keyed by client address and API key, not by agent: a lock
// of the agent let anyone holding only a leaked API key lock its holder out,
// again and again. A request presenting both correct credentials is locked
// out only at an address where wrong secrets were sent with its key; while
// locked there, it is refused like a guess would be, so that a lock gives a
// guesser no answer. Guessing the rotation secret (256 random bits) stays
// bounded by each address's budget of step 6, which wrong secrets spend.
//
// Every attempt whose API key authenticates (step 5 on) is in the agent's
// workspace audit trail, success or failure, and so is every replay; the
// 429s of steps 5 and 6, which spend nothing, at most once per agent,
// address, reason and RefusalWindow, with the count of those coalesced. Before that the caller is not known to belong to any workspace
// (the credential service refuses a dead, suspended or revoked key without
// saying whose it is); such refusals are logged with the client IP.
func (s *Service) RotateSelfKey(ctx context.Context, req *agentv1.RotateSelfKeyRequest) (*agentv1.RotateSelfKeyResponse, error) {
	secret := req.GetRotationSecret()
	if strings.TrimSpace(secret) == "" {
		return nil, errs.Invalid(fieldRotationSecret, `is required: send {"rotationSecret": "blg_rot_…"} with the agent's current API key as Bearer`)
	}
	idemKey, err := idempotencyKey(ctx)
	if err != nil {
		return nil, err
	}
	apiKey, err := presentedAPIKey(ctx)
	if err != nil {
		return nil, err
	}
	if credfmt.KindOf(secret) != credfmt.RotationSecret {
		return nil, ErrInvalidRotationSecret
	}

	var slot *replaySlot
	if idemKey != "" {
		hit, sl, err := s.replays.begin(ctx, idemKey, apiKey, secret)
		if err != nil {
			return nil, err
		}
		if hit != nil {
			return s.replay(ctx, hit)
		}
		slot = sl
		defer slot.abandon(ctx) // unless completed
	}

	ip := server.ClientIP(ctx)
	ipKey := ratelimit.IPKey(ip)
	if ok, wait := s.unauthPerIP.Allow(ipKey); !ok {
		s.lg.Warn("self-rotation refused: too many attempts with an invalid API key from one address",
			zap.String("client-ip", ip), zap.String("request-id", server.RequestID(ctx)), zap.Duration("retry-after", wait))
		metrics.RateLimited.WithLabelValues("agent_self_rotation_failures_per_ip").Inc()
		return nil, ratelimit.Exhausted(Domain, reasonFailuresLimited,
			fmt.Sprintf("too many rotation attempts with an invalid API key from this address; retry after %s (an owner or admin can rotate the agent's credentials meanwhile)", roundSeconds(wait)), wait)
	}
	p, err := s.authenticateKey(ctx, apiKey)
	if !errors.Is(err, ErrInvalidAPIKey) {
		s.unauthPerIP.Refund(ipKey) // only keys that do not authenticate spend that budget
	}
	if err != nil {
		s.lg.Info("self-rotation refused: the API key was not accepted", zap.String("client-ip", ip),
			zap.String("request-id", server.RequestID(ctx)), zap.String("reason", errs.Reason(mustStatus(s, err))))
		return nil, err
	}
	ctx = auth.WithPrincipal(ctx, p) // the actor of the audit events
	ws, id := p.GetWorkspaceId(), p.GetSubjectId()
	fail := func(err error) (*agentv1.RotateSelfKeyResponse, error) {
		s.recordFailure(ctx, ws, actionRotateSelf, targetAgent, id, err)
		s.lg.Info("self-rotation refused", zap.String("agent-id", id), zap.String("workspace-id", ws),
			zap.String("client-ip", ip), zap.String("reason", errs.Reason(mustStatus(s, err))))
		return nil, err
	}
	// A 429 spends nothing, so nothing bounds how often it can be asked
	// for: its records are coalesced (see RefusalWindow).
	refuse := func(reason string, err error) (*agentv1.RotateSelfKeyResponse, error) {
		s.recordRefusal(ctx, ws, id, id+"|"+ipKey+"|"+reason, err)
		s.lg.Info("self-rotation refused", zap.String("agent-id", id), zap.String("workspace-id", ws),
			zap.String("client-ip", ip), zap.String("reason", reason))
		return nil, err
	}
	lockCred := lockoutCredential(p)
	lockedOut := func(wait time.Duration) (*agentv1.RotateSelfKeyResponse, error) {
		metrics.RateLimited.WithLabelValues("agent_lockout").Inc()
		return refuse(reasonLockedOut, ratelimit.Exhausted(Domain, reasonLockedOut,
			fmt.Sprintf("self-rotation with this API key from this address is locked for %s after repeated wrong rotation secrets; an owner or admin can rotate the agent's credentials", roundSeconds(wait)), wait))
	}
	// A locked-out attempt spends no budget (the lock is checked again once
	// it is this attempt's turn, below). Both are decided in the store, which
	// every replica shares.
	adm, err := s.admitSelfRotation(ctx, ipKey, lockCred)
	if err != nil {
		return nil, err
	}
	if adm.locked {
		return lockedOut(adm.wait)
	}
	if adm.limited {
		metrics.RateLimited.WithLabelValues("agent_self_rotation_per_ip").Inc()
		return refuse(reasonRateLimited, ratelimit.Exhausted(Domain, reasonRateLimited,
			fmt.Sprintf("too many rotation attempts from this address; retry after %s (an owner or admin can rotate the agent's credentials meanwhile)", roundSeconds(adm.wait)), adm.wait))
	}

	// Attempts for one agent take turns from here, in this process (a lock)
	// and across replicas (a lease in the store), so that the lockout counts
	// every wrong secret before the next attempt is let through.
	unlock, err := s.locks.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	turnKey := selfAgentTurnKey(ws, id)
	turn, err := s.selfTurns().Take(ctx, s.db, turnKey)
	if err != nil {
		return nil, err
	}
	defer s.releaseTurn(ctx, turnKey, turn)
	// The attempt counts as a wrong secret until it is known not to be one:
	// whatever happens to this request, no guess goes uncounted.
	reserved, locked, wait, err := s.reserveSelfFailure(ctx, ipKey, lockCred)
	if err != nil {
		return nil, err
	}
	if locked {
		return lockedOut(wait)
	}
	counted := false // the reservation stands: a wrong secret
	defer func() {
		if !counted {
			s.restoreSelfFailure(ctx, reserved)
		}
	}()
	a, err := s.load(ctx, ws, id)
	if errors.Is(err, ErrAgentNotFound) {
		// Live credentials of an agent we have no record of: only a
		// failed create's compensation could leave that.
		s.lg.Error("an API key authenticated for an agent with no record", zap.String("agent-id", id), zap.String("workspace-id", ws))
		return nil, ErrInvalidAPIKey
	}
	if err != nil {
		return nil, err
	}
	if a.GetRevoked() {
		return fail(ErrAgentRevoked)
	}
	configured, err := s.hasRotationSecret(ctx, ws, id)
	if err != nil {
		return nil, err
	}
	if !configured {
		return fail(ErrNoRotationSecret)
	}
	// From here the rotation is seen through even if the caller gives up:
	// a client that lost the response retries with its Idempotency-Key and
	// must find the result (and the trail must show the rotation).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
	defer cancel()
	rotated, err := s.cred.RotateCredentials(rctx, &credentialv1.RotateCredentialsRequest{
		WorkspaceId: ws, SubjectId: id, Kinds: agentKinds, ExpectCredentials: []string{apiKey, secret},
	})
	if status.Code(err) == codes.Unauthenticated {
		// The pair is not live. If the API key still is, the rotation
		// secret was wrong: a failure towards the lockout. If not, another
		// request rotated the pair first (a lost race, not a guess).
		err = ErrAlreadyRotated
		if _, aerr := s.authenticateKey(rctx, apiKey); aerr == nil {
			err = ErrInvalidRotationSecret
			counted = true
			if reserved.locksOut() {
				s.lg.Warn("self-rotation with an API key locked at one address after repeated wrong rotation secrets",
					zap.String("agent-id", id), zap.String("workspace-id", ws), zap.String("client-ip", ip))
			}
		} else if status.Code(mustStatus(s, aerr)) != codes.Unauthenticated {
			err = aerr // suspended, revoked or unavailable meanwhile
		}
		return fail(err)
	}
	if err != nil {
		return fail(s.selfCredErr(rctx, "rotate", err, ErrAlreadyRotated))
	}
	// Rotated: the key the reservation counts for is dead, so it needs no
	// taking back.
	counted = true
	pair := rotated.GetCredentials()
	if err := checkPair(pair); err != nil {
		return nil, err
	}
	ev := s.rec.Event(ctx, ws, actionRotateSelf, targetAgent, id, audit.Success, "credentials="+credIDs(pair))
	if _, err := s.recordRotation(rctx, ws, id, pair, ev); err != nil {
		// Fail-closed: the old pair is dead and the new one is not handed
		// out unrecorded; an owner or admin rotates the agent.
		return fail(err)
	}
	out := &agentv1.RotateSelfKeyResponse{
		Message: rotationMessage, ApiKey: pair[0].GetCredential(), RotationSecret: pair[1].GetCredential(),
		AgentId: id, AgentName: a.GetName(),
	}
	if err := slot.complete(ctx, out, ws); err != nil {
		// The rotation stands; only a retry would miss the replay.
		s.lg.Error("could not keep a self-rotation for replay", zap.String("agent-id", id), zap.Error(err))
	}
	s.lg.Info("agent credentials rotated by the agent", zap.String("agent-id", id), zap.String("workspace-id", ws),
		zap.String("credential-ids", credIDs(pair)), zap.Bool("idempotency-key", idemKey != ""))
	return out, nil
}

// replay answers a retry with the stored result, provided its pair is still
// the live one: if it has been rotated again or revoked since, the retry is
// answered as any request with a dead key would be.
func (s *Service) replay(ctx context.Context, hit *replayHit) (*agentv1.RotateSelfKeyResponse, error) {
	resp, err := s.cred.Authenticate(forwardCaller(ctx), &credentialv1.AuthenticateRequest{Credential: hit.resp.GetApiKey()})
	if err != nil {
		err = s.selfCredErr(ctx, "authenticate", err, ErrInvalidAPIKey)
		if errors.Is(err, ErrInvalidAPIKey) {
			s.forgetReplay(ctx, hit.id) // dead for good; a suspension may be lifted
		}
		return nil, err
	}
	p := resp.GetPrincipal()
	if p.GetSubjectId() != hit.agentID || p.GetWorkspaceId() != hit.ws {
		s.forgetReplay(ctx, hit.id)
		return nil, ErrInvalidAPIKey
	}
	ctx = auth.WithPrincipal(ctx, p)
	ev := s.rec.Event(ctx, hit.ws, actionRotateSelfReplay, targetAgent, hit.agentID, audit.Success,
		"the same pair returned again for a retry with the same Idempotency-Key; nothing rotated")
	if err := audit.Record(ctx, s.db, ev); err != nil {
		return nil, err
	}
	s.lg.Info("self-rotation replayed for a retry", zap.String("agent-id", hit.agentID), zap.String("workspace-id", hit.ws))
	return hit.resp, nil
}

// authenticateKey resolves the presented API key with the credential
// service, uncached, as the kit interceptor would.
func (s *Service) authenticateKey(ctx context.Context, apiKey string) (*auth.Principal, error) {
	resp, err := s.cred.Authenticate(forwardCaller(ctx), &credentialv1.AuthenticateRequest{Credential: apiKey})
	if err != nil {
		return nil, s.selfCredErr(ctx, "authenticate", err, ErrInvalidAPIKey)
	}
	p := resp.GetPrincipal()
	if p.GetSubjectKind() != credentialv1.SubjectKind_SUBJECT_KIND_AGENT ||
		p.GetCredentialKind() != credentialv1.CredentialKind_CREDENTIAL_KIND_AGENT_KEY || p.GetSubjectId() == "" || p.GetWorkspaceId() == "" {
		return nil, ErrInvalidAPIKey
	}
	return p, nil
}

// forwardCaller tells the credential service, as the kit's authenticator
// does, whom an Authenticate call is about: the end client's IP and the
// request id, so that its audit record of a refused (suspended, revoked) key
// names them rather than this service's address. It believes them because
// this service presents the service credential.
func forwardCaller(ctx context.Context) context.Context {
	var kv []string
	if ip := server.ClientIP(ctx); ip != "" {
		kv = append(kv, clientip.MetadataKey, ip)
	}
	if id := server.RequestID(ctx); id != "" {
		kv = append(kv, server.RequestIDKey, id)
	}
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// lockoutCredential names the presented API key for the lockout: its
// credential id (never the key).
func lockoutCredential(p *auth.Principal) string {
	if c := p.GetCredentialId(); c != "" {
		return c
	}
	return "agent:" + p.GetSubjectId()
}

// selfCredErr maps a credential service failure on the self-rotation path,
// where Unauthenticated is about the caller's own credential (unauth) and
// PermissionDenied (revoked, suspended) is told as the credential service
// words it.
func (s *Service) selfCredErr(ctx context.Context, op string, err error, unauth error) error {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return unauth
	case codes.PermissionDenied:
		return status.Convert(err).Err()
	case codes.NotFound:
		// The subject is gone or revoked at the credential service (a
		// revocation raced this request).
		return ErrAgentRevoked
	}
	return s.credErr(ctx, op, err)
}

// hasRotationSecret reports whether the agent has a rotation secret on
// record.
func (s *Service) hasRotationSecret(ctx context.Context, ws, id string) (bool, error) {
	var ok bool
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		ok, err = hasCredentialInfo(tx, ws, id, credKeyRotationSecret)
		return err
	})
	return ok, err
}

// presentedAPIKey returns the Bearer credential if it is a well-formed agent
// API key. The messages are the kit interceptor's where they apply.
func presentedAPIKey(ctx context.Context) (string, error) {
	raw := auth.Bearer(ctx)
	if raw == "" {
		return "", errs.Unauthenticated(auth.MsgMissing)
	}
	parsed, err := credfmt.Parse(raw)
	if err != nil {
		return "", errs.Unauthenticated(err.Error())
	}
	switch parsed.Kind {
	case credfmt.AgentKey:
		return raw, nil
	case credfmt.RotationSecret:
		return "", errs.Unauthenticated(auth.MsgRotationSecret)
	}
	return "", ErrInvalidAPIKey
}

// idempotencyKey returns the call's Idempotency-Key ("" when none).
func idempotencyKey(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(IdempotencyKeyMetadata)
	if len(v) == 0 {
		return "", nil
	}
	if len(v) > 1 {
		return "", errs.Invalid(fieldIdempotencyKey, "send one Idempotency-Key")
	}
	return v[0], validIdempotencyKey(v[0])
}

// mustStatus is the status an error is answered with (for log fields).
func mustStatus(s *Service, err error) error {
	st, _ := s.errs.ToStatus(err)
	return st
}

// roundSeconds rounds a wait up to whole seconds, for messages.
func roundSeconds(d time.Duration) time.Duration {
	return (d + time.Second - 1) / time.Second * time.Second
}
