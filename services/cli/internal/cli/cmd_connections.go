package cli

import (
	"github.com/spf13/cobra"
)

const connectionsPath = "/v1/workspaces/%s/connections"

func init() { registerCommand((*app).connectionsCommand) }

type connection struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Integration string `json:"integration"`
	Description string `json:"description"`
	SecretName  string `json:"secretName"`
	CreatedAt   string `json:"createdAt"`
	UpdatedAt   string `json:"updatedAt"`
	CreatedBy   string `json:"createdBy"`
}

func (a *app) connectionsCommand() *cobra.Command {
	cmd := a.group("connections", "Manage connections: integrations and the integration secret each uses", `  backlog connections create "HubSpot (prod)" --integration hubspot --secret "HubSpot API key – production"
  backlog connections list
  backlog connections update conn_… --secret "HubSpot API key – staging"`, "connection")
	cmd.AddCommand(
		a.connectionsListCommand(),
		a.connectionsGetCommand(),
		a.connectionsCreateCommand(),
		a.connectionsUpdateCommand(),
		a.connectionsDeleteCommand(),
	)
	return cmd
}

func (a *app) printConnection(raw []byte) error {
	if a.jsonOut() {
		return a.printJSON(raw)
	}
	var r struct {
		Connection connection `json:"connection"`
	}
	if err := decode(raw, &r); err != nil {
		return err
	}
	x := r.Connection
	return a.fields(
		"ID", x.ID,
		"Name", x.Name,
		"Integration", showStr(x.Integration),
		"Secret", showStr(x.SecretName),
		"Description", showStr(x.Description),
		"Created", showTime(x.CreatedAt),
		"Updated", showTime(x.UpdatedAt),
	)
}

func (a *app) connectionsListCommand() *cobra.Command {
	var pf pageFlags
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List connections",
		Example: `  backlog connections list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, connectionsPath, nil, pf.query(), "connections")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Connections   []connection `json:"connections"`
				NextPageToken string       `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Connections))
			for _, x := range r.Connections {
				rows = append(rows, []string{x.ID, x.Name, showStr(x.Integration), showStr(x.SecretName), showTime(x.UpdatedAt)})
			}
			if err := a.listTable("connections", []string{"ID", "NAME", "INTEGRATION", "SECRET", "UPDATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}

func (a *app) connectionsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get ID",
		Short:   "Show a connection",
		Example: `  backlog connections get conn_…`,
		Args:    exactArgs(1, "a connection id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", connectionsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			return a.printConnection(raw)
		},
	}
}

func (a *app) connectionsCreateCommand() *cobra.Command {
	var name, integration, description, secretName string
	cmd := &cobra.Command{
		Use:     "create NAME --integration NAME --secret SECRET",
		Short:   "Create a connection using an integration secret chosen by name",
		Example: `  backlog connections create "HubSpot (prod)" --integration hubspot --secret "HubSpot API key – production"`,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": name, "integration": integration, "secretName": secretName}
			if description != "" {
				body["description"] = description
			}
			raw, _, err := a.call(cmd.Context(), "POST", connectionsPath, nil, nil, body)
			if err != nil {
				return err
			}
			return a.printConnection(raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&integration, "integration", "", "the integration, e.g. hubspot")
	f.StringVar(&secretName, "secret", "", "name of the integration secret it authenticates with")
	f.StringVar(&description, "description", "", "what the connection is for")
	nameArg(cmd, "the connection's name", &name)
	return cmd
}

func (a *app) connectionsUpdateCommand() *cobra.Command {
	var name, integration, description, secretName string
	cmd := &cobra.Command{
		Use:     "update ID [--name N] [--integration I] [--secret S] [--description D]",
		Short:   "Change a connection; only the flags given change",
		Example: `  backlog connections update conn_… --secret "HubSpot API key – staging"`,
		Args:    exactArgs(1, "a connection id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if changed(cmd, "name") {
				body["name"] = name
			}
			if changed(cmd, "integration") {
				body["integration"] = integration
			}
			if changed(cmd, "secret") {
				body["secretName"] = secretName
			}
			if changed(cmd, "description") {
				body["description"] = description
			}
			if len(body) == 0 {
				return usageErrorf("nothing to change: pass --name, --integration, --secret or --description")
			}
			raw, _, err := a.call(cmd.Context(), "PATCH", connectionsPath+"/%s", args, nil, body)
			if err != nil {
				return err
			}
			return a.printConnection(raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "new name")
	f.StringVar(&integration, "integration", "", "new integration")
	f.StringVar(&secretName, "secret", "", "name of another integration secret")
	f.StringVar(&description, "description", "", "new description")
	return cmd
}

func (a *app) connectionsDeleteCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "delete ID",
		Short:   "Delete a connection (its secret stays)",
		Example: `  backlog connections delete conn_… --yes`,
		Args:    exactArgs(1, "a connection id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Delete connection "+args[0]+"?"); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "DELETE", connectionsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			_, err = a.stdout().Write([]byte("Deleted connection " + args[0] + ".\n"))
			return err
		},
	})
}
