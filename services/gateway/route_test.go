package gateway

import "testing"

// routeOf is routeTemplate, computed once per pattern and shared.
func TestRouteOfIsRouteTemplateOnce(t *testing.T) {
	for pattern, want := range map[string]string{
		"/v1/workspaces/{workspace_id}/automations/{automation_id}": "/v1/workspaces/{workspaceId}/automations/{automationId}",
		"/v1/auth/exchange": "/v1/auth/exchange",
	} {
		r := routeOf(pattern)
		if *r != want || routeTemplate(pattern) != want {
			t.Errorf("%s: route %q, want %q", pattern, *r, want)
		}
		if routeOf(pattern) != r {
			t.Errorf("%s: computed again", pattern)
		}
	}
}
