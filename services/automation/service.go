// Package automation is the automation service: it keeps a workspace's
// automations (scripts, CI jobs, integrations) in its own bbolt store and asks
// the credential service over gRPC to issue, rotate and revoke their secrets.
// A raw secret passes through this service exactly twice — in the responses
// of CreateAutomation and RotateAutomationSecret — and is never stored or
// logged here.
package automation

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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
)

// serviceName names this service in logs and audit events.
const serviceName = "automation"

// compensateTimeout bounds a compensating call made after the caller's
// request has already failed (or been cancelled).
const compensateTimeout = 10 * time.Second

// Config configures the automation service.
type Config struct {
	// DataDir holds the store file, DataDir/automation.db.
	DataDir string
	Logger  *zap.Logger
	// Credential is the credential service's internal API, over gRPC.
	Credential credentialv1.CredentialInternalServiceClient
	// Now is the clock; default time.Now.
	Now func() time.Time
	// SweepOrphans, when set, revokes at start the credentials of subjects
	// this service has no record of (creates that died half-way; see
	// credclient.Sweep). It runs in the background until done or Close.
	SweepOrphans bool
}

// Service implements automationv1.AutomationService.
type Service struct {
	automationv1.UnsafeAutomationServiceServer

	db    *store.DB
	lg    *zap.Logger
	cred  credentialv1.CredentialInternalServiceClient
	now   func() time.Time
	errs  *errs.Table
	audit *audit.Server
	locks *keylock.Locks

	stopSweep context.CancelFunc
	sweepDone chan struct{}
}

// New opens the store and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.DataDir == "" {
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
	lg := cfg.Logger.With(zap.String("service", serviceName))
	db, err := store.Open(filepath.Join(cfg.DataDir, "automation.db"), buckets, lg)
	if err != nil {
		return nil, fmt.Errorf("automation: %w", err)
	}
	svc := &Service{
		db:    db,
		lg:    lg,
		cred:  cfg.Credential,
		now:   cfg.Now,
		errs:  newErrorTable(),
		audit: &audit.Server{DB: db},
		locks: keylock.New(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	svc.stopSweep, svc.sweepDone = cancel, make(chan struct{})
	go func() {
		defer close(svc.sweepDone)
		if cfg.SweepOrphans {
			credclient.Sweep(ctx, cfg.Credential, lg, credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, "automation", time.Now(), svc.recorded)
		}
	}()
	return svc, nil
}

// recorded reports whether this service holds the record of a subject, and
// repairs the record's secret metadata when a rotation was killed between
// the credential service rotating and the record being written (the record
// then names the revoked secret).
func (s *Service) recorded(sub *credentialv1.SubjectSummary) (bool, error) {
	ws, id := sub.GetWorkspaceId(), sub.GetId()
	if _, err := s.load(ws, id); errors.Is(err, ErrNotFound) {
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
	return true, s.db.Update(context.Background(), func(tx *store.Tx) error {
		cur := &automationv1.Automation{}
		if ok, err := store.Get(tx, automationsBucket, automationKey(ws, id), cur); err != nil || !ok {
			return err
		}
		if cur.GetCredential().GetId() == si.GetId() || !newer(si, cur.GetCredential()) {
			return nil
		}
		s.lg.Info("repaired secret metadata left stale by an interrupted rotation", zap.String("automation-id", id), zap.String("credential-id", si.GetId()))
		cur.Credential = si
		return store.Put(tx, automationsBucket, automationKey(ws, id), cur)
	})
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
func (s *Service) DB() *store.DB { return s.db }

// Close closes the store after pending writes.
func (s *Service) Close() error {
	s.stopSweep()
	<-s.sweepDone
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

// recordFailure writes a failure audit event in a transaction of its own.
// Best effort: the request has already failed and the caller learns that.
func (s *Service) recordFailure(ctx context.Context, ws, action, id string, cause error) {
	detail := "failed"
	if st, ok := status.FromError(cause); ok {
		detail = "failed: " + st.Code().String()
	} else if errors.Is(cause, store.ErrUnavailable) {
		detail = "failed: store unavailable"
	} else if errors.Is(cause, ErrCredentialUnavailable) {
		detail = "failed: credential service unavailable"
	}
	ev := audit.Event(ctx, serviceName, ws, action, "automation", id, audit.Failure, detail)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
	defer cancel()
	if err := audit.Record(ctx, s.db, ev); err != nil {
		s.lg.Warn("could not record a failure audit event", zap.String("action", action), zap.String("automation-id", id), zap.Error(err))
	}
}
