package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/spf13/cobra"
)

// selfRotateBackoff are the waits between the attempts of a self-rotation
// whose answer did not arrive: every attempt sends the same Idempotency-Key,
// so the server answers a retry of a rotation it already made with the
// same new pair.
var selfRotateBackoff = []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}

func (a *app) agentsSelfCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "self",
		Short: "Act as the agent whose API key the profile holds",
		Example: `  backlog agents self get
  backlog agents self rotate-key`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(a.agentsSelfGetCommand(), a.agentsSelfRotateCommand())
	return cmd
}

func (a *app) agentsSelfGetCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "get",
		Short:   "Show the agent's own record (GET /v1/agents/self)",
		Example: `  backlog agents self get`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			if p.AgentKey == "" {
				return authErrorf("profile %s holds no agent API key: run %s", a.profileName, a.run("auth set-token blg_agk_…"))
			}
			raw, err := a.send(cmd.Context(), p, request{method: "GET", path: "/v1/agents/self", token: p.AgentKey})
			if err != nil {
				return err
			}
			return a.printAgent(raw)
		},
	}
}

type selfRotation struct {
	Message        string `json:"message"`
	APIKey         string `json:"apiKey"`
	RotationSecret string `json:"rotationSecret"`
	AgentID        string `json:"agentId"`
	AgentName      string `json:"agentName"`
}

func (a *app) agentsSelfRotateCommand() *cobra.Command {
	var fromStdin, show bool
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Rotate the agent's own API key and rotation secret; the new pair is saved",
		Long: `Rotate the agent's API key and rotation secret together, as the agent itself
(POST /v1/agents/self/rotate-key): the current API key is the Bearer
credential and the current rotation secret goes in the body. The old pair stops
working at once; the new pair is saved in the profile (and printed only with
--print).

The current pair comes from the profile (store them with "auth set-token
blg_agk_…" and "auth set-token blg_rot_…"), or from stdin with --stdin (the two
credentials, one a line, in either order); when the profile lacks them and
stdin is a terminal, they are asked for at a prompt that does not echo.

The request carries an Idempotency-Key, kept in the profile until the answer
is saved: when no answer arrives (a broken connection, a timeout, the CLI
stopped), it is sent again with the same key, now and on the next run, and
the server answers with the same new pair instead of losing it.

At most 3 rotations per 15 minutes from one address (429, exit code 6).`,
		Example: `  backlog agents self rotate-key
  backlog agents self rotate-key --yes                 # in a script
  printf '%s\n%s\n' "$AGENT_KEY" "$ROTATION_SECRET" | backlog --profile bot agents self rotate-key --stdin --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.loadProfile()
			if err != nil {
				return err
			}
			key, rot := p.AgentKey, p.RotationSecret
			if fromStdin {
				if key, rot, err = a.readPair(); err != nil {
					return err
				}
			} else if key == "" || rot == "" {
				if !a.env.StdinIsTerminal() {
					return withExit(ExitAuth, &hintError{
						err:  fmt.Errorf("profile %s lacks the agent's %s", a.profileName, missingPair(key, rot)),
						hint: "store them with " + a.run("auth set-token blg_agk_…") + " and " + a.run("auth set-token blg_rot_…") + ", or pipe both with --stdin",
					})
				}
				if key == "" {
					if key, err = a.promptCredential("Agent API key (blg_agk_…, input is hidden): ", credfmt.AgentKey); err != nil {
						return err
					}
				}
				if rot == "" {
					if rot, err = a.promptCredential("Rotation secret (blg_rot_…, input is hidden): ", credfmt.RotationSecret); err != nil {
						return err
					}
				}
			}
			if err := a.confirm(cmd, "Rotate this agent's API key and rotation secret? The current pair stops working at once."); err != nil {
				return err
			}

			// Keep the pair and the Idempotency-Key before sending, so a
			// rotation whose answer is lost can be recovered by running
			// this again.
			idemKey := p.PendingRotation
			if idemKey == "" || p.AgentKey != key || p.RotationSecret != rot {
				idemKey = newIdempotencyKey()
			}
			p.AgentKey, p.RotationSecret, p.PendingRotation = key, rot, idemKey
			if p.Use == "" {
				p.Use = UseAgent
			}
			if err := a.saveProfile(p); err != nil {
				return err
			}

			r, err := a.rotateSelf(cmd.Context(), p, key, rot, idemKey)
			if err != nil {
				var ae *APIError
				if errors.As(err, &ae) && ae.Status/100 == 4 && ae.Status != http.StatusTooManyRequests {
					// A definite no: this key will never be answered.
					p.PendingRotation = ""
					_ = a.saveProfile(p)
					if ae.Status == http.StatusUnauthorized {
						ae.hint = "the profile's API key or rotation secret is not current (an earlier rotation, or an owner's, replaced them): an owner or admin can issue a new pair with " + a.run("agents rotate-key AGENT_ID")
					}
				}
				return err
			}
			p.AgentKey, p.RotationSecret, p.PendingRotation = r.APIKey, r.RotationSecret, ""
			if saveErr := a.saveProfile(p); saveErr != nil {
				// The old pair is dead: the new one must not be lost.
				fmt.Fprintf(a.stderr(), "Could not save the new pair in profile %s (%v): it is printed below, once. Store it now.\n", a.profileName, saveErr)
				a.showOnce("API key and rotation secret", "API key", r.APIKey, "Rotation secret", r.RotationSecret)
				return saveErr
			}
			if a.jsonOut() {
				out := map[string]any{"message": r.Message, "agentId": r.AgentID, "agentName": r.AgentName, "profile": a.profileName, "saved": true}
				if show {
					a.warnOnce("API key and rotation secret")
					out["apiKey"], out["rotationSecret"] = r.APIKey, r.RotationSecret
				}
				return a.printValue(out)
			}
			if r.Message != "" {
				fmt.Fprintln(a.stdout(), r.Message)
			}
			if err := a.fields("Agent", showStr(r.AgentID), "Name", showStr(r.AgentName)); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout(), "Saved the new API key and rotation secret in profile %s; the old pair no longer works.\n", a.profileName)
			if show {
				a.showOnce("API key and rotation secret", "API key", r.APIKey, "Rotation secret", r.RotationSecret)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "stdin", false, "read the current API key and rotation secret from stdin (one a line) instead of the profile")
	cmd.Flags().BoolVar(&show, "print", false, "also print the new pair (once), e.g. to hand it to a process that keeps it elsewhere")
	addYesFlag(cmd)
	return cmd
}

// rotateSelf sends the self-rotation, again with the same Idempotency-Key
// while no answer arrives (a transport failure, or a 502/503/504 of a proxy
// or the gateway).
func (a *app) rotateSelf(ctx context.Context, p *Profile, key, rot, idemKey string) (*selfRotation, error) {
	req := request{
		method: "POST", path: "/v1/agents/self/rotate-key", token: key,
		body:   map[string]any{"rotationSecret": rot},
		header: map[string]string{"Idempotency-Key": idemKey},
	}
	var raw []byte
	var err error
	for attempt := 0; ; attempt++ {
		raw, err = a.send(ctx, p, req)
		if err == nil || !retryable(err) || attempt >= len(selfRotateBackoff) {
			break
		}
		fmt.Fprintf(a.stderr(), "No answer to the rotation (%s): retrying with the same Idempotency-Key.\n", Redact(err.Error()))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(selfRotateBackoff[attempt]):
		}
	}
	if err != nil {
		if retryable(err) {
			return nil, &hintError{
				err:  fmt.Errorf("no answer to the rotation after %d attempts: %w", len(selfRotateBackoff)+1, err),
				hint: "the profile keeps the Idempotency-Key: run " + a.run("agents self rotate-key") + " again to get the new pair if the rotation happened",
			}
		}
		return nil, err
	}
	var r selfRotation
	if err := decode(raw, &r); err != nil {
		return nil, err
	}
	if credfmt.KindOf(r.APIKey) != credfmt.AgentKey || credfmt.KindOf(r.RotationSecret) != credfmt.RotationSecret {
		return nil, fmt.Errorf("the server's answer holds no valid new API key and rotation secret")
	}
	return &r, nil
}

// retryable: no answer arrived, so the request may have been applied.
func retryable(err error) bool {
	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
	}
	return false
}

func missingPair(key, rot string) string {
	switch {
	case key == "" && rot == "":
		return "API key (blg_agk_…) and rotation secret (blg_rot_…)"
	case key == "":
		return "API key (blg_agk_…)"
	}
	return "rotation secret (blg_rot_…)"
}

// readPair reads an agent API key and rotation secret from stdin, one a
// line, in either order.
func (a *app) readPair() (key, rot string, err error) {
	b, err := io.ReadAll(io.LimitReader(a.env.Stdin, 64<<10))
	if err != nil {
		return "", "", fmt.Errorf("read the credentials from stdin: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		tok := strings.TrimSpace(line)
		if tok == "" {
			continue
		}
		parsed, err := credfmt.Parse(tok)
		if err != nil {
			return "", "", usageErrorf("a line of stdin is not a valid credential: %v", err)
		}
		switch parsed.Kind {
		case credfmt.AgentKey:
			key = tok
		case credfmt.RotationSecret:
			rot = tok
		default:
			return "", "", usageErrorf("stdin holds %s: want the agent's API key (blg_agk_…) and rotation secret (blg_rot_…)", article(kindNoun(parsed.Kind)))
		}
	}
	if key == "" || rot == "" {
		return "", "", usageErrorf("stdin lacks the %s: pipe both, one a line", missingPair(key, rot))
	}
	return key, rot, nil
}

func (a *app) promptCredential(prompt string, want credfmt.Kind) (string, error) {
	s, err := a.env.ReadSecret(prompt)
	if err != nil {
		return "", fmt.Errorf("read credential: %w", err)
	}
	tok := strings.TrimSpace(s)
	parsed, err := credfmt.Parse(tok)
	if err != nil {
		return "", usageErrorf("not a valid credential: %v", err)
	}
	if parsed.Kind != want {
		return "", usageErrorf("expected %s, but this is %s", article(kindNoun(want)), article(kindNoun(parsed.Kind)))
	}
	return tok, nil
}

// newIdempotencyKey is a random key (128 bits of crypto/rand).
func newIdempotencyKey() string { return "cli-" + rand.Text() }
