package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/spf13/cobra"
)

func (a *app) authCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Store credentials, exchange automation secrets, choose what to send",
		Example: `  backlog auth set-token -            # paste a credential at a hidden prompt
  backlog auth exchange --save        # automation secret → access token
  backlog auth use personal
  backlog auth status --check`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.authSetTokenCommand(), a.authExchangeCommand(), a.authUseCommand(), a.authStatusCommand(), a.authLogoutCommand())
	return cmd
}

// kindFlag maps a --kind value (a kind tag or a use name) to a kind.
func kindFlag(v string) (credfmt.Kind, error) {
	for _, s := range slots {
		if v == string(s.kind) || v == s.use {
			return s.kind, nil
		}
	}
	return "", usageErrorf("unknown --kind %q: use auto, at, pat, agk or op", v)
}

func (a *app) authSetTokenCommand() *cobra.Command {
	var kind string
	cmd := &cobra.Command{
		Use:   "set-token [TOKEN|-]",
		Short: "Store a credential in the profile, by its kind",
		Long: `Store a Backlog credential in the profile. Its kind prefix says where it goes:

  blg_auto_…  automation secret (only sent to exchange it for access tokens)
  blg_at_…    access token
  blg_pat_…   personal access token
  blg_agk_…   agent API key
  blg_op_…    operator token
  blg_rot_…   agent rotation secret (never sent as a bearer credential: only
              "agents self rotate-key" sends it, with the agent API key)

The checksum is verified first, so a mistyped or truncated credential is
rejected. With TOKEN "-" or omitted, the credential is read from stdin when it
is piped, or at a prompt that does not echo: both keep it out of your shell
history. Resource commands then send the stored credential (an automation
secret switches the profile to its access token: run "backlog auth exchange
--save" next).`,
		Example: `  backlog auth set-token                       # hidden prompt
  backlog auth set-token - < automation-secret.txt
  backlog auth set-token --kind auto -         # insist on an automation secret
  backlog auth set-token blg_pat_…`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var want credfmt.Kind
			if cmd.Flags().Changed("kind") {
				k, err := kindFlag(kind)
				if err != nil {
					return err
				}
				want = k
			}
			tok, err := a.readToken(args)
			if err != nil {
				return err
			}
			parsed, err := credfmt.Parse(tok)
			if err != nil {
				return fmt.Errorf("not storing the token: %w", err)
			}
			if want != "" && parsed.Kind != want {
				return fmt.Errorf("expected %s, but this is %s: not storing it", article(kindNoun(want)), article(kindNoun(parsed.Kind)))
			}
			if parsed.Kind == credfmt.RotationSecret {
				return a.storeRotationSecret(tok)
			}
			s, ok := slotByKind(parsed.Kind)
			if !ok {
				return fmt.Errorf("this is %s, which the CLI does not use: store an automation secret, access token, personal access token, agent API key or operator token", article(kindNoun(parsed.Kind)))
			}
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			notes := []string{}
			switch s.use {
			case UseSecret:
				if p.Secret != tok && p.AccessToken != "" {
					// The saved access token came from another secret.
					clearAccess(p)
					notes = append(notes, "Dropped the access token of the previous automation secret.")
				}
			case UseAccess:
				clearAccess(p)
			}
			*s.get(p) = tok
			if s.use == UseSecret {
				p.Use = UseAccess
			} else {
				p.Use = s.use
			}
			if err := a.saveProfile(p); err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printValue(map[string]string{"profile": a.profileName, "stored": s.noun, "kind": string(s.kind), "use": p.Use})
			}
			out := a.stdout()
			for _, n := range notes {
				fmt.Fprintln(out, n)
			}
			switch s.use {
			case UseSecret:
				fmt.Fprintf(out, "Stored an automation secret in profile %s. Next: %s\n", a.profileName, a.cmdLine("auth exchange --save"))
			case UseAccess:
				fmt.Fprintf(out, "Stored an access token in profile %s; resource commands now send it (use=access). Its expiry is unknown until %s.\n", a.profileName, a.run("auth status --check"))
			case UseOperator:
				fmt.Fprintf(out, "Stored an operator token in profile %s (use=operator). It can only create workspaces: %s\n", a.profileName, a.cmdLine("workspaces create NAME --save"))
			default:
				fmt.Fprintf(out, "Stored %s in profile %s; resource commands now send it (use=%s).\n", article(s.noun), a.profileName, s.use)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "refuse the credential unless it is of this kind: auto, at, pat, agk or op")
	return cmd
}

func clearAccess(p *Profile) {
	p.AccessToken = ""
	p.AccessTokenExpiresAt = nil
	p.AutomationID = ""
	p.Scopes = nil
	p.TeamIDs = nil
}

type exchangeResponse struct {
	AccessToken  string   `json:"accessToken"`
	TokenType    string   `json:"tokenType"`
	ExpiresAt    string   `json:"expiresAt"`
	ExpiresIn    flexInt  `json:"expiresIn"`
	AutomationID string   `json:"automationId"`
	WorkspaceID  string   `json:"workspaceId"`
	Scopes       []string `json:"scopes"`
	TeamIDs      []string `json:"teamIds"`
}

func (a *app) authExchangeCommand() *cobra.Command {
	var (
		save   bool
		ttl    time.Duration
		scopes []string
	)
	cmd := &cobra.Command{
		Use:   "exchange",
		Short: "Exchange the stored automation secret for a short-lived access token",
		Long: `Send the profile's automation secret to POST /v1/auth/exchange and get a
short-lived access token.

With --save the token is stored in the profile (use=access) and not printed.
Without it, the token alone goes to stdout, so it can be captured or piped,
and its metadata goes to stderr. --ttl asks for a shorter lifetime, --scope for
a subset of the automation's scopes.`,
		Example: `  backlog auth exchange --save
  backlog auth exchange --save --ttl 15m --scope automations:read
  TOKEN=$(backlog auth exchange --ttl 5m)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			if p.Secret == "" {
				return authErrorf("no automation secret in profile %s: run %s", a.profileName, a.cmdLine("auth set-token blg_auto_…"))
			}
			body := map[string]any{}
			if cmd.Flags().Changed("ttl") {
				if ttl < time.Second {
					return usageErrorf("--ttl must be at least 1s (got %s)", ttl)
				}
				body["ttlSeconds"] = int64(ttl / time.Second)
			}
			if len(scopes) > 0 {
				body["scopes"] = scopes
			}
			raw, err := a.send(cmd.Context(), p, request{method: "POST", path: "/v1/auth/exchange", body: body, token: p.Secret})
			if err != nil {
				return err
			}
			var r exchangeResponse
			if err := decode(raw, &r); err != nil {
				return err
			}
			if credfmt.KindOf(r.AccessToken) != credfmt.AccessToken {
				return fmt.Errorf("the server's answer holds no valid access token")
			}
			now := a.env.Now()
			var exp *time.Time
			if t, err := time.Parse(time.RFC3339Nano, r.ExpiresAt); err == nil {
				exp = &t
			} else if r.ExpiresIn > 0 {
				t := now.Add(time.Duration(r.ExpiresIn) * time.Second)
				exp = &t
			}
			expText := "unknown"
			if exp != nil {
				expText = fmtTime(*exp)
			}
			meta := func(w *fieldsWriter) {
				w.field("Token type", showStr(r.TokenType))
				w.field("Expires at", expText)
				w.field("Expires in", fmt.Sprintf("%ds", int64(r.ExpiresIn)))
				w.field("Automation", showStr(r.AutomationID))
				w.field("Workspace", showStr(r.WorkspaceID))
				w.field("Scopes", showList(r.Scopes))
				w.field("Teams", showList(r.TeamIDs))
			}
			if !save {
				if a.jsonOut() {
					return a.printJSON(raw)
				}
				w := newFields(a.stderr())
				meta(w)
				if err := w.flush(); err != nil {
					return err
				}
				_, err := fmt.Fprintln(a.stdout(), r.AccessToken)
				return err
			}
			p.AccessToken = r.AccessToken
			p.AccessTokenExpiresAt = exp
			p.AutomationID = r.AutomationID
			p.Scopes = r.Scopes
			p.TeamIDs = r.TeamIDs
			if r.WorkspaceID != "" {
				p.WorkspaceID = r.WorkspaceID
			}
			p.Use = UseAccess
			if err := a.saveProfile(p); err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printJSONWithout(raw, "accessToken")
			}
			w := newFields(a.stdout())
			meta(w)
			if err := w.flush(); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout(), "Saved access token to profile %s (expires at %s)\n", a.profileName, expText)
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&save, "save", false, "store the access token in the profile (use=access) instead of printing it")
	f.DurationVar(&ttl, "ttl", 0, "ask for a shorter lifetime, e.g. 15m (default: the server's, 1h)")
	f.StringSliceVar(&scopes, "scope", nil, "ask for a subset of the automation's scopes (repeat or comma-separate)")
	return cmd
}

func (a *app) authUseCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "use access|secret|personal|agent|operator",
		Short: "Choose which stored credential resource commands send",
		Long: `Choose which of the profile's credentials resource commands send.

"secret" can be chosen, but resource commands refuse to send a long-lived
automation secret: only "backlog auth exchange" ever does.`,
		Example: `  backlog auth use personal
  backlog auth use access`,
		ValidArgs: []string{UseAccess, UseSecret, UsePersonal, UseAgent, UseOperator},
		Args:      exactArgs(1, "one of access, secret, personal, agent, operator"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, ok := slotByUse(args[0])
			if !ok {
				return usageErrorf("unknown credential %q: use access, secret, personal, agent or operator", args[0])
			}
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			if *s.get(p) == "" && (s.use != UseAccess || p.Secret == "") {
				return authErrorf("profile %s holds no %s: run %s", a.profileName, s.noun, a.cmdLine("auth set-token blg_"+string(s.kind)+"_…"))
			}
			p.Use = s.use
			if err := a.saveProfile(p); err != nil {
				return err
			}
			if a.jsonOut() {
				return a.printValue(map[string]string{"profile": a.profileName, "use": p.Use})
			}
			fmt.Fprintf(a.stdout(), "Profile %s now uses its %s.\n", a.profileName, s.noun)
			switch {
			case s.use == UseSecret:
				fmt.Fprintln(a.stdout(), "Resource commands refuse to send it: run "+a.run("auth exchange --save")+" to work with an access token.")
			case s.use == UseAccess && p.AccessToken == "":
				fmt.Fprintln(a.stdout(), "It holds no access token yet: run "+a.run("auth exchange --save")+".")
			}
			return nil
		},
	}
}

type whoami struct {
	Kind         string   `json:"kind"`
	WorkspaceID  string   `json:"workspaceId"`
	SubjectID    string   `json:"subjectId"`
	Name         string   `json:"name"`
	Role         string   `json:"role"`
	Scopes       []string `json:"scopes"`
	TeamIDs      []string `json:"teamIds"`
	ExpiresAt    string   `json:"expiresAt"`
	CredentialID string   `json:"credentialId"`
}

type statusCredential struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Prefix string `json:"prefix"`
}

type statusReport struct {
	Profile      string             `json:"profile"`
	File         string             `json:"file"`
	URL          string             `json:"url"`
	Use          string             `json:"use,omitempty"`
	InUse        string             `json:"inUse,omitempty"`
	WorkspaceID  string             `json:"workspaceId,omitempty"`
	AutomationID string             `json:"automationId,omitempty"`
	Scopes       []string           `json:"scopes,omitempty"`
	ExpiresAt    string             `json:"expiresAt,omitempty"`
	Expired      *bool              `json:"expired,omitempty"`
	Credentials  []statusCredential `json:"credentials"`
	Server       json.RawMessage    `json:"server,omitempty"`
}

func (a *app) authStatusCommand() *cobra.Command {
	var check bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which credential the profile sends, its kind and expiry",
		Long: `Show which credential the profile sends, its kind, workspace and expiry, and
which credentials it holds (only their first 12 characters).

With --check, ask the server too (GET /v1/auth/whoami) and remember the
credential's workspace as the profile's default.

Exits 3 when the credential in use cannot work: none is stored, it is an
automation secret, the saved access token has expired, or (with --check) the
server refuses it (expired, revoked, rotated away, suspended).`,
		Example: `  backlog auth status
  backlog auth status --check
  backlog --profile ci auth status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			st, err := a.store()
			if err != nil {
				return err
			}
			base, err := a.baseURL(p)
			if err != nil {
				return err
			}
			// Ask the server first, so the report shows what it taught us.
			var who *whoami
			var server json.RawMessage
			var checkErr error
			if check {
				var raw []byte
				raw, checkErr = a.whoami(cmd, p)
				if checkErr == nil {
					who = &whoami{}
					if checkErr = decode(raw, who); checkErr == nil {
						server = json.RawMessage(raw)
						if who.WorkspaceID != "" && who.WorkspaceID != p.WorkspaceID {
							p.WorkspaceID = who.WorkspaceID
						}
						if effectiveUse(p) == UseAccess {
							if t, err := time.Parse(time.RFC3339Nano, who.ExpiresAt); err == nil {
								p.AccessTokenExpiresAt = &t
							}
						}
						checkErr = a.saveProfile(p)
					}
				}
			}

			now := a.env.Now()
			rep := statusReport{Profile: a.profileName, File: st.Path(a.profileName), URL: base, Credentials: []statusCredential{}, Server: server}
			use := effectiveUse(p)
			rep.Use = use
			if s, ok := slotByUse(use); ok {
				rep.InUse = kindNoun(s.kind)
			}
			rep.WorkspaceID = p.WorkspaceID
			if use == UseAccess || use == UseSecret {
				rep.AutomationID = p.AutomationID
				rep.Scopes = p.Scopes
			}
			if use == UseAccess && p.AccessToken != "" && p.AccessTokenExpiresAt != nil {
				rep.ExpiresAt = fmtTime(*p.AccessTokenExpiresAt)
				expired := !now.Before(*p.AccessTokenExpiresAt)
				rep.Expired = &expired
			}
			for _, s := range slots {
				if tok := *s.get(p); tok != "" {
					rep.Credentials = append(rep.Credentials, statusCredential{Kind: string(s.kind), Name: s.noun, Prefix: Shorten(tok)})
				}
			}
			if p.RotationSecret != "" {
				rep.Credentials = append(rep.Credentials, statusCredential{Kind: string(credfmt.RotationSecret), Name: "agent rotation secret", Prefix: Shorten(p.RotationSecret)})
			}

			// Non-zero (3) when what the profile would send cannot work:
			// nothing stored, an automation secret, an expired token, or
			// (with --check) a credential the server refused.
			if checkErr == nil {
				checkErr = a.statusProblem(p, rep)
			}
			if a.jsonOut() {
				if err := a.printValue(rep); err != nil {
					return err
				}
				return checkErr
			}
			w := newFields(a.stdout())
			w.field("Profile", rep.Profile+" ("+rep.File+")")
			w.field("API URL", rep.URL)
			switch {
			case use == "":
				w.field("In use", "nothing: run "+a.run("auth set-token")+" with a credential")
			case use == UseAccess && p.AccessToken == "":
				w.field("In use", "access token (none yet: run "+a.run("auth exchange --save")+")")
			default:
				w.field("In use", rep.InUse+", use="+use)
			}
			if use == UseSecret {
				w.field("Note", "resource commands refuse to send an automation secret: run "+a.run("auth exchange --save"))
			}
			w.field("Workspace", showStr(rep.WorkspaceID))
			if rep.AutomationID != "" {
				w.field("Automation", rep.AutomationID)
			}
			if len(rep.Scopes) > 0 {
				w.field("Scopes", showList(rep.Scopes))
			}
			if use == UseAccess && p.AccessToken != "" {
				switch {
				case p.AccessTokenExpiresAt == nil:
					w.field("Expires", "unknown ("+a.run("auth status --check")+" asks the server)")
				case *rep.Expired:
					w.field("Expires", "EXPIRED at "+rep.ExpiresAt+" ("+until(*p.AccessTokenExpiresAt, now)+"): run "+a.run("auth exchange --save"))
				default:
					w.field("Expires", rep.ExpiresAt+" ("+until(*p.AccessTokenExpiresAt, now)+")")
				}
			}
			if err := w.flush(); err != nil {
				return err
			}
			out := a.stdout()
			if len(rep.Credentials) == 0 {
				fmt.Fprintln(out, "Stored credentials: none")
			} else {
				fmt.Fprintln(out, "Stored credentials:")
				w := newFields(out)
				for _, c := range rep.Credentials {
					w.row("  "+c.Name, c.Prefix)
				}
				if err := w.flush(); err != nil {
					return err
				}
			}
			if who != nil {
				fmt.Fprintln(out, "Server (GET /v1/auth/whoami):")
				w := newFields(out)
				w.field("  Kind", showStr(who.Kind))
				w.field("  Workspace", showStr(who.WorkspaceID))
				w.field("  Subject", showStr(who.SubjectID))
				if who.Name != "" {
					w.field("  Name", who.Name)
				}
				if who.Role != "" {
					w.field("  Role", who.Role)
				}
				if len(who.Scopes) > 0 {
					w.field("  Scopes", showList(who.Scopes))
				}
				if len(who.TeamIDs) > 0 {
					w.field("  Teams", showList(who.TeamIDs))
				}
				if who.ExpiresAt != "" {
					w.field("  Expires", showTime(who.ExpiresAt))
				}
				if err := w.flush(); err != nil {
					return err
				}
			}
			return checkErr
		},
	}
	cmd.Flags().BoolVar(&check, "check", false, "also ask the server who the credential is (GET /v1/auth/whoami)")
	return cmd
}

func (a *app) whoami(cmd *cobra.Command, p *Profile) ([]byte, error) {
	const route = "GET /v1/auth/whoami"
	token, err := a.bearer(p, route)
	if err != nil {
		return nil, err
	}
	return a.send(cmd.Context(), p, request{method: "GET", path: "/v1/auth/whoami", token: token})
}

// statusProblem is the error `auth status` exits with when the credential in
// use cannot work, or nil.
func (a *app) statusProblem(p *Profile, rep statusReport) error {
	use := effectiveUse(p)
	switch {
	case use == "":
		return authErrorf("profile %s holds no credential: run %s", a.profileName, a.run("auth set-token"))
	case use == UseSecret:
		return authErrorf("profile %s uses its automation secret, which resource commands refuse to send: run %s", a.profileName, a.run("auth exchange --save"))
	case use == UseAccess && p.AccessToken == "":
		return authErrorf("profile %s holds no access token: run %s", a.profileName, a.run("auth exchange --save"))
	case rep.Expired != nil && *rep.Expired:
		return authErrorf("the access token of profile %s expired at %s: run %s", a.profileName, rep.ExpiresAt, a.run("auth exchange --save"))
	}
	if s, ok := slotByUse(use); ok && use != UseAccess && *s.get(p) == "" {
		return authErrorf("profile %s is set to use its %s but holds none: run %s", a.profileName, s.noun, a.run("auth set-token"))
	}
	return nil
}

// storeRotationSecret keeps an agent's rotation secret in the profile,
// beside its API key. It never changes what resource commands send.
func (a *app) storeRotationSecret(tok string) error {
	p, err := a.loadProfile()
	if err != nil {
		return err
	}
	p.RotationSecret = tok
	if err := a.saveProfile(p); err != nil {
		return err
	}
	if a.jsonOut() {
		return a.printValue(map[string]string{"profile": a.profileName, "stored": "agent rotation secret", "kind": string(credfmt.RotationSecret), "use": effectiveUse(p)})
	}
	fmt.Fprintf(a.stdout(), "Stored an agent rotation secret in profile %s. It is never sent as a bearer credential; %s sends it with the agent API key.\n", a.profileName, a.run("agents self rotate-key"))
	if p.AgentKey == "" {
		fmt.Fprintf(a.stdout(), "Store the agent's API key too: %s\n", a.cmdLine("auth set-token blg_agk_…"))
	}
	return nil
}
