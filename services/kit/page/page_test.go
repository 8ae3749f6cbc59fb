package page

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
)

// fakeStream stands in for the server transport stream gRPC puts in a
// handler's context, so that grpc.Method(ctx) answers.
type fakeStream struct{ method string }

func (f fakeStream) Method() string             { return f.method }
func (fakeStream) SetHeader(metadata.MD) error  { return nil }
func (fakeStream) SendHeader(metadata.MD) error { return nil }
func (fakeStream) SetTrailer(metadata.MD) error { return nil }

// call is the context of a list call: the key, the method and the caller.
func call(k Key, method, subject, ws string) context.Context {
	ctx := WithKey(context.Background(), k)
	if method != "" {
		ctx = grpc.NewContextWithServerTransportStream(ctx, fakeStream{method})
	}
	if subject != "" {
		ctx = auth.WithPrincipal(ctx, &auth.Principal{SubjectId: subject, WorkspaceId: ws, SubjectKind: credentialv1.SubjectKind_SUBJECT_KIND_MEMBER})
	}
	return ctx
}

func TestRoundTripAndBinding(t *testing.T) {
	k := NewKey("blg_svc_shared")
	ctx := call(k, "/x.v1.S/ListThings", "mem_1", "ws_1")
	tok := Encode(ctx, "ws_1", []byte("ws_1/auto_2"))
	if c, err := Decode(ctx, "ws_1", tok); err != nil || !bytes.Equal(c, []byte("ws_1/auto_2")) {
		t.Fatalf("Decode = %q, %v", c, err)
	}
	// Another replica of the deployment derives the same key.
	if _, err := Decode(call(NewKey("blg_svc_shared"), "/x.v1.S/ListThings", "mem_1", "ws_1"), "ws_1", tok); err != nil {
		t.Fatalf("a replica with the same service credential refused the token: %v", err)
	}
	if Encode(ctx, "ws_1", nil) != "" {
		t.Fatal("the last page must have no token")
	}
	if c, err := Decode(ctx, "ws_1", ""); c != nil || err != nil {
		t.Fatalf("empty token = %q, %v", c, err)
	}
	refused := map[string]struct {
		ctx   context.Context
		scope string
	}{
		"another scope (workspace or filter)": {ctx, "ws_2"},
		"another list (method)":               {call(k, "/x.v1.S/ListOthers", "mem_1", "ws_1"), "ws_1"},
		"another caller":                      {call(k, "/x.v1.S/ListThings", "mem_2", "ws_1"), "ws_1"},
		"the same subject id in another ws":   {call(k, "/x.v1.S/ListThings", "mem_1", "ws_2"), "ws_1"},
		"no caller":                           {call(k, "/x.v1.S/ListThings", "", ""), "ws_1"},
		"another deployment's key":            {call(NewKey("blg_svc_other"), "/x.v1.S/ListThings", "mem_1", "ws_1"), "ws_1"},
		"the per-process key":                 {call(NewKey(""), "/x.v1.S/ListThings", "mem_1", "ws_1"), "ws_1"},
	}
	for name, r := range refused {
		if _, err := Decode(r.ctx, r.scope, tok); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: Decode = %v, want InvalidArgument", name, err)
		}
	}
	raw, _ := base64.RawURLEncoding.DecodeString(tok)
	h := sha256.Sum256([]byte("ws_1"))
	forged := []string{
		"%%%", "AA", "AQA", tok + "!", tok[:len(tok)-1],
		base64.RawURLEncoding.EncodeToString(append(append([]byte{1}, h[:8]...), "zzz"...)), // the old, unkeyed format
		base64.RawURLEncoding.EncodeToString(append([]byte{version}, raw[1:len(raw)-1]...)),
	}
	for i := range raw {
		m := bytes.Clone(raw)
		m[i] ^= 0x80
		forged = append(forged, base64.RawURLEncoding.EncodeToString(m))
	}
	for _, bad := range forged {
		if _, err := Decode(ctx, "ws_1", bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Decode(%q) = %v, want InvalidArgument", bad, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	ctx := call(NewKey("blg_svc_fuzz"), "/x.v1.S/List", "mem_1", "ws_1")
	f.Add("ws_1", Encode(ctx, "ws_1", []byte("ws_1/x")))
	f.Add("", "AQA")
	f.Fuzz(func(t *testing.T, scope, tok string) {
		c, err := Decode(ctx, scope, tok)
		if err == nil && tok != "" && len(c) == 0 {
			t.Fatalf("accepted token with empty cursor")
		}
	})
}
