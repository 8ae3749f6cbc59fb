package automation

import (
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
)

// The automation service's buckets, declared once. Values are protobuf.
var (
	// automationsBucket holds automationv1.Automation records keyed
	// workspace/automation-id. Ids sort by creation time, so a prefix scan of
	// one workspace reads its automations oldest first. A record never holds
	// a raw secret: only the credential's id, label and creation time.
	automationsBucket = store.Bucket("automations")

	// namesBucket makes names unique per workspace: key
	// workspace/folded-name, value the automation id (raw bytes).
	namesBucket = store.Bucket("automation_names")

	// buckets is every bucket Open must create.
	buckets = []store.Bucket{automationsBucket, namesBucket, audit.Bucket}
)

func automationKey(ws, id string) []byte { return store.Key(ws, id) }

func nameKey(ws, name string) []byte { return store.Key(ws, foldName(name)) }
