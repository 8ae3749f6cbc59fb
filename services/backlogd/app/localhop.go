package app

import (
	"context"
	"net"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/test/bufconn"
)

// localHop carries the gateway's connections to the services of its own
// process (-target=all) in memory instead of over loopback TCP: each
// service is served on an in-memory listener as well as on its port, and
// the gateway dials through it. The gateway's API calls to those services
// skip the connection altogether (inProcess); what still uses it — the
// /readyz health checks — skips the kernel (socket writes, reads and
// wake-ups) on both sides. Not used with TLS to the services (mTLS stays
// the whole way) or when the gateway runs alone.
type localHop struct {
	mu  sync.Mutex
	lis map[string]*bufconn.Listener // service address → its in-memory listener
	// memDials counts the connections made in memory.
	memDials atomic.Int64
}

// localHopBuffer is each direction's buffer of an in-memory connection.
const localHopBuffer = 256 << 10

func newLocalHop() *localHop { return &localHop{lis: map[string]*bufconn.Listener{}} }

// listen returns the in-memory listener of the service reached at addrs
// (its dial and listen addresses).
func (h *localHop) listen(addrs ...string) net.Listener {
	l := bufconn.Listen(localHopBuffer)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range addrs {
		if a != "" {
			h.lis[a] = l
		}
	}
	return loopbackListener{l}
}

// dial connects to addr in memory when a service of this process listens
// there, and over TCP otherwise.
func (h *localHop) dial(ctx context.Context, addr string) (net.Conn, error) {
	h.mu.Lock()
	l := h.lis[addr]
	h.mu.Unlock()
	if l == nil {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	c, err := l.DialContext(ctx)
	if err != nil {
		return nil, err
	}
	h.memDials.Add(1)
	return loopbackConn{c}, nil
}

// loopbackAddr is what both ends of an in-memory connection report, so
// that a service sees the gateway where loopback TCP would have shown it.
var loopbackAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}

type loopbackConn struct{ net.Conn }

func (loopbackConn) LocalAddr() net.Addr  { return loopbackAddr }
func (loopbackConn) RemoteAddr() net.Addr { return loopbackAddr }

type loopbackListener struct{ *bufconn.Listener }

func (l loopbackListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return loopbackConn{c}, nil
}

func (loopbackListener) Addr() net.Addr { return loopbackAddr }

// dialer is the gateway's dialer: nil (TCP) without a local hop.
func (h *localHop) dialer() func(context.Context, string) (net.Conn, error) {
	if h == nil {
		return nil
	}
	return h.dial
}

// serviceAddr is the address the gateway and the other services dial name at.
func (c Config) serviceAddr(name string) string {
	switch name {
	case TargetCredential:
		return c.CredentialAddr
	case TargetAutomation:
		return c.AutomationAddr
	case TargetAgent:
		return c.AgentAddr
	case TargetVault:
		return c.VaultAddr
	}
	return ""
}
