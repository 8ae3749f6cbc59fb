package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// The REST resources, as far as the tables show them. Field names follow the
// protobuf JSON mapping (lowerCamelCase).

type credentialInfo struct {
	ID        string `json:"id"`
	Label     string `json:"label"`
	CreatedAt string `json:"createdAt"`
}

type automation struct {
	ID          string          `json:"id"`
	WorkspaceID string          `json:"workspaceId"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	TeamIDs     []string        `json:"teamIds"`
	Scopes      []string        `json:"scopes"`
	Suspended   bool            `json:"suspended"`
	Credential  *credentialInfo `json:"credential"`
	CreatedAt   string          `json:"createdAt"`
	UpdatedAt   string          `json:"updatedAt"`
}

type agent struct {
	ID             string   `json:"id"`
	WorkspaceID    string   `json:"workspaceId"`
	InstallationID string   `json:"installationId"`
	Name           string   `json:"name"`
	TeamIDs        []string `json:"teamIds"`
	Role           string   `json:"role"`
	Suspended      bool     `json:"suspended"`
	Revoked        bool     `json:"revoked"`
	CreatedAt      string   `json:"createdAt"`
	UpdatedAt      string   `json:"updatedAt"`
	KeyRotatedAt   string   `json:"keyRotatedAt"`
}

type installation struct {
	ID          string `json:"id"`
	WorkspaceID string `json:"workspaceId"`
	Name        string `json:"name"`
	AppID       string `json:"appId"`
	CreatedAt   string `json:"createdAt"`
}

type secret struct {
	WorkspaceID string  `json:"workspaceId"`
	Name        string  `json:"name"`
	Kind        string  `json:"kind"`
	Description string  `json:"description"`
	ExpiresAt   string  `json:"expiresAt"`
	State       string  `json:"state"`
	Version     flexInt `json:"version"`
	CreatedAt   string  `json:"createdAt"`
	UpdatedAt   string  `json:"updatedAt"`
	LastUsedAt  string  `json:"lastUsedAt"`
	RevokedAt   string  `json:"revokedAt"`
}

type member struct {
	ID          string `json:"id"`
	WorkspaceID string `json:"workspaceId"`
	Name        string `json:"name"`
	Email       string `json:"email"`
	Role        string `json:"role"`
	CreatedAt   string `json:"createdAt"`
	UpdatedAt   string `json:"updatedAt"`
}

type workspace struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	CreatedAt string `json:"createdAt"`
}

// flexInt reads an integer sent as a JSON number or, as protobuf JSON does for
// 64-bit integers, as a string.
type flexInt int64

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*f = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not an integer: %q", s)
	}
	*f = flexInt(n)
	return nil
}

func decode(raw []byte, v any) error {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("unexpected answer from the API: %v", err)
	}
	return nil
}

// printJSON prints a raw JSON answer pretty-printed; an empty answer is {}.
func (a *app) printJSON(raw []byte) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		raw = []byte("{}")
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("unexpected answer from the API: %v", err)
	}
	buf.WriteByte('\n')
	_, err := a.stdout().Write(buf.Bytes())
	return err
}

// printJSONWithout prints raw pretty-printed with the top-level keys removed
// (a credential that was saved rather than shown).
func (a *app) printJSONWithout(raw []byte, keys ...string) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("unexpected answer from the API: %v", err)
	}
	for _, k := range keys {
		delete(m, k)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return a.printJSON(b)
}

// printValue prints v as indented JSON (for answers the CLI composes itself).
func (a *app) printValue(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return a.printJSON(b)
}

// listTable prints rows under header, or "No <noun>." when there are none.
func (a *app) listTable(noun string, header []string, rows [][]string) error {
	if len(rows) == 0 {
		_, err := fmt.Fprintf(a.stdout(), "No %s.\n", noun)
		return err
	}
	return a.table(header, rows)
}

// table prints rows under header, aligned.
func (a *app) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(a.stdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fieldsWriter prints aligned "Name: value" lines.
type fieldsWriter struct{ tw *tabwriter.Writer }

func newFields(w io.Writer) *fieldsWriter {
	return &fieldsWriter{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

func (f *fieldsWriter) field(name, value string) { fmt.Fprintf(f.tw, "%s:\t%s\n", name, value) }
func (f *fieldsWriter) row(name, value string)   { fmt.Fprintf(f.tw, "%s\t%s\n", name, value) }
func (f *fieldsWriter) flush() error             { return f.tw.Flush() }

// fields prints name/value pairs, aligned, one a line.
func (a *app) fields(kv ...string) error {
	w := newFields(a.stdout())
	for i := 0; i+1 < len(kv); i += 2 {
		w.field(kv[i], kv[i+1])
	}
	return w.flush()
}

func (a *app) nextPage(token string) {
	if token != "" && !a.jsonOut() {
		fmt.Fprintf(a.stdout(), "\nMore results: --page-token %s\n", token)
	}
}

func showList(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func showStr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func showBool(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// showTime shortens an RFC 3339 timestamp of the API to seconds, UTC.
func showTime(s string) string {
	if s == "" {
		return "-"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return fmtTime(t)
}

// until says how far t is from now, for people: "in 14m32s" or "3m0s ago".
func until(t, now time.Time) string {
	d := t.Sub(now).Truncate(time.Second)
	if d > 0 {
		return "in " + d.String()
	}
	return (-d).String() + " ago"
}
