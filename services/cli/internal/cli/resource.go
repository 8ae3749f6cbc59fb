package cli

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// group makes a parent command of resource commands, with --workspace/-w.
func (a *app) group(use, short, example string, aliases ...string) *cobra.Command {
	cmd := &cobra.Command{
		Use:     use,
		Aliases: aliases,
		Short:   short,
		Example: example,
		Args:    cobra.ArbitraryArgs,
		RunE:    groupRun,
	}
	cmd.PersistentFlags().StringVarP(&a.workspace, "workspace", "w", "", "workspace id (default: the profile's workspace)")
	return cmd
}

// pageFlags are --page-size and --page-token of list commands.
type pageFlags struct {
	size  int
	token string
	all   bool
}

func (pf *pageFlags) add(cmd *cobra.Command) {
	cmd.Flags().IntVar(&pf.size, "page-size", 0, "results per page (default: the server's)")
	cmd.Flags().StringVar(&pf.token, "page-token", "", "page to read: the nextPageToken of the previous page")
	cmd.Flags().BoolVar(&pf.all, "all", false, "fetch every page, following nextPageToken (--page-size sets the page size)")
}

func (pf *pageFlags) query() url.Values {
	q := url.Values{}
	if pf.size > 0 {
		q.Set("pageSize", strconv.Itoa(pf.size))
	}
	if pf.token != "" {
		q.Set("pageToken", pf.token)
	}
	return q
}

// changed reports whether any of the named flags was set.
func changed(cmd *cobra.Command, names ...string) bool {
	for _, n := range names {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// showOnce prints freshly issued credentials: the warning on stderr, each
// "label: value" on stdout.
func (a *app) showOnce(what string, kv ...string) {
	fmt.Fprintln(a.stdout())
	fmt.Fprintf(a.stderr(), "Save the %s now: it will not be shown again.\n", what)
	w := newFields(a.stdout())
	for i := 0; i+1 < len(kv); i += 2 {
		w.field(kv[i], kv[i+1])
	}
	_ = w.flush()
}

// warnOnce is the warning of showOnce alone, for -o json.
func (a *app) warnOnce(what string) {
	fmt.Fprintf(a.stderr(), "Save the %s now: it will not be shown again.\n", what)
}

// nameArg makes NAME of a create command come from the one positional
// argument or from --name (both spellings work; they must agree).
func nameArg(cmd *cobra.Command, what string, name *string) {
	cmd.Flags().StringVar(name, "name", "", what+" (or give it as the NAME argument)")
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) > 1:
			return fmt.Errorf("%s expects one NAME (got %d arguments); quote a name with spaces", cmd.CommandPath(), len(args))
		case len(args) == 1 && cmd.Flags().Changed("name") && *name != args[0]:
			return fmt.Errorf("%s: give the name once, as NAME or as --name", cmd.CommandPath())
		case len(args) == 1:
			*name = args[0]
		case *name == "":
			return fmt.Errorf("%s needs %s: pass it as NAME or --name", cmd.CommandPath(), what)
		}
		return nil
	}
}

// groupRun makes a parent command show its help when run alone and fail on
// an unknown subcommand (rather than print help and exit 0).
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return fmt.Errorf("%s (see %s --help)", msg, helpPath(cmd))
}
