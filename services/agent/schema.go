package agent

import (
	"bytes"
	"fmt"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// The agent service's schema: its buckets, declared once, their keys, and
// the typed accessors below, which are the only code that reads or writes
// them. Handlers run the accessors inside s.db.View and s.db.Update. Values
// are protobuf (or, for the name and index buckets, an id as raw bytes). Ids
// sort by creation time, so a prefix scan of one workspace reads oldest
// first.
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

	// replaysBucket holds the responses of CreateAgent and RotateAgentKey
	// calls made with an Idempotency-Key, for 24 hours, sealed by package
	// idem under a key derived from the request (the raw credentials in
	// them are never stored in plaintext). Keys are hashes of the
	// workspace, method, caller and Idempotency-Key. (Self-rotation keeps
	// its replays in selfReplaysBucket; see replay.go.)
	replaysBucket = store.Bucket("agent_replays")

	// leasesBucket holds the lease of an admin rotation made with an
	// Idempotency-Key while it runs: key workspace/agent-id, value a random
	// token, expiring after leaseTTL. Replicas share the store, not their
	// locks: a keyed rotation of an agent waits for another replica's to
	// end (and then finds its replay) instead of rotating too.
	leasesBucket = store.Bucket("agent_rotation_leases")

	// The self-rotation limits and replays, shared by every replica (see
	// limits.go and replay.go). Values are small fixed binary records
	// carrying their own times; each key expires once it no longer matters.
	//
	// selfRatesBucket holds each client address's budget of attempts with a
	// valid API key (a token bucket): key the address (an IPv6 client: its
	// /64).
	selfRatesBucket = store.Bucket("agent_self_rotation_rates")

	// selfLockoutsBucket counts wrong rotation secrets per client address
	// and API key: key address/credential-id (never the key).
	selfLockoutsBucket = store.Bucket("agent_self_rotation_lockouts")

	// selfReplaysBucket holds the results of keyed self-rotations for
	// IdempotencyTTL, sealed under a key derived from the presented
	// credentials and Idempotency-Key: key an id derived from the same
	// inputs (hex), value version, expiry and the sealed result.
	selfReplaysBucket = store.Bucket("agent_self_rotation_replays")

	// selfTurnsBucket holds the leases by which self-rotations take turns
	// across replicas: key agent/workspace/agent-id (attempts of one agent)
	// or replay/id (a keyed request in flight), expiring after selfTurnTTL.
	selfTurnsBucket = store.Bucket("agent_self_rotation_turns")

	// buckets is every bucket the store is opened with.
	buckets = []store.Bucket{installationsBucket, installationNamesBucket, agentsBucket, agentNamesBucket,
		installationAgentsBucket, agentCredentialsBucket, replaysBucket, leasesBucket,
		selfRatesBucket, selfLockoutsBucket, selfReplaysBucket, selfTurnsBucket, audit.Bucket, audit.ChainBucket}
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

// listPrefix is the key prefix of a list: ws's installations or agents
// (inst ""), or the agents of installation inst.
func listPrefix(ws, inst string) []byte {
	if inst != "" {
		return store.Key(ws, inst, "")
	}
	return store.Key(ws, "")
}

// cursorInList reports whether a page cursor (a key) lies within the list
// listPrefix(ws, inst) names. An empty cursor (the first page) does.
func cursorInList(ws, inst string, after []byte) bool {
	return len(after) == 0 || bytes.HasPrefix(after, listPrefix(ws, inst))
}

// Installations.

// hasInstallation reports whether workspace ws has installation inst.
func hasInstallation(tx store.ReadTx, ws, inst string) (bool, error) {
	v, err := tx.Get(installationsBucket, installationKey(ws, inst))
	return v != nil, err
}

// installationExists reports ErrInstallationNotFound unless ws has inst.
func installationExists(tx store.ReadTx, ws, inst string) error {
	ok, err := hasInstallation(tx, ws, inst)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrInstallationNotFound, inst)
	}
	return nil
}

// putInstallation writes in under its workspace and id.
func putInstallation(tx store.WriteTx, in *agentv1.Installation) error {
	return store.Put(tx, installationsBucket, installationKey(in.GetWorkspaceId(), in.GetId()), in)
}

// listInstallations passes up to limit installations of workspace ws to fn,
// oldest first, starting after the cursor after (nil: from the first). It
// returns the cursor of the next page, nil when there is none.
func listInstallations(tx store.ReadTx, ws string, after []byte, limit int, fn func(*agentv1.Installation)) ([]byte, error) {
	return store.Scan(tx, installationsBucket, listPrefix(ws, ""), after, limit, func(k, v []byte) (bool, error) {
		in := &agentv1.Installation{}
		if err := proto.Unmarshal(v, in); err != nil {
			return false, fmt.Errorf("decode installation %q: %w", k, err)
		}
		fn(in)
		return true, nil
	})
}

// claimInstallationName records that installation id holds name in ws;
// ErrInstallationNameTaken if any installation already does (installation
// names are never released).
func claimInstallationName(tx store.WriteTx, ws, name, id string) error {
	nk := installationNameKey(ws, name)
	owner, err := tx.Get(installationNamesBucket, nk)
	if err != nil {
		return err
	}
	if owner != nil {
		return fmt.Errorf("%w: %q", ErrInstallationNameTaken, name)
	}
	return tx.Put(installationNamesBucket, nk, []byte(id))
}

// Agents.

// getAgent reads agent id of workspace ws; ErrAgentNotFound when there is
// none.
func getAgent(tx store.ReadTx, ws, id string) (*agentv1.Agent, error) {
	a := &agentv1.Agent{}
	ok, err := store.Get(tx, agentsBucket, agentKey(ws, id), a)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrAgentNotFound
	}
	return a, nil
}

// putAgent writes a under its workspace and id.
func putAgent(tx store.WriteTx, a *agentv1.Agent) error {
	return store.Put(tx, agentsBucket, agentKey(a.GetWorkspaceId(), a.GetId()), a)
}

// indexAgent records that agent id belongs to installation inst of ws.
func indexAgent(tx store.WriteTx, ws, inst, id string) error {
	return tx.Put(installationAgentsBucket, installationAgentKey(ws, inst, id), []byte{})
}

// listAgents passes up to limit agents of workspace ws to fn, oldest first
// (with inst set, only that installation's), starting after the cursor
// after (nil: from the first). It returns the cursor of the next page, nil
// when there is none.
func listAgents(tx store.ReadTx, ws, inst string, after []byte, limit int, fn func(*agentv1.Agent)) ([]byte, error) {
	prefix := listPrefix(ws, inst)
	if inst == "" {
		return store.Scan(tx, agentsBucket, prefix, after, limit, func(k, v []byte) (bool, error) {
			a := &agentv1.Agent{}
			if err := proto.Unmarshal(v, a); err != nil {
				return false, fmt.Errorf("decode agent %q: %w", k, err)
			}
			fn(a)
			return true, nil
		})
	}
	return store.Scan(tx, installationAgentsBucket, prefix, after, limit, func(k, _ []byte) (bool, error) {
		a := &agentv1.Agent{}
		ok, err := store.Get(tx, agentsBucket, agentKey(ws, string(k[len(prefix):])), a)
		if err != nil || !ok {
			return false, err
		}
		fn(a)
		return true, nil
	})
}

// names makes names unique per workspace (case folded); a name is held
// by one live agent at a time.
var names = store.Names{Bucket: agentNamesBucket, Key: agentNameKey, Taken: ErrNameTaken}

// Credential metadata.

// credentialInfo reads the metadata of agent id's credential of kind
// (credKeyAPIKey, credKeyRotationSecret); nil when none is recorded.
func credentialInfo(tx store.ReadTx, ws, id, kind string) (*credentialv1.CredentialInfo, error) {
	info := &credentialv1.CredentialInfo{}
	ok, err := store.Get(tx, agentCredentialsBucket, agentCredentialKey(ws, id, kind), info)
	if err != nil || !ok {
		return nil, err
	}
	return info, nil
}

// hasCredentialInfo reports whether agent id has a credential of kind on
// record.
func hasCredentialInfo(tx store.ReadTx, ws, id, kind string) (bool, error) {
	v, err := tx.Get(agentCredentialsBucket, agentCredentialKey(ws, id, kind))
	return v != nil, err
}

// putCredentialInfos stores the metadata (never the credentials) of an
// agent's API key and rotation secret.
func putCredentialInfos(tx store.WriteTx, ws, id string, pair []*credentialv1.IssuedCredential) error {
	if err := store.Put(tx, agentCredentialsBucket, agentCredentialKey(ws, id, credKeyAPIKey), pair[0].GetInfo()); err != nil {
		return err
	}
	return store.Put(tx, agentCredentialsBucket, agentCredentialKey(ws, id, credKeyRotationSecret), pair[1].GetInfo())
}

// deleteCredentialInfo drops the metadata of agent id's credential of kind.
func deleteCredentialInfo(tx store.WriteTx, ws, id, kind string) error {
	return tx.Delete(agentCredentialsBucket, agentCredentialKey(ws, id, kind))
}

// deleteCredentialInfos drops the metadata of both of agent id's credentials.
func deleteCredentialInfos(tx store.WriteTx, ws, id string) error {
	for _, k := range []string{credKeyAPIKey, credKeyRotationSecret} {
		if err := deleteCredentialInfo(tx, ws, id, k); err != nil {
			return err
		}
	}
	return nil
}
