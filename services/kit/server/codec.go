package server

import (
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/backlog/controlplane/services/kit/errs"
)

// requestCodec is gRPC's proto codec with one difference: a request that
// does not decode — most often a string field that is not UTF-8 — is
// InvalidArgument naming the field, not Internal.
//
// gRPC answers any codec error itself, as Internal, before an interceptor
// runs. So Unmarshal reports success for a bad request, leaves the message
// empty and remembers it; the kit's first interceptor (and, for streams,
// RecvMsg) takes it back and answers InvalidArgument before any handler
// sees the message.
type requestCodec struct {
	base encoding.CodecV2
	n    atomic.Int64 // len(bad): the hot path skips the lock when 0
	mu   sync.Mutex
	bad  map[any]error // message pointer → the status to answer
}

func newRequestCodec() *requestCodec {
	base := encoding.GetCodecV2(grpcproto.Name)
	if base == nil {
		panic("server: gRPC's proto codec is not registered")
	}
	return &requestCodec{base: base, bad: map[any]error{}}
}

// serverOption makes every call of the server use the codec.
func (c *requestCodec) serverOption() grpc.ServerOption { return grpc.ForceServerCodecV2(c) }

// Name implements encoding.CodecV2.
func (c *requestCodec) Name() string { return grpcproto.Name }

// Marshal implements encoding.CodecV2.
func (c *requestCodec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

// Unmarshal implements encoding.CodecV2.
func (c *requestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.base.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	proto.Reset(m)
	st := decodeError(m.ProtoReflect().Descriptor(), data.Materialize())
	c.mu.Lock()
	c.bad[v] = st
	c.n.Store(int64(len(c.bad)))
	c.mu.Unlock()
	return nil
}

// take returns (and forgets) the status for a message Unmarshal could not
// decode; nil for every other message.
func (c *requestCodec) take(v any) error {
	if c.n.Load() == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err, ok := c.bad[v]
	if ok {
		delete(c.bad, v)
		c.n.Store(int64(len(c.bad)))
	}
	return err
}

// decodeError is the InvalidArgument for a request b of type md that did
// not decode.
func decodeError(md protoreflect.MessageDescriptor, b []byte) error {
	if path := badUTF8(md, b, 0); path != "" {
		return errs.Invalid(path, "is not valid UTF-8: send text as UTF-8")
	}
	return errs.Invalid("request", "is not a valid protobuf encoding of %s", md.FullName())
}

// badUTF8 finds the first string field in b (a message of type md) that is
// not valid UTF-8, and returns its path as JSON names ("member.name"; a map
// is named by its field). "" when there is none or b does not parse.
func badUTF8(md protoreflect.MessageDescriptor, b []byte, depth int) string {
	if depth > 32 {
		return ""
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return ""
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		switch {
		case fd == nil:
		case fd.Kind() == protoreflect.StringKind:
			if !utf8.Valid(v) {
				return fd.JSONName()
			}
		case fd.Kind() == protoreflect.MessageKind:
			if p := badUTF8(fd.Message(), v, depth+1); p != "" {
				if fd.IsMap() {
					return fd.JSONName()
				}
				return fd.JSONName() + "." + p
			}
		}
	}
	return ""
}
