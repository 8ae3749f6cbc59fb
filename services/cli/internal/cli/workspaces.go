package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/spf13/cobra"
)

const membersPath = "/v1/workspaces/%s/members"

func (a *app) workspacesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "workspaces",
		Aliases: []string{"workspace"},
		Short:   "Create a workspace (operator token) or read one",
		Example: `  backlog workspaces create Acme --operator-token-file data/operator-token --save
  backlog workspaces get`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.workspacesCreateCommand(), a.workspacesGetCommand())
	return cmd
}

// operatorToken reads the operator token from file, or else the profile.
func (a *app) operatorToken(file string, p *Profile) (string, error) {
	if file == "" {
		if p.OperatorToken == "" {
			return "", withExit(ExitAuth, &hintError{
				err:  fmt.Errorf("creating a workspace needs the operator token, and profile %s holds none", a.profileName),
				hint: "pass --operator-token-file data/operator-token (backlogd writes it there on first start) or run " + a.run("auth set-token") + " with it",
			})
		}
		return p.OperatorToken, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("read operator token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", fmt.Errorf("read operator token from %s: %w", file, err)
	}
	tok := strings.TrimSpace(string(b))
	parsed, err := credfmt.Parse(tok)
	if err != nil {
		return "", fmt.Errorf("%s does not hold a valid operator token: %w", file, err)
	}
	if parsed.Kind != credfmt.Operator {
		return "", fmt.Errorf("%s holds %s, not an operator token (blg_op_…)", file, article(kindNoun(parsed.Kind)))
	}
	return tok, nil
}

func (a *app) workspacesCreateCommand() *cobra.Command {
	var (
		name, tokenFile, ownerName, ownerEmail string
		save                                   bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a workspace and its first owner (operator token)",
		Long: `Create a workspace with the operator token, which backlogd writes to
<data-dir>/operator-token on first start. The answer holds the first owner's
personal access token, shown once: with --save it is stored in the profile
instead (use=personal, and the new workspace becomes the profile's default).`,
		Example: `  backlog workspaces create Acme --operator-token-file data/operator-token --save
  backlog workspaces create Acme --owner-name "Ada" --owner-email ada@example.com --operator-token-file data/operator-token`,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			tok, err := a.operatorToken(tokenFile, p)
			if err != nil {
				return err
			}
			body := map[string]any{"name": name}
			if ownerName != "" {
				body["ownerName"] = ownerName
			}
			if ownerEmail != "" {
				body["ownerEmail"] = ownerEmail
			}
			raw, err := a.send(cmd.Context(), p, request{method: "POST", path: "/v1/workspaces", body: body, token: tok})
			if err != nil {
				return err
			}
			var r struct {
				Workspace workspace `json:"workspace"`
				Owner     member    `json:"owner"`
				Token     string    `json:"token"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			if save {
				if credfmt.KindOf(r.Token) != credfmt.Personal {
					return fmt.Errorf("the server's answer holds no valid personal access token: nothing saved")
				}
				p.PersonalToken = r.Token
				p.Use = UsePersonal
				if r.Workspace.ID != "" {
					p.WorkspaceID = r.Workspace.ID
				}
				if err := a.saveProfile(p); err != nil {
					return err
				}
			}
			if a.jsonOut() {
				if save {
					return a.printJSONWithout(raw, "token")
				}
				a.warnOnce("owner's personal access token")
				return a.printJSON(raw)
			}
			if err := a.fields(
				"Workspace", r.Workspace.ID,
				"Name", r.Workspace.Name,
				"Created", showTime(r.Workspace.CreatedAt),
				"Owner", r.Owner.ID+" ("+showStr(r.Owner.Name)+")",
			); err != nil {
				return err
			}
			if save {
				fmt.Fprintf(a.stdout(), "Saved the owner's personal access token to profile %s (use=personal); workspace %s is its default workspace.\n", a.profileName, r.Workspace.ID)
				return nil
			}
			a.showOnce("owner's personal access token", "Owner token", r.Token)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&tokenFile, "operator-token-file", "", "file holding the operator token, e.g. data/operator-token (default: the profile's operator token)")
	f.StringVar(&ownerName, "owner-name", "", "display name of the first owner (server default: Owner)")
	f.StringVar(&ownerEmail, "owner-email", "", "email of the first owner")
	f.BoolVar(&save, "save", false, "store the owner's personal token in the profile (use=personal) instead of printing it")
	nameArg(cmd, "the workspace's name", &name)
	return cmd
}

func (a *app) workspacesGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "get [WORKSPACE_ID]",
		Short: "Show a workspace (default: the profile's)",
		Example: `  backlog workspaces get
  backlog workspaces get ws_123 -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				a.workspace = args[0]
			}
			raw, _, err := a.call(cmd.Context(), "GET", "/v1/workspaces/%s", nil, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Workspace workspace `json:"workspace"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			return a.fields("ID", r.Workspace.ID, "Name", r.Workspace.Name, "Created", showTime(r.Workspace.CreatedAt))
		},
	}
}

func (a *app) membersCommand() *cobra.Command {
	cmd := a.group("members", "Manage the people of a workspace (owner/admin)", `  backlog members list
  backlog members create "Grace Hopper" --email grace@example.com --role admin
  backlog members update mem_123 --role member`, "member")

	var pf pageFlags
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the workspace's members",
		Example: `  backlog members list -o json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, membersPath, nil, pf.query(), "members")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Members       []member `json:"members"`
				NextPageToken string   `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Members))
			for _, x := range r.Members {
				rows = append(rows, []string{x.ID, x.Name, showStr(x.Email), showStr(x.Role), showTime(x.UpdatedAt)})
			}
			if err := a.listTable("members", []string{"ID", "NAME", "EMAIL", "ROLE", "UPDATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(list)

	var cName, cEmail, cRole string
	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Add a person and show their personal access token once",
		Example: `  backlog members create "Grace Hopper" --email grace@example.com --role admin`,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": cName}
			if cEmail != "" {
				body["email"] = cEmail
			}
			if cRole != "" {
				body["role"] = cRole
			}
			raw, _, err := a.call(cmd.Context(), "POST", membersPath, nil, nil, body)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				a.warnOnce("personal access token")
				return a.printJSON(raw)
			}
			var r struct {
				Member member `json:"member"`
				Token  string `json:"token"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			if err := a.memberFields(r.Member); err != nil {
				return err
			}
			a.showOnce("personal access token", "Personal token", r.Token)
			return nil
		},
	}
	create.Flags().StringVar(&cEmail, "email", "", "email address")
	create.Flags().StringVar(&cRole, "role", "", "owner, admin or member")
	nameArg(create, "the member's display name", &cName)

	var uName, uEmail, uRole string
	update := &cobra.Command{
		Use:   "update MEMBER_ID",
		Short: "Change a member's name, email or role; only the flags given change",
		Example: `  backlog members update mem_123 --role admin
  backlog members update mem_123 --name "Grace B. Hopper" --email ""`,
		Args: exactArgs(1, "a member id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if changed(cmd, "name") {
				body["name"] = uName
			}
			if changed(cmd, "email") {
				body["email"] = uEmail
			}
			if changed(cmd, "role") {
				body["role"] = uRole
			}
			if len(body) == 0 {
				return usageErrorf("nothing to update: pass at least one of --name, --email, --role")
			}
			raw, _, err := a.call(cmd.Context(), "PATCH", membersPath+"/%s", args, nil, body)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Member member `json:"member"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			return a.memberFields(r.Member)
		},
	}
	update.Flags().StringVar(&uName, "name", "", "new display name")
	update.Flags().StringVar(&uEmail, "email", "", "new email")
	update.Flags().StringVar(&uRole, "role", "", "new role: owner, admin or member")

	del := &cobra.Command{
		Use:     "delete MEMBER_ID",
		Short:   "Remove a member; their personal tokens stop working",
		Example: `  backlog members delete mem_123`,
		Args:    exactArgs(1, "a member id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Remove member "+args[0]+"? Their personal access tokens stop working."); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "DELETE", membersPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			_, err = fmt.Fprintf(a.stdout(), "Deleted member %s.\n", args[0])
			return err
		},
	}
	addYesFlag(del)
	cmd.AddCommand(list, create, update, del)
	return cmd
}

func (a *app) memberFields(x member) error {
	return a.fields(
		"ID", x.ID,
		"Name", x.Name,
		"Email", showStr(x.Email),
		"Role", showStr(x.Role),
		"Workspace", showStr(x.WorkspaceID),
		"Created", showTime(x.CreatedAt),
		"Updated", showTime(x.UpdatedAt),
	)
}
