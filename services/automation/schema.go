package automation

import (
	"bytes"
	"fmt"

	"google.golang.org/protobuf/proto"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	automationstorev1 "github.com/backlog/controlplane/gen/go/backlog/automationstore/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// The automation service's schema: its buckets, declared once, their keys,
// and the typed accessors below, which are the only code that reads or
// writes them. Handlers run the accessors inside s.db.View and s.db.Update.
// Values are protobuf (the name index holds an id as raw bytes).
var (
	// automationsBucket holds automationv1.Automation records keyed
	// workspace/automation-id. Ids sort by creation time, so a prefix scan of
	// one workspace reads its automations oldest first. A record never holds
	// a raw secret: only the credential's id, label and creation time.
	automationsBucket = store.Bucket("automations")

	// namesBucket makes names unique per workspace: key
	// workspace/folded-name, value the automation id (raw bytes).
	namesBucket = store.Bucket("automation_names")

	// replaysBucket holds the responses of CreateAutomation and
	// RotateAutomationSecret calls made with an Idempotency-Key, for 24
	// hours, sealed by package idem under a key derived from the request
	// (the raw secret in them is never stored in plaintext). Keys are
	// hashes of the workspace, method, caller and Idempotency-Key.
	replaysBucket = store.Bucket("automation_replays")

	// leasesBucket holds the lease of a rotation made with an
	// Idempotency-Key while it runs: key workspace/automation-id, value a
	// random token, expiring after leaseTTL. Replicas share the store, not
	// their locks: a keyed rotation of an automation waits for another
	// replica's to end (and then finds its replay) instead of rotating too.
	leasesBucket = store.Bucket("automation_rotation_leases")

	// pendingBucket marks the records written while the credential they
	// name was being issued: key workspace/automation-id, value an
	// automationstorev1.PendingSecret (see pending.go).
	pendingBucket = store.Bucket("automation_pending_secrets")

	// buckets is every bucket the store is opened with.
	buckets = []store.Bucket{automationsBucket, namesBucket, replaysBucket, leasesBucket, pendingBucket, audit.Bucket, audit.ChainBucket}
)

func automationKey(ws, id string) []byte { return store.Key(ws, id) }

func nameKey(ws, name string) []byte { return store.Key(ws, foldName(name)) }

// workspacePrefix is the prefix of every key of workspace ws.
func workspacePrefix(ws string) []byte { return store.Key(ws, "") }

// cursorInWorkspace reports whether a ListAutomations page cursor (a key)
// lies within workspace ws. An empty cursor (the first page) does.
func cursorInWorkspace(ws string, after []byte) bool {
	return len(after) == 0 || bytes.HasPrefix(after, workspacePrefix(ws))
}

// getAutomation reads automation id of workspace ws; ErrNotFound when there
// is none.
func getAutomation(tx store.ReadTx, ws, id string) (*automationv1.Automation, error) {
	a := &automationv1.Automation{}
	ok, err := store.Get(tx, automationsBucket, automationKey(ws, id), a)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return a, nil
}

// putAutomation writes a under its workspace and id.
func putAutomation(tx store.WriteTx, a *automationv1.Automation) error {
	return store.Put(tx, automationsBucket, automationKey(a.GetWorkspaceId(), a.GetId()), a)
}

// deleteAutomation removes the record of automation id of workspace ws and
// its pending marker (its name is released separately, see names.Release).
func deleteAutomation(tx store.WriteTx, ws, id string) error {
	if err := tx.Delete(automationsBucket, automationKey(ws, id)); err != nil {
		return err
	}
	return clearPending(tx, ws, id)
}

// getPending reads the pending marker of automation id; nil when none.
func getPending(tx store.ReadTx, ws, id string) (*automationstorev1.PendingSecret, error) {
	m := &automationstorev1.PendingSecret{}
	ok, err := store.Get(tx, pendingBucket, automationKey(ws, id), m)
	if err != nil || !ok {
		return nil, err
	}
	return m, nil
}

// putPending marks the record of automation id as naming a credential
// being issued.
func putPending(tx store.WriteTx, ws, id string, m *automationstorev1.PendingSecret) error {
	return store.Put(tx, pendingBucket, automationKey(ws, id), m)
}

// clearPending removes the pending marker of automation id, if any: the
// record's credential is the one to show.
func clearPending(tx store.WriteTx, ws, id string) error {
	return tx.Delete(pendingBucket, automationKey(ws, id))
}

// anyPending reports whether some record of workspace ws has a pending
// marker (a list then settles its page; see Service.settle).
func anyPending(tx store.ReadTx, ws string) (bool, error) {
	found := false
	_, err := store.Scan(tx, pendingBucket, workspacePrefix(ws), nil, 1, func(k, v []byte) (bool, error) {
		found = true
		return true, nil
	})
	return found, err
}

// listAutomations passes up to limit automations of workspace ws to fn,
// oldest first, starting after the cursor after (nil: from the first). It
// returns the cursor of the next page, nil when there is none.
func listAutomations(tx store.ReadTx, ws string, after []byte, limit int, fn func(*automationv1.Automation)) ([]byte, error) {
	return store.Scan(tx, automationsBucket, workspacePrefix(ws), after, limit, func(k, v []byte) (bool, error) {
		a := &automationv1.Automation{}
		if err := proto.Unmarshal(v, a); err != nil {
			return false, fmt.Errorf("decode automation %q: %w", k, err)
		}
		fn(a)
		return true, nil
	})
}

// names makes names unique per workspace (case folded); a name is held
// by one automation at a time.
var names = store.Names{Bucket: namesBucket, Key: nameKey, Taken: ErrNameTaken}
