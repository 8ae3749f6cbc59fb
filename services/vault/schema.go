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

	// versionsBucket holds the kept versions of each secret's value
	// (vaultstorev1.VersionRecord: sealed like the current value, bound to
	// its version number) keyed workspace/name-key/%016x(version), the
	// current one included; at most maxVersions per secret.
	versionsBucket = store.Bucket("secret_versions")

	// connectionsBucket holds vaultstorev1.ConnectionRecord keyed
	// workspace/connection id; actionsBucket vaultstorev1.ActionRecord
	// keyed workspace/action id. Neither holds a value: they name secrets.
	connectionsBucket = store.Bucket("connections")
	actionsBucket     = store.Bucket("actions")

	// usesBucket indexes who references a secret, for where-used and the
	// in-use check of revoke and delete: an empty value keyed
	// workspace/name-key/kind/id (kind "action" or "connection"), written
	// in the transaction that writes the action or connection.
	usesBucket = store.Bucket("secret_uses")

	// eventsBucket holds vaultv1.Event keyed by event id (time-ordered),
	// each expiring after eventRetention; eventsPendingBucket marks those
	// not yet fanned out to subscriptions (see events.go).
	eventsBucket        = store.Bucket("events")
	eventsPendingBucket = store.Bucket("events_pending")

	// subscriptionsBucket holds vaultstorev1.SubscriptionRecord keyed
	// workspace/subscription id; deliveriesBucket vaultstorev1.DeliveryRecord
	// keyed workspace/subscription id/event id; eventsDueBucket indexes
	// pending deliveries by when they are due (%016x(unix nanos)/workspace/
	// subscription id/event id); eventClaimsBucket holds the claim (a token,
	// expiring) of the replica attempting a delivery, keyed like it.
	subscriptionsBucket = store.Bucket("event_subscriptions")
	deliveriesBucket    = store.Bucket("event_deliveries")
	eventsDueBucket     = store.Bucket("event_due")
	eventClaimsBucket   = store.Bucket("event_claims")

	// remindersBucket marks the expiry reminders raised, keyed workspace/
	// name-key/expiry (unix seconds)/threshold, so each is raised once.
	remindersBucket = store.Bucket("event_reminders")

	// replaysBucket keeps, sealed (package idem), the responses of creates
	// made with an Idempotency-Key that return a one-time secret (event
	// subscriptions' signing secrets), for 24 hours.
	replaysBucket = store.Bucket("replays")

	// kekBucket holds the key-encryption key record its replicas share (see
	// kekha.go): under "current", the current key's id and where it is (a
	// file path, or a PKCS#11 module, token, key label and PIN file path;
	// never key bytes nor a PIN), the keys a running rewrap retires, and
	// the ids of retired keys. JSON.
	kekBucket = store.Bucket("kek_record")

	// buckets is every bucket the store is opened with.
	buckets = []store.Bucket{secretsBucket, valuesBucket, dataKeysBucket, versionsBucket, connectionsBucket, actionsBucket, usesBucket,
		eventsBucket, eventsPendingBucket, subscriptionsBucket, deliveriesBucket, eventsDueBucket, eventClaimsBucket, remindersBucket, replaysBucket, kekBucket,
		audit.Bucket, audit.ChainBucket}
)

// storeName is the vault's store: DataDir/vault.db with the bbolt engine.
const storeName = "vault"

// secretKey is where a secret's record and ciphertext live. Names are unique
// per workspace regardless of case, so the key uses the folded name.
func secretKey(ws, name string) []byte { return store.Key(ws, nameKey(name)) }

// workspacePrefix is the prefix of every key of ws, in every bucket.
func workspacePrefix(ws string) []byte { return store.Key(ws, "") }

func versionKey(ws, name string, version int64) []byte {
	return store.Key(ws, nameKey(name), fmt.Sprintf("%016x", version))
}

func versionsPrefix(ws, name string) []byte { return store.Key(ws, nameKey(name), "") }

func useKey(ws, secret, kind, id string) []byte { return store.Key(ws, nameKey(secret), kind, id) }

func usesPrefix(ws, secret string) []byte { return store.Key(ws, nameKey(secret), "") }

func dataKeyKey(ws string, version uint32) []byte {
	return store.Key(ws, fmt.Sprintf("%08x", version))
}
