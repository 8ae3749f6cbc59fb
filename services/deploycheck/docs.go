package deploycheck

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/backlog/controlplane/services/backlogd/app"
)

// DocsFile is the operator's guide the checks hold to the code.
const DocsFile = "docs/operations.md"

var fence = regexp.MustCompile("(?ms)^```([a-z]*)\n(.*?)^```")

// Docs checks docs/operations.md: it names every backlogd flag and its
// environment variable; every ```yaml block decodes strictly and passes the
// Kubernetes checks together with the split overlay (the backup and restore
// jobs); every backlogd command line in a ```sh block parses.
func Docs(r *Report, root string, split *Set) {
	b, err := os.ReadFile(filepath.Join(root, DocsFile))
	if err != nil {
		r.errorf(DocsFile, "%v", err)
		return
	}
	doc := string(b)
	names, err := knownFlags()
	if err != nil {
		r.errorf(DocsFile, "%v", err)
	}
	for _, n := range names {
		if !strings.Contains(doc, "`-"+n+"`") {
			r.errorf(DocsFile, "does not document the flag `-%s`", n)
		}
		if !strings.Contains(doc, "`"+app.EnvName(n)+"`") {
			r.errorf(DocsFile, "does not name `%s` (the flag -%s)", app.EnvName(n), n)
		}
	}
	for name := range PendingFlags {
		if !strings.Contains(doc, "`-"+name+"`") {
			r.errorf(DocsFile, "does not document the flag `-%s`", name)
		}
	}

	var extra []*Object
	for i, m := range fence.FindAllStringSubmatch(doc, -1) {
		line := strings.Count(doc[:strings.Index(doc, m[0])], "\n") + 1
		where := fmt.Sprintf("%s:%d", DocsFile, line)
		switch m[1] {
		case "yaml":
			objs, err := DecodeAll(where, []byte(m[2]))
			if err != nil {
				r.errorf(where, "block %d: %v", i+1, err)
			}
			extra = append(extra, objs...)
		case "sh":
			shellCommands(r, where, m[2])
		}
	}
	if len(extra) > 0 {
		if split == nil {
			r.errorf(DocsFile, "the split overlay did not render: the YAML blocks are not checked")
			return
		}
		s := &Set{Name: DocsFile + " with " + split.Name, Complete: true, RunAsUser: split.RunAsUser,
			Objects: append(append([]*Object(nil), split.Objects...), extra...)}
		r.Merge(CheckSet(s))
	}
}

// shellCommands parses every backlogd command line of a shell block.
func shellCommands(r *Report, where, block string) {
	block = strings.ReplaceAll(block, "\\\n", " ")
	for _, line := range strings.Split(block, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "sudo" && f[1] == "-u" {
			f = f[3:]
		}
		if len(f) == 0 || path.Base(f[0]) != "backlogd" {
			continue
		}
		var args []string
		for _, a := range f[1:] {
			// A comment, a pipe or redirection, or "…" (the rest elided)
			// ends what is checked.
			if a == "#" || a == "…" || a == "..." || strings.ContainsAny(a[:1], "|&;>#") {
				break
			}
			args = append(args, a)
		}
		if strings.ContainsAny(strings.Join(args, " "), "$\"'`") {
			r.errorf(where, "%q: write backlogd examples literally, so that they can be checked", line)
			continue
		}
		// The examples may use the two-word form, -flag value, after the
		// subcommand's words.
		var joined []string
		words := 0
		for words < len(args) && !strings.HasPrefix(args[words], "-") {
			words++
		}
		for i := 0; i < len(args); i++ {
			a := args[i]
			if i < words {
				joined = append(joined, a)
				continue
			}
			if strings.HasPrefix(a, "-") && !strings.Contains(a, "=") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && !isBoolFlag(a) {
				a += "=" + args[i+1]
				i++
			}
			joined = append(joined, a)
		}
		ParseCommand(r, where+": "+strings.TrimSpace(line), joined, map[string]string{})
	}
}

func isBoolFlag(a string) bool {
	return strings.TrimLeft(a, "-") == "vault-egress-allow-private"
}
