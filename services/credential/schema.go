package credential

import (
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// Every bucket of credential.db, declared once.
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

	schema = []store.Bucket{bucketWorkspaces, bucketMembers, bucketSubjects, bucketCredentials, bucketHashes, bucketSubjectCreds, bucketLiveCreds, audit.Bucket}
)
