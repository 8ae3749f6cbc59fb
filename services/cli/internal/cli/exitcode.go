package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes of the CLI. Scripts can tell the common failures apart without
// parsing messages; README.md (section CLI) and `backlog --help` list them.
const (
	ExitOK          = 0
	ExitError       = 1 // anything not listed below (400, 5xx, network, local I/O)
	ExitUsage       = 2 // a wrong command line, or a confirmation that cannot be asked
	ExitAuth        = 3 // no, expired or rejected credential (401), or not allowed (403)
	ExitNotFound    = 4 // 404: the resource does not exist (or is in another workspace)
	ExitConflict    = 5 // 409 conflict, 412 stale update, 422 Idempotency-Key reused
	ExitRateLimited = 6 // 429: retry after the time the error names
)

// exitCodesHelp is the table of exit codes, for --help.
const exitCodesHelp = `Exit codes: 0 success, 1 other failure, 2 usage (bad flags or arguments, or
a confirmation needed without a terminal: pass --yes), 3 authentication or
permission (401/403, or no usable credential), 4 not found (404), 5 conflict
(409/412/422), 6 rate limited (429).`

// exitError gives an error its exit code. Its message is the wrapped one.
type exitError struct {
	err  error
	code int
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// withExit marks err with an exit code (nil stays nil).
func withExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{err: err, code: code}
}

// usageErrorf is a command-line mistake: exit code 2.
func usageErrorf(format string, args ...any) error {
	return withExit(ExitUsage, fmt.Errorf(format, args...))
}

// authErrorf is a missing, expired or refused credential: exit code 3.
func authErrorf(format string, args ...any) error {
	return withExit(ExitAuth, fmt.Errorf(format, args...))
}

// exitForStatus maps a REST status to an exit code.
func exitForStatus(status int) int {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return ExitAuth
	case http.StatusNotFound:
		return ExitNotFound
	case http.StatusConflict, http.StatusPreconditionFailed, http.StatusUnprocessableEntity:
		return ExitConflict
	case http.StatusTooManyRequests:
		return ExitRateLimited
	}
	return ExitError
}

// cobraUsagePrefixes are the messages of command-line errors cobra returns
// before any hook of ours runs.
var cobraUsagePrefixes = []string{
	"unknown command ", "unknown flag", "unknown shorthand flag", "required flag(s)",
	"if any flags in the group", "flag needs an argument", "invalid argument ",
	"accepts ", "requires at least", "requires at most", "bad flag syntax",
}

// ExitCode is the process exit code for err: the code it was marked with,
// else the one of the REST status it carries, else 1.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return exitForStatus(ae.Status)
	}
	if errors.Is(err, context.Canceled) {
		return ExitError
	}
	msg := err.Error()
	for _, p := range cobraUsagePrefixes {
		if strings.HasPrefix(msg, p) {
			return ExitUsage
		}
	}
	return ExitError
}

// markUsageErrors makes every command-line error of the tree under root
// exit 2: flag parsing errors and the Args validators of every command
// (including commands other files add, as long as they are added before
// NewCommand returns).
func markUsageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withExit(ExitUsage, fmt.Errorf("%w (see %s --help)", err, helpPath(c)))
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error {
				return markUsage(args(cmd, a))
			}
		}
		if run := c.RunE; run != nil && c.HasSubCommands() {
			// A group's RunE only ever fails on an unknown subcommand.
			c.RunE = func(cmd *cobra.Command, a []string) error {
				return markUsage(run(cmd, a))
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// markUsage marks err as a usage error unless it already has a code.
func markUsage(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	return withExit(ExitUsage, err)
}
