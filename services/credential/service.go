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
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/store"
)

// Config configures the credential service.
type Config struct {
	// DataDir holds credential.db, credential.key and operator-token.
	DataDir string
	Logger  *zap.Logger
	// DefaultTokenTTL is an access token's lifetime when none is asked (1h).
	DefaultTokenTTL time.Duration
	// MaxTokenTTL caps what an exchange may ask for (default 24h).
	MaxTokenTTL time.Duration
	// AuditPeers are the other services' audit endpoints, merged into the
	// workspace trail served by ListAuditEvents.
	AuditPeers map[string]auditv1.AuditServiceClient
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
	db       *store.DB
	key      []byte // HMAC key for credential hashes
	tokenKey []byte // HMAC key for access token MACs (derived)
	errors   *errs.Table
	hub      *hub

	usedMu sync.Mutex
	used   map[string]time.Time // credential id → last use, flushed periodically
	stop   chan struct{}
	done   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// New opens the store, loads (or creates) the service key and the operator
// token, and starts the last-used flusher.
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
	key, err := loadOrCreateKey(filepath.Join(cfg.DataDir, "credential.key"))
	if err != nil {
		return nil, err
	}
	db, err := store.Open(filepath.Join(cfg.DataDir, "credential.db"), schema, cfg.Logger)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("backlog access token v1"))
	s := &Service{
		cfg: cfg, lg: cfg.Logger.With(zap.String("component", "credential")), db: db,
		key: key, tokenKey: m.Sum(nil), errors: errorTable(), hub: newHub(),
		used: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := s.indexLiveCredentials(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.ensureOperatorToken(); err != nil {
		db.Close()
		return nil, err
	}
	go s.flushLoop()
	return s, nil
}

// Register registers the public, internal and audit APIs on g.
func (s *Service) Register(g grpc.ServiceRegistrar) {
	credentialv1.RegisterCredentialServiceServer(g, s)
	credentialv1.RegisterCredentialInternalServiceServer(g, s)
	auditv1.RegisterAuditServiceServer(g, s)
}

// Errors is the service's error table.
func (s *Service) Errors() *errs.Table { return s.errors }

// Authenticator authenticates locally, without a network hop.
func (s *Service) Authenticator() auth.Authenticator { return localAuth{s} }

// NoAuth lists methods that do not take a bearer principal: Exchange reads the
// automation secret itself; the internal API is for sibling services.
func (s *Service) NoAuth(fullMethod string) bool {
	return fullMethod == credentialv1.CredentialService_Exchange_FullMethodName ||
		strings.HasPrefix(fullMethod, "/"+credentialv1.CredentialInternalService_ServiceDesc.ServiceName+"/")
}

// Internal lists the methods only sibling services may call (they present
// the service credential).
func (s *Service) Internal(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+credentialv1.CredentialInternalService_ServiceDesc.ServiceName+"/")
}

// DB is the service's store.
func (s *Service) DB() *store.DB { return s.db }

// EndWatches ends every revocation watch stream, so that a graceful stop of
// the server does not wait for watchers that never hang up on their own.
func (s *Service) EndWatches() { s.hub.close() }

// Close flushes last-used times and closes the store.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.hub.close()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// OperatorTokenPath is where the first start writes the operator token.
func OperatorTokenPath(dataDir string) string { return filepath.Join(dataDir, "operator-token") }

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

// indexLiveCredentials fills the live-credential index once, for a store
// written before the index existed.
func (s *Service) indexLiveCredentials() error {
	var need bool
	s.db.View(func(tx *store.Tx) error {
		k, _ := tx.Bucket(bucketLiveCreds).Cursor().First()
		c, _ := tx.Bucket(bucketCredentials).Cursor().First()
		need = k == nil && c != nil
		return nil
	})
	if !need {
		return nil
	}
	return s.db.Update(context.Background(), func(tx *store.Tx) error {
		return tx.Bucket(bucketCredentials).ForEach(func(k, v []byte) error {
			rec := &credentialstorev1.CredentialRecord{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return err
			}
			if rec.RevokedAt != nil {
				return nil
			}
			return tx.Bucket(bucketLiveCreds).Put(store.Key(rec.SubjectId, rec.Id), nil)
		})
	})
}

const operatorID = "operator"

// ensureOperatorToken creates the operator token on first start: when the
// store has no live operator credential, it issues one and writes it to
// <data-dir>/operator-token (0600). It is shown nowhere else.
func (s *Service) ensureOperatorToken() error {
	var live bool
	err := s.db.View(func(tx *store.Tx) error {
		var err error
		live, err = hasLiveCredential(tx, operatorID)
		return err
	})
	if err != nil || live {
		return err
	}
	path := OperatorTokenPath(s.cfg.DataDir)
	os.Remove(path) // a stale file from a wiped store
	raw := credfmt.New(credfmt.Operator)
	if err := writeFileExcl(path, []byte(raw+"\n")); err != nil {
		return fmt.Errorf("write operator token: %w", err)
	}
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_OPERATOR, Id: operatorID, Name: "operator"}
	err = s.db.Update(context.Background(), func(tx *store.Tx) error {
		if err := store.Put(tx, bucketSubjects, []byte(operatorID), &credentialstorev1.SubjectRecord{Subject: subj}); err != nil {
			return err
		}
		_, err := s.putCredential(tx, subj, credentialv1.CredentialKind_CREDENTIAL_KIND_OPERATOR, raw, "operator")
		return err
	})
	if err != nil {
		os.Remove(path)
		return err
	}
	s.lg.Info("created the operator token", zap.String("path", path))
	return nil
}

func hasLiveCredential(tx *store.Tx, subjectID string) (bool, error) {
	live, err := liveCredentials(tx, subjectID)
	return len(live) > 0, err
}

func (s *Service) hash(raw string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(raw))
	return m.Sum(nil)
}

// putCredential stores the keyed hash of raw as a new credential of subj.
func (s *Service) putCredential(tx *store.Tx, subj *credentialv1.Subject, kind credentialv1.CredentialKind, raw, label string) (*credentialstorev1.CredentialRecord, error) {
	rec := &credentialstorev1.CredentialRecord{
		Id: newCredentialID(), Kind: kind, SubjectId: subj.Id, WorkspaceId: subj.WorkspaceId,
		Label: label, Hash: s.hash(raw), CreatedAt: timestamppb.New(s.cfg.Now()),
	}
	if err := store.Put(tx, bucketCredentials, []byte(rec.Id), rec); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketHashes).Put(rec.Hash, []byte(rec.Id)); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketSubjectCreds).Put(store.Key(subj.Id, rec.Id), nil); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketLiveCreds).Put(store.Key(subj.Id, rec.Id), nil); err != nil {
		return nil, err
	}
	return rec, nil
}

// record writes an audit event of this service inside tx.
func (s *Service) event(ctx context.Context, ws, action, targetKind, targetID, outcome, detail string) *auditv1.AuditEvent {
	return audit.Event(ctx, "credential", ws, action, targetKind, targetID, outcome, detail)
}

func (s *Service) touch(credID string) {
	s.usedMu.Lock()
	s.used[credID] = s.cfg.Now()
	s.usedMu.Unlock()
}

// flushLoop records last-used times in one write every few seconds, so that
// authenticating and exchanging never wait for a disk write.
func (s *Service) flushLoop() {
	defer close(s.done)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.flushUsed()
		case <-s.stop:
			s.flushUsed()
			return
		}
	}
}

func (s *Service) flushUsed() {
	s.usedMu.Lock()
	used := s.used
	s.used = map[string]time.Time{}
	s.usedMu.Unlock()
	if len(used) == 0 {
		return
	}
	err := s.db.Update(context.Background(), func(tx *store.Tx) error {
		for id, t := range used {
			rec := &credentialstorev1.CredentialRecord{}
			ok, err := store.Get(tx, bucketCredentials, []byte(id), rec)
			if err != nil || !ok {
				continue
			}
			rec.LastUsedAt = timestamppb.New(t)
			if err := store.Put(tx, bucketCredentials, []byte(id), rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.lg.Warn("could not record last-used times", zap.Error(err))
	}
}
