// Package cli implements the backlog command-line interface: profiles holding
// credentials, and commands that talk to the control plane's REST gateway.
//
// The command tree is built by NewCommand around an Env, so tests can run
// commands in-process with their own stdin, stdout, environment and HTTP
// client.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// DefaultURL is where the REST gateway listens on a laptop (`make run`).
const DefaultURL = "http://127.0.0.1:8080"

// Env is everything the CLI takes from the outside world.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads an environment variable.
	Getenv func(string) string
	// StdinIsTerminal reports whether Stdin is an interactive terminal.
	StdinIsTerminal func() bool
	// ReadSecret shows prompt (on stderr) and reads one line from the
	// terminal without echoing it.
	ReadSecret func(prompt string) (string, error)
	// HTTPClient sends the REST requests.
	HTTPClient *http.Client
	// Now is the clock (access-token expiry checks).
	Now func() time.Time
	// Keyring is the OS keyring for profiles that keep their credentials
	// there (BACKLOG_CREDENTIAL_STORE=keyring); nil: there is none.
	Keyring Keyring
}

// SystemEnv is the Env of a real process: os.Stdin/Stdout/Stderr, the process
// environment and the controlling terminal.
func SystemEnv() *Env {
	return &Env{
		Stdin:           os.Stdin,
		Stdout:          os.Stdout,
		Stderr:          os.Stderr,
		Getenv:          os.Getenv,
		StdinIsTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) },
		ReadSecret: func(prompt string) (string, error) {
			fmt.Fprint(os.Stderr, prompt)
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			fmt.Fprintln(os.Stderr)
			return string(b), err
		},
		Keyring: osKeyring{},
	}
}

func (e *Env) withDefaults() *Env {
	out := *e
	if out.Stdin == nil {
		out.Stdin = eofReader{}
	}
	if out.Stdout == nil {
		out.Stdout = io.Discard
	}
	if out.Stderr == nil {
		out.Stderr = io.Discard
	}
	if out.Getenv == nil {
		out.Getenv = func(string) string { return "" }
	}
	if out.StdinIsTerminal == nil {
		out.StdinIsTerminal = func() bool { return false }
	}
	if out.ReadSecret == nil {
		out.ReadSecret = func(string) (string, error) {
			return "", errors.New("no terminal to prompt on: pipe the value on stdin")
		}
	}
	if out.HTTPClient == nil {
		out.HTTPClient = &http.Client{Timeout: 60 * time.Second}
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return &out
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// Main runs the CLI with args (without the program name) and returns the
// process exit code. Errors are printed as "Error: …" on env.Stderr, with any
// credential-looking string in them cut down to its prefix.
func Main(ctx context.Context, args []string, env *Env) int {
	env = env.withDefaults()
	root := NewCommand(env)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(env.Stderr, "Error: "+Redact(err.Error()))
		var he hinter
		if errors.As(err, &he) && he.Hint() != "" {
			fmt.Fprintln(env.Stderr, "Hint: "+Redact(he.Hint()))
		}
		return ExitCode(err)
	}
	return ExitOK
}

type hinter interface{ Hint() string }

var credentialRE = regexp.MustCompile(`blg_[a-z]+_[0-9A-Za-z]+`)

// Redact replaces every credential-looking string in s by its first 12
// characters followed by "…".
func Redact(s string) string {
	return credentialRE.ReplaceAllStringFunc(s, Shorten)
}

// Shorten returns the first 12 characters of a credential followed by "…":
// enough to tell credentials apart, never enough to use one.
func Shorten(tok string) string {
	if len(tok) <= 12 {
		return tok + "…"
	}
	return tok[:12] + "…"
}

// app is the state shared by every command of one invocation.
type app struct {
	env *Env

	profileName string
	output      string
	urlFlag     string
	workspace   string // --workspace/-w of the resource command groups
}

// NewCommand builds the backlog command tree.
func NewCommand(env *Env) *cobra.Command {
	env = env.withDefaults()
	a := &app{env: env}
	defProfile := env.Getenv("BACKLOG_PROFILE")
	envProfile := defProfile != ""
	if defProfile == "" {
		defProfile = "default"
	}
	root := &cobra.Command{
		Use:   "backlog",
		Short: "Manage a Backlog workspace's automations, agents and secrets",
		Long: `backlog talks to the Backlog control plane's REST API.

Credentials live in profiles under $BACKLOG_CONFIG_DIR (default: your config
directory + /backlog), one file per profile, readable only by you. Store one
with "backlog auth set-token", pick which one resource commands send with
"backlog auth use", and see what a profile holds with "backlog auth status".

Resource commands never send a long-lived automation secret: exchange it for a
short-lived access token first with "backlog auth exchange --save".

Environment: BACKLOG_URL (default ` + DefaultURL + `), BACKLOG_PROFILE,
BACKLOG_CONFIG_DIR, BACKLOG_CREDENTIAL_STORE (file, the default, or keyring).

` + exitCodesHelp,
		Example: `  # A fresh server: create a workspace and keep its owner's token
  backlog workspaces create Acme --operator-token-file data/operator-token --save

  # An automation: store its secret, exchange it, list automations
  backlog auth set-token -          # paste blg_auto_… (hidden)
  backlog auth exchange --save
  backlog automations list`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.output != "table" && a.output != "json" {
				return usageErrorf("unknown output format %q: use table or json", a.output)
			}
			if !envProfile && !cmd.Flags().Changed("profile") {
				// No --profile and no $BACKLOG_PROFILE: the profile that
				// `profiles use` made active, else "default".
				name, err := a.activeProfile()
				if err != nil {
					return err
				}
				a.profileName = name
			}
			return markUsage(validProfileName(a.profileName))
		},
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&a.profileName, "profile", defProfile, "profile to read credentials from and save them to ($BACKLOG_PROFILE; else the one that profiles use chose)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&a.urlFlag, "url", "", "REST API base URL (overrides $BACKLOG_URL and the profile's url; default "+DefaultURL+")")

	root.AddCommand(
		a.authCommand(),
		a.workspacesCommand(),
		a.membersCommand(),
		a.automationsCommand(),
		a.agentsCommand(),
		a.installationsCommand(),
		a.secretsCommand(),
		a.auditCommand(),
		a.httpRequestCommand(),
		a.profilesCommand(),
	)
	for _, f := range extraCommands {
		root.AddCommand(f(a))
	}

	root.SetHelpCommand(&cobra.Command{
		Use:     "help [command]",
		Short:   "Help about any command",
		Example: "  backlog help automations create",
		Run: func(c *cobra.Command, args []string) {
			cmd, _, e := c.Root().Find(args)
			if cmd == nil || e != nil {
				c.Printf("Unknown help topic %#q\n", args)
				_ = c.Root().Usage()
				return
			}
			cmd.InitDefaultHelpFlag()
			_ = cmd.Help()
		},
	})
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(./backlog.sh completion bash)"
		for _, sub := range c.Commands() {
			sub.Example = "  ./backlog.sh completion " + sub.Name() + " > backlog-completion." + sub.Name()
			if sub.Name() == "bash" {
				completeWrapperToo(sub)
			}
		}
	}
	markUsageErrors(root)
	return root
}

// extraCommands are top-level commands that files add with
// registerCommand (from an init function), so that a new command group needs
// no edit here.
var extraCommands []func(*app) *cobra.Command

// registerCommand adds a top-level command to every tree NewCommand builds.
// Call it from an init function:
//
//	func init() { registerCommand((*app).connectionsCommand) }
func registerCommand(f func(*app) *cobra.Command) { extraCommands = append(extraCommands, f) }

func (a *app) stdout() io.Writer { return a.env.Stdout }
func (a *app) stderr() io.Writer { return a.env.Stderr }
func (a *app) jsonOut() bool     { return a.output == "json" }

// exactArgs returns an Args validator with a message that names what is expected.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s expects %s (got %d arguments); see %s --help", cmd.CommandPath(), what, len(args), helpPath(cmd))
		}
		return nil
	}
}

// completeWrapperToo makes the bash completion script complete ./backlog.sh
// (the wrapper people run) as well as backlog.
func completeWrapperToo(bash *cobra.Command) {
	gen := bash.RunE
	if gen == nil {
		return
	}
	bash.RunE = func(cmd *cobra.Command, args []string) error {
		if err := gen(cmd, args); err != nil {
			return err
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "\n# The wrapper at the repository root.\ncomplete -o default -F __start_%s %s\n", cmd.Root().Name(), progName)
		return err
	}
}
