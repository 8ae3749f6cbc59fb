package reliability

// Read-only inspection of the services' bbolt files: bbolt's own consistency
// check, and the facts the suites assert about what is stored.

import (
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	automationv1 "github.com/backlog/controlplane/gen/go/backlog/automation/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	credentialstorev1 "github.com/backlog/controlplane/gen/go/backlog/credentialstore/v1"
)

// Bucket names of the stores, as the services declare them in their schema
// files (read here, never written).
var (
	bucketCredentials = []byte("credentials")
	bucketSubjects    = []byte("subjects")
	bucketAutomations = []byte("automations")
)

// boltCheck opens path read-only (its process must be stopped or killed),
// runs bbolt's consistency check (tx.Check: page accounting, freelist,
// B+tree ordering) and returns the errors it reported and the number of
// keys in the file's top-level buckets.
func boltCheck(t testing.TB, path string) (problems []error, keys int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open %s read-only: %v", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			problems = append(problems, e)
		}
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			keys += b.Stats().KeyN
			return nil
		})
	})
	if err != nil {
		t.Fatalf("check %s: %v", path, err)
	}
	return problems, keys
}

// subjectState is what credential.db holds about one subject.
type subjectState struct {
	kind      credentialv1.SubjectKind
	revoked   bool
	suspended bool
	// live are the ids of its credentials not revoked, by kind.
	live map[credentialv1.CredentialKind][]string
}

// readCredentialStore reads every subject and credential of credential.db.
func readCredentialStore(t testing.TB, path string) map[string]*subjectState {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open %s read-only: %v", path, err)
	}
	defer db.Close()
	out := map[string]*subjectState{}
	get := func(id string) *subjectState {
		s, ok := out[id]
		if !ok {
			s = &subjectState{live: map[credentialv1.CredentialKind][]string{}}
			out[id] = s
		}
		return s
	}
	err = db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketSubjects).ForEach(func(k, v []byte) error {
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
		return tx.Bucket(bucketCredentials).ForEach(func(_, v []byte) error {
			rec := &credentialstorev1.CredentialRecord{}
			if err := proto.Unmarshal(v, rec); err != nil {
				return err
			}
			if rec.GetRevokedAt() == nil {
				s := get(rec.GetSubjectId())
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
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("open %s read-only: %v", path, err)
	}
	defer db.Close()
	out := map[string]*automationv1.Automation{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAutomations).ForEach(func(_, v []byte) error {
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
