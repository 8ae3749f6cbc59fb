package app

import (
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestParseFlagsEnvAndPrecedence(t *testing.T) {
	env := map[string]string{"BACKLOG_DATA_DIR": "/env/dir", "BACKLOG_LOG_LEVEL": "debug", "BACKLOG_TARGET": "credential,gateway"}
	c, err := ParseFlags("t", []string{"-log-level", "warn"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/env/dir" || c.LogLevel != "warn" || len(c.Targets) != 2 || c.ServiceTokenFile != "/env/dir/service-token" {
		t.Fatalf("config = %+v", c)
	}
	for _, bad := range [][]string{{"-target", "nope"}, {"-token-ttl", "48h"}, {"-trusted-proxies", "x"}, {"stray"}} {
		if _, err := ParseFlags("t", bad, func(string) string { return "" }); err == nil {
			t.Errorf("ParseFlags(%v) accepted", bad)
		}
	}
	if _, err := ParseFlags("t", nil, func(k string) string { return map[string]string{"BACKLOG_TOKEN_TTL": "soon"}[k] }); err == nil || !strings.Contains(err.Error(), "BACKLOG_TOKEN_TTL") {
		t.Fatalf("a bad environment value must name its variable: %v", err)
	}
	if EnvName("vault-egress-ca-file") != "BACKLOG_VAULT_EGRESS_CA_FILE" {
		t.Fatal("EnvName")
	}
}

func TestAllTargetsServeAndExposeMetrics(t *testing.T) {
	dir := t.TempDir()
	cfg, err := ParseFlags("t", []string{
		"-data-dir", dir, "-http-addr", freeAddr(t), "-metrics-addr", freeAddr(t),
		"-vault-kek-file", testKEK(t), // a sealed vault is not ready
		"-credential-addr", freeAddr(t), "-automation-addr", freeAddr(t), "-agent-addr", freeAddr(t), "-vault-addr", freeAddr(t),
	}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	a, err := Start(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	for _, f := range []string{"operator-token", "service-token", "credential.key"} {
		fi, err := os.Stat(dir + "/" + f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, err, fi)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + cfg.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	req, _ := http.NewRequest("POST", "http://"+cfg.HTTPAddr+"/v1/auth/exchange", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer blg_auto_nope")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("exchange with garbage: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = http.Get("http://" + cfg.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`backlog_exchanges_total{outcome="unauthenticated"} 1`,
		`grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="Exchange"`,
		`backlog_store_commit_seconds_bucket{store="credential.db"`,
		`grpc_server_handling_seconds_bucket`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
