package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Confirmation of destructive commands (delete, revoke, rotate): on a
// terminal the command asks; in a script it needs --yes, and without it
// refuses with exit code 2 before anything is sent.
//
// A command opts in with addYesFlag(cmd) when it is built, and calls
// a.confirm(cmd, "Delete secret x?") in RunE before the request:
//
//	cmd := &cobra.Command{Use: "delete NAME", RunE: func(cmd *cobra.Command, args []string) error {
//		if err := a.confirm(cmd, "Delete secret "+args[0]+"?"); err != nil {
//			return err
//		}
//		…
//	}}
//	addYesFlag(cmd)

// yesFlag is the name of the flag that answers yes to the confirmation.
const yesFlag = "yes"

// errDeclined: the person answered no.
var errDeclined = errors.New("cancelled: nothing was changed")

// addYesFlag gives cmd the --yes/-y flag that skips its confirmation.
func addYesFlag(cmd *cobra.Command) {
	cmd.Flags().BoolP(yesFlag, "y", false, "do not ask for confirmation (needed when stdin is not a terminal)")
}

// confirm asks question on a terminal and goes on only on "y" or "yes". With
// --yes it goes on at once. Without a terminal and without --yes it refuses
// (exit code 2), so a script never deletes anything by accident.
func (a *app) confirm(cmd *cobra.Command, question string) error {
	if yes, err := cmd.Flags().GetBool(yesFlag); err == nil && yes {
		return nil
	} else if err != nil {
		return fmt.Errorf("%s has no --%s flag (addYesFlag was not called)", cmd.CommandPath(), yesFlag)
	}
	if !a.env.StdinIsTerminal() {
		return usageErrorf("%s needs confirmation and stdin is not a terminal: pass --yes to confirm", a.cmdLine(cmd.CommandPath()))
	}
	fmt.Fprintf(a.stderr(), "%s [y/N]: ", question)
	line, err := a.readLine()
	if err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errDeclined
}

// readLine reads one line of stdin (the answer to a question), without
// reading past it.
func (a *app) readLine() (string, error) {
	var b strings.Builder
	var c [1]byte
	for b.Len() < 1024 {
		n, err := a.env.Stdin.Read(c[:])
		if n == 1 {
			if c[0] == '\n' {
				break
			}
			b.WriteByte(c[0])
			continue
		}
		if err != nil {
			if b.Len() > 0 {
				return b.String(), nil
			}
			return "", err
		}
	}
	return b.String(), nil
}

// withYes is addYesFlag for a command built in one expression.
func withYes(cmd *cobra.Command) *cobra.Command {
	addYesFlag(cmd)
	return cmd
}
