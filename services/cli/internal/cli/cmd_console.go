package cli

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/spf13/cobra"
)

func init() { registerCommand((*app).consoleCommand) }

// consoleLink is the gateway's answer to POST /console/sign-in-links.
type consoleLink struct {
	Path      string `json:"path"`
	ExpiresAt string `json:"expiresAt"`
}

func (a *app) consoleCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "console",
		Short: "Print a one-time sign-in link for the web console",
		Long: `Print a link that signs you in to the web console with the profile's
personal access token. The link works once and only for a few minutes; the
token itself never appears in it. Open it in your browser, or sign in on the
console's page by pasting the personal access token instead.`,
		Example: `  ./backlog.sh console
  ./backlog.sh console --profile owner`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			if p.PersonalToken == "" {
				return withExit(ExitAuth, &hintError{
					err:  fmt.Errorf("profile %s holds no personal access token: only a workspace member can sign in to the console", a.profileName),
					hint: "run " + a.run("auth set-token blg_pat_…") + " with your personal access token",
				})
			}
			raw, err := a.send(cmd.Context(), p, request{method: http.MethodPost, path: "/console/sign-in-links", token: p.PersonalToken})
			if err != nil {
				return err
			}
			var link consoleLink
			if err := json.Unmarshal(raw, &link); err != nil || link.Path == "" {
				return fmt.Errorf("unexpected answer from the gateway to POST /console/sign-in-links")
			}
			base, err := a.baseURL(p)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				out, _ := json.Marshal(map[string]string{"url": base + link.Path, "expiresAt": link.ExpiresAt})
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stderr(), "Open this link in your browser to sign in to the console. It works once, until %s:\n", link.ExpiresAt)
			fmt.Fprintln(a.stdout(), base+link.Path)
			return nil
		},
	}
}
