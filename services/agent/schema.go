package agent

import (
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// The agent service's buckets, declared once. Values are protobuf (or, for
// the name and index buckets, an id as raw bytes). Ids sort by creation
// time, so a prefix scan of one workspace reads oldest first.
var (
	// installationsBucket holds agentv1.Installation records keyed
	// workspace/installation-id.
	installationsBucket = store.Bucket("installations")

	// installationNamesBucket makes installation names unique per
	// workspace: key workspace/folded-name, value the installation id.
	installationNamesBucket = store.Bucket("installation_names")

	// agentsBucket holds agentv1.Agent records keyed workspace/agent-id.
	// Revoked agents stay, with revoked set. A record never holds a raw
	// credential.
	agentsBucket = store.Bucket("agents")

	// agentNamesBucket makes the names of live (not revoked) agents unique
	// per workspace: key workspace/folded-name, value the agent id.
	agentNamesBucket = store.Bucket("agent_names")

	// installationAgentsBucket indexes agents by installation: key
	// workspace/installation-id/agent-id, empty value. ListAgents with an
	// installationId filter scans it.
	installationAgentsBucket = store.Bucket("installation_agents")

	// agentCredentialsBucket holds the metadata of an agent's live
	// credentials as credentialv1.CredentialInfo (id, kind, creation time;
	// never the credential): key workspace/agent-id/kind, kind being "agk"
	// (API key) or "rot" (rotation secret).
	agentCredentialsBucket = store.Bucket("agent_credentials")

	// buckets is every bucket Open must create.
	buckets = []store.Bucket{installationsBucket, installationNamesBucket, agentsBucket, agentNamesBucket,
		installationAgentsBucket, agentCredentialsBucket, audit.Bucket}
)

func installationKey(ws, id string) []byte { return store.Key(ws, id) }

func installationNameKey(ws, name string) []byte { return store.Key(ws, foldName(name)) }

func agentKey(ws, id string) []byte { return store.Key(ws, id) }

func agentNameKey(ws, name string) []byte { return store.Key(ws, foldName(name)) }

func installationAgentKey(ws, inst, id string) []byte { return store.Key(ws, inst, id) }

// Credential kinds as they appear in agentCredentialsBucket keys.
const (
	credKeyAPIKey         = "agk"
	credKeyRotationSecret = "rot"
)

func agentCredentialKey(ws, id, kind string) []byte { return store.Key(ws, id, kind) }
