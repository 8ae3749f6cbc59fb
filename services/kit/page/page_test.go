package page

import (
	"bytes"
	"testing"
)

func TestRoundTripAndScope(t *testing.T) {
	tok := Encode("ws_1", []byte("ws_1/auto_2"))
	k, err := Decode("ws_1", tok)
	if err != nil || !bytes.Equal(k, []byte("ws_1/auto_2")) {
		t.Fatalf("Decode = %q, %v", k, err)
	}
	if _, err := Decode("ws_2", tok); err == nil {
		t.Fatal("token of another workspace accepted")
	}
	for _, bad := range []string{"%%%", "AA", "AQA", tok + "!"} {
		if _, err := Decode("ws_1", bad); err == nil {
			t.Errorf("Decode(%q) accepted", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("ws_1", Encode("ws_1", []byte("ws_1/x")))
	f.Add("", "AQA")
	f.Fuzz(func(t *testing.T, scope, tok string) {
		k, err := Decode(scope, tok)
		if err == nil && tok != "" && len(k) == 0 {
			t.Fatalf("accepted token with empty key")
		}
	})
}
