package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

const (
	agentsPath        = "/v1/workspaces/%s/agents"
	installationsPath = "/v1/workspaces/%s/installations"
)

func (a *app) agentsCommand() *cobra.Command {
	cmd := a.group("agents", "Manage visible agents under app installations", `  backlog agents list --installation inst_1
  backlog agents create triage-bot --installation inst_1 --role member --team team_1
  backlog agents rotate-key agt_123
  backlog agents self rotate-key          # as the agent, with its own pair`, "agent")
	cmd.AddCommand(
		a.agentsListCommand(),
		a.agentsGetCommand(),
		a.agentsCreateCommand(),
		a.agentsUpdateCommand(),
		a.agentsRotateKeyCommand(),
		a.agentsRevokeCommand(),
		a.agentsSelfCommand(),
	)
	return cmd
}

func (a *app) agentsListCommand() *cobra.Command {
	var (
		pf           pageFlags
		installation string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List visible agents",
		Example: `  backlog agents list
  backlog agents list --installation inst_1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := pf.query()
			if installation != "" {
				q.Set("installationId", installation)
			}
			raw, err := a.listCall(cmd.Context(), &pf, agentsPath, nil, q, "agents")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Agents        []agent `json:"agents"`
				NextPageToken string  `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Agents))
			for _, x := range r.Agents {
				rows = append(rows, []string{x.ID, x.Name, showStr(x.InstallationID), showStr(x.Role), showList(x.TeamIDs), showBool(x.Suspended), showBool(x.Revoked), showTime(x.UpdatedAt)})
			}
			if err := a.listTable("agents", []string{"ID", "NAME", "INSTALLATION", "ROLE", "TEAMS", "SUSPENDED", "REVOKED", "UPDATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	cmd.Flags().StringVar(&installation, "installation", "", "only the agents of this installation id")
	return cmd
}

func (a *app) agentFields(x agent) error {
	return a.fields(
		"ID", x.ID,
		"Name", x.Name,
		"Workspace", showStr(x.WorkspaceID),
		"Installation", showStr(x.InstallationID),
		"Role", showStr(x.Role),
		"Teams", showList(x.TeamIDs),
		"Suspended", showBool(x.Suspended),
		"Revoked", showBool(x.Revoked),
		"Key rotated", showTime(x.KeyRotatedAt),
		"Created", showTime(x.CreatedAt),
		"Updated", showTime(x.UpdatedAt),
	)
}

func (a *app) printAgent(raw []byte) error {
	if a.jsonOut() {
		return a.printJSON(raw)
	}
	var r struct {
		Agent agent `json:"agent"`
	}
	if err := decode(raw, &r); err != nil {
		return err
	}
	return a.agentFields(r.Agent)
}

func (a *app) agentsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get AGENT_ID",
		Short:   "Show a visible agent",
		Example: `  backlog agents get agt_123`,
		Args:    exactArgs(1, "an agent id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", agentsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			return a.printAgent(raw)
		},
	}
}

func (a *app) agentsCreateCommand() *cobra.Command {
	var (
		name, installation, role string
		teams                    []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME --installation INSTALLATION_ID",
		Short: "Register a visible agent and show its API key and rotation secret once",
		Long: `Register a visible agent under an app installation. Its API key (blg_agk_…)
and rotation secret (blg_rot_…) are printed once: give both to the agent.`,
		Example: `  backlog agents create triage-bot --installation inst_1 --role member --team team_1`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if installation == "" {
				return usageErrorf("--installation is required: the installation id the agent belongs to (see %s)", a.run("installations list"))
			}
			body := map[string]any{"name": name}
			if len(teams) > 0 {
				body["teamIds"] = teams
			}
			if role != "" {
				body["role"] = role
			}
			raw, _, err := a.call(cmd.Context(), "POST", installationsPath+"/%s/agents", []string{installation}, nil, body)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				a.warnOnce("API key and rotation secret")
				return a.printJSON(raw)
			}
			var r struct {
				Agent          agent  `json:"agent"`
				APIKey         string `json:"apiKey"`
				RotationSecret string `json:"rotationSecret"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			if err := a.agentFields(r.Agent); err != nil {
				return err
			}
			a.showOnce("API key and rotation secret", "API key", r.APIKey, "Rotation secret", r.RotationSecret)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&installation, "installation", "", "installation id the agent belongs to (required)")
	f.StringVar(&role, "role", "", "member or admin: sets its control-plane scopes like a person's role")
	f.StringSliceVar(&teams, "team", nil, "team id of its team scope (repeat or comma-separate)")
	nameArg(cmd, "the agent's name", &name)
	return cmd
}

func (a *app) agentsUpdateCommand() *cobra.Command {
	var (
		name, role string
		teams      []string
		suspended  bool
	)
	cmd := &cobra.Command{
		Use:   "update AGENT_ID",
		Short: "Change a visible agent; only the flags given change",
		Example: `  backlog agents update agt_123 --role admin
  backlog agents update agt_123 --suspended
  backlog agents update agt_123 --team team_1,team_2 --name triage`,
		Args: exactArgs(1, "an agent id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if changed(cmd, "name") {
				body["name"] = name
			}
			if changed(cmd, "team") {
				body["teamIds"] = nonNil(teams)
			}
			if changed(cmd, "role") {
				body["role"] = role
			}
			if changed(cmd, "suspended") {
				body["suspended"] = suspended
			}
			if len(body) == 0 {
				return usageErrorf("nothing to update: pass at least one of --name, --team, --role, --suspended")
			}
			raw, _, err := a.call(cmd.Context(), "PATCH", agentsPath+"/%s", args, nil, body)
			if err != nil {
				return err
			}
			return a.printAgent(raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "new name")
	f.StringSliceVar(&teams, "team", nil, "new team scope: team ids (repeat or comma-separate; \"\" clears)")
	f.StringVar(&role, "role", "", "new role: member or admin")
	f.BoolVar(&suspended, "suspended", false, "suspend (--suspended) or resume (--suspended=false)")
	return cmd
}

func (a *app) agentsRotateKeyCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:   "rotate-key AGENT_ID",
		Short: "Rotate an agent's API key and rotation secret (both leaked)",
		Long: `Rotate both credentials of an agent as an owner or admin: the path for when
both have leaked. The old pair stops working at once; the new pair is printed
once.`,
		Example: `  backlog agents rotate-key agt_123`,
		Args:    exactArgs(1, "an agent id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Rotate the API key and rotation secret of agent "+args[0]+"? The old pair stops working at once."); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "POST", agentsPath+"/%s/rotate-key", args, nil, map[string]any{})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				a.warnOnce("API key and rotation secret")
				return a.printJSON(raw)
			}
			var r struct {
				Message        string `json:"message"`
				APIKey         string `json:"apiKey"`
				RotationSecret string `json:"rotationSecret"`
				AgentID        string `json:"agentId"`
				AgentName      string `json:"agentName"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			if r.Message != "" {
				fmt.Fprintln(a.stdout(), r.Message)
			}
			if err := a.fields("Agent", showStr(r.AgentID), "Name", showStr(r.AgentName)); err != nil {
				return err
			}
			a.showOnce("API key and rotation secret", "API key", r.APIKey, "Rotation secret", r.RotationSecret)
			return nil
		},
	})
}

func (a *app) agentsRevokeCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "revoke AGENT_ID",
		Short:   "Revoke an agent: its credentials stop working for good",
		Example: `  backlog agents revoke agt_123`,
		Args:    exactArgs(1, "an agent id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Revoke agent "+args[0]+"? Its credentials stop working for good."); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "POST", agentsPath+"/%s/revoke", args, nil, map[string]any{})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			fmt.Fprintf(a.stdout(), "Revoked agent %s: its API key and rotation secret stopped working.\n", args[0])
			return a.printAgent(raw)
		},
	})
}

func (a *app) installationsCommand() *cobra.Command {
	cmd := a.group("installations", "List and record app installations (what agents hang under)", `  backlog installations list
  backlog installations create "Triage app" --app-id app_42`, "installation")
	var pf pageFlags
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the workspace's app installations",
		Example: `  backlog installations list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, installationsPath, nil, pf.query(), "installations")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Installations []installation `json:"installations"`
				NextPageToken string         `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Installations))
			for _, x := range r.Installations {
				rows = append(rows, []string{x.ID, x.Name, showStr(x.AppID), showTime(x.CreatedAt)})
			}
			if err := a.listTable("installations", []string{"ID", "NAME", "APP", "CREATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(list)

	var appID, instName string
	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Record an app installation",
		Example: `  backlog installations create "Triage app" --app-id app_42`,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": instName}
			if appID != "" {
				body["appId"] = appID
			}
			raw, _, err := a.call(cmd.Context(), "POST", installationsPath, nil, nil, body)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Installation installation `json:"installation"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			x := r.Installation
			return a.fields("ID", x.ID, "Name", x.Name, "App", showStr(x.AppID), "Workspace", showStr(x.WorkspaceID), "Created", showTime(x.CreatedAt))
		},
	}
	create.Flags().StringVar(&appID, "app-id", "", "id of the installed app")
	nameArg(create, "the installation's name", &instName)
	cmd.AddCommand(list, create)
	return cmd
}
