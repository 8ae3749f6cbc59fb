package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// secretsInUseCommands adds to the secrets group what secrets in use need:
// versions and rollback, and --force with the dependents named for revoke
// and delete of a secret that actions or connections use.
func (a *app) secretsInUseCommands(group *cobra.Command) {
	group.AddCommand(a.secretsVersionsCommand(), a.secretsRollbackCommand())
	for _, c := range group.Commands() {
		switch c.Name() {
		case "revoke", "delete":
			a.guardInUse(c)
		case "create", "update":
			a.withAllowedHosts(c)
		}
	}
}

// withAllowedHosts gives secrets create and update --allowed-host: the
// hosts a webhook secret may be sent to. Changing them sends the value
// again (the API requires it), read like any value.
func (a *app) withAllowedHosts(c *cobra.Command) {
	var hosts []string
	var clear bool
	c.Flags().StringArrayVar(&hosts, "allowed-host", nil, "webhook secrets: a host (any port) or host:port steps may send it to (repeat); changing them needs the value again")
	if c.Name() == "update" {
		c.Flags().BoolVar(&clear, "any-host", false, "remove the allowed hosts (the value is asked for again)")
	}
	plain := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if len(hosts) == 0 && !clear {
			return plain(cmd, args)
		}
		if len(hosts) > 0 && clear {
			return usageErrorf("give --allowed-host or --any-host, not both")
		}
		str := func(name string) string {
			if f := cmd.Flags().Lookup(name); f != nil && f.Changed {
				return f.Value.String()
			}
			return ""
		}
		body := map[string]any{"allowedHosts": hosts}
		if hosts == nil {
			body["allowedHosts"] = []string{}
		}
		if d := str("description"); d != "" {
			body["description"] = d
		}
		if e := str("expires-at"); e != "" {
			t, err := expiryFlag(e, a.env.Now())
			if err != nil {
				return err
			}
			body["expiresAt"] = t
		}
		method, path, name := "PATCH", secretsPath+"/%s", ""
		var pathArgs []string
		if c.Name() == "create" {
			if len(args) > 0 {
				name = args[0]
			} else {
				name = str("name")
			}
			body["name"], body["kind"] = name, str("kind")
			method, path = "POST", secretsPath
		} else {
			name, pathArgs = args[0], args
		}
		withValue := lazyBody(func() (map[string]any, error) {
			v, err := a.readValue(name)
			if err != nil {
				return nil, err
			}
			body["value"] = v
			return body, nil
		})
		raw, _, err := a.call(cmd.Context(), method, path, pathArgs, nil, withValue)
		if err != nil {
			return err
		}
		return a.printSecret(raw)
	}
}

type secretUsage struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
	Name string `json:"name"`
}

// secretDependents reads who uses secret name. Failing to read it is not an
// error here: the request itself then says what is wrong.
func (a *app) secretDependents(ctx context.Context, name string) []secretUsage {
	raw, _, err := a.call(ctx, "GET", secretsPath+"/%s", []string{name}, nil, nil)
	if err != nil {
		return nil
	}
	var r struct {
		Secret struct {
			UsedBy []secretUsage `json:"usedBy"`
		} `json:"secret"`
	}
	if decode(raw, &r) != nil {
		return nil
	}
	return r.Secret.UsedBy
}

func describeUsage(deps []secretUsage) string {
	var b strings.Builder
	for _, d := range deps {
		fmt.Fprintf(&b, "\n  %s %q (%s)", d.Kind, d.Name, d.ID)
	}
	return b.String()
}

// guardInUse gives revoke or delete a --force flag. A secret in use is
// refused before anything is sent, naming its dependents, unless --force;
// then the confirmation names them and the request says force=true.
func (a *app) guardInUse(c *cobra.Command) {
	var force bool
	verb := c.Name()
	c.Flags().BoolVar(&force, "force", false, verb+" even though actions or connections use the secret (they fail until it is usable again)")
	plain := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error {
		deps := a.secretDependents(cmd.Context(), args[0])
		if len(deps) == 0 {
			return plain(cmd, args)
		}
		if !force {
			return withExit(ExitConflict, fmt.Errorf("secret %s is used by:%s\nchange or delete them first, or pass --force to %s it anyway", args[0], describeUsage(deps), verb))
		}
		if err := a.confirm(cmd, fmt.Sprintf("Secret %s is used by:%s\nThey fail from then on. %s it anyway?", args[0], describeUsage(deps), strings.ToUpper(verb[:1])+verb[1:])); err != nil {
			return err
		}
		q := url.Values{"force": {"true"}}
		var raw []byte
		var err error
		if verb == "revoke" {
			raw, _, err = a.call(cmd.Context(), "POST", secretsPath+"/%s/revoke", args, q, map[string]any{})
		} else {
			raw, _, err = a.call(cmd.Context(), "DELETE", secretsPath+"/%s", args, q, nil)
		}
		if err != nil {
			return err
		}
		if a.jsonOut() {
			return a.printJSON(raw)
		}
		if verb == "revoke" {
			fmt.Fprintf(a.stdout(), "Revoked secret %s: every use of it fails from now on.\n", args[0])
			return a.printSecret(raw)
		}
		_, err = fmt.Fprintf(a.stdout(), "Deleted secret %s.\n", args[0])
		return err
	}
}

func (a *app) secretsVersionsCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "versions NAME",
		Short:   "List a secret's kept versions (metadata only; the last 10 are kept)",
		Example: `  backlog secrets versions "HubSpot API key – production"`,
		Args:    exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", secretsPath+"/%s/versions", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Versions []struct {
					Version      flexInt `json:"version"`
					CreatedAt    string  `json:"createdAt"`
					CreatedBy    string  `json:"createdBy"`
					Current      bool    `json:"current"`
					RestoredFrom flexInt `json:"restoredFrom"`
				} `json:"versions"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Versions))
			for _, v := range r.Versions {
				restored := "-"
				if v.RestoredFrom > 0 {
					restored = strconv.FormatInt(int64(v.RestoredFrom), 10)
				}
				rows = append(rows, []string{strconv.FormatInt(int64(v.Version), 10), showBool(v.Current), showTime(v.CreatedAt), showStr(v.CreatedBy), restored})
			}
			return a.listTable("versions", []string{"VERSION", "CURRENT", "CREATED", "CREATED BY", "RESTORED FROM"}, rows)
		},
	}
}

func (a *app) secretsRollbackCommand() *cobra.Command {
	var version int64
	cmd := withYes(&cobra.Command{
		Use:     "rollback NAME --version N",
		Short:   "Make a kept version's value current again (as a new version)",
		Example: `  backlog secrets rollback "HubSpot API key – production" --version 3 --yes`,
		Args:    exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version <= 0 {
				return usageErrorf("%s needs --version N (see secrets versions %s)", cmd.CommandPath(), args[0])
			}
			if err := a.confirm(cmd, fmt.Sprintf("Roll secret %s back to the value of version %d? Every use gets that value from now on.", args[0], version)); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "POST", secretsPath+"/%s/rollback", args, nil, map[string]any{"version": version})
			if err != nil {
				return err
			}
			return a.printSecret(raw)
		},
	})
	cmd.Flags().Int64Var(&version, "version", 0, "the version to restore")
	return cmd
}
