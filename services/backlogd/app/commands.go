package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/backlog/controlplane/services/kit/auth"
)

// UsageOutput receives `backlogd --help`.
var UsageOutput io.Writer = os.Stdout

// Version is backlogd's version, set at build time (make build:
// -ldflags "-X github.com/backlog/controlplane/services/backlogd/app.Version=…").
// Empty: the module version or VCS revision Go recorded, else "dev".
var Version = ""

// BuildInfo is what `backlogd version` prints and the build-info metric
// carries.
type BuildInfo struct {
	Version, Revision, GoVersion string
	Modified                     bool
}

// Build returns this binary's build information.
func Build() BuildInfo {
	b := BuildInfo{Version: Version, GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			b.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	return b
}

func (b BuildInfo) String() string {
	s := "backlogd " + b.Version
	if b.Revision != "" {
		s += " (revision " + b.Revision
		if b.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s + " " + b.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
}

// buildInfoMetric is backlog_build_info: 1, labelled with the version.
func buildInfoMetric() prometheus.Collector {
	b := Build()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "backlog_build_info",
		Help: "Always 1; the labels say which backlogd build is running.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(b.Version, b.Revision, b.GoVersion).Set(1)
	return g
}

// Subcommand is a `backlogd <name>` command other than serving.
type Subcommand struct {
	Name     string // "backup", "vault gen-kek"
	Synopsis string // its own arguments
	Summary  string
	// ServerFlags: it also takes the server's flags (addresses, -tls-*,
	// -service-token-file, -data-dir).
	ServerFlags bool
}

// Subcommands are listed by `backlogd --help`; each answers --help itself.
var Subcommands = []Subcommand{
	{"backup", "-out DIR", "online backup: every store's snapshot through the running services, with MANIFEST.json (sizes and SHA-256 checksums)", true},
	{"restore", "-from DIR -data-dir DIR", "offline restore of a backup into -data-dir (backlogd stopped); every file is checked against the manifest's SHA-256 first", true},
	{"vault gen-kek", "-out FILE | -vault-kek-pkcs11-module M -vault-kek-pkcs11-token T -vault-kek-pkcs11-key K -vault-kek-pkcs11-pin-file F", "write a new vault key-encryption key (mode 0600; an existing file is left as it is), or create a non-extractable AES-256 key labelled K in a PKCS#11 token (an existing one is left as it is)", false},
	{"vault rotate-kek", "-new-kek-file FILE | -new-kek-pkcs11-key K [-new-kek-pkcs11-module M -new-kek-pkcs11-token T -new-kek-pkcs11-pin-file F]", "rewrap every data key under a new key-encryption key (a file, or a key in a PKCS#11 token), online; then restart the vault with -vault-kek-file FILE or the -vault-kek-pkcs11-* flags", true},
	{"audit verify", "-data-dir DIR | -export-file FILE[,FILE…]", "offline: check every store's audit hash chain and signed digests (stopped stores or a backup), or an export's chains; exit 0 and \"intact\" with counts, or 1 naming the first missing, altered or reordered event", false},
	{"service-token create", "-out FILE", "write a new service credential (blg_svc_…, mode 0600; an existing file is left as it is) for -service-token-file", false},
	{"audit verify", "-data-dir DIR | -export-file FILE[,FILE…] [-audit-signing-key-file FILE]", "offline: check every store's audit hash chain and signed digests (stopped stores or a backup), or exported JSON lines; non-zero naming the first missing, altered or reordered event", false},
	{"forwarding-token", "", "print the gateway's forwarding credential derived from -service-token-file, for a gateway-only process's -forwarding-token-file", true},
	{"version", "", "print the version, VCS revision and Go version", false},
}

// IsHelp reports whether args ask for help.
func IsHelp(args []string) bool {
	return slices.ContainsFunc(args, func(a string) bool {
		return a == "-h" || a == "--h" || a == "-help" || a == "--help" || a == "help"
	})
}

// SubcommandHelp writes the help of the subcommand called name ("vault
// gen-kek"), or returns an error naming the known ones.
func SubcommandHelp(w io.Writer, name string) error {
	for _, c := range Subcommands {
		if c.Name != name {
			continue
		}
		fmt.Fprintf(w, "Usage: backlogd %s %s\n\n%s.\n", c.Name, c.Synopsis, upperFirst(c.Summary))
		if c.ServerFlags {
			fmt.Fprintln(w, "\nIt also takes the server's flags it needs (-data-dir, -service-token-file, the -*-addr flags, -tls-*), each also read from its BACKLOG_* variable: see backlogd --help.")
		}
		return nil
	}
	var names []string
	for _, c := range Subcommands {
		if c.Name == name || strings.HasPrefix(c.Name, name+" ") {
			names = append(names, c.Name)
		}
	}
	if len(names) > 0 {
		fmt.Fprintf(w, "Usage: backlogd %s COMMAND\n\nCommands:\n", name)
		for _, n := range names {
			fmt.Fprintf(w, "  backlogd %s\n", n)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q: see backlogd --help", name)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// writeUsage is `backlogd --help`: what it does, its subcommands, and every
// flag with its environment variable.
func writeUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `Usage: backlogd [flags]            serve (default: every service and the REST gateway)
       backlogd COMMAND [flags]    see below; every command takes --help

backlogd runs the Backlog control plane: the credential, automation, agent and
vault gRPC services and the REST gateway, in one process (-target=all, each
service on its own listener) or any subset per process.

Commands:
`)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, c := range Subcommands {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.Name, c.Synopsis, c.Summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nFlags (each also read from its environment variable; a flag on the command line wins):\n")
	tw = tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(tw, "  -%s\t%s\t%s%s\n", f.Name, EnvName(f.Name), f.Usage, def)
	})
	tw.Flush()
	fmt.Fprint(w, "\nSignals: SIGTERM/SIGINT stop gracefully; SIGHUP re-reads -http-tls-cert-file and -http-tls-key-file.\n")
}

// ServiceTokenCommand is `backlogd service-token create -out FILE`: a new
// service credential in FILE (0600), for every process's
// -service-token-file. An existing file is left as it is (exists=true).
func ServiceTokenCommand(sub string, args []string) (msg string, err error) {
	if sub != "create" {
		return "", fmt.Errorf("backlogd service-token: unknown command %q (want create)", sub)
	}
	f := flag.NewFlagSet("backlogd service-token create", flag.ContinueOnError)
	f.SetOutput(io.Discard)
	out := f.String("out", "", "the file to write")
	if err := f.Parse(args); err != nil {
		return "", fmt.Errorf("%v: usage: backlogd service-token create -out FILE", err)
	}
	if *out == "" || f.NArg() > 0 {
		return "", errors.New("usage: backlogd service-token create -out FILE")
	}
	if _, err := auth.LoadOrCreateServiceToken(*out, false); err == nil {
		return fmt.Sprintf("%s exists; left as it is", *out), nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if _, err := auth.LoadOrCreateServiceToken(*out, true); err != nil {
		return "", err
	}
	return fmt.Sprintf("wrote a new service credential to %s (mode 0600); give every backlogd process -service-token-file %s (the gateway needs only backlogd forwarding-token)", *out, *out), nil
}

// Help answers `backlogd help [COMMAND]` and `backlogd COMMAND … --help`;
// handled is false when args ask for nothing it knows (the command itself
// may then answer). `backlogd --help` is answered by ParseFlags.
func Help(w io.Writer, args []string) (handled bool, err error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return false, nil
	}
	rest := args[1:]
	if args[0] == "help" {
		if len(rest) == 0 {
			prev := UsageOutput
			UsageOutput = w
			defer func() { UsageOutput = prev }()
			_, _ = ParseFlags("backlogd", []string{"-help"}, func(string) string { return "" })
			return true, nil
		}
		args, rest = rest, nil
	} else if !IsHelp(rest) {
		return false, nil
	}
	name := args[0]
	if len(args) > 1 && !strings.HasPrefix(args[1], "-") && args[1] != "help" {
		name += " " + args[1]
	}
	if err := SubcommandHelp(w, name); err != nil {
		if len(rest) > 0 {
			return false, nil // a command this table does not list answers itself
		}
		return true, err
	}
	return true, nil
}
