// Package vault is the secret vault service: it keeps a workspace's secrets
// (API keys, tokens, passwords) encrypted in its own store, shows their
// metadata to members, and uses their values on the workspace's behalf — by
// substituting them into the headers of HTTP Request steps it sends itself,
// and by handing integration secrets to trusted internal services through the
// gRPC-only VaultInternalService. A value is decrypted only in memory, only
// when a request needs it; it is never returned by the public API, logged,
// put in an error message or an audit event, or stored in plaintext.
//
// Values are sealed with envelope encryption (see crypto.go): a per-workspace
// data key, wrapped by a key-encryption key loaded from a file at start.
// Without that key the vault is sealed: metadata reads work, every value
// operation is refused.
package vault

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/server"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// serviceName names this service in logs and audit events.
const serviceName = "vault"

// ServiceTokenMetadataKey is the gRPC metadata key VaultInternalService
// callers send the service credential in (auth.ServiceTokenKey).
const ServiceTokenMetadataKey = auth.ServiceTokenKey

// Defaults for HTTP Request steps.
const (
	DefaultEgressTimeout          = 10 * time.Second
	DefaultEgressMaxResponseBytes = 1 << 20
)

// maxOpsPerUpdate bounds the writes of one update that writes an unbounded
// number of items (audit events for many secrets, a rewrap), below
// store.DefaultLimits.
const maxOpsPerUpdate = 100

// auditTimeout bounds an audit write made after the caller's request has
// already been decided (or cancelled).
const auditTimeout = 10 * time.Second

// Config configures the vault.
type Config struct {
	// DataDir holds the store file, DataDir/vault.db, when Store is not set.
	DataDir string
	// Store opens the vault's store (named "vault"); default
	// boltstore.Dir(DataDir, Logger).
	Store  store.Opener
	Logger *zap.Logger
	// KEKFile is the key-encryption key file (see LoadKEKFile and
	// GenerateKEKFile). Empty: the vault starts sealed.
	KEKFile string
	// PreviousKEKFiles are older key-encryption keys, loaded only to unwrap
	// data keys they still wrap; at start every such data key is rewrapped
	// with KEKFile's key (completing an interrupted rotation), after which
	// the previous keys are dropped from memory.
	PreviousKEKFiles []string
	// KEKPKCS11, instead of KEKFile: the key-encryption key is a key in a
	// PKCS#11 token (see pkcs11.go); PreviousKEKFiles may go with it.
	KEKPKCS11 PKCS11Config
	// EgressCAFile holds extra PEM CA certificates trusted, besides the
	// system roots, by HTTP Request steps.
	EgressCAFile string
	// EgressAllowPrivate lets HTTP Request steps reach loopback, private,
	// link-local and other non-public addresses (off: SSRF guard).
	EgressAllowPrivate bool
	// EgressTimeout bounds one HTTP Request step, from dial to the last byte
	// of the response (default 10s).
	EgressTimeout time.Duration
	// EgressMaxResponseBytes caps the response body returned (default 1 MiB);
	// beyond it the body is truncated and flagged.
	EgressMaxResponseBytes int
	// EgressMaxStepsPerWorkspace caps the HTTP Request steps running at
	// once in one workspace (default DefaultEgressMaxStepsPerWorkspace);
	// beyond it a step is refused with ResourceExhausted and a RetryInfo,
	// sending nothing.
	EgressMaxStepsPerWorkspace int
	// ServiceToken is the control plane's service credential (blg_svc_…,
	// the one backlogd loads for every service). VaultInternalService calls
	// (Resolve, RotateKek) must present it in the metadata key
	// x-backlog-service-token (auth.ServiceCredentials). Empty: that API is
	// refused.
	ServiceToken string
	// Now is the clock; default time.Now.
	Now func() time.Time

	// EventPoll is how often pending events are fanned out and due
	// deliveries attempted (default DefaultEventPoll).
	EventPoll time.Duration
	// ReminderInterval is how often secrets are checked for expiry
	// reminders (default DefaultReminderInterval).
	ReminderInterval time.Duration
	// DeliveryBackoff is the wait after a delivery's first failed attempt,
	// doubled after each further one up to an hour (default
	// DefaultDeliveryBackoff); DeliveryAttempts is how many attempts are
	// made before a delivery is given up (default DefaultDeliveryAttempts).
	DeliveryBackoff  time.Duration
	DeliveryAttempts int
}

// Service implements vaultv1.VaultServiceServer and
// vaultv1.VaultInternalServiceServer.
type Service struct {
	vaultv1.UnsafeVaultServiceServer
	vaultv1.UnsafeVaultInternalServiceServer

	db           store.Backend
	lg           *zap.Logger
	now          func() time.Time
	rec          audit.Recorder
	errs         *errs.Table
	audit        *audit.Server
	keys         *keyring
	dks          dekCache // data keys unwrapped (see dekcache.go)
	rotateMu     sync.Mutex
	ha           kekHA
	egress       *http.Client
	allowPrivate bool
	timeout      time.Duration
	maxResponse  int
	steps        *stepLimiter
	serviceToken string
	loops        *eventLoops

	closeOnce sync.Once
	closeErr  error
}

// New loads the key-encryption key(s), opens the store and returns the
// service.
func New(cfg Config) (*Service, error) {
	if cfg.DataDir == "" && cfg.Store == nil {
		return nil, errors.New("vault: DataDir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EgressTimeout <= 0 {
		cfg.EgressTimeout = DefaultEgressTimeout
	}
	if cfg.EgressMaxResponseBytes <= 0 {
		cfg.EgressMaxResponseBytes = DefaultEgressMaxResponseBytes
	}
	lg := cfg.Logger.With(zap.String("service", serviceName))

	keys, err := loadKeyring(cfg)
	if err != nil {
		return nil, err
	}
	client, err := newEgressClient(cfg.EgressCAFile, cfg.EgressAllowPrivate, cfg.EgressTimeout)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	if cfg.Store == nil {
		cfg.Store = boltstore.Dir(cfg.DataDir, lg)
	}
	db, err := cfg.Store(storeName, buckets)
	if err != nil {
		return nil, err // names the store already
	}
	s := &Service{
		db: db, lg: lg, now: cfg.Now, rec: audit.Recorder{Service: serviceName, Now: cfg.Now},
		errs: newErrorTable(), audit: &audit.Server{DB: db},
		keys: keys, egress: client, allowPrivate: cfg.EgressAllowPrivate, timeout: cfg.EgressTimeout, maxResponse: cfg.EgressMaxResponseBytes,
		serviceToken: cfg.ServiceToken, steps: newStepLimiter(cfg.EgressMaxStepsPerWorkspace),
	}
	s.noteSources(cfg)
	if err := s.checkKeys(len(cfg.PreviousKEKFiles) > 0); err != nil {
		// A store this start created goes again, so that the next start
		// does not take an empty store for a deliberate one.
		store.Release(db)
		return nil, err
	}
	s.startEventLoops(cfg)
	if !s.keys.sealed() {
		s.watchKEK()
	}
	return s, nil
}

// checkKeys reports the key state at start: sealed, data keys wrapped by
// keys that are not loaded, and (with previous keys) finishes a rewrap.
func (s *Service) checkKeys(previous bool) error {
	active := s.keys.activeKEK()
	if active == nil {
		s.lg.Warn(MsgSealed + "; secrets can be listed but not created, updated with a value, or used")
		return nil
	}
	s.startKeys(previous) // kekha.go: shared with the other replicas
	unknown, err := s.unknownWrappers(context.Background())
	if err != nil {
		return fmt.Errorf("vault: %w", err)
	}
	if len(unknown) > 0 {
		s.lg.Error("some workspace data keys are wrapped by key-encryption keys that are not loaded; those workspaces' secrets cannot be used until the vault starts with them",
			zap.Int("data-keys", sum(unknown)), zap.String("kek-ids", idList(unknown)), zap.String("loaded-kek-id", active.id.String()))
	}
	s.lg.Info("vault unsealed", zap.String("kek-id", active.id.String()))
	return nil
}

// Register registers the VaultService, the VaultInternalService and this
// service's own AuditService (its local events) on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	vaultv1.RegisterVaultServiceServer(g, s)
	vaultv1.RegisterVaultInternalServiceServer(g, s)
	s.audit.Register(g)
}

// Errors maps this service's sentinel errors to gRPC codes.
func (s *Service) Errors() *errs.Table { return s.errs }

// NoAuth reports the methods that skip bearer authentication: the
// VaultInternalService, whose callers present the service credential.
func (s *Service) NoAuth(fullMethod string) bool { return s.Internal(fullMethod) }

// Internal reports the methods only sibling services (and operators'
// tools) may call, with the service credential: the VaultInternalService.
func (s *Service) Internal(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+vaultv1.VaultInternalService_ServiceDesc.ServiceName+"/")
}

// DB is the service's store.
func (s *Service) DB() store.Backend { return s.db }

// Sealed reports whether no key-encryption key is loaded.
func (s *Service) Sealed() bool { return s.keys.sealed() }

// SealedHealthService is the grpc.health.v1 service name registered on a
// sealed vault's health server: a check of it answers (NOT_SERVING) only
// while the vault is sealed, and NotFound otherwise, so that a readiness
// probe can name the reason the vault is not serving.
const SealedHealthService = "backlog.vault.v1.VaultService/sealed"

// ReportHealth sets the health of the server the vault is mounted on, before
// it serves: a sealed vault is NOT_SERVING (overall and every service) for
// the life of the process, since it cannot create, update or use a secret
// value; the health server is shut down so that serving does not mark it
// SERVING. An unsealed vault leaves health to the server.
func (s *Service) ReportHealth(hs *health.Server) {
	if !s.Sealed() {
		return
	}
	hs.SetServingStatus(SealedHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	hs.Shutdown() // every registered status NOT_SERVING, later changes ignored
}

// KEKID is the id (fingerprint) of the key-encryption key in use, or "".
func (s *Service) KEKID() string {
	if k := s.keys.activeKEK(); k != nil {
		return k.id.String()
	}
	return ""
}

// Close closes idle egress connections and the store after pending writes.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		s.stopEventLoops()
		s.stopWatchKEK()
		s.egress.CloseIdleConnections()
		s.closeErr = s.db.Close()
		s.keys.close()
	})
	return s.closeErr
}

// checkServiceToken authorises a VaultInternalService call. The kit server
// checks it too when backlogd lists Internal; the handler checks again so
// that a server built without that option still never serves a value to a
// caller without the service credential.
func (s *Service) checkServiceToken(ctx context.Context) error {
	if err := auth.CheckService(ctx, s.serviceToken); err != nil {
		if s.serviceToken != "" {
			s.lg.Warn("internal call without a valid service credential", zap.String("client-ip", server.ClientIP(ctx)))
		}
		return err
	}
	return nil
}

// recordFailure writes a failure audit event in a transaction of its own.
// Best effort: the request has already failed and the caller learns that.
func (s *Service) recordFailure(ctx context.Context, ws, action, name string, cause error, detail string) {
	ev := s.rec.Event(ctx, ws, action, "secret", name, audit.Failure, failureDetail(cause, detail))
	s.recordEvents(ctx, ev)
}

// recordEvents writes events in transactions of their own, as many events
// to one as the store's limits allow, best effort.
func (s *Service) recordEvents(ctx context.Context, evs ...*auditEvent) {
	if len(evs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	for chunk := range slices.Chunk(evs, s.perUpdate(audit.OpsPerEvent)) {
		err := s.db.Update(ctx, func(tx store.WriteTx) error {
			for _, ev := range chunk {
				if err := audit.Put(tx, ev); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			s.lg.Warn("could not record audit events", zap.String("action", chunk[0].GetAction()), zap.Error(err))
		}
	}
}

// perUpdate is how many items of ops writes each one update may carry:
// the store's operation limit, less headroom, divided by ops.
func (s *Service) perUpdate(ops int) int {
	return max(1, min(maxOpsPerUpdate, s.db.Limits().MaxOpsPerUpdate)/ops)
}

// failureDetail describes why a call failed, for the audit trail: the
// sentinel's reason, never a message that could quote caller input.
func failureDetail(cause error, prefix string) string {
	d := "failed"
	if prefix != "" {
		d = prefix + " failed"
	}
	switch {
	case cause == nil:
	case errors.Is(cause, ErrNotFound):
		d += ": not found"
	case errors.Is(cause, ErrRevoked):
		d += ": revoked"
	case errors.Is(cause, ErrExpired):
		d += ": expired"
	case errors.Is(cause, ErrWrongKind):
		d += ": wrong kind"
	case errors.Is(cause, ErrBadValue):
		d += ": value unusable in a header"
	case errors.Is(cause, ErrSealed):
		d += ": vault sealed"
	case errors.Is(cause, ErrKeyMissing):
		d += ": data key unavailable"
	case errors.Is(cause, ErrUnreadable):
		d += ": ciphertext unreadable"
	case errors.Is(cause, ErrEgressDenied):
		d += ": egress refused"
	case errors.Is(cause, ErrHostDenied):
		d += ": host not allowed for this secret"
	case errors.Is(cause, ErrUpstreamSlow):
		d += ": timed out"
	case errors.Is(cause, ErrUpstream):
		d += ": request failed"
	case errors.Is(cause, store.ErrUnavailable):
		d += ": store unavailable"
	case errors.Is(cause, context.Canceled):
		d += ": cancelled"
	default:
		if st, ok := status.FromError(cause); ok {
			d += ": " + st.Code().String()
		} else {
			d += ": internal error"
		}
	}
	return d
}
