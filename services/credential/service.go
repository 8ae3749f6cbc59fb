// Package credential is the credential service: it issues, verifies, rotates
// and revokes every credential of the control plane, and owns workspaces and
// their members. Raw credentials are returned once and stored only as
// HMAC-SHA256 under a key kept in the data dir.
package credential

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	consolev1 "github.com/backlog/controlplane/gen/go/backlog/console/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ids"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// Config configures the credential service.
type Config struct {
	// DataDir holds credential.key and operator-token (and, with the default
	// Store, credential.db).
	DataDir string
	// Store opens the service's store, called "credential" (default: the
	// bbolt file DataDir/credential.db).
	Store  store.Opener
	Logger *zap.Logger
	// DefaultTokenTTL is an access token's lifetime when none is asked (1h).
	DefaultTokenTTL time.Duration
	// MaxTokenTTL caps what an exchange may ask for (default 24h).
	MaxTokenTTL time.Duration
	// AuditPeers are the other services' audit endpoints, merged into the
	// workspace trail served by ListAuditEvents.
	AuditPeers map[string]auditv1.AuditServiceClient
	// Events, when set, receives the workspace events of rotations and
	// revocations (see events.go): the vault's internal API.
	Events EventPublisher
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Service implements the credential service's gRPC APIs.
type Service struct {
	credentialv1.UnsafeCredentialServiceServer
	credentialv1.UnsafeCredentialInternalServiceServer
	auditv1.UnsafeAuditServiceServer

	cfg      Config
	lg       *zap.Logger
	db       store.Backend
	audit    audit.Recorder
	key      []byte // HMAC key for credential hashes
	tokenKey []byte // HMAC key for access token MACs (derived)
	errors   *errs.Table
	hub      *hub

	refusals refusalLog // coalesces audit records of refused credentials

	// events holds workspace events waiting for their burst (events.go);
	// eventsDone is closed when publishLoop ended.
	events     chan pendingEvent
	eventsDone chan struct{}

	usedMu sync.Mutex
	used   map[string]time.Time // credential id → last use, flushed periodically
	stop   chan struct{}
	done   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// storeName is the service's store: credential.db in a data dir.
const storeName = "credential"

// ErrDataLost is returned by New when the data dir lost part of the
// service's state: the store while the files made with it remain, or the key
// file while the store holds credentials hashed with it.
var ErrDataLost = errors.New("credential data lost")

// New opens the store, checks that it and the key file belong together,
// loads (or, on a first start, creates) the key and the operator token, and
// starts the last-used flusher.
func New(cfg Config) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DefaultTokenTTL == 0 {
		cfg.DefaultTokenTTL = time.Hour
	}
	if cfg.MaxTokenTTL == 0 {
		cfg.MaxTokenTTL = 24 * time.Hour
	}
	if cfg.DefaultTokenTTL > cfg.MaxTokenTTL {
		return nil, fmt.Errorf("default token ttl %s exceeds the maximum %s", cfg.DefaultTokenTTL, cfg.MaxTokenTTL)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("credential: no data dir")
	}
	if cfg.Store == nil {
		cfg.Store = boltstore.Dir(cfg.DataDir, cfg.Logger)
	}
	db, err := cfg.Store(storeName, schema)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if err := checkStart(ctx, db, cfg.DataDir); err != nil {
		store.Release(db)
		return nil, err
	}
	key, err := loadOrCreateKey(KeyPath(cfg.DataDir))
	if err != nil {
		db.Close()
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("backlog access token v1"))
	s := &Service{
		cfg: cfg, lg: cfg.Logger.With(zap.String("component", "credential")), db: db,
		audit: audit.Recorder{Service: "credential", Now: cfg.Now},
		key:   key, tokenKey: m.Sum(nil), errors: errorTable(), hub: newHub(),
		used: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := s.indexLiveCredentials(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.ensureOperatorToken(ctx); err != nil {
		db.Close()
		return nil, err
	}
	go s.flushLoop()
	s.events, s.eventsDone = make(chan pendingEvent, eventQueue), make(chan struct{})
	go s.publishLoop(s.stop, s.eventsDone)
	return s, nil
}

// checkStart refuses a data dir whose store and key files do not belong
// together:
//   - the store was just created (not on purpose) while credential.key or
//     operator-token exist: they were made with a store that is gone;
//   - credential.key is missing while the store holds credentials: they are
//     stored as keyed hashes, and with a new key every one would be refused.
//
// A store that is not new but holds no credential is one whose first start
// stopped before it issued the operator token; it gets a key now.
func checkStart(ctx context.Context, db store.Backend, dataDir string) error {
	info := db.Info()
	keyPath, tokenPath := KeyPath(dataDir), OperatorTokenPath(dataDir)
	hasKey, err := fileExists(keyPath)
	if err != nil {
		return err
	}
	hasToken, err := fileExists(tokenPath)
	if err != nil {
		return err
	}
	if info.Created && !info.Reinit {
		var found []string
		if hasKey {
			found = append(found, keyPath)
		}
		if hasToken {
			found = append(found, tokenPath)
		}
		if len(found) > 0 {
			return fmt.Errorf("%w: the credential store %s was missing and has just been created empty, but %s, made with the store, show that it existed: "+
				"restore %s from a backup (backlogd restore), or start with -init-store=%s to begin with an empty store on purpose (every credential issued so far then stops working)",
				ErrDataLost, info.Name, strings.Join(found, " and "), info.Name, storeName)
		}
		return nil
	}
	if hasKey || info.Created {
		return nil
	}
	var held bool
	if err := db.View(ctx, func(tx store.ReadTx) error {
		held, err = holdsCredentials(tx)
		return err
	}); err != nil {
		return err
	}
	if held {
		return fmt.Errorf("%w: %s is missing, but the credential store %s holds credentials hashed with that key, and with a new key every one of them would be refused: "+
			"put the key file back from your secret backups (backlogd backup does not copy key files), "+
			"or move %s aside and start with -init-store=%s to begin with an empty store on purpose (every credential issued so far then stops working)",
			ErrDataLost, keyPath, info.Name, info.Name, storeName)
	}
	return nil
}

func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Register registers the public, internal and audit APIs on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	credentialv1.RegisterCredentialServiceServer(g, s)
	credentialv1.RegisterCredentialInternalServiceServer(g, s)
	auditv1.RegisterAuditServiceServer(g, s)
	consolev1.RegisterConsoleServiceServer(g, consoleService{s: s})
}

// Errors is the service's error table.
func (s *Service) Errors() *errs.Table { return s.errors }

// Authenticator authenticates locally, without a network hop.
func (s *Service) Authenticator() auth.Authenticator { return localAuth{s} }

// NoAuth lists methods that do not take a bearer principal: Exchange reads the
// automation secret itself; the internal API is for sibling services.
func (s *Service) NoAuth(fullMethod string) bool {
	return fullMethod == credentialv1.CredentialService_Exchange_FullMethodName ||
		fullMethod == consolev1.ConsoleService_RedeemSignIn_FullMethodName || // the code is the credential
		fullMethod == consolev1.ConsoleService_CheckSession_FullMethodName || // tells only whether a random id was ended
		strings.HasPrefix(fullMethod, "/"+credentialv1.CredentialInternalService_ServiceDesc.ServiceName+"/")
}

// Internal lists the methods only sibling services may call (they present
// the service credential).
func (s *Service) Internal(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+credentialv1.CredentialInternalService_ServiceDesc.ServiceName+"/")
}

// DB is the service's store.
func (s *Service) DB() store.Backend { return s.db }

// EndWatches ends every revocation watch stream, so that a graceful stop of
// the server does not wait for watchers that never hang up on their own.
func (s *Service) EndWatches() { s.hub.close() }

// Close flushes last-used times and closes the store.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		<-s.eventsDone
		s.hub.close()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// OperatorTokenPath is where the first start writes the operator token.
func OperatorTokenPath(dataDir string) string { return filepath.Join(dataDir, "operator-token") }

// KeyPath is the file holding the key credentials are hashed with.
func KeyPath(dataDir string) string { return filepath.Join(dataDir, "credential.key") }

func loadOrCreateKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if len(b) != 32 {
			return nil, fmt.Errorf("%s: want 32 bytes, found %d", path, len(b))
		}
		return b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := writeFileExcl(path, b); err != nil {
		return nil, err
	}
	return b, nil
}

// writeFileExcl writes a new 0600 file, failing if it exists.
func writeFileExcl(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// indexLiveCredentials fills the live-credential index for a store written
// before the index existed, in batches that each fit one update and record
// their progress: a start that stops half-way resumes where it stopped.
func (s *Service) indexLiveCredentials(ctx context.Context) error {
	batch := s.db.Limits().MaxOpsPerUpdate - 1 // one write records the progress
	for {
		var done bool
		err := s.db.Update(ctx, func(tx store.WriteTx) error {
			var err error
			done, err = indexLiveCredentialsBatch(tx, batch)
			return err
		})
		if err != nil {
			return fmt.Errorf("index live credentials: %w", err)
		}
		if done {
			return nil
		}
	}
}

const operatorID = "operator"

// ensureOperatorToken creates the operator token on first start: when the
// store has no live operator credential, it issues one and writes it to
// <data-dir>/operator-token (0600). It is shown nowhere else.
func (s *Service) ensureOperatorToken(ctx context.Context) error {
	var live []string
	err := s.db.View(ctx, func(tx store.ReadTx) error {
		var err error
		live, err = liveCredentialIDs(tx, operatorID, 1)
		return err
	})
	if err != nil || len(live) > 0 {
		return err
	}
	path := OperatorTokenPath(s.cfg.DataDir)
	os.Remove(path) // a stale file from a store re-initialised on purpose
	raw := credfmt.New(credfmt.Operator)
	if err := writeFileExcl(path, []byte(raw+"\n")); err != nil {
		return fmt.Errorf("write operator token: %w", err)
	}
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_OPERATOR, Id: operatorID, Name: "operator"}
	err = s.db.Update(ctx, func(tx store.WriteTx) error {
		if err := putSubject(tx, &credentialstorev1.SubjectRecord{Subject: subj}); err != nil {
			return err
		}
		_, err := s.issue(tx, subj, credentialv1.CredentialKind_CREDENTIAL_KIND_OPERATOR, raw, "operator")
		return err
	})
	if err != nil {
		os.Remove(path)
		return err
	}
	s.lg.Info("created the operator token", zap.String("path", path))
	return nil
}

func (s *Service) hash(raw string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(raw))
	return m.Sum(nil)
}

// issue stores the keyed hash of raw as a new live credential of subj.
func (s *Service) issue(tx store.WriteTx, subj *credentialv1.Subject, kind credentialv1.CredentialKind, raw, label string) (*credentialstorev1.CredentialRecord, error) {
	return s.issueAs(tx, subj, kind, raw, label, chosenID{})
}

// chosenID is a credential id and creation time chosen by the caller of
// IssueCredential or RotateCredential (see checkChosen); zero: ours.
type chosenID struct {
	id      string
	created *timestamppb.Timestamp
}

// chosenSkew bounds how far a caller's creation time may be from our clock.
const chosenSkew = time.Minute

// checkChosen validates a credential id and creation time sent by a caller.
func (s *Service) checkChosen(id string, created *timestamppb.Timestamp) (chosenID, error) {
	if id == "" {
		if created != nil {
			return chosenID{}, errs.Invalid("created_at", "is only taken with credential_id")
		}
		return chosenID{}, nil
	}
	if !ids.Valid("cred", id) {
		return chosenID{}, errs.Invalid("credential_id", "must be a credential id (cred_ and 26 characters)")
	}
	if created == nil {
		return chosenID{id: id}, nil
	}
	if err := created.CheckValid(); err != nil {
		return chosenID{}, errs.Invalid("created_at", "is not a valid time")
	}
	if d := created.AsTime().Sub(s.cfg.Now()); d > chosenSkew || d < -chosenSkew {
		return chosenID{}, errs.Invalid("created_at", "must be within a minute of the credential service's clock")
	}
	return chosenID{id: id, created: created}, nil
}

// issueAs is issue with the id and creation time a caller chose, if any.
// A chosen id that is taken fails with errCredentialIDTaken.
func (s *Service) issueAs(tx store.WriteTx, subj *credentialv1.Subject, kind credentialv1.CredentialKind, raw, label string, c chosenID) (*credentialstorev1.CredentialRecord, error) {
	id, created := c.id, c.created
	if id == "" {
		id = newCredentialID()
	} else if _, taken, err := getCredential(tx, id); err != nil {
		return nil, err
	} else if taken {
		return nil, errCredentialIDTaken
	}
	if created == nil {
		created = timestamppb.New(s.cfg.Now())
	}
	rec := &credentialstorev1.CredentialRecord{
		Id: id, Kind: kind, SubjectId: subj.Id, WorkspaceId: subj.WorkspaceId,
		Label: label, Hash: s.hash(raw), CreatedAt: created,
	}
	if err := putCredential(tx, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// event builds an audit event of this service on its clock.
func (s *Service) event(ctx context.Context, ws, action, targetKind, targetID, outcome, detail string) *auditv1.AuditEvent {
	return s.audit.Event(ctx, ws, action, targetKind, targetID, outcome, detail)
}

func (s *Service) touch(credID string) {
	s.usedMu.Lock()
	s.used[credID] = s.cfg.Now()
	s.usedMu.Unlock()
}

// flushLoop records last-used times every few seconds, so that
// authenticating and exchanging never wait for a disk write, and writes the
// summaries of coalesced refusals whose window has ended.
func (s *Service) flushLoop() {
	defer close(s.done)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.flushUsed()
			s.flushRefusals()
		case <-s.stop:
			s.flushUsed()
			// Pending summaries are written now rather than lost.
			s.writeRefusals(context.Background(), s.refusals.sweep(s.cfg.Now().Add(RefusalWindow)))
			return
		}
	}
}

// flushUsed writes the last-used times gathered since the previous flush, as
// many per update as fit. Times are a hint: a batch that fails is dropped.
func (s *Service) flushUsed() {
	s.usedMu.Lock()
	used := s.used
	s.used = map[string]time.Time{}
	s.usedMu.Unlock()
	ids := slices.Sorted(maps.Keys(used))
	batch := s.db.Limits().MaxOpsPerUpdate
	for len(ids) > 0 {
		chunk := ids[:min(batch, len(ids))]
		ids = ids[len(chunk):]
		err := s.db.Update(context.Background(), func(tx store.WriteTx) error {
			for _, id := range chunk {
				rec, ok, err := getCredential(tx, id)
				if err != nil || !ok {
					continue
				}
				rec.LastUsedAt = timestamppb.New(used[id])
				if err := updateCredential(tx, rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			s.lg.Warn("could not record last-used times", zap.Int("credentials", len(chunk)), zap.Error(err))
		}
	}
}
