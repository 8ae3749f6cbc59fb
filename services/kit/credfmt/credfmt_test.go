package credfmt

import (
	"errors"
	"strings"
	"testing"
)

func TestNewParses(t *testing.T) {
	for _, k := range Kinds {
		s := New(k)
		if !strings.HasPrefix(s, "blg_"+string(k)+"_") {
			t.Fatalf("New(%s) = %q: wrong prefix", k, s)
		}
		p, err := Parse(s)
		if err != nil || p.Kind != k {
			t.Fatalf("Parse(New(%s)) = %v, %v", k, p, err)
		}
		if len(p.Body) < 43 {
			t.Fatalf("body of %d chars carries fewer than 256 bits", len(p.Body))
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := New(Automation)
	flip := []byte(good)
	i := len("blg_auto_") + 5
	if flip[i] == 'a' {
		flip[i] = 'b'
	} else {
		flip[i] = 'a'
	}
	cases := map[string]error{
		"":                         ErrEmpty,
		"hello":                    ErrFormat,
		"blg_":                     ErrFormat,
		"blg_zz_abcdefghijk":       ErrKind,
		"blg_auto_":                ErrFormat,
		string(flip):               ErrChecksum,
		good[:len(good)-1]:         ErrChecksum,
		good + "x":                 ErrChecksum,
		"blg_auto_abc-def_ghijklm": ErrFormat,
	}
	for in, want := range cases {
		if _, err := Parse(in); !errors.Is(err, want) {
			t.Errorf("Parse(%q) = %v, want %v", in, err, want)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	for _, payload := range [][]byte{{0, 0, 1}, {255}, make([]byte, 100)} {
		p, err := Parse(Encode(AccessToken, payload))
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Payload()
		if err != nil || string(got) != string(payload) {
			t.Fatalf("payload %v came back %v, %v", payload, got, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, k := range Kinds {
		f.Add(New(k))
	}
	f.Add("blg_auto_0")
	f.Add("blg__x")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			// Only inputs long enough to be a secret count: a short one can
			// be a substring of any message ("B" of "Backlog").
			if len(s) >= 12 && strings.Contains(err.Error(), s) {
				t.Fatalf("error message echoes the input")
			}
			return
		}
		if Encode(p.Kind, nil) == "" || !strings.HasPrefix(s, "blg_"+string(p.Kind)+"_") {
			t.Fatalf("accepted %q with kind %q", s, p.Kind)
		}
		p.Payload() // must not panic
	})
}
