package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func (a *app) profilesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "profiles",
		Aliases: []string{"profile"},
		Short:   "List the saved profiles, choose the active one, delete one",
		Long: `Profiles are the identities the CLI keeps: one file each in the config
directory, readable only by you. The active profile is the one commands use
without --profile or $BACKLOG_PROFILE ("default" until you choose another).`,
		Example: `  backlog profiles list
  backlog profiles use ci
  backlog profiles delete old-ci --yes`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.profilesListCommand(), a.profilesUseCommand(), a.profilesDeleteCommand())
	return cmd
}

type profileRow struct {
	Name            string   `json:"name"`
	Active          bool     `json:"active"`
	Use             string   `json:"use,omitempty"`
	WorkspaceID     string   `json:"workspaceId,omitempty"`
	URL             string   `json:"url,omitempty"`
	CredentialStore string   `json:"credentialStore"`
	Credentials     []string `json:"credentials"`
}

func (a *app) profilesListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the saved profiles (never their credentials)",
		Example: `  backlog profiles list
  backlog profiles list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.store()
			if err != nil {
				return err
			}
			names, err := st.List()
			if err != nil {
				return err
			}
			rows := []profileRow{}
			for _, n := range names {
				// The file alone: listing never opens the keyring.
				p, err := st.readFile(n)
				if err != nil {
					return err
				}
				r := profileRow{Name: n, Active: n == a.profileName, Use: effectiveUse(p), WorkspaceID: p.WorkspaceID, URL: p.URL,
					CredentialStore: storeFile, Credentials: []string{}}
				if p.CredentialStore == storeKeyring {
					r.CredentialStore = storeKeyring
					if r.Use == "" {
						r.Use = p.Use
					}
				}
				for _, s := range slots {
					if *s.get(p) != "" {
						r.Credentials = append(r.Credentials, s.use)
					}
				}
				if p.RotationSecret != "" {
					r.Credentials = append(r.Credentials, "rotation")
				}
				rows = append(rows, r)
			}
			if a.jsonOut() {
				return a.printValue(map[string]any{"profiles": rows})
			}
			if len(rows) == 0 {
				_, err := fmt.Fprintf(a.stdout(), "No profiles in %s: store a credential with %s.\n", st.Dir, a.run("auth set-token"))
				return err
			}
			table := make([][]string, 0, len(rows))
			for _, r := range rows {
				mark := ""
				if r.Active {
					mark = "*"
				}
				creds := showList(r.Credentials)
				if r.CredentialStore == storeKeyring {
					creds = "(in the OS keyring)"
				}
				table = append(table, []string{mark, r.Name, showStr(r.Use), showStr(r.WorkspaceID), creds, r.CredentialStore, showStr(r.URL)})
			}
			return a.table([]string{"", "NAME", "USE", "WORKSPACE", "CREDENTIALS", "STORE", "URL"}, table)
		},
	}
}

func (a *app) profilesUseCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "use NAME",
		Short: "Make a saved profile the active one",
		Long: `Make NAME the profile commands use without --profile. $BACKLOG_PROFILE and
--profile still win over it.`,
		Example: `  backlog profiles use ci`,
		Args:    exactArgs(1, "a profile name"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			return a.profileNames(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := validProfileName(name); err != nil {
				return usageErrorf("%v", err)
			}
			st, err := a.store()
			if err != nil {
				return err
			}
			if !st.Exists(name) {
				return withExit(ExitNotFound, &hintError{
					err:  fmt.Errorf("no profile %s in %s", name, st.Dir),
					hint: "saved profiles: " + showList(a.profileNames()) + "; create one with " + progName + " --profile " + shellWord(name) + " auth set-token",
				})
			}
			if err := st.SetActive(name); err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printValue(map[string]string{"active": name})
			}
			_, err = fmt.Fprintf(a.stdout(), "Profile %s is now active: commands without --profile use it.\n", name)
			if a.env.Getenv("BACKLOG_PROFILE") != "" {
				fmt.Fprintf(a.stderr(), "Note: $BACKLOG_PROFILE=%s is set in this shell and wins over the active profile.\n", a.env.Getenv("BACKLOG_PROFILE"))
			}
			return err
		},
	}
}

func (a *app) profilesDeleteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a profile and the credentials it holds (on this machine only)",
		Long: `Delete profile NAME: its file and, if it keeps them there, its credentials in
the OS keyring. The credentials stay valid on the server: revoke or rotate
them there if they leaked.`,
		Example: `  backlog profiles delete old-ci
  backlog profiles delete old-ci --yes   # in a script`,
		Args: exactArgs(1, "a profile name"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			return a.profileNames(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := validProfileName(name); err != nil {
				return usageErrorf("%v", err)
			}
			st, err := a.store()
			if err != nil {
				return err
			}
			if !st.Exists(name) {
				return withExit(ExitNotFound, fmt.Errorf("no profile %s in %s", name, st.Dir))
			}
			if err := a.confirm(cmd, fmt.Sprintf("Delete profile %s and the credentials it holds?", name)); err != nil {
				return err
			}
			if err := st.Delete(name); err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printValue(map[string]string{"deleted": name})
			}
			_, err = fmt.Fprintf(a.stdout(), "Deleted profile %s.\n", name)
			return err
		},
	}
	addYesFlag(cmd)
	return cmd
}

// profileNames lists the saved profiles for completion and hints.
func (a *app) profileNames() []string {
	st, err := a.store()
	if err != nil {
		return nil
	}
	names, _ := st.List()
	return names
}

func (a *app) authLogoutCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Remove every credential the profile holds (on this machine)",
		Long: `Remove the profile's credentials: automation secret, access token, personal
access token, agent API key and rotation secret, operator token. Its URL and
default workspace stay. The credentials themselves stay valid on the server:
revoke or rotate them there if they leaked. To remove the profile altogether,
use "profiles delete".`,
		Example: `  backlog auth logout
  backlog --profile ci auth logout`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.store()
			if err != nil {
				return err
			}
			if !st.Exists(a.profileName) {
				return withExit(ExitNotFound, fmt.Errorf("no profile %s in %s: nothing to log out of", a.profileName, st.Dir))
			}
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			var removed []string
			for _, s := range slots {
				if *s.get(p) != "" {
					removed = append(removed, s.noun)
					*s.get(p) = ""
				}
			}
			if p.RotationSecret != "" {
				removed = append(removed, "agent rotation secret")
			}
			clearAccess(p)
			p.RotationSecret, p.PendingRotation, p.Use = "", "", ""
			if err := a.saveProfile(p); err != nil {
				return err
			}
			if a.jsonOut() {
				if removed == nil {
					removed = []string{}
				}
				return a.printValue(map[string]any{"profile": a.profileName, "removed": removed})
			}
			if len(removed) == 0 {
				_, err = fmt.Fprintf(a.stdout(), "Profile %s held no credentials.\n", a.profileName)
				return err
			}
			_, err = fmt.Fprintf(a.stdout(), "Logged out of profile %s: removed its %s.\n", a.profileName, strings.Join(removed, ", "))
			return err
		},
	}
}
