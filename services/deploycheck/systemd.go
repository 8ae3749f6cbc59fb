package deploycheck

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/backlog/controlplane/services/backlogd/app"
)

// Unit is a parsed systemd unit file: section, then key, then every value
// in order (a key may repeat; an empty value is kept).
type Unit map[string]map[string][]string

// ParseUnit parses a unit file or drop-in: [Section] headers, Key=Value
// lines, # and ; comments, backslash continuations.
func ParseUnit(data string) (Unit, error) {
	u := Unit{}
	data = strings.ReplaceAll(data, "\\\n", " ")
	sec := ""
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			sec = line[1 : len(line)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		default:
			key, val, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				return nil, fmt.Errorf("line %d: %q is neither a section nor Key=Value in one", i+1, line)
			}
			key = strings.TrimSpace(key)
			u[sec][key] = append(u[sec][key], strings.TrimSpace(val))
		}
	}
	return u, nil
}

func (u Unit) merge(o Unit) {
	for sec, kv := range o {
		if u[sec] == nil {
			u[sec] = map[string][]string{}
		}
		for k, vs := range kv {
			u[sec][k] = append(u[sec][k], vs...)
		}
	}
}

// last is the effective value of a single-valued key.
func (u Unit) last(sec, key string) (string, bool) {
	vs := u[sec][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

var specifier = regexp.MustCompile(`%.`)

// expandSpecifiers expands the specifiers the units use.
func expandSpecifiers(r *Report, where, s, unit, instance string) string {
	return specifier.ReplaceAllStringFunc(s, func(m string) string {
		switch m {
		case "%%":
			return "%"
		case "%i", "%I":
			return instance
		case "%n":
			return unit
		case "%d":
			return "/run/credentials/" + unit
		}
		r.errorf(where, "specifier %s is not one deploycheck expands", m)
		return m
	})
}

// unitHardening is what every backlogd unit must set (the effective value).
var unitHardening = map[string]string{
	"User":                  "backlog",
	"Group":                 "backlog",
	"StateDirectory":        "backlog",
	"StateDirectoryMode":    "0700",
	"UMask":                 "0077",
	"NoNewPrivileges":       "yes",
	"ProtectSystem":         "strict",
	"ProtectHome":           "yes",
	"PrivateTmp":            "yes",
	"PrivateDevices":        "yes",
	"ProtectKernelTunables": "yes",
	"ProtectKernelModules":  "yes",
	"ProtectControlGroups":  "yes",
	"RestrictSUIDSGID":      "yes",
	"CapabilityBoundingSet": "",
	"AmbientCapabilities":   "",
	"Restart":               "on-failure",
}

// The installed paths the units name, and the repository file standing for
// each.
const (
	binPath     = "/usr/local/bin/backlogd"
	envFilePath = "/etc/backlog/backlogd.env"
)

// Systemd checks deploy/systemd: for backlogd.service, and for
// backlogd@.service with every target as its instance (drop-ins merged),
// ExecStart and the environment parse with backlogd's own parser, the
// target is the right one, -data-dir is the StateDirectory, the hardening is
// there, and the vault (and only the vault) gets its key-encryption key as a
// systemd credential.
func Systemd(r *Report, root string) {
	dir := filepath.Join(root, "deploy", "systemd")
	envExample := filepath.Join(dir, "backlogd.env.example")
	fileEnv := map[string]string{}
	if b, err := os.ReadFile(envExample); err != nil {
		r.errorf("deploy/systemd", "%v", err)
	} else {
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			commented := strings.HasPrefix(line, "#")
			kv := strings.TrimSpace(strings.TrimPrefix(line, "#"))
			key, val, ok := strings.Cut(kv, "=")
			if !ok || !strings.HasPrefix(key, "BACKLOG_") {
				if !commented && line != "" {
					r.errorf(fmt.Sprintf("deploy/systemd/backlogd.env.example:%d", i+1), "not a BACKLOG_<FLAG>=value line")
				}
				continue
			}
			where := fmt.Sprintf("deploy/systemd/backlogd.env.example:%d", i+1)
			if strings.ContainsAny(val, `"'$`) {
				r.errorf(where, "keep values unquoted and literal")
			}
			name, isFlag := flagOfEnv(key)
			if !isFlag {
				r.errorf(where, "%s is not a BACKLOG_<FLAG> variable", key)
				continue
			}
			CheckFlagValue(r, where, name, val)
			if !commented {
				fileEnv[key] = val
			}
		}
	}
	user := ""
	if b, err := os.ReadFile(filepath.Join(dir, "sysusers-backlog.conf")); err != nil {
		r.errorf("deploy/systemd", "%v", err)
	} else {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "u" {
				user = f[1]
			}
		}
	}
	if user != unitHardening["User"] {
		r.errorf("deploy/systemd/sysusers-backlog.conf", "declares user %q, the units run as %q", user, unitHardening["User"])
	}

	units, _ := filepath.Glob(filepath.Join(dir, "*.service"))
	if len(units) == 0 {
		r.errorf("deploy/systemd", "no units")
	}
	seen := map[string]bool{}
	for _, path := range units {
		name := filepath.Base(path)
		seen[name] = true
		instances := []string{""}
		if strings.HasSuffix(name, "@.service") {
			instances = app.AllTargets
		}
		for _, inst := range instances {
			unit := strings.Replace(name, "@.", "@"+inst+".", 1)
			checkUnit(r, dir, name, unit, inst, fileEnv)
		}
	}
	for _, want := range []string{"backlogd.service", "backlogd@.service"} {
		if !seen[want] {
			r.errorf("deploy/systemd", "no %s", want)
		}
	}
	dropins, _ := filepath.Glob(filepath.Join(dir, "*.service.d"))
	for _, d := range dropins {
		base := strings.TrimSuffix(filepath.Base(d), ".d")
		tmpl := base
		if i := strings.Index(base, "@"); i >= 0 {
			tmpl = base[:i+1] + ".service"
		}
		if !seen[tmpl] {
			r.errorf(filepath.Join("deploy/systemd", filepath.Base(d)), "a drop-in for no unit here")
		}
	}
}

func checkUnit(r *Report, dir, file, unit, inst string, fileEnv map[string]string) {
	where := "deploy/systemd/" + file
	if inst != "" {
		where += " as " + unit
	}
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		r.errorf(where, "%v", err)
		return
	}
	u, err := ParseUnit(string(b))
	if err != nil {
		r.errorf(where, "%v", err)
		return
	}
	// Drop-ins: the template's, then the instance's.
	var confs []string
	for _, d := range slices.Compact([]string{file + ".d", unit + ".d"}) {
		c, _ := filepath.Glob(filepath.Join(dir, d, "*.conf"))
		confs = append(confs, c...)
	}
	for _, c := range confs {
		b, err := os.ReadFile(c)
		if err != nil {
			r.errorf(where, "%v", err)
			continue
		}
		d, err := ParseUnit(string(b))
		if err != nil {
			r.errorf(c, "%v", err)
			continue
		}
		u.merge(d)
	}
	if u["Service"] == nil {
		r.errorf(where, "no [Service] section")
		return
	}
	for key, want := range unitHardening {
		if got, ok := u.last("Service", key); !ok || got != want {
			r.errorf(where, "want %s=%s", key, want)
		}
	}
	if v, _ := u.last("Install", "WantedBy"); v != "multi-user.target" {
		r.errorf(where, "want WantedBy=multi-user.target")
	}

	// The environment: Environment=, then the EnvironmentFile= (which wins).
	env := map[string]string{}
	for _, e := range u["Service"]["Environment"] {
		e = expandSpecifiers(r, where, e, unit, inst)
		for _, kv := range strings.Fields(e) {
			key, val, ok := strings.Cut(kv, "=")
			if !ok || strings.ContainsAny(kv, `"'`) {
				r.errorf(where, "Environment=%s: write unquoted KEY=VALUE", e)
				continue
			}
			env[key] = val
		}
	}
	hasEnvFile := false
	for _, f := range u["Service"]["EnvironmentFile"] {
		f = expandSpecifiers(r, where, f, unit, inst)
		optional := strings.HasPrefix(f, "-")
		f = strings.TrimPrefix(f, "-")
		switch {
		case f == envFilePath:
			hasEnvFile = true
			for k, v := range fileEnv {
				env[k] = v
			}
		case !optional:
			r.errorf(where, "EnvironmentFile=%s is required but nothing here stands for it", f)
		}
	}
	if !hasEnvFile {
		r.errorf(where, "want EnvironmentFile=-%s", envFilePath)
	}

	// ExecStart.
	execs := u["Service"]["ExecStart"]
	if len(execs) != 1 {
		r.errorf(where, "want exactly one ExecStart")
		return
	}
	line := expandSpecifiers(r, where, strings.TrimLeft(execs[0], "-@:+!"), unit, inst)
	if strings.ContainsAny(line, `"'$\`) {
		r.errorf(where, "ExecStart: no quotes and no $ expansion (settings go in the environment file)")
		return
	}
	argv := strings.Fields(line)
	if len(argv) == 0 || argv[0] != binPath {
		r.errorf(where, "ExecStart must run %s", binPath)
		return
	}
	cmd, ok := ParseCommand(r, where, argv[1:], env)
	if !ok {
		return
	}
	want := app.AllTargets
	if inst != "" {
		want = []string{inst}
	}
	if !slices.Equal(cmd.Cfg.Targets, want) || cmd.Sub != "" {
		r.errorf(where, "runs %v, want %v", cmd.Cfg.Targets, want)
	}
	if sd, _ := u.last("Service", "StateDirectory"); filepath.Clean(cmd.Cfg.DataDir) != "/var/lib/"+sd {
		r.errorf(where, "-data-dir=%s is not the StateDirectory /var/lib/%s", cmd.Cfg.DataDir, sd)
	}

	// The vault's key-encryption key: a systemd credential, for the vault only.
	creds := map[string]string{}
	for _, c := range u["Service"]["LoadCredential"] {
		id, src, ok := strings.Cut(c, ":")
		if !ok || !strings.HasPrefix(src, "/") {
			r.errorf(where, "LoadCredential=%s: want ID:/absolute/path", c)
			continue
		}
		creds[id] = src
	}
	kek, hasKEK := cmd.Given["vault-kek-file"]
	switch {
	case cmd.Serves(app.TargetVault) && !hasKEK:
		r.errorf(where, "runs the vault without a key-encryption key (BACKLOG_VAULT_KEK_FILE)")
	case cmd.Serves(app.TargetVault):
		credDir := "/run/credentials/" + unit + "/"
		id, inCreds := strings.CutPrefix(kek, credDir)
		if !inCreds || creds[id] == "" {
			r.errorf(where, "the key-encryption key %s is not a LoadCredential= of the unit (%%d/<id>)", kek)
		}
		// systemd gives a credential file mode 0400, owned by the service's user.
		if err := KEKFileAccepted(0o400); err != nil {
			r.errorf(where, "the vault refuses a systemd credential (mode 0400): %v", err)
		}
	case hasKEK || len(creds) > 0:
		r.errorf(where, "gets the vault's key-encryption key but does not run the vault")
	}
}
