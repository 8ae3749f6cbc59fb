package vault

import "github.com/backlog/controlplane/services/kit/store"

// Buckets is every bucket of the vault's store, for tests that open it
// themselves.
func Buckets() []store.Bucket { return buckets }
