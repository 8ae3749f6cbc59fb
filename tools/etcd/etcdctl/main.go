// Command etcdctl is a pinned build of etcd's command-line client
// (go.etcd.io/etcd/etcdctl/v3, version in ../go.mod), matching tools/bin/etcd.
// Build it with `make tools/bin/etcdctl`.
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() {
	ctlv3.MustStart()
}
