package ids

import (
	"sort"
	"testing"
)

func TestNewSortsAndValidates(t *testing.T) {
	var got []string
	for i := 0; i < 5000; i++ {
		got = append(got, New("auto"))
	}
	if !sort.StringsAreSorted(got) {
		t.Fatal("ids made in order do not sort in order")
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
		if !Valid("auto", id) {
			t.Fatalf("Valid(%q) = false", id)
		}
	}
	for _, bad := range []string{"", "auto_", "agt_" + got[0][5:], got[0] + "x", got[0][:len(got[0])-1] + "U", "auto-" + got[0][5:]} {
		if Valid("auto", bad) {
			t.Errorf("Valid(%q) = true, want false", bad)
		}
	}
}
