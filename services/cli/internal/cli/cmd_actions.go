package cli

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

const actionsPath = "/v1/workspaces/%s/actions"

func init() { registerCommand((*app).actionsCommand) }

type action struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Method      string            `json:"method"`
	URL         string            `json:"url"`
	Headers     map[string]string `json:"headers"`
	Body        string            `json:"body"`
	SecretNames []string          `json:"secretNames"`
	CreatedAt   string            `json:"createdAt"`
	UpdatedAt   string            `json:"updatedAt"`
}

func (a *app) actionsCommand() *cobra.Command {
	cmd := a.group("actions", "Manage actions: saved HTTP Request steps that use webhook secrets by name", `  backlog actions create "Notify ops" --url https://hooks.example.com/in -H 'Authorization: Bearer {secret:Ops hook token}'
  backlog actions run act_…
  backlog actions list`, "action")
	cmd.AddCommand(
		a.actionsListCommand(),
		a.actionsGetCommand(),
		a.actionsCreateCommand(),
		a.actionsUpdateCommand(),
		a.actionsDeleteCommand(),
		a.actionsRunCommand(),
	)
	return cmd
}

func (a *app) printAction(raw []byte) error {
	if a.jsonOut() {
		return a.printJSON(raw)
	}
	var r struct {
		Action action `json:"action"`
	}
	if err := decode(raw, &r); err != nil {
		return err
	}
	x := r.Action
	names := make([]string, 0, len(x.Headers))
	for k := range x.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	var hs []string
	for _, k := range names {
		hs = append(hs, k+": "+x.Headers[k])
	}
	return a.fields(
		"ID", x.ID,
		"Name", x.Name,
		"Description", showStr(x.Description),
		"Request", x.Method+" "+x.URL,
		"Headers", showStr(strings.Join(hs, "; ")),
		"Secrets", showList(x.SecretNames),
		"Created", showTime(x.CreatedAt),
		"Updated", showTime(x.UpdatedAt),
	)
}

func (a *app) actionsListCommand() *cobra.Command {
	var pf pageFlags
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List actions",
		Example: `  backlog actions list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, actionsPath, nil, pf.query(), "actions")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Actions       []action `json:"actions"`
				NextPageToken string   `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Actions))
			for _, x := range r.Actions {
				rows = append(rows, []string{x.ID, x.Name, x.Method, x.URL, showList(x.SecretNames)})
			}
			if err := a.listTable("actions", []string{"ID", "NAME", "METHOD", "URL", "SECRETS"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}

func (a *app) actionsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get ID",
		Short:   "Show an action",
		Example: `  backlog actions get act_…`,
		Args:    exactArgs(1, "an action id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", actionsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			return a.printAction(raw)
		},
	}
}

// stepFlags are the request flags of actions create and update.
type stepFlags struct {
	method, url, body, bodyFile, description string
	headers                                  []string
}

func (sf *stepFlags) add(cmd *cobra.Command, create bool) {
	f := cmd.Flags()
	def := ""
	if create {
		def = "POST"
	}
	f.StringVarP(&sf.method, "method", "X", def, "GET, POST, PUT, PATCH, DELETE or HEAD")
	f.StringVar(&sf.url, "url", "", "absolute https:// URL")
	f.StringArrayVarP(&sf.headers, "header", "H", nil, "header 'Name: value'; values may reference webhook secrets as {secret:name} (repeat)")
	f.StringVarP(&sf.body, "body", "d", "", "request body (no secret references)")
	f.StringVar(&sf.bodyFile, "body-file", "", "read the request body from FILE (- for stdin)")
	f.StringVar(&sf.description, "description", "", "what the action does")
}

// fill puts the flags that were given into body.
func (sf *stepFlags) fill(a *app, cmd *cobra.Command, body map[string]any) error {
	if changed(cmd, "body") && sf.bodyFile != "" {
		return usageErrorf("give the body once: --body or --body-file")
	}
	if changed(cmd, "method") || body["method"] == nil && sf.method != "" {
		body["method"] = strings.ToUpper(sf.method)
	}
	if changed(cmd, "url") {
		body["url"] = sf.url
	}
	if changed(cmd, "header") {
		hs := map[string]string{}
		for _, h := range sf.headers {
			name, value, ok := strings.Cut(h, ":")
			name = strings.TrimSpace(name)
			if !ok || name == "" {
				return usageErrorf("--header %q: want 'Name: value'", h)
			}
			if _, dup := hs[name]; dup {
				return usageErrorf("--header %s given twice", name)
			}
			hs[name] = strings.TrimLeft(value, " \t")
		}
		body["headers"] = hs
	}
	if sf.bodyFile != "" {
		b, err := readBodyFile(a, sf.bodyFile)
		if err != nil {
			return err
		}
		body["body"] = b
	} else if changed(cmd, "body") {
		body["body"] = sf.body
	}
	if changed(cmd, "description") {
		body["description"] = sf.description
	}
	return nil
}

func (a *app) actionsCreateCommand() *cobra.Command {
	var (
		name string
		sf   stepFlags
	)
	cmd := &cobra.Command{
		Use:   "create NAME --url URL [-X METHOD] [-H 'Name: value']... [-d BODY]",
		Short: "Save an HTTP Request step that references webhook secrets by name",
		Long: `Save an action: an HTTP Request step the vault runs on request with the
current values of the webhook secrets its headers reference ({secret:name} or
{{secret:name}}), so an update of a secret reaches it on its next run.
Every referenced secret must exist and be a webhook secret.`,
		Example: `  backlog actions create "Notify ops" --url https://hooks.example.com/in \
      -H 'Authorization: Bearer {secret:Ops hook token}' -d '{"text":"deployed"}'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !changed(cmd, "url") {
				return usageErrorf("%s needs --url", cmd.CommandPath())
			}
			body := map[string]any{"name": name}
			if err := sf.fill(a, cmd, body); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "POST", actionsPath, nil, nil, body)
			if err != nil {
				return err
			}
			return a.printAction(raw)
		},
	}
	sf.add(cmd, true)
	nameArg(cmd, "the action's name", &name)
	return cmd
}

func (a *app) actionsUpdateCommand() *cobra.Command {
	var (
		name string
		sf   stepFlags
	)
	cmd := &cobra.Command{
		Use:     "update ID [--name N] [--url URL] [-X METHOD] [-H ...] [-d BODY]",
		Short:   "Change an action; only the flags given change (-H replaces all headers)",
		Example: `  backlog actions update act_… -H 'Authorization: Bearer {secret:Ops hook token v2}'`,
		Args:    exactArgs(1, "an action id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if changed(cmd, "name") {
				body["name"] = name
			}
			if err := sf.fill(a, cmd, body); err != nil {
				return err
			}
			if len(body) == 0 {
				return usageErrorf("nothing to change: pass --name, --url, --method, --header, --body or --description")
			}
			raw, _, err := a.call(cmd.Context(), "PATCH", actionsPath+"/%s", args, nil, body)
			if err != nil {
				return err
			}
			return a.printAction(raw)
		},
	}
	sf.add(cmd, false)
	cmd.Flags().StringVar(&name, "name", "", "new name")
	return cmd
}

func (a *app) actionsDeleteCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "delete ID",
		Short:   "Delete an action (its secrets stay)",
		Example: `  backlog actions delete act_… --yes`,
		Args:    exactArgs(1, "an action id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Delete action "+args[0]+"?"); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "DELETE", actionsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			_, err = fmt.Fprintf(a.stdout(), "Deleted action %s.\n", args[0])
			return err
		},
	})
}

func (a *app) actionsRunCommand() *cobra.Command {
	var include, fail bool
	cmd := &cobra.Command{
		Use:   "run ID",
		Short: "Run an action with its secrets' current values",
		Long: `Run a saved action (POST /v1/workspaces/{ws}/actions/{id}/run). Output is that
of http-request run: the target's body on stdout, its status (and headers with
--include) and the secrets used on stderr, or the whole answer with -o json.
Needs the secrets:use scope.`,
		Example: `  backlog actions run act_… --fail`,
		Args:    exactArgs(1, "an action id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "POST", actionsPath+"/%s/run", args, nil, map[string]any{})
			if err != nil {
				return err
			}
			return a.stepOutcome(raw, include, fail)
		},
	}
	cmd.Flags().BoolVarP(&include, "include", "i", false, "also print the target's response headers (on stderr)")
	cmd.Flags().BoolVar(&fail, "fail", false, "exit 1 when the target answers with a status of 400 or more")
	return cmd
}
