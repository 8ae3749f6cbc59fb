package cli

import (
	"strings"

	"github.com/spf13/cobra"
)

// progName is how people run the CLI: from the repository root, through the
// wrapper that builds it (PRODUCT.md, CLI).
const progName = "./backlog.sh"

// cmdLine is the command line that runs args ("auth exchange --save", or a
// cobra CommandPath such as "backlog secrets delete") with this invocation's
// --profile (unless it is the default profile) and --url (when given as a
// flag), so that a hint pasted back works on the same profile and server.
func (a *app) cmdLine(args string) string {
	args = strings.TrimPrefix(args, "backlog ")
	parts := []string{progName}
	if a.profileName != "" && a.profileName != "default" {
		parts = append(parts, "--profile", shellWord(a.profileName))
	}
	if a.urlFlag != "" {
		parts = append(parts, "--url", shellWord(a.urlFlag))
	}
	if args != "" {
		parts = append(parts, args)
	}
	return strings.Join(parts, " ")
}

// run is cmdLine in backquotes, for messages.
func (a *app) run(args string) string { return "`" + a.cmdLine(args) + "`" }

// shellWord quotes s for a POSIX shell when it needs it.
func shellWord(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:/@=+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// helpPath is how a person runs cmd: "./backlog.sh secrets delete".
func helpPath(cmd *cobra.Command) string {
	return progName + strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name())
}
