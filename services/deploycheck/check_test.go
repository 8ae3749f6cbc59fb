package deploycheck

import (
	"path/filepath"
	"testing"
)

// repoRoot is the repository this module lives in.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestDeploy checks every file under deploy/ and docs/operations.md.
func TestDeploy(t *testing.T) {
	r := Check(repoRoot(t))
	for _, n := range r.Notes {
		t.Log("note:", n)
	}
	for _, p := range r.Problems {
		t.Error(p)
	}
}
