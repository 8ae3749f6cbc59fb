package deploycheck

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/backlog/controlplane/services/backlogd/app"
)

// MetricsPort is the -metrics-addr port the deploy files use.
const MetricsPort = 9100

type dockerStage struct {
	from  string
	lines [][2]string // instruction, rest
}

// Dockerfile checks deploy/docker/Dockerfile: a golang builder of the
// workspace's Go version building ./services/backlogd/cmd/backlogd static and
// trimmed; a final stage running /backlogd as a non-root USER; EXPOSE naming
// backlogd's default ports and the metrics port; every BACKLOG_* ENV a flag.
// It returns the final USER's uid (0 if it found none).
func Dockerfile(r *Report, root string) int64 {
	const where = "deploy/docker/Dockerfile"
	b, err := os.ReadFile(filepath.Join(root, where))
	if err != nil {
		r.errorf(where, "%v", err)
		return 0
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	args := map[string]string{}
	var stages []*dockerStage
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		ins, rest, _ := strings.Cut(line, " ")
		ins, rest = strings.ToUpper(ins), strings.TrimSpace(rest)
		switch {
		case ins == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(rest, "=")
			args[k] = v
		case ins == "FROM":
			img := strings.Fields(rest)[0]
			for k, v := range args {
				img = strings.ReplaceAll(img, "${"+k+"}", v)
			}
			stages = append(stages, &dockerStage{from: img})
		case len(stages) == 0:
			r.errorf(where, "%s before FROM", ins)
		default:
			st := stages[len(stages)-1]
			st.lines = append(st.lines, [2]string{ins, rest})
		}
	}
	if len(stages) < 2 {
		r.errorf(where, "want a builder stage and a final stage")
		return 0
	}

	// The builder: the workspace's Go, a static trimmed build of backlogd.
	build := stages[0]
	goVersion := ""
	if w, err := os.ReadFile(filepath.Join(root, "go.work")); err == nil {
		if m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(w)); m != nil {
			goVersion = m[1]
		}
	}
	if goVersion == "" {
		r.errorf("go.work", "no go directive")
	} else if build.from != "golang:"+goVersion && !strings.HasPrefix(build.from, "golang:"+goVersion+".") && !strings.HasPrefix(build.from, "golang:"+goVersion+"-") {
		r.errorf(where, "builder is %s; go.work wants Go %s", build.from, goVersion)
	}
	built, cgoOff := false, false
	for _, l := range build.lines {
		if l[0] == "ENV" && strings.Contains(l[1], "CGO_ENABLED=0") {
			cgoOff = true
		}
		if l[0] == "RUN" && strings.Contains(l[1], "go build") {
			if strings.Contains(l[1], "CGO_ENABLED=0") {
				cgoOff = true
			}
			for _, want := range []string{"-trimpath", "-ldflags='-s -w'", "./services/backlogd/cmd/backlogd"} {
				if !strings.Contains(l[1], want) {
					r.errorf(where, "go build without %s", want)
				}
			}
			built = true
		}
	}
	if !built {
		r.errorf(where, "the builder stage runs no go build")
	}
	if !cgoOff {
		r.errorf(where, "build with CGO_ENABLED=0 (the final image has no libc)")
	}
	if fi, err := os.Stat(filepath.Join(root, "services", "backlogd", "cmd", "backlogd")); err != nil || !fi.IsDir() {
		r.errorf(where, "./services/backlogd/cmd/backlogd does not exist")
	}

	// The final stage.
	final := stages[len(stages)-1]
	if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
		r.errorf(where, "final stage %s: want distroless static or scratch", final.from)
	}
	var uid int64
	var entry []string
	exposed := map[int]bool{}
	copied := false
	for _, l := range final.lines {
		switch l[0] {
		case "USER":
			u, _, _ := strings.Cut(l[1], ":")
			n, err := strconv.ParseInt(u, 10, 64)
			if err != nil || n == 0 {
				r.errorf(where, "USER %s: want a numeric non-root uid (runAsNonRoot can only verify a number)", l[1])
			}
			uid = n
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(l[1]), &entry); err != nil {
				r.errorf(where, "ENTRYPOINT %s: use the exec (JSON) form", l[1])
			}
		case "EXPOSE":
			for _, p := range strings.Fields(l[1]) {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					r.errorf(where, "EXPOSE %s", p)
				}
				exposed[n] = true
			}
		case "ENV":
			for _, kv := range strings.Fields(l[1]) {
				k, v, _ := strings.Cut(kv, "=")
				if name, ok := flagOfEnv(k); ok {
					CheckFlagValue(r, where+": ENV "+k, name, v)
				}
			}
		case "COPY":
			if f := strings.Fields(l[1]); len(f) > 0 && f[len(f)-1] == "/backlogd" {
				copied = true
			}
		}
	}
	if uid == 0 {
		r.errorf(where, "the final stage sets no non-root USER")
	}
	if !slices.Equal(entry, []string{"/backlogd"}) {
		r.errorf(where, `want ENTRYPOINT ["/backlogd"]`)
	}
	if !copied {
		r.errorf(where, "the final stage copies nothing to /backlogd")
	}
	want := map[int]bool{MetricsPort: true}
	if def, err := app.ParseFlags("backlogd", nil, func(string) string { return "" }); err == nil {
		for _, a := range []string{def.HTTPAddr, def.CredentialAddr, def.AutomationAddr, def.AgentAddr, def.VaultAddr} {
			if _, p, err := splitAddr(a); err == nil {
				want[int(p)] = true
			}
		}
	}
	for p := range want {
		if !exposed[p] {
			r.errorf(where, "EXPOSE misses %d", p)
		}
	}
	for p := range exposed {
		if !want[p] {
			r.errorf(where, "EXPOSE %d is no backlogd port", p)
		}
	}

	// Keep stores and credentials out of the build context.
	ig, err := os.ReadFile(filepath.Join(root, where+".dockerignore"))
	if err != nil {
		r.errorf(where, "no %s.dockerignore: %v", filepath.Base(where), err)
	} else {
		lines := strings.Split(string(ig), "\n")
		for _, want := range []string{".git", "data", "**/*.db", "**/*.key", "**/operator-token", "**/service-token"} {
			if !slices.Contains(lines, want) {
				r.errorf(where+".dockerignore", "does not exclude %s", want)
			}
		}
	}
	return uid
}
