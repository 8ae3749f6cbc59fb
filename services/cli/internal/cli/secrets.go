package cli

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

const secretsPath = "/v1/workspaces/%s/secrets"

func (a *app) secretsCommand() *cobra.Command {
	cmd := a.group("secrets", "Manage workspace secrets (values are write-only)", `  backlog secrets list --expiring-within 168h
  printf '%s' "$GITHUB_TOKEN" | backlog secrets create github-token --kind integration
  backlog secrets update github-token            # hidden prompt for the new value
  backlog secrets revoke github-token`, "secret")
	cmd.AddCommand(
		a.secretsListCommand(),
		a.secretsGetCommand(),
		a.secretsCreateCommand(),
		a.secretsUpdateCommand(),
		a.secretsRevokeCommand(),
		a.secretsDeleteCommand(),
	)
	a.secretsInUseCommands(cmd) // versions, rollback, --force (cmd_secret_versions.go)
	return cmd
}

func (a *app) secretsListCommand() *cobra.Command {
	var (
		pf       pageFlags
		kind     string
		expiring time.Duration
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List secrets' metadata (never values)",
		Example: `  backlog secrets list
  backlog secrets list --kind webhook
  backlog secrets list --expiring-within 168h -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			q := pf.query()
			if kind != "" {
				q.Set("kind", kind)
			}
			if changed(cmd, "expiring-within") {
				if expiring < time.Second {
					return usageErrorf("--expiring-within must be at least 1s (got %s)", expiring)
				}
				q.Set("expiringWithin", strconv.FormatInt(int64(expiring/time.Second), 10)+"s")
			}
			raw, err := a.listCall(cmd.Context(), &pf, secretsPath, nil, q, "secrets")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Secrets       []secret `json:"secrets"`
				NextPageToken string   `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Secrets))
			for _, x := range r.Secrets {
				rows = append(rows, []string{x.Name, showStr(x.Kind), showStr(x.State), showTime(x.ExpiresAt), strconv.FormatInt(int64(x.Version), 10), showTime(x.UpdatedAt), showStr(x.Description)})
			}
			if err := a.listTable("secrets", []string{"NAME", "KIND", "STATE", "EXPIRES", "VERSION", "UPDATED", "DESCRIPTION"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "only secrets of this kind: integration or webhook")
	f.DurationVar(&expiring, "expiring-within", 0, "only secrets that expire within this duration, e.g. 168h")
	return cmd
}

func (a *app) printSecret(raw []byte) error {
	if a.jsonOut() {
		return a.printJSON(raw)
	}
	var r struct {
		Secret secret `json:"secret"`
	}
	if err := decode(raw, &r); err != nil {
		return err
	}
	x := r.Secret
	return a.fields(
		"Name", x.Name,
		"Kind", showStr(x.Kind),
		"Description", showStr(x.Description),
		"State", showStr(x.State),
		"Version", strconv.FormatInt(int64(x.Version), 10),
		"Expires", showTime(x.ExpiresAt),
		"Last used", showTime(x.LastUsedAt),
		"Revoked", showTime(x.RevokedAt),
		"Created", showTime(x.CreatedAt),
		"Updated", showTime(x.UpdatedAt),
	)
}

func (a *app) secretsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Show a secret's metadata (never its value)",
		Example: `  backlog secrets get github-token`,
		Args:    exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", secretsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			return a.printSecret(raw)
		},
	}
}

// expiryFlag reads --expires-at: RFC 3339, or a duration from now ("720h").
func expiryFlag(v string, now time.Time) (string, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC().Format(time.RFC3339Nano), nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(d).UTC().Truncate(time.Second).Format(time.RFC3339), nil
	}
	return "", usageErrorf("--expires-at %q is neither an RFC 3339 time (2026-01-31T00:00:00Z) nor a duration from now (720h)", v)
}

const valueHelp = `The value is read from stdin when it is piped, or else at a prompt that does
not echo. It is never taken from a flag, so it stays out of shell history and
process lists, and it is never shown again.`

func (a *app) secretsCreateCommand() *cobra.Command {
	var name, kind, description, expiresAt string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Store a new secret; its value comes from stdin or a hidden prompt",
		Long:  "Store a new workspace secret.\n\n" + valueHelp,
		Example: `  printf '%s' "$GITHUB_TOKEN" | backlog secrets create github-token --kind integration
  backlog secrets create hook-signing --kind webhook --expires-at 720h   # prompts`,
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": name}
			if kind != "" {
				body["kind"] = kind
			}
			if description != "" {
				body["description"] = description
			}
			if expiresAt != "" {
				t, err := expiryFlag(expiresAt, a.env.Now())
				if err != nil {
					return err
				}
				body["expiresAt"] = t
			}
			withValue := lazyBody(func() (map[string]any, error) {
				v, err := a.readValue(name)
				if err != nil {
					return nil, err
				}
				body["value"] = v
				return body, nil
			})
			raw, _, err := a.call(cmd.Context(), "POST", secretsPath, nil, nil, withValue)
			if err != nil {
				return err
			}
			return a.printSecret(raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "integration or webhook")
	f.StringVar(&description, "description", "", "what the secret is for")
	f.StringVar(&expiresAt, "expires-at", "", "expiry: an RFC 3339 time or a duration from now (720h)")
	nameArg(cmd, "the secret's name", &name)
	return cmd
}

func (a *app) secretsUpdateCommand() *cobra.Command {
	var (
		description, expiresAt string
		newValue               bool
	)
	cmd := &cobra.Command{
		Use:   "update NAME",
		Short: "Rotate a secret's value or change its description or expiry",
		Long: `Change a secret. Only what you ask for changes.

A new value is set when you pass --new-value, or when you pass no other flag
(then updating means rotating the value). ` + valueHelp,
		Example: `  backlog secrets update github-token                    # hidden prompt for the new value
  printf '%s' "$NEW" | backlog secrets update github-token
  backlog secrets update github-token --description "CI bot" --expires-at 2026-06-30T00:00:00Z
  backlog secrets update github-token --new-value --expires-at 2160h`,
		Args: exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if changed(cmd, "description") {
				body["description"] = description
			}
			if changed(cmd, "expires-at") {
				t, err := expiryFlag(expiresAt, a.env.Now())
				if err != nil {
					return err
				}
				body["expiresAt"] = t
			}
			wantValue := newValue || len(body) == 0
			withValue := lazyBody(func() (map[string]any, error) {
				if wantValue {
					v, err := a.readValue(args[0])
					if err != nil {
						return nil, err
					}
					body["value"] = v
				}
				return body, nil
			})
			raw, _, err := a.call(cmd.Context(), "PATCH", secretsPath+"/%s", args, nil, withValue)
			if err != nil {
				return err
			}
			return a.printSecret(raw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&description, "description", "", "new description")
	f.StringVar(&expiresAt, "expires-at", "", "new expiry: an RFC 3339 time or a duration from now (720h)")
	f.BoolVar(&newValue, "new-value", false, "also set a new value (stdin or hidden prompt); implied when no other flag is given")
	return cmd
}

func (a *app) secretsRevokeCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "revoke NAME",
		Short:   "Disable a secret at once and keep its record",
		Example: `  backlog secrets revoke github-token`,
		Args:    exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Revoke secret "+args[0]+"? Every use of it fails from now on."); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "POST", secretsPath+"/%s/revoke", args, nil, map[string]any{})
			if err != nil {
				return err
			}
			if !a.jsonOut() {
				fmt.Fprintf(a.stdout(), "Revoked secret %s: every use of it fails from now on.\n", args[0])
			}
			return a.printSecret(raw)
		},
	})
}

func (a *app) secretsDeleteCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "delete NAME",
		Short:   "Remove a secret; every use of it fails from then on",
		Example: `  backlog secrets delete github-token`,
		Args:    exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Delete secret "+args[0]+"? Every use of it fails from then on."); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "DELETE", secretsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			_, err = fmt.Fprintf(a.stdout(), "Deleted secret %s.\n", args[0])
			return err
		},
	})
}
