// Package etcdstore is the distributed engine of the storage seam: a
// store.Backend kept in an etcd (≥ 3.6) cluster, so that any number of
// replicas of a service share one store.
//
// Layout: a deployment lives under one prefix (-etcd-prefix, "/backlog" by
// default), each service's store under <prefix>/<service>/:
//
//	<prefix>/deployment          who owns the prefix (id, key fingerprint)
//	<prefix>/<service>/meta      the store's id and creation time
//	<prefix>/<service>/d/<bucket>/<key>   the data
//	<prefix>/<service>/g/<bucket>         a bucket's delete guard
//
// Transactions are optimistic, after Kubernetes' GuaranteedUpdate: an
// Update's reads are pinned to one revision, its writes are buffered, and it
// commits as one etcd Txn guarded by what it read: a point read by the key's
// ModRevision (0 when it was absent), a scan by "every key in the scanned
// range is older than the read", plus the bucket's delete guard, because a
// range compare cannot see a key that was deleted. On a conflict fn runs
// again, with bounded, jittered backoff. Each Update is its own Txn: callers
// are never merged.
//
// Expiry uses etcd leases, one per expiry moment (rounded, so that keys that
// expire together share one), so a key disappears when its lease does and the
// watch reports the deletion.
package etcdstore
