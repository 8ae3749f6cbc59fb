package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// jsonMarshaler is protojson with lowerCamelCase names that rejects unknown
// fields and trailing data, says when a body is not valid JSON, and writes
// every empty repeated or map field as [] or {} instead of leaving it out.
type jsonMarshaler struct {
	*runtime.JSONPb
	maxBody int64
}

func newJSONMarshaler(maxBody int64) runtime.Marshaler {
	return jsonMarshaler{JSONPb: &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: false},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}, maxBody: maxBody}
}

// Marshal is protojson's encoding, then withEmptyLists. protojson has no
// option that emits empty lists without also emitting every zero scalar
// (EmitDefaultValues) or null messages (EmitUnpopulated), so the one place
// every REST response passes through fills them in.
func (m jsonMarshaler) Marshal(v any) ([]byte, error) {
	msg, ok := v.(proto.Message)
	if !ok {
		return m.JSONPb.Marshal(v)
	}
	// What JSONPb.Marshal does with a message, without its copy into a
	// buffer of its own.
	b, err := m.MarshalOptions.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if out, err := withEmptyLists(b, msg.ProtoReflect()); err == nil {
		return out, nil
	}
	// Unreachable for protojson's own output; the plain encoding is still
	// a correct answer.
	return b, nil
}

// NewEncoder is not used by unary routes; it keeps Marshal's shape anyway.
func (m jsonMarshaler) NewEncoder(w io.Writer) runtime.Encoder {
	return runtime.EncoderFunc(func(v any) error {
		b, err := m.Marshal(v)
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		_, err = w.Write(m.Delimiter())
		return err
	})
}

// errTrailingData is the message for a body that goes on after its JSON value.
const errTrailingData = "invalid JSON body: unexpected data after the JSON object (send exactly one object)"

func (m jsonMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	jd := json.NewDecoder(r)
	d := runtime.DecoderWrapper{Decoder: jd, UnmarshalOptions: m.UnmarshalOptions}
	return runtime.DecoderFunc(func(v any) error {
		err := d.Decode(v)
		if err == nil {
			// Exactly one value: only white space may follow it.
			if _, terr := jd.Token(); !errors.Is(terr, io.EOF) {
				if bodyErr := m.bodyError(terr); bodyErr != nil {
					return bodyErr
				}
				return errors.New(errTrailingData)
			}
			return nil
		}
		if errors.Is(err, io.EOF) { // an empty body is an empty message
			return err
		}
		if bodyErr := m.bodyError(err); bodyErr != nil {
			return bodyErr
		}
		return fmt.Errorf("invalid JSON body: %v", err)
	})
}

// bodyError names a failure to read the body (too large, too slow); the
// error handler turns those into 413 and 408 from the request's info.
func (m jsonMarshaler) bodyError(err error) error {
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooBig):
		return fmt.Errorf("request body too large: the limit is %d bytes", tooBig.Limit)
	case isTimeout(err):
		return errors.New("request body not received in time")
	}
	return nil
}

// withEmptyLists rewrites b, the protojson encoding of m, so that every
// repeated field of m and of the messages inside it that protojson left out
// for being empty is there as [] (and every empty map as {}). Fields keep
// protojson's order (declaration order); nothing else changes: zero scalars
// and unset messages stay out. Well-known types (Timestamp, Duration, Any,
// Struct, …) have their own JSON forms and are left as they are.
func withEmptyLists(b []byte, m protoreflect.Message) ([]byte, error) {
	return appendWithEmptyLists(make([]byte, 0, len(b)+64), b, m)
}

// appendWithEmptyLists appends withEmptyLists(b, m) to out: the messages
// inside m are written into the same buffer, not into buffers of their own.
func appendWithEmptyLists(out, b []byte, m protoreflect.Message) ([]byte, error) {
	md := m.Descriptor()
	if md.ParentFile() != nil && md.ParentFile().Package() == "google.protobuf" {
		return append(out, b...), nil
	}
	var membersBuf [16]member
	members, err := appendObjectMembers(membersBuf[:0], b)
	if err != nil {
		return nil, err
	}
	// A message has a handful of members: a linear search beats a map.
	var usedBuf [16]bool
	used := usedBuf[:0]
	if len(members) > len(usedBuf) {
		used = make([]bool, len(members))
	} else {
		used = usedBuf[:len(members)]
	}
	start := len(out)
	out = append(out, '{')
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := fd.JSONName()
		j := -1
		for k := range members {
			if members[k].name == name {
				j = k
				break
			}
		}
		if j < 0 && !fd.IsList() && !fd.IsMap() {
			continue
		}
		if len(out) > start+1 {
			out = append(out, ',')
		}
		out = appendName(out, name)
		out = append(out, ':')
		switch {
		case j >= 0:
			used[j] = true
			if out, err = appendFieldWithEmptyLists(out, fd, m.Get(fd), members[j].raw); err != nil {
				return nil, err
			}
		case fd.IsList():
			out = append(out, "[]"...)
		default:
			out = append(out, "{}"...)
		}
	}
	// Anything protojson wrote that is not a declared field (extensions)
	// follows, as it did.
	for j, mem := range members {
		if !used[j] {
			if len(out) > start+1 {
				out = append(out, ',')
			}
			out = appendName(out, mem.name)
			out = append(out, ':')
			out = append(out, mem.raw...)
		}
	}
	return append(out, '}'), nil
}

// appendFieldWithEmptyLists appends a present field's JSON value raw, with
// appendWithEmptyLists applied to the messages inside it.
func appendFieldWithEmptyLists(out []byte, fd protoreflect.FieldDescriptor, v protoreflect.Value, raw json.RawMessage) ([]byte, error) {
	switch {
	case fd.IsList():
		if fd.Message() == nil {
			return append(out, raw...), nil
		}
		elems, err := arrayElems(raw)
		if err != nil {
			return nil, err
		}
		l := v.List()
		if len(elems) != l.Len() {
			return nil, fmt.Errorf("%s: %d JSON elements for %d values", fd.FullName(), len(elems), l.Len())
		}
		out = append(out, '[')
		for i, e := range elems {
			if i > 0 {
				out = append(out, ',')
			}
			if out, err = appendWithEmptyLists(out, e, l.Get(i).Message()); err != nil {
				return nil, err
			}
		}
		return append(out, ']'), nil
	case fd.IsMap():
		if fd.MapValue().Message() == nil {
			return append(out, raw...), nil
		}
		// protojson writes a map key as the key's text (MapKey.String).
		vals := map[string]protoreflect.Value{}
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			vals[k.String()] = mv
			return true
		})
		members, err := objectMembers(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, '{')
		for i, mem := range members {
			mv, ok := vals[mem.name]
			if !ok {
				return nil, fmt.Errorf("%s: no value for key %q", fd.FullName(), mem.name)
			}
			if i > 0 {
				out = append(out, ',')
			}
			k, _ := json.Marshal(mem.name)
			out = append(out, k...)
			out = append(out, ':')
			if out, err = appendWithEmptyLists(out, mem.raw, mv.Message()); err != nil {
				return nil, err
			}
		}
		return append(out, '}'), nil
	case fd.Message() != nil:
		return appendWithEmptyLists(out, raw, v.Message())
	}
	return append(out, raw...), nil
}

type member struct {
	name string
	raw  json.RawMessage
}
