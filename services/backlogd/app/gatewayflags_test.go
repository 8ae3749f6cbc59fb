package app

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/gateway"
)

func TestGatewayFlags(t *testing.T) {
	none := func(string) string { return "" }
	c, err := ParseFlags("t", nil, none)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.TrustedProxies) != 0 {
		t.Errorf("the gateway trusts %v by default, want no one", c.TrustedProxies)
	}
	if c.HTTPReadHeaderTimeout != gateway.DefaultReadHeaderTimeout || c.HTTPBodyTimeout != gateway.DefaultBodyTimeout ||
		c.HTTPIdleTimeout != gateway.DefaultIdleTimeout || c.HTTPMaxHeaderBytes != gateway.DefaultMaxHeaderBytes ||
		c.HTTPMaxBodyBytes != gateway.DefaultMaxBodyBytes {
		t.Errorf("HTTP limits default to %v %v %v %d %d", c.HTTPReadHeaderTimeout, c.HTTPBodyTimeout, c.HTTPIdleTimeout, c.HTTPMaxHeaderBytes, c.HTTPMaxBodyBytes)
	}

	env := map[string]string{"BACKLOG_TRUSTED_PROXIES": "10.0.0.0/8", "BACKLOG_HTTP_BODY_TIMEOUT": "5s"}
	c, err = ParseFlags("t", []string{"-http-max-body-bytes", "4096", "-http-read-header-timeout", "2s"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.TrustedProxies, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}) || c.HTTPBodyTimeout != 5*time.Second ||
		c.HTTPMaxBodyBytes != 4096 || c.HTTPReadHeaderTimeout != 2*time.Second {
		t.Errorf("config = %+v", c)
	}

	for _, bad := range [][]string{
		{"-trusted-proxies", "10.0.0.0/33"}, {"-http-body-timeout", "0s"}, {"-http-idle-timeout", "-1s"},
		{"-http-read-header-timeout", "0"}, {"-http-max-body-bytes", "0"}, {"-http-max-header-bytes", "-5"},
	} {
		if _, err := ParseFlags("t", bad, none); err == nil {
			t.Errorf("ParseFlags(%v) accepted", bad)
		}
	}
}
