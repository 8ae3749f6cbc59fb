package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/storetest"
)

// TestOldSecretRecordsDecode writes records the way the vault stored them
// before SecretRecord (the API message vaultv1.Secret) and reads them back
// through the accessors: every field comes back, and a value field, had one
// ever been stored, is neither read nor written back.
func TestOldSecretRecordsDecode(t *testing.T) {
	ctx := context.Background()
	db := storetest.New(t, buckets)
	at := func(s int64) *timestamppb.Timestamp { return timestamppb.New(time.Unix(1_700_000_000+s, 0).UTC()) }
	old := &vaultv1.Secret{
		WorkspaceId: "ws_1", Name: "Stripe-Key", Kind: KindIntegration, Description: "payments",
		ExpiresAt: at(100), State: StateRevoked, Version: 3, CreatedAt: at(1), UpdatedAt: at(2),
		LastUsedAt: at(3), RevokedAt: at(4),
	}
	leftover := proto.CloneOf(old)
	leftover.Name, leftover.Value = "with-value", "leftover-plaintext-value"
	err := db.Update(ctx, func(tx store.WriteTx) error {
		if err := store.Put(tx, secretsBucket, secretKey("ws_1", old.Name), old); err != nil {
			return err
		}
		return store.Put(tx, secretsBucket, secretKey("ws_1", leftover.Name), leftover)
	})
	if err != nil {
		t.Fatal(err)
	}

	want := &secretRecord{
		WorkspaceId: "ws_1", Name: "Stripe-Key", Kind: KindIntegration, Description: "payments",
		ExpiresAt: at(100), State: StateRevoked, Version: 3, CreatedAt: at(1), UpdatedAt: at(2),
		LastUsedAt: at(3), RevokedAt: at(4),
	}
	var got, gotLeftover *secretRecord
	var listed []string
	err = db.View(ctx, func(tx store.ReadTx) error {
		var err error
		if got, err = getSecret(tx, "ws_1", "stripe-key"); err != nil { // any case
			return err
		}
		if gotLeftover, err = getSecret(tx, "ws_1", "with-value"); err != nil {
			return err
		}
		_, err = listSecrets(tx, "ws_1", nil, 0, func(rec *secretRecord) bool {
			listed = append(listed, rec.GetName())
			return true
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(want, got) {
		t.Fatalf("old record read back as\n%v\nwant\n%v", got, want)
	}
	if len(got.ProtoReflect().GetUnknown()) != 0 {
		t.Fatalf("old record left unknown fields: %x", got.ProtoReflect().GetUnknown())
	}
	if u := gotLeftover.ProtoReflect().GetUnknown(); len(u) != 0 {
		t.Fatalf("the value field survived decoding as unknown bytes: %x", u)
	}
	if fmt.Sprint(listed) != "[Stripe-Key with-value]" {
		t.Fatalf("listed %v", listed)
	}
	// The API view is the record, state computed.
	if p := present(got, time.Unix(1_700_000_000, 0)); p.GetState() != StateRevoked || p.GetVersion() != 3 || p.GetValue() != "" || !proto.Equal(p.GetLastUsedAt(), at(3)) {
		t.Fatalf("present = %v", p)
	}

	// Written back, the record is what an older vault reads as a Secret
	// (the same bytes as before, for a record that never held a value),
	// and the leftover value is gone from the store.
	err = db.Update(ctx, func(tx store.WriteTx) error {
		if err := putSecret(tx, got); err != nil {
			return err
		}
		return putSecret(tx, gotLeftover)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(ctx, func(tx store.ReadTx) error {
		raw, err := tx.Get(secretsBucket, secretKey("ws_1", "Stripe-Key"))
		if err != nil {
			return err
		}
		before, _ := proto.MarshalOptions{Deterministic: true}.Marshal(old)
		if !bytes.Equal(raw, before) {
			t.Errorf("record bytes changed: %x, were %x", raw, before)
		}
		back := &vaultv1.Secret{}
		if err := proto.Unmarshal(raw, back); err != nil || !proto.Equal(back, old) {
			t.Errorf("read as vaultv1.Secret: %v, %v", back, err)
		}
		raw, err = tx.Get(secretsBucket, secretKey("ws_1", "with-value"))
		if err != nil {
			return err
		}
		if bytes.Contains(raw, []byte(leftover.Value)) {
			t.Error("the leftover value was written back")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDataKeyAccessors(t *testing.T) {
	ctx := context.Background()
	db := storetest.New(t, buckets)
	// "ws" sorts before "ws/…" keys of workspaces "ws1" and "wsa", whose
	// keys must not be taken for ws's.
	puts := []struct {
		ws  string
		ver uint32
	}{{"ws", 1}, {"ws", 2}, {"ws", 0x10}, {"ws1", 7}, {"wsa", 9}, {"a", 3}}
	err := db.Update(ctx, func(tx store.WriteTx) error {
		for _, p := range puts {
			if err := putDataKey(tx, p.ws, p.ver, []byte(fmt.Sprintf("%s-%d", p.ws, p.ver))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(ctx, func(tx store.ReadTx) error {
		for ws, want := range map[string]uint32{"ws": 0x10, "ws1": 7, "wsa": 9, "a": 3, "w": 0, "none": 0} {
			ver, blob, err := latestDataKey(tx, ws)
			if err != nil {
				return err
			}
			if ver != want || (want != 0 && string(blob) != fmt.Sprintf("%s-%d", ws, want)) || (want == 0 && blob != nil) {
				t.Errorf("latestDataKey(%s) = %d %q, want %d", ws, ver, blob, want)
			}
		}
		if blob, err := wrappedDataKey(tx, "ws", 2); err != nil || string(blob) != "ws-2" {
			t.Errorf("wrappedDataKey(ws, 2) = %q %v", blob, err)
		}
		if blob, err := wrappedDataKey(tx, "ws", 3); err != nil || blob != nil {
			t.Errorf("wrappedDataKey(ws, 3) = %q %v", blob, err)
		}
		// Paged, every key once, in key order.
		var seen []string
		var after []byte
		for {
			next, err := eachDataKey(tx, after, 4, func(ws string, ver uint32, _ []byte) (bool, error) {
				seen = append(seen, fmt.Sprintf("%s/%d", ws, ver))
				return true, nil
			})
			if err != nil {
				return err
			}
			if next == nil {
				break
			}
			after = next
		}
		if fmt.Sprint(seen) != "[a/3 ws/1 ws/2 ws/16 ws1/7 wsa/9]" {
			t.Errorf("eachDataKey visited %v", seen)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// newTestVault starts a vault on dir with the key in kekFile (and previous
// keys), for tests that drive its internals.
func newTestVault(t *testing.T, dir, kekFile string, previous ...string) *Service {
	t.Helper()
	s, err := New(Config{DataDir: dir, Logger: zaptest.NewLogger(t), KEKFile: kekFile, PreviousKEKFiles: previous})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newKEKFile(t *testing.T, name string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := GenerateKEKFile(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// fillWorkspaces gives n workspaces a data key and one sealed secret each,
// in updates that fit the store's limits, and returns the values by
// workspace.
func fillWorkspaces(t *testing.T, s *Service, n int) map[string][]byte {
	t.Helper()
	values := map[string][]byte{}
	var wss []string
	for i := range n {
		ws := fmt.Sprintf("ws_%04d", i)
		wss = append(wss, ws)
		values[ws] = fmt.Appendf(nil, "value-of-%s", ws)
	}
	now := timestamppb.Now()
	for i := 0; i < n; i += 30 { // 3 writes each
		chunk := wss[i:min(i+30, n)]
		err := s.db.Update(context.Background(), func(tx store.WriteTx) error {
			for _, ws := range chunk {
				dk, err := s.dataKeyForWrite(tx, ws)
				if err != nil {
					return err
				}
				sealed, err := sealValue(dk, ws, "x", 1, values[ws])
				if err != nil {
					return err
				}
				rec := &secretRecord{WorkspaceId: ws, Name: "x", Kind: KindIntegration, State: StateActive, Version: 1, CreatedAt: now, UpdatedAt: now}
				if err := putSecret(tx, rec); err != nil {
					return err
				}
				if err := putSealedValue(tx, ws, "x", sealed); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return values
}

// checkWorkspaces decrypts every value and counts data keys by the key
// that wraps them.
func checkWorkspaces(t *testing.T, s *Service, values map[string][]byte) map[string]int {
	t.Helper()
	wrappers := map[string]int{}
	err := s.viewKeys(context.Background(), func(tx store.ReadTx) error {
		clear(wrappers)
		for ws, want := range values {
			v, err := s.decrypt(tx, ws, "x", 1, "x")
			if err != nil {
				return fmt.Errorf("%s: %w", ws, err)
			}
			if !bytes.Equal(v, want) {
				return fmt.Errorf("%s: wrong value", ws)
			}
		}
		_, err := eachDataKey(tx, nil, 0, func(_ string, _ uint32, blob []byte) (bool, error) {
			id, err := wrappedBy(blob)
			wrappers[id.String()]++
			return true, err
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return wrappers
}

// failAfter makes every commit after the first n fail.
func failAfter(n int64) func() error {
	var commits atomic.Int64
	return func() error {
		if commits.Add(1) > n {
			return errors.New("injected commit failure")
		}
		return nil
	}
}

// TestRotationChunkedAndResumable rotates more data keys than one update
// may write, and stops rotations part-way: every chunk leaves each data key
// wrapped by a loaded key, every value keeps opening, and a re-run or a
// restart with the old key as a previous key finishes the rotation.
func TestRotationChunkedAndResumable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	k1 := newKEKFile(t, "k1")
	s := newTestVault(t, dir, k1)
	per := s.db.Limits().MaxOpsPerUpdate
	n := 2*per + 10
	values := fillWorkspaces(t, s, n)
	id1 := s.KEKID()

	// A rotation that fits no single update, in one call.
	k2 := newKEKFile(t, "k2")
	res, err := s.RotateKEK(ctx, k2)
	if err != nil {
		t.Fatal(err)
	}
	id2 := res.KEKID
	if res.Rewrapped != n || fmt.Sprint(res.Retired) != "["+id1+"]" {
		t.Fatalf("rotate = %+v", res)
	}
	if got := checkWorkspaces(t, s, values); got[id2] != n {
		t.Fatalf("wrappers after rotation = %v", got)
	}

	// Stopped after its first chunk: both keys stay loaded, nothing breaks,
	// and the same call again finishes.
	k3 := newKEKFile(t, "k3")
	// (Commits: the rewrap lead's claim, the key record, the first chunk.)
	s.db.(store.Faults).SetFault(failAfter(3))
	if _, err := s.RotateKEK(ctx, k3); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("rotation with failing commits: %v", err)
	}
	s.db.(store.Faults).SetFault(nil)
	id3 := s.KEKID()
	got := checkWorkspaces(t, s, values)
	if got[id3] == 0 || got[id3] > per || got[id3]+got[id2] != n {
		t.Fatalf("wrappers after a stopped rotation = %v", got)
	}
	done := got[id3]
	res, err = s.RotateKEK(ctx, k3)
	if err != nil {
		t.Fatal(err)
	}
	if res.KEKID != id3 || res.Rewrapped != n-done || fmt.Sprint(res.Retired) != "["+id2+"]" {
		t.Fatalf("finishing rotate = %+v (%d were done)", res, done)
	}
	if got := checkWorkspaces(t, s, values); got[id3] != n {
		t.Fatalf("wrappers after the finished rotation = %v", got)
	}

	// Stopped part-way, then the process goes: a start with the new key and
	// the old one as a previous key finishes the rewrap.
	k4 := newKEKFile(t, "k4")
	s.db.(store.Faults).SetFault(failAfter(4))
	if _, err := s.RotateKEK(ctx, k4); err == nil {
		t.Fatal("rotation with failing commits succeeded")
	}
	s.Close()
	s = newTestVault(t, dir, k4, k3)
	id4 := s.KEKID()
	if got := checkWorkspaces(t, s, values); got[id4] != n {
		t.Fatalf("wrappers after the restart = %v", got)
	}
	// Started with the new key alone, nothing is missing.
	s.Close()
	s = newTestVault(t, dir, k4)
	if unknown, err := s.unknownWrappers(ctx); err != nil || len(unknown) != 0 {
		t.Fatalf("unknown wrappers = %v %v", unknown, err)
	}
	checkWorkspaces(t, s, values)
}
