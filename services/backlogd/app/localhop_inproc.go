package app

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/fullstorydev/grpchan/inprocgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/backlog/controlplane/services/kit/server"
)

// inProcess carries calls between the parts of one process (several
// targets, no TLS to the services) as function calls: the gateway's calls
// to the services and the services' calls to each other skip protobuf
// encoding, HTTP/2 and the gRPC client and server, but not the services'
// interceptors. Each call passes the service's own interceptor chain
// (server.Server.Interceptors: metrics, request ids and client IPs, logging,
// panic recovery, the error table, the service-credential check,
// authentication) with the context a network call would have: the caller's
// outgoing metadata plus its per-call credentials as incoming metadata,
// 127.0.0.1 as the peer (as the in-memory listeners report it), the
// caller's deadline and cancellation. Requests and responses are copied,
// text that gRPC would refuse to encode (not UTF-8) is refused as gRPC
// refuses it, headers and trailers a handler sets reach the caller's
// grpc.Header and grpc.Trailer options, and errors reach the caller as the
// statuses a network call would return.
//
// Unary calls and streams (the revocation watch) alike. Only the services'
// own APIs are served in process: health checks, reflection and
// AdminService go over the connections as before, and so does a call to an
// address served by no part of the process. gRPC's message size limits do
// not apply in process.
//
// The channel is grpchan's inprocgrpc (each call's handler runs in a
// goroutine of its own, as on a server); this type adds what it leaves to
// its user: a connection's per-call credentials (it applies only those
// given as call options), a peer with an IP address (it reports an
// "inproc" one), the copying that refuses non-UTF-8 text, statuses for
// plain errors, and the status of a call cut short by its context (it
// reports io.EOF).
type inProcess struct {
	mu    sync.RWMutex
	local map[string]*localService // service address → the service served there

	// calls counts the calls carried in process (unary calls and streams).
	calls atomic.Int64
}

func newInProcess() *inProcess { return &inProcess{local: map[string]*localService{}} }

// localService is one service of the process, reachable in process.
type localService struct {
	ch       inprocgrpc.Channel
	services map[string]bool // the gRPC services registered on ch
	calls    *atomic.Int64

	// Stopping refuses new calls and waits for those in flight.
	mu       sync.Mutex
	inFlight int
	stopping bool
	idle     chan struct{} // closed once stopping with no call in flight
}

// serve makes the services register puts on srv (mount.Service.Register)
// reachable in process at addrs (their listen and dial addresses; a list of
// replicas is not one of them: calls to it stay balanced over the network).
// It returns the function that stops them: new calls are refused
// (Unavailable, as by a stopping server) and the ones in flight are waited
// for, at most grace.
func (p *inProcess) serve(srv *server.Server, register func(grpc.ServiceRegistrar), addrs ...string) func(grace time.Duration) {
	l := &localService{services: map[string]bool{}, calls: &p.calls, idle: make(chan struct{})}
	unary, stream := srv.Interceptors()
	l.ch.WithCloner(cloner{})
	l.ch.WithServerUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if !l.enter() {
			return nil, errStopping
		}
		defer l.leave()
		growStack()
		return unary(peer.NewContext(ctx, loopbackPeer), req, info, h)
	})
	l.ch.WithServerStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if !l.enter() {
			return errStopping
		}
		defer l.leave()
		return stream(srv, peerStream{ss, peer.NewContext(ss.Context(), loopbackPeer)}, info, h)
	})
	register(registrar{l})
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range addrs {
		if a != "" && !strings.Contains(a, ",") {
			p.local[a] = l
		}
	}
	return l.stop
}

// growStack grows the stack of the goroutine the channel starts for a call
// while it is still shallow. A call through the interceptors (metrics,
// logging, error table, authentication: its credential cache hashes the
// token) to a store read outgrows a new goroutine's first stack, and the
// runtime then copies the stack in the middle of the call, walking every
// frame on it; doing so once here, with a few frames, costs a fraction of
// that (a gRPC server avoids it by reusing its stream workers).
//
//go:noinline
func growStack() {
	var frame [callStack]byte
	touch(frame[:])
}

// callStack makes the stack grow to 16 KiB, about what a unary call's
// handler needs and the largest size the runtime serves from its per-P
// stack caches (a 32 KiB stack costs a trip to the heap's lock).
const callStack = 6 << 10

//go:noinline
func touch(b []byte) { b[len(b)-1] = 0 }

var errStopping = status.Error(codes.Unavailable, "the service is shutting down")

// loopbackPeer is the peer of an in-process call: a service sees its caller
// where loopback TCP (or the in-memory listener) would have shown it.
var loopbackPeer = &peer.Peer{Addr: loopbackAddr, LocalAddr: loopbackAddr}

type peerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s peerStream) Context() context.Context { return s.ctx }

// registrar records the services registered on the channel.
type registrar struct{ l *localService }

func (r registrar) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r.l.ch.RegisterService(desc, impl)
	r.l.services[desc.ServiceName] = true
}

func (l *localService) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopping {
		return false
	}
	l.inFlight++
	return true
}

func (l *localService) leave() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	if l.stopping && l.inFlight == 0 {
		close(l.idle)
	}
}

func (l *localService) stop(grace time.Duration) {
	l.mu.Lock()
	if !l.stopping {
		l.stopping = true
		if l.inFlight == 0 {
			close(l.idle)
		}
	}
	l.mu.Unlock()
	select {
	case <-l.idle:
	case <-time.After(grace):
	}
}

// conn returns the channel to the service at addr: in process when a part
// of this process serves it (decided at each call: the service may start
// after its caller), else fallback (nil: Unavailable). creds are the
// per-call credentials the connection would present (nil: none).
func (p *inProcess) conn(addr string, fallback grpc.ClientConnInterface, creds credentials.PerRPCCredentials) grpc.ClientConnInterface {
	return &localConn{p: p, addr: addr, fallback: fallback, creds: creds}
}

type localConn struct {
	p        *inProcess
	addr     string
	fallback grpc.ClientConnInterface
	creds    credentials.PerRPCCredentials
	found    atomic.Pointer[localService] // once served, a service stays
}

// route returns the local service for method, or nil with the connection
// to use instead.
func (c *localConn) route(method string) (*localService, grpc.ClientConnInterface, error) {
	l := c.found.Load()
	if l == nil {
		c.p.mu.RLock()
		l = c.p.local[c.addr]
		c.p.mu.RUnlock()
		if l != nil {
			c.found.Store(l)
		}
	}
	if l != nil {
		svc := strings.TrimPrefix(method, "/")
		if i := strings.LastIndexByte(svc, '/'); i >= 0 {
			svc = svc[:i]
		}
		if l.services[svc] {
			return l, nil, nil
		}
	}
	if c.fallback != nil {
		return nil, c.fallback, nil
	}
	if l != nil {
		return nil, nil, status.Errorf(codes.Unimplemented, "unknown service %s", strings.TrimPrefix(method, "/"))
	}
	return nil, nil, status.Errorf(codes.Unavailable, "no service at %s in this process yet", c.addr)
}

// outgoing adds what the connection's per-call credentials would add.
func (c *localConn) outgoing(ctx context.Context, method string) (context.Context, error) {
	if c.creds == nil {
		return ctx, nil
	}
	md, err := c.creds.GetRequestMetadata(ctx, "inproc://"+c.addr+method)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "transport: per-RPC creds failed due to error: %v", err)
	}
	for k, v := range md {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	return ctx, nil
}

func (c *localConn) Invoke(ctx context.Context, method string, req, reply any, opts ...grpc.CallOption) error {
	l, other, err := c.route(method)
	if err != nil {
		return err
	}
	if other != nil {
		return other.Invoke(ctx, method, req, reply, opts...)
	}
	if ctx, err = c.outgoing(ctx, method); err != nil {
		return err
	}
	l.calls.Add(1)
	err = l.ch.Invoke(ctx, method, req, reply, opts...)
	if err == io.EOF {
		// The channel drops the answer of a call whose context ended
		// (deadline or cancellation) and reports io.EOF.
		if err = ctx.Err(); err == nil {
			err = status.Error(codes.Internal, "server closed the stream without sending trailers")
		}
	}
	return asStatus(err)
}

func (c *localConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	l, other, err := c.route(method)
	if err != nil {
		return nil, err
	}
	if other != nil {
		return other.NewStream(ctx, desc, method, opts...)
	}
	if ctx, err = c.outgoing(ctx, method); err != nil {
		return nil, err
	}
	l.calls.Add(1)
	cs, err := l.ch.NewStream(ctx, desc, method, opts...)
	if err != nil {
		return nil, asStatus(err)
	}
	return clientStream{cs}, nil
}

// clientStream reports the stream's errors as statuses.
type clientStream struct{ grpc.ClientStream }

func (s clientStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return md, asStatus(err)
}

func (s clientStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err == io.EOF {
		return err // the server ended the stream: RecvMsg says how
	}
	return asStatus(err)
}

func (s clientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == io.EOF {
		return err
	}
	return asStatus(err)
}

// asStatus is the error a network call would return for err: a status as
// it is, a context error as its code, anything else Unknown (as a gRPC
// server answers a handler's plain error).
func asStatus(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.FromContextError(err).Err()
}

// cloner copies messages between caller and handler (neither sees the
// other's) and refuses, as gRPC's encoding does, a message with text that is
// not UTF-8.
type cloner struct{}

func (cloner) Copy(out, in any) error {
	src, err := message(in)
	if err != nil {
		return err
	}
	dst, ok := out.(proto.Message)
	if !ok || dst.ProtoReflect().Descriptor() != src.ProtoReflect().Descriptor() {
		return status.Errorf(codes.Internal, "grpc: error while unmarshaling: %T into %T", in, out)
	}
	proto.Reset(dst)
	proto.Merge(dst, src)
	return nil
}

func (cloner) Clone(in any) (any, error) {
	src, err := message(in)
	if err != nil {
		return nil, err
	}
	return proto.Clone(src), nil
}

// message is in as a protobuf message that gRPC would encode.
func message(in any) (proto.Message, error) {
	m, ok := in.(proto.Message)
	if !ok {
		return nil, status.Errorf(codes.Internal, "grpc: error while marshaling: %T is not a protobuf message", in)
	}
	if !validUTF8(m.ProtoReflect()) {
		// The encoder's own words (the gateway recognises them).
		_, err := proto.Marshal(m)
		if err == nil {
			err = errors.New("string field contains invalid UTF-8")
		}
		return nil, status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
	}
	return m, nil
}

// validUTF8 reports whether every proto3 string in m (nested messages,
// lists and maps included) is valid UTF-8: protobuf refuses to encode one
// that is not.
func validUTF8(m protoreflect.Message) bool {
	ok := true
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && ok; i++ {
				ok = validValue(fd, l.Get(i))
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				ok = validValue(fd.MapKey(), k.Value()) && validValue(fd.MapValue(), mv)
				return ok
			})
		default:
			ok = validValue(fd, v)
		}
		return ok
	})
	return ok
}

func validValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return fd.Syntax() != protoreflect.Proto3 || utf8.ValidString(v.String())
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return validUTF8(v.Message())
	}
	return true
}
