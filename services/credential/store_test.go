package credential

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/timestamppb"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// These tests write more keys than one update may hold (store.DefaultLimits:
// 120 writes), so each passes only if the code under test splits its work.

func newService(t *testing.T, dir string, now func() time.Time) *Service {
	t.Helper()
	s, err := New(Config{DataDir: dir, Logger: zaptest.NewLogger(t), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func view(t *testing.T, db store.Backend, fn func(store.ReadTx) error) {
	t.Helper()
	if err := db.View(context.Background(), fn); err != nil {
		t.Fatal(err)
	}
}

// A store written before the live index existed gets it filled at start, in
// batches, resuming where an interrupted start stopped.
func TestLiveIndexMigrationInBatches(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	db, err := boltstore.Open(filepath.Join(dir, "credential.db"), schema, boltstore.Options{Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	const n, subjects = 300, 30
	want := map[string][]string{} // subject id → its live credential ids
	for i := 0; i < n; i += 100 {
		err := db.Update(ctx, func(tx store.WriteTx) error {
			for j := i; j < i+100; j++ {
				rec := &credentialstorev1.CredentialRecord{
					Id: fmt.Sprintf("cred_%04d", j), SubjectId: fmt.Sprintf("auto_%02d", j%subjects), WorkspaceId: "ws_1",
					Kind: credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET, Hash: []byte(fmt.Sprintf("hash-%04d", j)),
				}
				if j%3 == 0 {
					rec.RevokedAt = timestamppb.Now()
				} else {
					want[rec.SubjectId] = append(want[rec.SubjectId], rec.Id)
				}
				if err := store.Put(tx, bucketCredentials, []byte(rec.Id), rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// A start that stopped after its first batch.
	err = db.Update(ctx, func(tx store.WriteTx) error {
		done, err := indexLiveCredentialsBatch(tx, 40)
		if done {
			t.Errorf("the migration finished after one batch of 40")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(KeyPath(dir), key, 0o600); err != nil {
		t.Fatal(err)
	}

	s := newService(t, dir, nil)
	view(t, s.db, func(tx store.ReadTx) error {
		for i := range subjects {
			id := fmt.Sprintf("auto_%02d", i)
			got, err := liveCredentialIDs(tx, id, 0)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want[id]) {
				t.Errorf("%s: live %v, want %v", id, got, want[id])
			}
		}
		state, err := tx.Get(bucketMigrations, []byte(migrationLiveIndex))
		if string(state) != migrationDone {
			t.Errorf("migration state %q, want %q", state, migrationDone)
		}
		return err
	})
}

// issueMany issues n automation secrets to one subject, a few per update.
func issueMany(t *testing.T, s *Service, subj *credentialv1.Subject, n int) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i += 20 {
		var batch []string
		err := s.db.Update(context.Background(), func(tx store.WriteTx) error {
			batch = batch[:0]
			if err := putSubject(tx, &credentialstorev1.SubjectRecord{Subject: subj, CreatedAt: timestamppb.Now()}); err != nil {
				return err
			}
			for j := i; j < min(i+20, n); j++ {
				rec, err := s.issue(tx, subj, credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET, credfmt.New(credfmt.Automation), "many")
				if err != nil {
					return err
				}
				batch = append(batch, rec.Id)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, batch...)
	}
	return ids
}

func TestLastUsedFlushInBatches(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := newService(t, t.TempDir(), func() time.Time { return at })
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: "auto_many", WorkspaceId: "ws_1"}
	ids := issueMany(t, s, subj, 300)
	for _, id := range ids {
		s.touch(id)
	}
	s.flushUsed()
	view(t, s.db, func(tx store.ReadTx) error {
		for _, id := range ids {
			rec, _, err := getCredential(tx, id)
			if err != nil {
				return err
			}
			if !rec.GetLastUsedAt().AsTime().Equal(at) {
				t.Fatalf("%s: last used %v, want %v", id, rec.GetLastUsedAt(), at)
			}
		}
		return nil
	})
}

func TestRevokeSubjectWithManyCredentials(t *testing.T) {
	s := newService(t, t.TempDir(), nil)
	subj := &credentialv1.Subject{Kind: credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION, Id: "auto_many", WorkspaceId: "ws_1"}
	ids := issueMany(t, s, subj, 250)
	if _, err := s.RevokeSubject(context.Background(), &credentialv1.RevokeSubjectRequest{WorkspaceId: "ws_1", SubjectId: subj.Id}); err != nil {
		t.Fatalf("RevokeSubject: %v", err)
	}
	view(t, s.db, func(tx store.ReadTx) error {
		live, err := liveCredentialIDs(tx, subj.Id, 0)
		if err != nil {
			return err
		}
		if len(live) != 0 {
			t.Errorf("%d credentials still live", len(live))
		}
		for _, id := range ids {
			rec, _, err := getCredential(tx, id)
			if err != nil {
				return err
			}
			if rec.RevokedAt == nil {
				t.Fatalf("%s is not marked revoked", id)
			}
		}
		rec, err := getSubject(tx, "ws_1", subj.Id)
		if err == nil && !rec.Revoked {
			t.Errorf("the subject is not revoked")
		}
		return err
	})
}
