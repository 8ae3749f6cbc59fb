package deploycheck

import (
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Check runs every check on the repository at root: the Dockerfile, the
// Kubernetes tree (every file decoded; each overlay rendered and checked as
// a whole deployment), the systemd units and docs/operations.md.
func Check(root string) Report {
	var r Report
	uid := Dockerfile(&r, root)
	var split *Set
	for _, d := range KustomizeTree(&r, root) {
		// Render the overlays: each builds its bases, and a base is only
		// ever applied through one.
		if !strings.HasPrefix(filepath.ToSlash(d), "deploy/kubernetes/overlays/") {
			continue
		}
		objs, err := renderCached(root, d)
		if err != nil {
			r.add(err)
			continue
		}
		s := &Set{
			Name:      filepath.ToSlash(d),
			Complete:  true,
			Objects:   objs,
			RunAsUser: uid,
		}
		if s.Name == "deploy/kubernetes/overlays/split" {
			split = s
		}
		r.Merge(CheckSet(s))
	}
	Systemd(&r, root)
	Docs(&r, root, split)
	return r
}

var (
	renderMu    sync.Mutex
	renderCache = map[[32]byte][]*Object{}
)

// renderCached renders the kustomization d once per content of
// deploy/kubernetes (the rendered objects are only read).
func renderCached(root, d string) ([]*Object, error) {
	h := sha256.New()
	h.Write([]byte(filepath.ToSlash(d) + "\x00"))
	err := filepath.WalkDir(filepath.Join(root, "deploy", "kubernetes"), func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		h.Write([]byte(filepath.ToSlash(rel) + "\x00"))
		h.Write(b)
		h.Write([]byte{0})
		return nil
	})
	if err != nil {
		return nil, err
	}
	var key [32]byte
	copy(key[:], h.Sum(nil))
	renderMu.Lock()
	objs, ok := renderCache[key]
	renderMu.Unlock()
	if ok {
		return objs, nil
	}
	objs, err = Render(filepath.Join(root, d), filepath.ToSlash(d))
	if err != nil {
		return nil, err
	}
	renderMu.Lock()
	renderCache[key] = objs
	renderMu.Unlock()
	return objs, nil
}
