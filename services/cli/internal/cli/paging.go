package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
)

// maxPages bounds --all: a server that kept answering with a next page
// would otherwise never let the command end.
const maxPages = 10000

// listCall GETs a paginated list route (pathf and args as for call; q holds
// the filters and pf.query()'s page flags). Without --all it is one page, the
// answer as the server sent it. With --all it follows nextPageToken to the
// end and returns one answer of the same shape: every item under key, and no
// nextPageToken, so that the caller prints it as it prints one page.
//
// A list command gets --page-size, --page-token and --all from pageFlags.add
// and calls:
//
//	raw, err := a.listCall(cmd.Context(), &pf, "/v1/workspaces/%s/things", nil, pf.query(), "things")
func (a *app) listCall(ctx context.Context, pf *pageFlags, pathf string, args []string, q url.Values, key string) ([]byte, error) {
	raw, _, err := a.call(ctx, "GET", pathf, args, q, nil)
	if err != nil || !pf.all {
		return raw, err
	}
	var items []json.RawMessage
	seen := map[string]bool{}
	for pages := 1; ; pages++ {
		var page map[string]json.RawMessage
		if err := decode(raw, &page); err != nil {
			return nil, err
		}
		var these []json.RawMessage
		if v, ok := page[key]; ok {
			if err := json.Unmarshal(v, &these); err != nil {
				return nil, fmt.Errorf("unexpected answer from the API: %q is not a list", key)
			}
		}
		items = append(items, these...)
		var next string
		if v, ok := page["nextPageToken"]; ok {
			_ = json.Unmarshal(v, &next)
		}
		if next == "" {
			break
		}
		if seen[next] {
			return nil, fmt.Errorf("the API sent the same nextPageToken twice: stopping after %d pages", pages)
		}
		if pages >= maxPages {
			return nil, fmt.Errorf("more than %d pages: stopping (narrow the list with its filters)", maxPages)
		}
		seen[next] = true
		q.Set("pageToken", next)
		if raw, _, err = a.call(ctx, "GET", pathf, args, q, nil); err != nil {
			return nil, err
		}
	}
	if items == nil {
		items = []json.RawMessage{}
	}
	return json.Marshal(map[string]any{key: items})
}
