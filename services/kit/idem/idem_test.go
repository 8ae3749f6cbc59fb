package idem_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

var replays = store.Bucket("replays")

func call(caller, key string) context.Context {
	md := metadata.Pairs("authorization", "Bearer "+caller)
	if key != "" {
		md.Append(idem.MetadataKey, key)
	}
	return metadata.NewIncomingContext(context.Background(), md)
}

func req(t *testing.T, ctx context.Context, body proto.Message) *idem.Request {
	t.Helper()
	r, err := idem.FromContext(ctx, "ws_1|CreateAutomation", body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type env struct {
	db   *boltstore.DB
	path string
	now  time.Time
}

func newEnv(t *testing.T) *env {
	e := &env{path: filepath.Join(t.TempDir(), "replays.db"), now: time.Now()}
	db, err := boltstore.Open(e.path, []store.Bucket{replays}, boltstore.Options{Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.db = db
	return e
}

func (e *env) save(r *idem.Request, resp proto.Message) error {
	return e.db.Update(context.Background(), func(tx store.WriteTx) error { return idem.Save(tx, replays, r, resp, e.now) })
}

func (e *env) lookup(r *idem.Request, resp proto.Message) (bool, error) {
	var found bool
	err := e.db.View(context.Background(), func(tx store.ReadTx) (err error) {
		found, err = idem.Lookup(tx, replays, r, resp)
		return err
	})
	return found, err
}

const rawSecret = "blg_auto_THIS-IS-THE-ONE-TIME-SECRET-0123456789"

func TestReplayReturnsTheFirstResponse(t *testing.T) {
	e := newEnv(t)
	body := wrapperspb.String("create nightly-sync")
	first := req(t, call("blg_pat_owner", "key-1"), body)
	resp, _ := structpb.NewStruct(map[string]any{"secret": rawSecret, "id": "auto_1"})
	if err := e.save(first, resp); err != nil {
		t.Fatal(err)
	}
	var got structpb.Struct
	found, err := e.lookup(req(t, call("blg_pat_owner", "key-1"), body), &got)
	if err != nil || !found || !proto.Equal(&got, resp) {
		t.Fatalf("replay = %v %v %v", found, err, &got)
	}

	// The same key with another body: refused.
	_, err = e.lookup(req(t, call("blg_pat_owner", "key-1"), wrapperspb.String("create other")), &got)
	if !errors.Is(err, idem.ErrReused) {
		t.Fatalf("another body: %v, want ErrReused", err)
	}
	// Another key, or another caller with the same key: a new request.
	for _, ctx := range []context.Context{call("blg_pat_owner", "key-2"), call("blg_pat_admin", "key-1")} {
		if found, err := e.lookup(req(t, ctx, body), &got); found || err != nil {
			t.Fatalf("a different key or caller found a replay: %v %v", found, err)
		}
	}
	// A second save under the same key loses to the first.
	if err := e.save(req(t, call("blg_pat_owner", "key-1"), body), resp); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second save: %v, want ErrExists", err)
	}
	// Gone after the window.
	e.now = e.now.Add(idem.TTL + time.Second)
	if found, _ := e.lookup(req(t, call("blg_pat_owner", "key-1"), body), &got); found {
		t.Fatal("a replay outlived its window")
	}
}

func TestReplayNeverStoresTheSecret(t *testing.T) {
	e := newEnv(t)
	resp, _ := structpb.NewStruct(map[string]any{"secret": rawSecret})
	if err := e.save(req(t, call("blg_pat_owner", "uuid-0f8e"), wrapperspb.String("b")), resp); err != nil {
		t.Fatal(err)
	}
	e.db.Close()
	raw, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, needle := range []string{rawSecret, "uuid-0f8e", "blg_pat_owner"} {
		if bytes.Contains(raw, []byte(needle)) {
			t.Errorf("the store file holds %q in plaintext", needle)
		}
	}
}

func TestKeysAreChecked(t *testing.T) {
	if r, err := idem.FromContext(call("blg_pat_x", ""), "s", wrapperspb.String("b")); r != nil || err != nil {
		t.Fatalf("no key: %v %v", r, err)
	}
	long := string(bytes.Repeat([]byte("k"), 256))
	for _, bad := range []string{"has space", "tab\there", long, "caf\u00e9"} {
		_, err := idem.FromContext(call("blg_pat_x", bad), "s", wrapperspb.String("b"))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("key %q: %v, want InvalidArgument", bad, err)
		}
	}
	md := metadata.Pairs(idem.MetadataKey, "a", idem.MetadataKey, "b")
	if _, err := idem.FromContext(metadata.NewIncomingContext(context.Background(), md), "s", wrapperspb.String("b")); status.Code(err) != codes.InvalidArgument {
		t.Errorf("two keys: %v, want InvalidArgument", err)
	}
}
