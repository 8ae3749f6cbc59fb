package vault

import (
	"fmt"

	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// The vault's buckets, declared once. store.go holds their typed accessors,
// the only code that reads or writes them.
var (
	// secretsBucket holds vaultstorev1.SecretRecord metadata keyed
	// workspace/name-key (see nameKey), so a prefix scan lists a
	// workspace's secrets by name. A record never holds a value, and State
	// is "active" or "revoked" ("expired" is computed when read).
	secretsBucket = store.Bucket("secrets")

	// valuesBucket holds each secret's sealed value keyed like its record:
	// a ciphertext envelope (see sealValue), never plaintext. Apart from the
	// record so that metadata reads never touch it.
	valuesBucket = store.Bucket("secret_values")

	// dataKeysBucket holds each workspace's data keys keyed
	// workspace/%08x(data key version), each wrapped by a key-encryption key
	// (see wrapDataKey).
	dataKeysBucket = store.Bucket("data_keys")

	// buckets is every bucket the store is opened with.
	buckets = []store.Bucket{secretsBucket, valuesBucket, dataKeysBucket, audit.Bucket}
)

// storeName is the vault's store: DataDir/vault.db with the bbolt engine.
const storeName = "vault"

// secretKey is where a secret's record and ciphertext live. Names are unique
// per workspace regardless of case, so the key uses the folded name.
func secretKey(ws, name string) []byte { return store.Key(ws, nameKey(name)) }

// workspacePrefix is the prefix of every key of ws, in every bucket.
func workspacePrefix(ws string) []byte { return store.Key(ws, "") }

func dataKeyKey(ws string, version uint32) []byte {
	return store.Key(ws, fmt.Sprintf("%08x", version))
}
