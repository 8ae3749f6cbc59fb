// Package automation is the automation service: it keeps a workspace's
// automations (scripts, CI jobs, integrations) in its own store and asks
// the credential service over gRPC to issue, rotate and revoke their secrets.
// A raw secret passes through this service exactly twice — in the responses
// of CreateAutomation and RotateAutomationSecret — and is never logged here,
// nor stored in plaintext: a call made with an Idempotency-Key keeps its
// response for a retry, sealed under a key derived from the request (see
// idempotency.go and package idem).
package automation

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/credclient"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/keylock"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// serviceName names this service in logs and audit events.
const serviceName = "automation"

// subjectKind is the kind of credential subject an automation is.
const subjectKind = credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION

// DefaultStartTimeout bounds how long New waits for the credential service
// to judge a store it has just created.
const DefaultStartTimeout = 30 * time.Second

// compensateTimeout bounds a compensating call made after the caller's
// request has already failed (or been cancelled).
const compensateTimeout = 10 * time.Second

// Config configures the automation service.
type Config struct {
	// DataDir holds the store file, DataDir/automation.db, unless Store is
	// set.
	DataDir string
	// Store opens the service's store; default boltstore.Dir(DataDir, Logger).
	Store  store.Opener
	Logger *zap.Logger
	// Credential is the credential service's internal API, over gRPC.
	Credential credentialv1.CredentialInternalServiceClient
	// Now is the clock; default time.Now.
	Now func() time.Time
	// SweepOrphans, when set, revokes at start the credentials of subjects
	// this service has no record of (creates that died half-way; see
	// credclient.Sweeper). It runs in the background until done or Close.
	// Before it starts, a store that this start created empty is checked
	// against the credential service (credclient.CheckNewStore): if live
	// automation credentials predate it, the store was lost and New fails.
	SweepOrphans bool
	// StartTimeout bounds that check; default DefaultStartTimeout.
	StartTimeout time.Duration
}

// Service implements automationv1.AutomationService.
type Service struct {
	automationv1.UnsafeAutomationServiceServer

	db    store.Backend
	lg    *zap.Logger
	cred  credentialv1.CredentialInternalServiceClient
	now   func() time.Time
	rec   audit.Recorder
	errs  *errs.Table
	audit *audit.Server
	locks *keylock.Locks
	// pending tracks the writes this process makes while their
	// credentials are being issued (see pending.go).
	pending *pendingWrites

	stopSweep context.CancelFunc
	sweepDone chan struct{} // closed after the first orphan sweep
	keepDone  chan struct{} // closed when the sweeping goroutine ended
	// promoteDone is closed when promoteLoop ended.
	promoteDone chan struct{}
}

// New opens the store and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.DataDir == "" && cfg.Store == nil {
		return nil, errors.New("automation: DataDir is required")
	}
	if cfg.Credential == nil {
		return nil, errors.New("automation: a credential service client is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
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
	cancelStart()
	svc := &Service{
		db:    db,
		lg:    lg,
		cred:  cfg.Credential,
		now:   cfg.Now,
		rec:   audit.Recorder{Service: serviceName, Now: cfg.Now},
		errs:  newErrorTable(),
		audit: &audit.Server{DB: db},
		locks: keylock.New(),

		pending: newPendingWrites(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	svc.stopSweep, svc.sweepDone = cancel, make(chan struct{})
	sweep := credclient.Sweeper{
		Client: cfg.Credential, Logger: lg, Kind: subjectKind, KindName: serviceName,
		Store: db.Info(), Before: svc.now(),
		Recorded: func(sub *credentialv1.SubjectSummary) (bool, error) { return svc.recorded(ctx, sub) },
		Settle:   svc.settlePending,
	}
	svc.keepDone, svc.promoteDone = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(svc.promoteDone)
		svc.promoteLoop(ctx)
	}()
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

// recorded reports whether this service holds the record of a subject, and
// repairs the record's secret metadata when a rotation was killed between
// the credential service rotating and the record being written (the record
// then names the revoked secret).
func (s *Service) recorded(ctx context.Context, sub *credentialv1.SubjectSummary) (bool, error) {
	ws, id := sub.GetWorkspaceId(), sub.GetId()
	if _, err := s.load(ctx, ws, id); errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	var live *credentialv1.CredentialInfo
	for _, c := range sub.GetLiveCredentials() {
		if c.GetKind() == credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET {
			live = c
		}
	}
	if live == nil {
		return true, nil
	}
	si := secretInfo(live)
	var repaired bool
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		repaired = false
		cur, err := getAutomation(tx, ws, id)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		if cur.GetCredential().GetId() == si.GetId() || !newer(si, cur.GetCredential()) {
			return nil
		}
		cur.Credential = si
		repaired = true
		if err := putAutomation(tx, cur); err != nil {
			return err
		}
		return clearPending(tx, ws, id)
	})
	if err != nil {
		return true, err
	}
	if repaired {
		s.lg.Info("repaired secret metadata left stale by an interrupted rotation", zap.String("automation-id", id), zap.String("credential-id", si.GetId()))
	}
	return true, nil
}

// Register registers the AutomationService and this service's own
// AuditService (its local events) on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	automationv1.RegisterAutomationServiceServer(g, s)
	s.audit.Register(g)
}

// Errors maps this service's sentinel errors to gRPC codes.
func (s *Service) Errors() *errs.Table { return s.errs }

// NoAuth reports the methods that skip bearer authentication: none. Every
// AutomationService method and the audit list need a credential.
func (s *Service) NoAuth(fullMethod string) bool { return false }

// DB is the service's store.
func (s *Service) DB() store.Backend { return s.db }

// Close closes the store after pending writes.
func (s *Service) Close() error {
	s.stopSweep()
	<-s.keepDone
	<-s.promoteDone
	// Remove the markers of writes known live now rather than ask the
	// credential service about them after the restart.
	ctx, cancel := context.WithTimeout(context.Background(), compensateTimeout)
	defer cancel()
	for todo := s.pending.lives(s.promoteBatch()); len(todo) > 0; todo = s.pending.lives(s.promoteBatch()) {
		if err := s.promote(ctx, todo); err != nil {
			s.lg.Debug("could not remove pending markers at close; they are settled after the restart", zap.Error(err))
			break
		}
	}
	return s.db.Close()
}

// credErr turns a failed call to the credential service into an error for
// our caller (see credclient.Err).
func (s *Service) credErr(ctx context.Context, op string, err error) error {
	return credclient.Err(ctx, s.lg, op, err, ErrNotFound)
}

// revokeSubject revokes every credential of an automation that was not
// recorded (a compensating action; see credclient.Revoke).
func (s *Service) revokeSubject(ctx context.Context, ws, id, why string) {
	credclient.Revoke(ctx, s.cred, s.lg, "automation", ws, id, why)
}

// recordRefusal records a write refused for want of authority (a caller
// that may not grant, manage or rotate what it asked for): outcome failure,
// the reason in the detail. The caller is authenticated, so there is at most
// one record per request it makes.
func (s *Service) recordRefusal(ctx context.Context, ws, action, id string, cause error) {
	ev := s.rec.Event(ctx, ws, action, "automation", id, audit.Failure, "refused: "+cause.Error())
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
	defer cancel()
	if err := audit.Record(ctx, s.db, ev); err != nil {
		s.lg.Warn("could not record a refusal audit event", zap.String("action", action), zap.String("automation-id", id), zap.Error(err))
	}
}

// recordFailure writes a failure audit event in a transaction of its own.
// Best effort: the request has already failed and the caller learns that.
func (s *Service) recordFailure(ctx context.Context, ws, action, id string, cause error) {
	ev := s.rec.Event(ctx, ws, action, "automation", id, audit.Failure, failureDetail(cause))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
	defer cancel()
	if err := audit.Record(ctx, s.db, ev); err != nil {
		s.lg.Warn("could not record a failure audit event", zap.String("action", action), zap.String("automation-id", id), zap.Error(err))
	}
}

// failureDetail describes a failure for an audit event by its kind (never
// its message): "failed: Unavailable", "failed: store unavailable", ….
func failureDetail(cause error) string {
	switch st, ok := status.FromError(cause); {
	case ok:
		return "failed: " + st.Code().String()
	case errors.Is(cause, store.ErrUnavailable):
		return "failed: store unavailable"
	case errors.Is(cause, ErrCredentialUnavailable):
		return "failed: credential service unavailable"
	}
	return "failed"
}
