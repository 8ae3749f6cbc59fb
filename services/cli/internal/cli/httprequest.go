package cli

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

const httpRequestsPath = "/v1/workspaces/%s/http-requests"

type httpRequestResult struct {
	StatusCode    int               `json:"statusCode"`
	Headers       map[string]string `json:"headers"`
	Body          string            `json:"body"`
	SecretsUsed   []string          `json:"secretsUsed"`
	BodyTruncated bool              `json:"bodyTruncated"`
	BodyEncoding  string            `json:"bodyEncoding"`
}

func (a *app) httpRequestCommand() *cobra.Command {
	cmd := a.group("http-request", "Run an HTTP Request step: the vault fills in secrets and sends it", `  backlog http-request run POST https://api.example.com/hook \
      -H 'Authorization: Bearer {secret:hook-token}' -d '{"ok":true}'`, "http-requests")
	cmd.AddCommand(a.httpRequestRunCommand())
	return cmd
}

func (a *app) httpRequestRunCommand() *cobra.Command {
	var (
		body, bodyFile string
		headers        []string
		include, fail  bool
	)
	cmd := &cobra.Command{
		Use:   "run [METHOD] URL [-H 'Name: value']... [-d TEXT | --body-file FILE]",
		Short: "Send one HTTP request through the vault, with secrets substituted",
		Long: `Run an HTTP Request step (POST /v1/workspaces/{ws}/http-requests): the vault
substitutes secret references in header values, {secret:name} or
{{secret:name}}, sends the request itself over HTTPS, and returns the target's
answer with any echoed secret value redacted. You never see the values.

METHOD is GET, POST, PUT, PATCH, DELETE or HEAD (default GET); URL is
absolute, https:// whenever a header references a secret.

The target's body goes to stdout; its status, headers (with --include) and the
secrets used go to stderr. -o json prints the whole answer instead. The
command succeeds whatever the target answers, unless --fail is given: then a
status of 400 or more exits 1. Needs the secrets:use scope (owners and admins
have it).`,
		Example: `  backlog http-request run https://api.example.com/v1/ping \
      -H 'Authorization: Bearer {secret:example-token}'
  backlog http-request run POST https://hooks.example.com/in \
      -H 'X-Signature: {secret:hook-signing}' --body-file payload.json --fail`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return fmt.Errorf("%s expects [METHOD] URL (got %d arguments); see %s --help", cmd.CommandPath(), len(args), helpPath(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			method, target := "GET", args[len(args)-1]
			if len(args) == 2 {
				method = args[0]
			}
			if changed(cmd, "body") && bodyFile != "" {
				return usageErrorf("give the body once: --body or --body-file")
			}
			hs := map[string]string{}
			for _, h := range headers {
				name, value, ok := strings.Cut(h, ":")
				name = strings.TrimSpace(name)
				if !ok || name == "" {
					return usageErrorf("--header %q: want 'Name: value'", h)
				}
				if _, dup := hs[name]; dup {
					return usageErrorf("--header %s given twice: join the values with \", \" in one --header", name)
				}
				hs[name] = strings.TrimLeft(value, " \t")
			}
			if bodyFile != "" {
				b, err := readBodyFile(a, bodyFile)
				if err != nil {
					return err
				}
				body = b
			}
			req := map[string]any{"method": strings.ToUpper(method), "url": target}
			if len(hs) > 0 {
				req["headers"] = hs
			}
			if body != "" {
				req["body"] = body
			}
			raw, _, err := a.call(cmd.Context(), "POST", httpRequestsPath, nil, nil, req)
			if err != nil {
				return err
			}
			return a.stepOutcome(raw, include, fail)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&headers, "header", "H", nil, "request header 'Name: value'; values may reference secrets as {secret:name} (repeat)")
	f.StringVarP(&body, "body", "d", "", "request body (no secret references)")
	f.StringVar(&bodyFile, "body-file", "", "read the request body from FILE (- for stdin)")
	f.BoolVarP(&include, "include", "i", false, "also print the target's response headers (on stderr)")
	f.BoolVar(&fail, "fail", false, "exit 1 when the target answers with a status of 400 or more")
	return cmd
}

func readBodyFile(a *app, name string) (string, error) {
	const limit = 1 << 20
	var r io.Reader
	if name == "-" {
		r = a.env.Stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return "", fmt.Errorf("read --body-file: %w", err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return "", fmt.Errorf("read --body-file: %w", err)
	}
	if len(b) > limit {
		return "", usageErrorf("--body-file is larger than 1 MiB, the most a step may send")
	}
	return string(b), nil
}

func (a *app) printHTTPResult(r httpRequestResult, include bool) error {
	errw := a.stderr()
	fmt.Fprintf(errw, "HTTP %d\n", r.StatusCode)
	if include {
		names := make([]string, 0, len(r.Headers))
		for k := range r.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(errw, "%s: %s\n", k, r.Headers[k])
		}
	}
	if len(r.SecretsUsed) > 0 {
		fmt.Fprintf(errw, "Secrets used: %s\n", strings.Join(r.SecretsUsed, ", "))
	}
	if r.BodyTruncated {
		fmt.Fprintln(errw, "Note: the target sent more than the vault keeps; the body below is its first part.")
	}
	switch r.BodyEncoding {
	case "base64":
		b, err := base64.StdEncoding.DecodeString(r.Body)
		if err != nil {
			return fmt.Errorf("unexpected answer from the API: the base64 body does not decode: %v", err)
		}
		_, err = a.stdout().Write(b)
		return err
	case "withheld":
		fmt.Fprintln(errw, "Note: the target compressed its body in a way the vault could not check for secret values, so it was withheld.")
		return nil
	}
	_, err := io.WriteString(a.stdout(), r.Body)
	return err
}

// stepOutcome prints a step's answer (http-request run, actions run): the
// whole answer with -o json, else the target's body and, on stderr, its
// status; with fail, a target status of 400 or more is an error.
func (a *app) stepOutcome(raw []byte, include, fail bool) error {
	var r httpRequestResult
	if err := decode(raw, &r); err != nil {
		return err
	}
	if a.jsonOut() {
		if err := a.printJSON(raw); err != nil {
			return err
		}
	} else if err := a.printHTTPResult(r, include); err != nil {
		return err
	}
	if fail && r.StatusCode >= 400 {
		return fmt.Errorf("the target answered HTTP %d", r.StatusCode)
	}
	return nil
}
