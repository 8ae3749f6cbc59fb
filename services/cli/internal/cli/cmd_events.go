package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

const eventSubscriptionsPath = "/v1/workspaces/%s/event-subscriptions"

func init() { registerCommand((*app).eventSubscriptionsCommand) }

type eventSubscription struct {
	ID        string   `json:"id"`
	URL       string   `json:"url"`
	Events    []string `json:"events"`
	CreatedAt string   `json:"createdAt"`
	CreatedBy string   `json:"createdBy"`
}

func (a *app) eventSubscriptionsCommand() *cobra.Command {
	cmd := a.group("event-subscriptions", "Manage event subscriptions: HTTPS endpoints receiving signed deliveries", `  backlog event-subscriptions create https://hooks.example.com/backlog --event secret.expiring --event secret.expired
  backlog event-subscriptions deliveries evsub_…`, "event-subscription", "events")
	cmd.AddCommand(
		a.eventSubscriptionsListCommand(),
		a.eventSubscriptionsGetCommand(),
		a.eventSubscriptionsCreateCommand(),
		a.eventSubscriptionsDeleteCommand(),
		a.eventDeliveriesCommand(),
	)
	return cmd
}

func (a *app) printEventSubscription(x eventSubscription) error {
	return a.fields(
		"ID", x.ID,
		"URL", x.URL,
		"Events", showList(x.Events),
		"Created", showTime(x.CreatedAt),
	)
}

func (a *app) eventSubscriptionsListCommand() *cobra.Command {
	var pf pageFlags
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List event subscriptions",
		Example: `  backlog event-subscriptions list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, eventSubscriptionsPath, nil, pf.query(), "subscriptions")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Subscriptions []eventSubscription `json:"subscriptions"`
				NextPageToken string              `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Subscriptions))
			for _, x := range r.Subscriptions {
				rows = append(rows, []string{x.ID, x.URL, showList(x.Events), showTime(x.CreatedAt)})
			}
			if err := a.listTable("event subscriptions", []string{"ID", "URL", "EVENTS", "CREATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}

func (a *app) eventSubscriptionsGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get ID",
		Short:   "Show an event subscription (never its signing secret)",
		Example: `  backlog event-subscriptions get evsub_…`,
		Args:    exactArgs(1, "a subscription id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, _, err := a.call(cmd.Context(), "GET", eventSubscriptionsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Subscription eventSubscription `json:"subscription"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			return a.printEventSubscription(r.Subscription)
		},
	}
}

func (a *app) eventSubscriptionsCreateCommand() *cobra.Command {
	var events []string
	cmd := &cobra.Command{
		Use:   "create URL [--event TYPE]...",
		Short: "Subscribe an HTTPS endpoint; prints its signing secret once",
		Long: `Subscribe an https:// endpoint to event types (default: all). Deliveries
are POSTs signed with Backlog-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"<t>.<body>"> keyed by the signing secret printed now, once; see
docs/operations.md for how to verify them.`,
		Example: `  backlog event-subscriptions create https://hooks.example.com/backlog --event secret.expiring --event secret.expired`,
		Args:    exactArgs(1, "an https:// URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(events) == 0 {
				events = []string{"*"}
			}
			var evs []string
			for _, e := range events {
				for _, p := range strings.Split(e, ",") {
					if p = strings.TrimSpace(p); p != "" {
						evs = append(evs, p)
					}
				}
			}
			raw, _, err := a.call(cmd.Context(), "POST", eventSubscriptionsPath, nil, nil, map[string]any{"url": args[0], "events": evs})
			if err != nil {
				return err
			}
			if a.jsonOut() {
				a.warnOnce("signing secret")
				return a.printJSON(raw)
			}
			var r struct {
				Subscription  eventSubscription `json:"subscription"`
				SigningSecret string            `json:"signingSecret"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			if err := a.printEventSubscription(r.Subscription); err != nil {
				return err
			}
			a.showOnce("signing secret", "Signing secret", r.SigningSecret)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&events, "event", nil, "event type to receive (repeat, or a comma list; default all)")
	return cmd
}

func (a *app) eventSubscriptionsDeleteCommand() *cobra.Command {
	return withYes(&cobra.Command{
		Use:     "delete ID",
		Short:   "Delete an event subscription; pending deliveries are dropped",
		Example: `  backlog event-subscriptions delete evsub_… --yes`,
		Args:    exactArgs(1, "a subscription id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.confirm(cmd, "Delete event subscription "+args[0]+"?"); err != nil {
				return err
			}
			raw, _, err := a.call(cmd.Context(), "DELETE", eventSubscriptionsPath+"/%s", args, nil, nil)
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			_, err = fmt.Fprintf(a.stdout(), "Deleted event subscription %s.\n", args[0])
			return err
		},
	})
}

func (a *app) eventDeliveriesCommand() *cobra.Command {
	var pf pageFlags
	cmd := &cobra.Command{
		Use:     "deliveries ID",
		Short:   "Show a subscription's delivery log, newest first",
		Example: `  backlog event-subscriptions deliveries evsub_…`,
		Args:    exactArgs(1, "a subscription id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := a.listCall(cmd.Context(), &pf, eventSubscriptionsPath+"/%s/deliveries", args, pf.query(), "deliveries")
			if err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSON(raw)
			}
			var r struct {
				Deliveries []struct {
					EventID        string `json:"eventId"`
					EventType      string `json:"eventType"`
					Status         string `json:"status"`
					Attempts       int    `json:"attempts"`
					LastStatusCode int    `json:"lastStatusCode"`
					LastError      string `json:"lastError"`
					CreatedAt      string `json:"createdAt"`
				} `json:"deliveries"`
				NextPageToken string `json:"nextPageToken"`
			}
			if err := decode(raw, &r); err != nil {
				return err
			}
			rows := make([][]string, 0, len(r.Deliveries))
			for _, d := range r.Deliveries {
				code := "-"
				if d.LastStatusCode > 0 {
					code = strconv.Itoa(d.LastStatusCode)
				}
				rows = append(rows, []string{d.EventID, d.EventType, d.Status, strconv.Itoa(d.Attempts), code, showStr(d.LastError), showTime(d.CreatedAt)})
			}
			if err := a.listTable("deliveries", []string{"EVENT", "TYPE", "STATUS", "ATTEMPTS", "HTTP", "ERROR", "CREATED"}, rows); err != nil {
				return err
			}
			a.nextPage(r.NextPageToken)
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}
