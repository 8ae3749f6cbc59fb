package credential

import (
	"bytes"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/idem"
	"github.com/backlog/controlplane/services/kit/store"
)

// Typed accessors for the buckets declared in schema.go: the only code that
// knows buckets and keys. Readers take a store.ReadTx and writers a
// store.WriteTx; none of them commits. Lookups that miss return the domain's
// not-found error where a handler would map it, and (nil, false) elsewhere.

// ---- workspaces

func getWorkspace(tx store.ReadTx, id string) (*credentialv1.Workspace, error) {
	ws := &credentialv1.Workspace{}
	ok, err := store.Get(tx, bucketWorkspaces, []byte(id), ws)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("workspace %s: %w", id, errWorkspaceNotFound)
	}
	return ws, nil
}

func putWorkspace(tx store.WriteTx, ws *credentialv1.Workspace) error {
	return store.Put(tx, bucketWorkspaces, []byte(ws.Id), ws)
}

// ---- members (keyed workspace id/member id, so a workspace's members are
// one prefix and a page token is a key)

func memberKey(ws, id string) []byte { return store.Key(ws, id) }

func getMember(tx store.ReadTx, ws, id string) (*credentialv1.Member, error) {
	m := &credentialv1.Member{}
	ok, err := store.Get(tx, bucketMembers, memberKey(ws, id), m)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("member %s: %w", clip(id), errMemberNotFound)
	}
	return m, nil
}

func putMember(tx store.WriteTx, m *credentialv1.Member) error {
	return store.Put(tx, bucketMembers, memberKey(m.WorkspaceId, m.Id), m)
}

func deleteMember(tx store.WriteTx, ws, id string) error {
	return tx.Delete(bucketMembers, memberKey(ws, id))
}

// listMembers reads up to limit members of ws after the page cursor after
// (a key from an earlier page, or nil), and the cursor of the next page.
func listMembers(tx store.ReadTx, ws string, after []byte, limit int) ([]*credentialv1.Member, []byte, error) {
	var out []*credentialv1.Member
	next, err := store.Scan(tx, bucketMembers, memberKey(ws, ""), after, limit, func(k, v []byte) (bool, error) {
		m := &credentialv1.Member{}
		if err := proto.Unmarshal(v, m); err != nil {
			return false, fmt.Errorf("decode member %q: %w", k, err)
		}
		out = append(out, m)
		return true, nil
	})
	return out, next, err
}

// eachMember calls fn for every member of ws, in id order.
func eachMember(tx store.ReadTx, ws string, fn func(*credentialv1.Member) error) error {
	_, err := store.Scan(tx, bucketMembers, memberKey(ws, ""), nil, 0, func(k, v []byte) (bool, error) {
		m := &credentialv1.Member{}
		if err := proto.Unmarshal(v, m); err != nil {
			return false, fmt.Errorf("decode member %q: %w", k, err)
		}
		return true, fn(m)
	})
	return err
}

// ---- subjects (keyed by subject id, which is unique across workspaces)

// findSubject reads subject id in whatever workspace it is.
func findSubject(tx store.ReadTx, id string) (*credentialstorev1.SubjectRecord, bool, error) {
	rec := &credentialstorev1.SubjectRecord{}
	ok, err := store.Get(tx, bucketSubjects, []byte(id), rec)
	if err != nil || !ok {
		return nil, false, err
	}
	return rec, true, nil
}

// getSubject reads subject id of workspace ws (revoked or not).
func getSubject(tx store.ReadTx, ws, id string) (*credentialstorev1.SubjectRecord, error) {
	rec, ok, err := findSubject(tx, id)
	if err != nil {
		return nil, err
	}
	if !ok || rec.GetSubject().GetWorkspaceId() != ws {
		return nil, fmt.Errorf("subject %s: %w", id, errSubjectNotFound)
	}
	return rec, nil
}

func putSubject(tx store.WriteTx, rec *credentialstorev1.SubjectRecord) error {
	return store.Put(tx, bucketSubjects, []byte(rec.Subject.Id), rec)
}

// scanSubjects visits subjects in id order after the page cursor after, until
// limit of them were counted (fn returns true to count one), and returns the
// cursor of the next page.
func scanSubjects(tx store.ReadTx, after []byte, limit int, fn func(*credentialstorev1.SubjectRecord) (bool, error)) ([]byte, error) {
	return store.Scan(tx, bucketSubjects, nil, after, limit, func(k, v []byte) (bool, error) {
		rec := &credentialstorev1.SubjectRecord{}
		if err := proto.Unmarshal(v, rec); err != nil {
			return false, fmt.Errorf("decode subject %q: %w", k, err)
		}
		return fn(rec)
	})
}

// ---- credentials: the record by id, and three indexes: keyed hash → id,
// subject id/credential id for every credential a subject had, and the same
// for the live ones only.

func subjectCredKey(subjectID, credID string) []byte { return store.Key(subjectID, credID) }

func getCredential(tx store.ReadTx, id string) (*credentialstorev1.CredentialRecord, bool, error) {
	rec := &credentialstorev1.CredentialRecord{}
	ok, err := store.Get(tx, bucketCredentials, []byte(id), rec)
	if err != nil || !ok {
		return nil, false, err
	}
	return rec, true, nil
}

// credentialByHash finds the credential whose keyed hash is h (nil when
// none). The caller still compares rec.Hash with h in constant time.
func credentialByHash(tx store.ReadTx, h []byte) (*credentialstorev1.CredentialRecord, error) {
	id, err := tx.Get(bucketHashes, h)
	if err != nil || id == nil {
		return nil, err
	}
	rec, _, err := getCredential(tx, string(id))
	return rec, err
}

// putCredential stores a new live credential: its record and its hash,
// subject and live index entries (4 writes).
func putCredential(tx store.WriteTx, rec *credentialstorev1.CredentialRecord) error {
	if err := store.Put(tx, bucketCredentials, []byte(rec.Id), rec); err != nil {
		return err
	}
	if err := tx.Put(bucketHashes, rec.Hash, []byte(rec.Id)); err != nil {
		return err
	}
	if err := tx.Put(bucketSubjectCreds, subjectCredKey(rec.SubjectId, rec.Id), nil); err != nil {
		return err
	}
	return tx.Put(bucketLiveCreds, subjectCredKey(rec.SubjectId, rec.Id), nil)
}

// updateCredential rewrites a credential's record (not its indexes).
func updateCredential(tx store.WriteTx, rec *credentialstorev1.CredentialRecord) error {
	return store.Put(tx, bucketCredentials, []byte(rec.Id), rec)
}

// revokeCredential marks rec revoked at `at` and takes it out of the live
// index (2 writes).
func revokeCredential(tx store.WriteTx, rec *credentialstorev1.CredentialRecord, at time.Time) error {
	rec.RevokedAt = timestamppb.New(at)
	if err := updateCredential(tx, rec); err != nil {
		return err
	}
	return tx.Delete(bucketLiveCreds, subjectCredKey(rec.SubjectId, rec.Id))
}

// liveCredentialIDs lists the ids of subjectID's live credentials, in id
// order, at most limit of them (0: all).
func liveCredentialIDs(tx store.ReadTx, subjectID string, limit int) ([]string, error) {
	prefix := subjectCredKey(subjectID, "")
	var ids []string
	_, err := store.Scan(tx, bucketLiveCreds, prefix, nil, limit, func(k, _ []byte) (bool, error) {
		ids = append(ids, string(k[len(prefix):]))
		return true, nil
	})
	return ids, err
}

// holdsCredentials reports whether the store holds any credential at all.
func holdsCredentials(tx store.ReadTx) (bool, error) {
	found := false
	_, err := store.Scan(tx, bucketCredentials, nil, nil, 1, func(_, _ []byte) (bool, error) {
		found = true
		return true, nil
	})
	return found, err
}

// ---- migrations: migration name → "done", or "after " + the last key the
// previous batch handled.

const (
	migrationLiveIndex = "live_credentials_index"
	migrationDone      = "done"
	migrationAfter     = "after "
)

// indexLiveCredentialsBatch is one resumable step of filling the live index
// for a store written before it existed: it indexes the live credentials
// among the next batch credentials and records how far it got, in the same
// transaction (at most batch+1 writes). Re-running a step is harmless. It
// reports whether the migration is finished.
func indexLiveCredentialsBatch(tx store.WriteTx, batch int) (bool, error) {
	key := []byte(migrationLiveIndex)
	state, err := tx.Get(bucketMigrations, key)
	if err != nil {
		return false, err
	}
	var after []byte
	switch {
	case string(state) == migrationDone:
		return true, nil
	case state == nil:
		// Not started. A store that already has live index entries was
		// written by a version that kept the index from the start (or that
		// filled it in one go): nothing to do.
		indexed := false
		if _, err := store.Scan(tx, bucketLiveCreds, nil, nil, 1, func(_, _ []byte) (bool, error) {
			indexed = true
			return true, nil
		}); err != nil {
			return false, err
		}
		if indexed {
			return true, tx.Put(bucketMigrations, key, []byte(migrationDone))
		}
	case bytes.HasPrefix(state, []byte(migrationAfter)):
		after = bytes.Clone(state[len(migrationAfter):])
	default:
		return false, fmt.Errorf("migration %s: unknown state %q", migrationLiveIndex, state)
	}
	var live [][]byte
	next, err := store.Scan(tx, bucketCredentials, nil, after, batch, func(k, v []byte) (bool, error) {
		rec := &credentialstorev1.CredentialRecord{}
		if err := proto.Unmarshal(v, rec); err != nil {
			return false, fmt.Errorf("decode credential %q: %w", k, err)
		}
		if rec.RevokedAt == nil {
			live = append(live, subjectCredKey(rec.SubjectId, rec.Id))
		}
		return true, nil
	})
	if err != nil {
		return false, err
	}
	for _, k := range live {
		if err := tx.Put(bucketLiveCreds, k, nil); err != nil {
			return false, err
		}
	}
	if next == nil {
		return true, tx.Put(bucketMigrations, key, []byte(migrationDone))
	}
	return false, tx.Put(bucketMigrations, key, append([]byte(migrationAfter), next...))
}

// ---- idempotent replays: sealed by kit/idem, found by a hash of scope,
// caller and Idempotency-Key; they expire after idem.TTL.

// getReplay reads the replay of r into resp (false when there is none;
// idem.ErrReused when the key was used for another request).
func getReplay(tx store.ReadTx, r *idem.Request, resp proto.Message) (bool, error) {
	return idem.Lookup(tx, bucketReplays, r, resp)
}

// putReplay stores resp as r's replay; store.ErrExists when a concurrent
// request with the same key committed first.
func putReplay(tx store.WriteTx, r *idem.Request, resp proto.Message, now time.Time) error {
	return idem.Save(tx, bucketReplays, r, resp, now)
}

// ---- audit

// auditCursor is the page cursor just past ev in the audit bucket.
func auditCursor(ev *auditv1.AuditEvent) []byte { return store.Key(ev.WorkspaceId, ev.Id) }
