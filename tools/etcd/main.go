// Command etcd is a pinned build of the etcd server (go.etcd.io/etcd/server/v3,
// version in go.mod) for the HA mode's tests and for `make run-ha`. Debian's
// etcd-server is 3.4 (end-of-life); this one comes from the Go module proxy, so
// a fresh clone needs nothing else. Build it with `make tools/bin/etcd`.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
