// Package deploycheck checks the files under deploy/ offline: every
// Kubernetes manifest decoded strictly into the real API types and every
// kustomization rendered with kustomize's own library; every backlogd
// command line (container args, systemd ExecStart, BACKLOG_* environment)
// parsed by backlogd's own flag parser; and the manifests, units, Dockerfile
// and docs/operations.md checked against each other.
package deploycheck

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/backlog/controlplane/services/backlogd/app"
)

// PendingFlags are flags the deploy files already pass for a part of backlogd
// that is being built, mapped to why. Where backlogd's parser does not know
// one yet, the checks drop it (and say so in Report.Notes); once backlogd
// defines it, it is checked like any other flag.
var PendingFlags = map[string]string{
	"store":                  "etcd mode, issue 13",
	"etcd-endpoints":         "etcd mode, issue 13",
	"etcd-prefix":            "etcd mode, issue 13",
	"etcd-ca-file":           "etcd mode, issue 13",
	"etcd-cert-file":         "etcd mode, issue 13",
	"etcd-key-file":          "etcd mode, issue 13",
	"audit-signing-key-file": "signed audit digests, issue 18",
}

// StoreTargets are the targets that own a bbolt store: one writer each.
var StoreTargets = []string{app.TargetCredential, app.TargetAutomation, app.TargetAgent, app.TargetVault}

// Report collects what the checks found.
type Report struct {
	// Problems fail the check.
	Problems []string
	// Notes are worth knowing but fail nothing (a pending flag dropped).
	Notes []string
}

func (r *Report) errorf(where, format string, args ...any) {
	msg := where + ": " + fmt.Sprintf(format, args...)
	if !slices.Contains(r.Problems, msg) {
		r.Problems = append(r.Problems, msg)
	}
}

// add records a problem whose message already says where.
func (r *Report) add(err error) {
	if !slices.Contains(r.Problems, err.Error()) {
		r.Problems = append(r.Problems, err.Error())
	}
}

func (r *Report) notef(where, format string, args ...any) {
	msg := where + ": " + fmt.Sprintf(format, args...)
	if !slices.Contains(r.Notes, msg) {
		r.Notes = append(r.Notes, msg)
	}
}

// Merge appends another report's findings.
func (r *Report) Merge(o Report) {
	for _, p := range o.Problems {
		if !slices.Contains(r.Problems, p) {
			r.Problems = append(r.Problems, p)
		}
	}
	for _, n := range o.Notes {
		if !slices.Contains(r.Notes, n) {
			r.Notes = append(r.Notes, n)
		}
	}
}

// findSubcommand is the backlogd subcommand (app.Subcommands: "backup",
// "vault gen-kek", ...) args start with, and how many words it takes.
func findSubcommand(args []string) (app.Subcommand, int, bool) {
	for _, sc := range app.Subcommands {
		words := strings.Fields(sc.Name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return sc, len(words), true
		}
	}
	return app.Subcommand{}, 0, false
}

var (
	synopsisFlag = regexp.MustCompile(`-([a-z][a-z0-9-]*)`)
	optional     = regexp.MustCompile(`\[[^\]]*\]`)
)

// synopsisFlags reads a subcommand's synopsis ("-out FILE | -a A [-b B]"):
// every flag it names, and the leading flag of each alternative (one of
// which is required).
func synopsisFlags(syn string) (all, leads []string) {
	for _, m := range synopsisFlag.FindAllStringSubmatch(syn, -1) {
		all = append(all, m[1])
	}
	for _, alt := range strings.Split(syn, "|") {
		if m := synopsisFlag.FindStringSubmatch(optional.ReplaceAllString(alt, "")); m != nil {
			leads = append(leads, m[1])
		}
	}
	return all, leads
}

// Command is one backlogd invocation, parsed by backlogd's own parser.
type Command struct {
	// Sub is "" for the server, or the name of one of app.Subcommands
	// ("backup", "vault rotate-kek", ...).
	Sub string
	// Dir is the subcommand's path flag (-out, -from, -new-kek-file): the
	// first of its synopsis's alternatives that is given.
	Dir string
	Cfg app.Config
	// Given holds every flag set on the command line or through a BACKLOG_*
	// variable (pending flags included), by flag name.
	Given map[string]string
}

// Serves reports whether the command runs target t.
func (c *Command) Serves(t string) bool { return c.Sub == "" && slices.Contains(c.Cfg.Targets, t) }

// Listen is where the command binds target t (-http-addr for the gateway).
func (c *Command) Listen(t string) string {
	switch t {
	case app.TargetCredential:
		return c.Cfg.CredentialListenAddr
	case app.TargetAutomation:
		return c.Cfg.AutomationListenAddr
	case app.TargetAgent:
		return c.Cfg.AgentListenAddr
	case app.TargetVault:
		return c.Cfg.VaultListenAddr
	case app.TargetGateway:
		return c.Cfg.HTTPAddr
	}
	return ""
}

// Addr is where the command finds target t (-http-addr for the gateway).
func (c *Command) Addr(t string) string {
	switch t {
	case app.TargetCredential:
		return c.Cfg.CredentialAddr
	case app.TargetAutomation:
		return c.Cfg.AutomationAddr
	case app.TargetAgent:
		return c.Cfg.AgentAddr
	case app.TargetVault:
		return c.Cfg.VaultAddr
	case app.TargetGateway:
		return c.Cfg.HTTPAddr
	}
	return ""
}

// Stores reports whether the command serves a store-owning target.
func (c *Command) Stores() bool {
	return slices.ContainsFunc(StoreTargets, c.Serves)
}

// Etcd reports whether the command keeps its stores in etcd (-store=etcd,
// as a flag or BACKLOG_STORE), where any number of replicas share them.
// It reads the given value, so it holds while -store is a pending flag.
func (c *Command) Etcd() bool { return c.Given["store"] == "etcd" }

// EtcdPrefix is the command's -etcd-prefix (backlogd's default /backlog).
func (c *Command) EtcdPrefix() string {
	if p, ok := c.Given["etcd-prefix"]; ok {
		return p
	}
	return "/backlog"
}

var argRE = regexp.MustCompile(`^-([a-z][a-z0-9-]*)=(.*)$`)

// ParseCommand parses a backlogd argument list (without the program name)
// and its BACKLOG_* environment with app.ParseFlags (app.ParseBackupFlags
// for backup/restore). Arguments must be of the form -name=value, each flag
// at most once; every BACKLOG_* variable must name a flag and hold a value it
// accepts. Problems go to r under where.
func ParseCommand(r *Report, where string, args []string, env map[string]string) (*Command, bool) {
	c := &Command{Given: map[string]string{}}
	ok := true
	rest := args
	var sc app.Subcommand
	if found, n, ok := findSubcommand(args); ok {
		sc, c.Sub, rest = found, found.Name, args[n:]
	} else if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name := args[0]
		if len(args) > 1 && !strings.HasPrefix(args[1], "-") {
			name += " " + args[1]
		}
		r.errorf(where, "backlogd has no subcommand %q", name)
		return nil, false
	}
	for _, a := range rest {
		m := argRE.FindStringSubmatch(a)
		if m == nil {
			r.errorf(where, "argument %q: write every flag as -name=value", a)
			ok = false
			continue
		}
		if _, dup := c.Given[m[1]]; dup {
			r.errorf(where, "flag -%s given twice", m[1])
			ok = false
		}
		c.Given[m[1]] = m[2]
	}
	if !ok {
		return nil, false
	}
	for _, k := range sortedKeys(env) {
		name, isFlagEnv := flagOfEnv(k)
		if !isFlagEnv {
			continue
		}
		if !CheckFlagValue(r, where+": environment "+k, name, env[k]) {
			ok = false
			continue
		}
		if _, set := c.Given[name]; !set {
			c.Given[name] = env[k]
		}
	}
	if !ok {
		return nil, false
	}
	for _, name := range sortedKeys(PendingFlags) {
		if _, given := c.Given[name]; given && !defined(name) {
			r.notef(where, "-%s is not a backlogd flag yet (%s): not checked", name, PendingFlags[name])
			rest = slices.DeleteFunc(slices.Clone(rest), func(a string) bool { return strings.HasPrefix(a, "-"+name+"=") })
		}
	}
	getenv := func(k string) string { return env[k] }
	var err error
	switch c.Sub {
	case "":
		c.Cfg, err = app.ParseFlags("backlogd", rest, getenv)
	case "backup", "restore":
		c.Cfg, c.Dir, err = app.ParseBackupFlags(c.Sub, rest, getenv)
	default:
		// The other subcommands: the flags of their synopsis (one
		// alternative's leading flag required), plus the server's flags
		// when they take them.
		all, leads := synopsisFlags(sc.Synopsis)
		for _, l := range leads {
			if v, ok := c.Given[l]; ok {
				c.Dir = v
				break
			}
		}
		var server []string
		for _, a := range rest {
			name := argRE.FindStringSubmatch(a)[1]
			switch {
			case slices.Contains(all, name) && !defined(name):
				// the subcommand's own flag
			case !sc.ServerFlags && !slices.Contains(all, name):
				err = fmt.Errorf("backlogd %s takes no -%s", c.Sub, name)
			default:
				server = append(server, a)
			}
		}
		switch {
		case err != nil:
		case len(leads) > 0 && !slices.ContainsFunc(leads, func(l string) bool { _, ok := c.Given[l]; return ok }):
			if len(leads) == 1 {
				err = fmt.Errorf("-%s PATH is required", leads[0])
			} else {
				err = fmt.Errorf("one of -%s is required", strings.Join(leads, ", -"))
			}
		default:
			c.Cfg, err = app.ParseFlags("backlogd", server, getenv)
		}
	}
	if err != nil {
		r.errorf(where, "backlogd refuses the command line %q: %v", strings.Join(args, " "), err)
		return nil, false
	}
	return c, true
}

var (
	flagNamesOnce sync.Once
	flagNames     []string
	flagNamesErr  error
)

// knownFlags is FlagNames, read once.
func knownFlags() ([]string, error) {
	flagNamesOnce.Do(func() { flagNames, flagNamesErr = FlagNames() })
	return flagNames, flagNamesErr
}

// defined reports whether backlogd has the flag name.
func defined(name string) bool {
	names, _ := knownFlags()
	return slices.Contains(names, name)
}

// CheckFlagValue checks that name is a backlogd flag accepting value, by
// parsing -name=value alone.
func CheckFlagValue(r *Report, where, name, value string) bool {
	if !defined(name) {
		if PendingFlags[name] != "" {
			r.notef(where, "-%s is not a backlogd flag yet (%s): not checked", name, PendingFlags[name])
			return true
		}
		r.errorf(where, "no backlogd flag -%s", name)
		return false
	}
	_, err := app.ParseFlags("backlogd", []string{"-" + name + "=" + value}, func(string) string { return "" })
	if err == nil {
		return true
	}
	r.errorf(where, "backlogd refuses -%s=%q: %v", name, value, err)
	return false
}

// flagOfEnv maps BACKLOG_DATA_DIR to data-dir.
func flagOfEnv(env string) (string, bool) {
	rest, ok := strings.CutPrefix(env, "BACKLOG_")
	if !ok || rest == "" {
		return "", false
	}
	name := strings.ToLower(strings.ReplaceAll(rest, "_", "-"))
	return name, app.EnvName(name) == env
}

// FlagNames lists every backlogd flag, read from the parser's --help
// output (app.UsageOutput). It swaps that writer while it runs: call it from
// one goroutine only (the checks use knownFlags, which calls it once).
func FlagNames() ([]string, error) {
	var usage bytes.Buffer
	saved := app.UsageOutput
	app.UsageOutput = &usage
	_, perr := app.ParseFlags("backlogd", []string{"-help"}, func(string) string { return "" })
	app.UsageOutput = saved
	if !errors.Is(perr, flag.ErrHelp) {
		return nil, fmt.Errorf("backlogd -help: %v", perr)
	}
	var names []string
	for _, line := range strings.Split(usage.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "  -"); ok {
			names = append(names, strings.Fields(rest)[0])
		}
	}
	if len(names) == 0 {
		return nil, errors.New("backlogd -help listed no flag")
	}
	return names, nil
}

// splitAddr splits host:port, with a numeric port.
func splitAddr(addr string) (string, int32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("%q: port must be a number from 1 to 65535", addr)
	}
	return host, int32(n), nil
}

// bindsAll reports whether host is an any-address listener.
func bindsAll(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
