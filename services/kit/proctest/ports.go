package proctest

import (
	"fmt"
	"net"
	"sync"
)

// handedOut holds every address FreeAddrs returned in this process: a port
// just closed is free again for the kernel, and a cluster starting in
// parallel (or a process that stopped a moment ago) must not be given it
// again.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// FreeAddrs returns n free loopback addresses ("127.0.0.1:port"), none
// returned before in this process. The listeners that found them are closed
// before backlogd binds them, so another program could still take one in
// between: a process that then cannot bind exits with "address already in
// use", and Cluster.Start tries again on fresh ports.
func FreeAddrs(n int) ([]string, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	// A port handed out earlier stays open here while we look further, so
	// the kernel offers another; the bound keeps a wedged kernel from
	// looping forever.
	for tries := 0; len(out) < n; tries++ {
		if tries > n+10000 {
			return nil, fmt.Errorf("picking %d free ports: the kernel keeps offering ports handed out before", n)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("picking a free port: %w", err)
		}
		ls = append(ls, l)
		if a := l.Addr().String(); !handedOut.m[a] {
			handedOut.m[a] = true
			out = append(out, a)
		}
	}
	return out, nil
}
