package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

const automationsPath = "/v1/workspaces/%s/automations"

func (a *app) automationsCommand() *cobra.Command {
	cmd := a.group("automations", "Manage automations: scripts, CI jobs and integrations", `  backlog automations list
  backlog automations create deploy-bot --scope automations:read --team team_1
  backlog automations rotate-secret auto_123`, "automation")
	cmd.AddCommand(
		a.automationsListCommand(),
		a.automationsGetCommand(),
		a.automationsCreateCommand(),
		a.automationsUpdateCommand(),
		a.automationsRotateCommand(),
		a.automationsDeleteCommand(),
	)
	return cmd
}

func (a *app) automationsListCommand() *cobra.Command {
	var pf pageFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the workspace's automations",
		Example: `  backlog automations list
  backlog automations list --page-size 50 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, automationsPath, nil, pf.query(), "automations")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Automations   []automation `json:"automations"`
				NextPageToken string       `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Automations))
			for _, x := range r.Automations {
				rows = append(rows, []string{x.ID, x.Name, showList(x.Scopes), showList(x.TeamIDs), showBool(x.Suspended), showTime(x.UpdatedAt)})
			}
			if err := a.listTable("automations", []string{"ID", "NAME", "SCOPES", "TEAMS", "SUSPENDED", "UPDATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}

func (a *app) printAutomation(raw []byte) error {
	if a.jsonOut() {
		return a.printJSON(raw)
	}
	var r struct {
		Automation automation `json:"automation"`
	}
	if err := decode(raw, &r); err != nil {
		return err
	}
	return a.automationFields(r.Automation)
}

func (a *app) automationFields(x automation) error {
	cred := "-"
	if x.Credential != nil && x.Credential.ID != "" {
		cred = x.Credential.ID
		if x.Credential.Label != "" {
			cred += " (" + x.Credential.Label + ")"
		}
		cred += ", created " + showTime(x.Credential.CreatedAt)
	}
	return a.fields(
		"ID", x.ID,
		"Name", x.Name,
		"Description", showStr(x.Description),
		"Workspace", showStr(x.WorkspaceID),
		"Scopes", showList(x.Scopes),
		"Teams", showList(x.TeamIDs),
		"Suspended", showBool(x.Suspended),
		"Secret", cred,
		"Created", showTime(x.CreatedAt),
		"Updated", showTime(x.UpdatedAt),
	)
}

func (a *app) automationsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get AUTOMATION_ID",
		Short:   "Show an automation (never its secret)",
		Example: `  backlog automations get auto_123`,
		Args:    exactArgs(1, "an automation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", automationsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			return a.printAutomation(raw)
		},
	}
}

func (a *app) automationsCreateCommand() *cobra.Command {
	var (
		name, description, label string
		teams, scopes            []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an automation and show its secret once",
		Long: `Create an automation. Its raw secret (blg_auto_…) is printed once: store it
where the automation runs (or in a profile with "backlog auth set-token").`,
		Example: `  backlog automations create deploy-bot --description "CI deploys" \
      --scope automations:read,issues:write --team team_1 --label ci`,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": name}
			if description != "" {
				body["description"] = description
			}
			if len(teams) > 0 {
				body["teamIds"] = teams
			}
			if len(scopes) > 0 {
				body["scopes"] = scopes
			}
			if label != "" {
				body["credentialLabel"] = label
			}
			raw, _, err := a.call(cmd.Context(), "POST", automationsPath, nil, nil, body)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				a.warnOnce("automation secret")
				return a.printJSON(raw)
			}
			var r struct {
				Automation automation `json:"automation"`
				Secret     string     `json:"secret"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			if err := a.automationFields(r.Automation); err != nil {
				return err
			}
			a.showOnce("automation secret", "Automation secret", r.Secret)
			fmt.Fprintln(a.stderr(), "To act as it here: "+a.cmdLine("auth set-token -")+" (paste the secret), then "+a.cmdLine("auth exchange --save"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&description, "description", "", "what the automation is for")
	f.StringSliceVar(&teams, "team", nil, "team id of its team boundary (repeat or comma-separate)")
	f.StringSliceVar(&scopes, "scope", nil, "scope resource:action it is granted (repeat or comma-separate)")
	f.StringVar(&label, "label", "", "label of its secret (credentialLabel)")
	nameArg(cmd, "the automation's name", &name)
	return cmd
}

func (a *app) automationsUpdateCommand() *cobra.Command {
	var (
		name, description string
		teams, scopes     []string
		suspended         bool
	)
	cmd := &cobra.Command{
		Use:   "update AUTOMATION_ID",
		Short: "Change an automation; only the flags given change",
		Long: `Change an automation's name, description, team boundary, scopes or
suspension. Only the flags you pass are sent, so everything else stays as it
is. --team "" or --scope "" clears the list.`,
		Example: `  backlog automations update auto_123 --suspended
  backlog automations update auto_123 --suspended=false --scope automations:read,agents:read
  backlog automations update auto_123 --name deploy-bot-v2 --team ""`,
		Args: exactArgs(1, "an automation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if changed(cmd, "name") {
				body["name"] = name
			}
			if changed(cmd, "description") {
				body["description"] = description
			}
			if changed(cmd, "team") {
				body["teamIds"] = nonNil(teams)
			}
			if changed(cmd, "scope") {
				body["scopes"] = nonNil(scopes)
			}
			if changed(cmd, "suspended") {
				body["suspended"] = suspended
			}
			if len(body) == 0 {
				return usageErrorf("nothing to update: pass at least one of --name, --description, --team, --scope, --suspended")
			}
			raw, _, err := a.call(cmd.Context(), "PATCH", automationsPath+"/%s", args, nil, body)
			if err != nil {
				return err
			}
			return a.printAutomation(raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "new name")
	f.StringVar(&description, "description", "", "new description")
	f.StringSliceVar(&teams, "team", nil, "new team boundary: team ids (repeat or comma-separate)")
	f.StringSliceVar(&scopes, "scope", nil, "new scopes (repeat or comma-separate)")
	f.BoolVar(&suspended, "suspended", false, "suspend (--suspended) or resume (--suspended=false)")
	return cmd
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (a *app) automationsRotateCommand() *cobra.Command {
	var label string
	cmd := &cobra.Command{
		Use:   "rotate-secret AUTOMATION_ID",
		Short: "Issue a new secret for an automation; the old one dies at once",
		Example: `  backlog automations rotate-secret auto_123
  backlog automations rotate-secret auto_123 --label ci-2025`,
		Args: exactArgs(1, "an automation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Rotate the secret of automation "+args[0]+"? The old secret and its access tokens stop working at once."); err != nil {
				return err
			}
			body := map[string]any{}
			if label != "" {
				body["credentialLabel"] = label
			}
			raw, p, err := a.call(cmd.Context(), "POST", automationsPath+"/%s/rotate-secret", args, nil, body)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				a.warnOnce("automation secret")
				if err := a.printJSON(raw); err != nil {
					return err
				}
			} else {
				var r struct {
					Secret     string         `json:"secret"`
					Credential credentialInfo `json:"credential"`
				}
				if err := decode(raw, &r); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout(), "Rotated the secret of automation %s: the old secret and its access tokens stopped working.\n", args[0])
				if err := a.fields(
					"Credential", showStr(r.Credential.ID),
					"Label", showStr(r.Credential.Label),
					"Created", showTime(r.Credential.CreatedAt),
				); err != nil {
					return err
				}
				a.showOnce("automation secret", "Automation secret", r.Secret)
			}
			if p != nil && p.Secret != "" && p.AutomationID == args[0] {
				fmt.Fprintf(a.stderr(), "Profile %s holds this automation's old secret: store the new one with %s\n", a.profileName, a.cmdLine("auth set-token -"))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&label, "label", "", "label of the new secret (credentialLabel)")
	addYesFlag(cmd)
	return cmd
}

func (a *app) automationsDeleteCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "delete AUTOMATION_ID",
		Short:   "Delete an automation; its secret and tokens stop working",
		Example: `  backlog automations delete auto_123`,
		Args:    exactArgs(1, "an automation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Delete automation "+args[0]+"? Its secret and access tokens stop working."); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "DELETE", automationsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			_, err = fmt.Fprintf(a.stdout(), "Deleted automation %s.\n", args[0])
			return err
		},
	})
}
