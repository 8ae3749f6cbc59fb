package reliability

// Read-only inspection of the services' bbolt files: bbolt's own consistency
// check, and the facts the suites assert about what is stored.

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	automationstorev1 "github.com/backlog/controlplane/gen/go/backlog/automationstore/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// Bucket names of the stores, as the services declare them in their schema
// files (read here, never written).
var (
	bucketCredentials = store.Bucket("credentials")
	bucketSubjects    = store.Bucket("subjects")
	bucketAutomations = store.Bucket("automations")
	bucketPending     = store.Bucket("automation_pending_secrets")
)

// boltCheck runs bbolt's consistency check on the file at path (its process
// must be stopped or killed: page accounting, freelist, B+tree ordering) and
// returns what it reported and the number of keys in the services' buckets.
func boltCheck(t testing.TB, path string) (problems []error, keys int) {
	t.Helper()
	if err := boltstore.Check(path); err != nil {
		problems = append(problems, err)
	}
	counts := readKeys(t, path)
	for b, n := range counts {
		if !strings.HasPrefix(b, "_") {
			keys += n
		}
	}
	return problems, keys
}

func readKeys(t testing.TB, path string) map[string]int {
	t.Helper()
	r := openReader(t, path)
	defer r.Close()
	counts, err := r.Keys()
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return counts
}

func openReader(t testing.TB, path string) *boltstore.Reader {
	t.Helper()
	r, err := boltstore.OpenReader(path)
	if err != nil {
		t.Fatalf("open %s read-only: %v", path, err)
	}
	return r
}

// each visits every key of bucket b in tx.
func each(tx store.ReadTx, b store.Bucket, fn func(k, v []byte) error) error {
	_, err := tx.Scan(b, store.ScanOptions{}, func(k, v []byte) (bool, error) { return true, fn(k, v) })
	return err
}

// subjectState is what credential.db holds about one subject.
type subjectState struct {
	kind      credentialv1.SubjectKind
	revoked   bool
	suspended bool
	// live are the ids of its credentials not revoked, by kind.
	live map[credentialv1.CredentialKind][]string
	// issued are the ids of every credential issued to it, live or not.
	issued map[string]bool
}

// readCredentialStore reads every subject and credential of credential.db.
func readCredentialStore(t testing.TB, path string) map[string]*subjectState {
	t.Helper()
	db := openReader(t, path)
	defer db.Close()
	out := map[string]*subjectState{}
	get := func(id string) *subjectState {
		s, ok := out[id]
		if !ok {
			s = &subjectState{live: map[credentialv1.CredentialKind][]string{}, issued: map[string]bool{}}
			out[id] = s
		}
		return s
	}
	err := db.View(func(tx store.ReadTx) error {
		err := each(tx, bucketSubjects, func(k, v []byte) error {
			rec := &credentialstorev1.SubjectRecord{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return err
			}
			s := get(string(k))
			s.kind, s.revoked, s.suspended = rec.GetSubject().GetKind(), rec.GetRevoked(), rec.GetSubject().GetSuspended()
			return nil
		})
		if err != nil {
			return err
		}
		return each(tx, bucketCredentials, func(_, v []byte) error {
			rec := &credentialstorev1.CredentialRecord{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return err
			}
			s := get(rec.GetSubjectId())
			s.issued[rec.GetId()] = true
			if rec.GetRevokedAt() == nil {
				s.live[rec.GetKind()] = append(s.live[rec.GetKind()], rec.GetId())
			}
			return nil
		})
	})
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return out
}

// readAutomations reads every automation record of automation.db by id.
func readAutomations(t testing.TB, path string) map[string]*automationv1.Automation {
	t.Helper()
	db := openReader(t, path)
	defer db.Close()
	out := map[string]*automationv1.Automation{}
	err := db.View(func(tx store.ReadTx) error {
		return each(tx, bucketAutomations, func(_, v []byte) error {
			a := &automationv1.Automation{}
			if err := proto.Unmarshal(v, a); err != nil {
				return err
			}
			out[a.GetId()] = a
			return nil
		})
	})
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return out
}

// readPendingSecrets reads the automation records' pending markers (records
// written while the secret they name was being issued), by automation id.
func readPendingSecrets(t testing.TB, path string) map[string]*automationstorev1.PendingSecret {
	t.Helper()
	db := openReader(t, path)
	defer db.Close()
	out := map[string]*automationstorev1.PendingSecret{}
	err := db.View(func(tx store.ReadTx) error {
		return each(tx, bucketPending, func(k, v []byte) error {
			m := &automationstorev1.PendingSecret{}
			if err := proto.Unmarshal(v, m); err != nil {
				return err
			}
			out[string(k[strings.LastIndexByte(string(k), '/')+1:])] = m
			return nil
		})
	})
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return out
}
