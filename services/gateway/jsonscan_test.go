package gateway

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// refMembers splits an object with encoding/json, for comparison.
func refMembers(t *testing.T, b []byte) []member {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	if _, err := d.Token(); err != nil {
		t.Fatal(err)
	}
	var out []member
	for d.More() {
		k, err := d.Token()
		if err != nil {
			t.Fatal(err)
		}
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			t.Fatal(err)
		}
		out = append(out, member{name: k.(string), raw: raw})
	}
	return out
}

func TestScanObjectMembersMatchesEncodingJSON(t *testing.T) {
	for _, in := range []string{
		`{}`, ` { } `,
		`{"a":1}`,
		`{"a":"x,}]\"{[","b":[1,2,{"c":"]"}],"c":{"d":{"e":[]}},"n":-1.5e3,"t":true,"f":false,"z":null}`,
		`{ "a" : "\u00e9\\" , "b\"q":{"k":"v"}, "sp": [ 1 , 2 ] }`,
		`{"x<y":1,"é":2}`,
	} {
		got, err := objectMembers([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		want := refMembers(t, []byte(in))
		if len(got) != len(want) {
			t.Fatalf("%s: %d members, want %d", in, len(got), len(want))
		}
		for i := range got {
			if got[i].name != want[i].name || !bytes.Equal(bytes.TrimSpace(got[i].raw), bytes.TrimSpace(want[i].raw)) {
				t.Errorf("%s: member %d = %q %s, want %q %s", in, i, got[i].name, got[i].raw, want[i].name, want[i].raw)
			}
		}
	}
	for _, bad := range []string{``, `[]`, `{`, `{"a"}`, `{"a":1,}`, `{"a":1} x`, `{"a":"x}`, `{"a":[1,2}`, `{a:1}`} {
		if _, err := objectMembers([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestScanArrayElemsMatchesEncodingJSON(t *testing.T) {
	for _, in := range []string{`[]`, `[ ]`, `[{"a":"]"},{"b":[1,[2]]}]`, `[ "x" , 1 ,null ]`} {
		got, err := arrayElems([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		var want []json.RawMessage
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d elements, want %d", in, len(got), len(want))
		}
		for i := range got {
			var g, w any
			json.Unmarshal(got[i], &g)
			json.Unmarshal(want[i], &w)
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%s: element %d = %s, want %s", in, i, got[i], want[i])
			}
		}
	}
	for _, bad := range []string{`{}`, `[1,`, `[1 2]`, `[1,]`} {
		if _, err := arrayElems([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestScanAppendName(t *testing.T) {
	for _, n := range []string{"teamIds", "a<b", `q"`, "é", "\n"} {
		want, _ := json.Marshal(n)
		if got := appendName(nil, n); !bytes.Equal(got, want) {
			t.Errorf("%q: %s, want %s", n, got, want)
		}
	}
}
