// Package agent is the agent service: it keeps a workspace's app
// installations and the visible agents under them in its own store,
// and asks the credential service over gRPC to issue, rotate and revoke each
// agent's API key (blg_agk_…) and rotation secret (blg_rot_…). A raw
// credential passes through this service only in the responses of
// CreateAgent, RotateAgentKey and RotateSelfKey, and in the replays kept for
// a retry with the same Idempotency-Key, which are records in the store
// sealed under a key derived from the request: for RotateSelfKey from the
// presented credentials (see replay.go), for CreateAgent and RotateAgentKey
// from the caller's credential and the body (see idempotency.go and package
// idem). A raw credential is never logged here, nor stored in plaintext.
//
// Self-rotation is rate limited per client IP (attempts with a valid API
// key, and separately failed attempts without one), and locked per client
// address and API key after repeated wrong rotation secrets (see
// RotateSelfKey). The budget of attempts with a valid API key, the lockout
// and the replays live in the store, so that they hold across every replica
// (see limits.go); the budget of failed attempts is a per-process guard
// against floods of made-up keys.
package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/credclient"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/keylock"
	"github.com/backlog/controlplane/services/kit/ratelimit"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// serviceName names this service in logs and audit events.
const serviceName = "agent"

// subjectKind is the kind of credential subject an agent is.
const subjectKind = credentialv1.SubjectKind_SUBJECT_KIND_AGENT

// DefaultStartTimeout bounds how long New waits for the credential service
// to judge a store it has just created.
const DefaultStartTimeout = 30 * time.Second

// compensateTimeout bounds a compensating call made after the caller's
// request has already failed (or been cancelled).
const compensateTimeout = 10 * time.Second

// Defaults of the self-rotation limits (the REST contract's numbers).
const (
	DefaultSelfRotationsPerIP           = 3
	DefaultSelfRotationWindow           = 15 * time.Minute
	DefaultUnauthenticatedFailuresPerIP = 30
	DefaultLockoutFailures              = 5
	DefaultLockoutDuration              = 15 * time.Minute
	DefaultIdempotencyTTL               = 10 * time.Minute
)

// Config configures the agent service.
type Config struct {
	// DataDir holds the store file, DataDir/agent.db, unless Store is set.
	DataDir string
	// Store opens the service's store; default boltstore.Dir(DataDir, Logger).
	Store  store.Opener
	Logger *zap.Logger
	// Credential is the credential service's internal API, over gRPC.
	Credential credentialv1.CredentialInternalServiceClient
	// Now is the clock; default time.Now. The rate limits, the lockout and
	// the replay window follow it too.
	Now func() time.Time

	// SelfRotationsPerIP is how many self-rotation attempts with a valid
	// API key one client IP (an IPv6 client: its /64) may make in any
	// SelfRotationWindow (default 3 per 15 minutes, the REST contract's
	// limit), across every replica sharing the store. Admin rotation is
	// not limited by it.
	SelfRotationsPerIP int
	SelfRotationWindow time.Duration
	// UnauthenticatedFailuresPerIP is how many self-rotation attempts whose
	// API key does not authenticate one client IP may make in any
	// SelfRotationWindow (default 30); beyond it, attempts from that
	// address are refused before any key is looked at. They do not spend
	// the SelfRotationsPerIP budget. This budget is each replica's own (it
	// guards the credential service against floods of made-up keys before
	// any I/O; the contract states no such limit).
	UnauthenticatedFailuresPerIP int
	// LockoutFailures wrong rotation secrets presented with one API key from
	// one client IP within LockoutDuration lock self-rotation with that key
	// from that address for LockoutDuration (default 5 and 15 minutes).
	// Other addresses, and so the holder of both credentials, are not
	// locked by them.
	LockoutFailures int
	LockoutDuration time.Duration
	// IdempotencyTTL is how long a retried self-rotation with the same
	// Idempotency-Key gets the same new pair back (default 10 minutes).
	IdempotencyTTL time.Duration
	// SweepOrphans, when set, revokes at start the credentials of subjects
	// this service has no record of (creates that died half-way; see
	// credclient.Sweeper). It runs in the background until done or Close.
	// Before it starts, a store that this start created empty is checked
	// against the credential service (credclient.CheckNewStore): if live
	// agent credentials predate it, the store was lost and New fails.
	SweepOrphans bool
	// StartTimeout bounds that check; default DefaultStartTimeout.
	StartTimeout time.Duration
}

// Service implements agentv1.AgentService.
type Service struct {
	agentv1.UnsafeAgentServiceServer

	db    store.Backend
	lg    *zap.Logger
	cred  credentialv1.CredentialInternalServiceClient
	now   func() time.Time
	rec   audit.Recorder
	errs  *errs.Table
	audit *audit.Server
	locks *keylock.Locks

	limits      selfLimits       // attempts with a valid API key, and the lockout (in the store)
	unauthPerIP *ratelimit.Keyed // attempts whose API key did not authenticate (per process)
	replays     *replayCache     // keyed self-rotations (in the store)
	refusals    refusalLog       // 429s of self-rotation, coalesced for the trail

	stopSweep context.CancelFunc
	sweepDone chan struct{} // closed after the first orphan sweep
	keepDone  chan struct{} // closed when the sweeping goroutine ended
	flushDone chan struct{}
}

// New opens the store and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.DataDir == "" && cfg.Store == nil {
		return nil, errors.New("agent: DataDir is required")
	}
	if cfg.Credential == nil {
		return nil, errors.New("agent: a credential service client is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SelfRotationsPerIP == 0 {
		cfg.SelfRotationsPerIP = DefaultSelfRotationsPerIP
	}
	if cfg.SelfRotationWindow == 0 {
		cfg.SelfRotationWindow = DefaultSelfRotationWindow
	}
	if cfg.UnauthenticatedFailuresPerIP == 0 {
		cfg.UnauthenticatedFailuresPerIP = DefaultUnauthenticatedFailuresPerIP
	}
	if cfg.LockoutFailures == 0 {
		cfg.LockoutFailures = DefaultLockoutFailures
	}
	if cfg.LockoutDuration == 0 {
		cfg.LockoutDuration = DefaultLockoutDuration
	}
	if cfg.IdempotencyTTL == 0 {
		cfg.IdempotencyTTL = DefaultIdempotencyTTL
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.SelfRotationsPerIP < 0 || cfg.SelfRotationWindow < 0 || cfg.UnauthenticatedFailuresPerIP < 0 || cfg.LockoutFailures < 0 || cfg.LockoutDuration < 0 || cfg.IdempotencyTTL < 0 {
		return nil, errors.New("agent: rate limit settings must not be negative")
	}
	lg := cfg.Logger.With(zap.String("service", serviceName))
	if cfg.Store == nil {
		cfg.Store = boltstore.Dir(cfg.DataDir, lg)
	}
	db, err := cfg.Store(serviceName, buckets)
	if err != nil {
		return nil, err // names the store and what to do
	}
	if cfg.SweepOrphans {
		if err := credclient.CheckNewStore(cfg.Credential, subjectKind, serviceName, db, cfg.StartTimeout); err != nil {
			return nil, err // names the store and what to do
		}
	}
	startCtx, cancelStart := context.WithTimeout(context.Background(), cfg.StartTimeout)
	clearLeases(startCtx, db, lg)
	clearSelfTurns(startCtx, db, lg)
	cancelStart()
	unauthPerIP := ratelimit.AtMost(cfg.UnauthenticatedFailuresPerIP, cfg.SelfRotationWindow)
	unauthPerIP.Now = cfg.Now
	svc := &Service{
		db:          db,
		lg:          lg,
		cred:        cfg.Credential,
		now:         cfg.Now,
		rec:         audit.Recorder{Service: serviceName, Now: cfg.Now},
		errs:        newErrorTable(),
		audit:       &audit.Server{DB: db},
		locks:       keylock.New(),
		unauthPerIP: ratelimit.NewKeyed(unauthPerIP),
		limits: selfLimits{perIP: cfg.SelfRotationsPerIP, window: cfg.SelfRotationWindow,
			maxFailures: cfg.LockoutFailures, lockFor: cfg.LockoutDuration},
	}
	svc.replays = newReplayCache(db, cfg.IdempotencyTTL, cfg.Now, svc.selfTurns())
	ctx, cancel := context.WithCancel(context.Background())
	svc.stopSweep, svc.sweepDone, svc.flushDone = cancel, make(chan struct{}), make(chan struct{})
	go func() {
		defer close(svc.flushDone)
		svc.flushRefusalsEvery(ctx, RefusalWindow/6)
	}()
	sweep := credclient.Sweeper{
		Client: cfg.Credential, Logger: lg, Kind: subjectKind, KindName: serviceName,
		Store: db.Info(), Before: svc.now(),
		Recorded: func(sub *credentialv1.SubjectSummary) (bool, error) { return svc.recorded(ctx, sub) },
	}
	svc.keepDone = make(chan struct{})
	go func() {
		defer close(svc.keepDone)
		var once sync.Once
		first := func() { once.Do(func() { close(svc.sweepDone) }) }
		defer first()
		if cfg.SweepOrphans {
			// On one replica at a time; again every credclient.SweepEvery.
			sweep.Keep(ctx, db, svc.now, first)
		}
	}()
	return svc, nil
}

// recorded reports whether this service holds the record of a subject.
func (s *Service) recorded(ctx context.Context, sub *credentialv1.SubjectSummary) (bool, error) {
	_, err := s.load(ctx, sub.GetWorkspaceId(), sub.GetId())
	if errors.Is(err, ErrAgentNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Register registers the AgentService and this service's own AuditService
// (its local events) on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	agentv1.RegisterAgentServiceServer(g, s)
	s.audit.Register(g)
}

// Errors maps this service's sentinel errors to gRPC codes.
func (s *Service) Errors() *errs.Table { return s.errs }

// NoAuth reports the methods that skip the kit's bearer authentication:
// only RotateSelfKey. It still takes the agent's current API key as Bearer,
// but authenticates it itself, in the handler: a retry with the same
// Idempotency-Key carries the old key, already dead, and must get the
// stored result rather than a 401 from the interceptor. Every other path
// through RotateSelfKey authenticates the key with the credential service
// exactly as the interceptor would (uncached).
func (s *Service) NoAuth(fullMethod string) bool {
	return fullMethod == agentv1.AgentService_RotateSelfKey_FullMethodName
}

// DB is the service's store.
func (s *Service) DB() store.Backend { return s.db }

// Close closes the store after pending writes (refusal summaries
// included).
func (s *Service) Close() error {
	s.stopSweep()
	<-s.keepDone
	<-s.flushDone // pending refusal summaries are written first
	return s.db.Close()
}

// credErr turns a failed call to the credential service into an error for
// our caller (see credclient.Err).
func (s *Service) credErr(ctx context.Context, op string, err error) error {
	return credclient.Err(ctx, s.lg, op, err, ErrAgentNotFound)
}

// revokeSubject revokes every credential of an agent that was not recorded
// (a compensating action; see credclient.Revoke).
func (s *Service) revokeSubject(ctx context.Context, ws, id, why string) {
	credclient.Revoke(ctx, s.cred, s.lg, "agent", ws, id, why)
}

// recordFailure writes a failure audit event in a transaction of its own.
// Best effort: the request has already failed and the caller learns that.
func (s *Service) recordFailure(ctx context.Context, ws, action, targetKind, id string, cause error) {
	if ws == "" {
		return
	}
	ev := s.rec.Event(ctx, ws, action, targetKind, id, audit.Failure, s.failureDetail(cause))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
	defer cancel()
	if err := audit.Record(ctx, s.db, ev); err != nil {
		s.lg.Warn("could not record a failure audit event", zap.String("action", action), zap.String("target-id", id), zap.Error(err))
	}
}

// failureDetail describes why a request failed, for the audit trail: the
// status code and reason, never a message (it could echo input).
func (s *Service) failureDetail(cause error) string {
	switch {
	case errors.Is(cause, store.ErrUnavailable):
		return "failed: store unavailable"
	case errors.Is(cause, ErrCredentialUnavailable):
		return "failed: credential service unavailable"
	}
	st, _ := s.errs.ToStatus(cause)
	if r := errs.Reason(st); r != "" {
		return "failed: " + status.Code(st).String() + " " + r
	}
	return "failed: " + status.Code(st).String()
}
