package credential

import (
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// Every bucket of credential.db, declared once. Only store.go reads and
// writes them, through typed accessors.
var (
	// workspaces: workspace id → credentialv1.Workspace
	bucketWorkspaces = store.Bucket("workspaces")
	// members: workspace id/member id → credentialv1.Member
	bucketMembers = store.Bucket("members")
	// subjects: subject id → credentialstorev1.SubjectRecord
	bucketSubjects = store.Bucket("subjects")
	// credentials: credential id → credentialstorev1.CredentialRecord
	bucketCredentials = store.Bucket("credentials")
	// credential_hashes: HMAC of the raw credential → credential id
	bucketHashes = store.Bucket("credential_hashes")
	// subject_credentials: subject id/credential id → empty (every credential
	// a subject ever had)
	bucketSubjectCreds = store.Bucket("subject_credentials")
	// live_credentials: subject id/credential id → empty (only the live ones,
	// so that rotating costs the same however long the history)
	bucketLiveCreds = store.Bucket("live_credentials")
	// migrations: migration name → its progress (see store.go)
	bucketMigrations = store.Bucket("migrations")
	// idempotent_replays: hash of scope, caller and Idempotency-Key → the
	// first response of a create that returned a one-time credential,
	// sealed under a key derived from the request (kit/idem); expires after
	// idem.TTL
	bucketReplays = store.Bucket("idempotent_replays")
	// console_sign_ins: SHA-256 of a console sign-in code →
	// consolev1.RedeemSignInResponse (sealed by the gateway); expires with
	// the code (console.go)
	bucketConsoleSignIns = store.Bucket("console_sign_ins")
	// console_ended_sessions: SHA-256 of a signed-out console session's id
	// → empty; expires when the session would have (console.go)
	bucketConsoleEnded = store.Bucket("console_ended_sessions")

	schema = []store.Bucket{bucketWorkspaces, bucketMembers, bucketSubjects, bucketCredentials, bucketHashes, bucketSubjectCreds, bucketLiveCreds, bucketMigrations, bucketReplays, bucketConsoleSignIns, bucketConsoleEnded, audit.Bucket, audit.ChainBucket}
)
