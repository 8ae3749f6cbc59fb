// Package app runs backlogd: any set of targets (services and the gateway) in
// one process, each service on its own gRPC listener, talking to the others
// over gRPC even when they share the process.
package app

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/backlog/controlplane/services/gateway"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/vault"
)

// Targets backlogd can run.
const (
	TargetCredential = "credential"
	TargetAutomation = "automation"
	TargetAgent      = "agent"
	TargetVault      = "vault"
	TargetGateway    = "gateway"
)

// AllTargets is what -target=all means, in start order.
var AllTargets = []string{TargetCredential, TargetAutomation, TargetAgent, TargetVault, TargetGateway}

// Config is backlogd's configuration; every field is a flag and an
// environment variable (BACKLOG_ + the flag in upper snake case).
type Config struct {
	Targets        []string
	DataDir        string
	HTTPAddr       string
	CredentialAddr string
	AutomationAddr string
	AgentAddr      string
	VaultAddr      string
	// Listen addresses; each defaults to its service's address. They differ
	// where a service binds 0.0.0.0:port but is found by a DNS name.
	CredentialListenAddr, AutomationListenAddr, AgentListenAddr, VaultListenAddr string
	LogLevel                                                                     string
	// TrustedProxies are the proxies in front of the gateway whose
	// X-Forwarded-For it believes: none by default, so that no client picks
	// its own address. (The services believe the client IP the gateway
	// forwards because it presents the service credential, not by address.)
	TrustedProxies []netip.Prefix
	// The gateway's HTTP server limits (see gateway.Config).
	HTTPReadHeaderTimeout, HTTPBodyTimeout, HTTPIdleTimeout time.Duration
	HTTPMaxHeaderBytes                                      int
	HTTPMaxBodyBytes                                        int64
	// ServiceTokenFile holds the service credential siblings present to each
	// other's internal RPCs (default <data-dir>/service-token, created if missing).
	ServiceTokenFile string
	// MetricsAddr serves Prometheus metrics at /metrics when set.
	MetricsAddr string
	// mTLS between the gateway and the services and among the services.
	TLSCertFile, TLSKeyFile, TLSCAFile string

	DefaultTokenTTL time.Duration
	MaxTokenTTL     time.Duration

	VaultEgressCAFile       string
	VaultEgressAllowPrivate bool
	// VaultMaxStepsPerWorkspace caps the HTTP Request steps running at once
	// in one workspace; beyond it a step is refused with 429.
	VaultMaxStepsPerWorkspace int
	// VaultKEKFile is the vault's key-encryption key (32 bytes, 0600); without
	// one the vault is sealed: metadata only, no values.
	VaultKEKFile string
	// VaultKEKPreviousFiles finish an interrupted key rotation at start.
	VaultKEKPreviousFiles []string
	// ForwardingTokenFile holds the gateway's forwarding credential
	// (backlogd forwarding-token), for a gateway-only process.
	ForwardingTokenFile string
	// InitStores names stores to create empty on purpose although their
	// marker (or their siblings) show that they existed: the deliberate fresh
	// start after a store was lost with no backup.
	InitStores []string
}

// StoreNames are the stores -init-store accepts.
var StoreNames = []string{TargetCredential, TargetAutomation, TargetAgent, TargetVault}

// ParseFlags reads args and the environment into a Config.
func ParseFlags(name string, args []string, getenv func(string) string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	target := fs.String("target", "all", "all, or a comma list of credential, automation, agent, vault, gateway")
	fs.StringVar(&c.DataDir, "data-dir", "./data", "each service keeps its bbolt file here")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "REST gateway listen address")
	fs.StringVar(&c.CredentialAddr, "credential-addr", "127.0.0.1:9101", "credential service gRPC address")
	fs.StringVar(&c.AutomationAddr, "automation-addr", "127.0.0.1:9102", "automation service gRPC address")
	fs.StringVar(&c.AgentAddr, "agent-addr", "127.0.0.1:9103", "agent service gRPC address")
	fs.StringVar(&c.VaultAddr, "vault-addr", "127.0.0.1:9104", "secret vault service gRPC address")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "this process's certificate (PEM) for mTLS between the gateway and the services; with -tls-key-file and -tls-ca-file")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "the private key (PEM) of -tls-cert-file")
	fs.StringVar(&c.TLSCAFile, "tls-ca-file", "", "the CA (PEM) that signs every control-plane certificate; peers must present one it signed")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://<addr>/metrics (off when empty)")
	fs.StringVar(&c.CredentialListenAddr, "credential-listen-addr", "", "where the credential service listens (default -credential-addr)")
	fs.StringVar(&c.AutomationListenAddr, "automation-listen-addr", "", "where the automation service listens (default -automation-addr)")
	fs.StringVar(&c.AgentListenAddr, "agent-listen-addr", "", "where the agent service listens (default -agent-addr)")
	fs.StringVar(&c.VaultListenAddr, "vault-listen-addr", "", "where the vault service listens (default -vault-addr)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.ServiceTokenFile, "service-token-file", "", "service credential for internal RPCs between services (default <data-dir>/service-token, created if missing; give every process the same one)")
	proxies := fs.String("trusted-proxies", "", "CIDRs of the proxies in front of the REST gateway whose X-Forwarded-For it believes (default none: the client IP is the TCP peer)")
	fs.DurationVar(&c.HTTPReadHeaderTimeout, "http-read-header-timeout", gateway.DefaultReadHeaderTimeout, "REST gateway: time a client has to send a request's headers (a connection that sends nothing is closed after it)")
	fs.DurationVar(&c.HTTPBodyTimeout, "http-body-timeout", gateway.DefaultBodyTimeout, "REST gateway: time a client has to send a request's body once its headers are in (408 after it)")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", gateway.DefaultIdleTimeout, "REST gateway: a keep-alive connection with no request for this long is closed")
	fs.IntVar(&c.HTTPMaxHeaderBytes, "http-max-header-bytes", gateway.DefaultMaxHeaderBytes, "REST gateway: largest request line and headers, in bytes (431 beyond)")
	fs.Int64Var(&c.HTTPMaxBodyBytes, "http-max-body-bytes", gateway.DefaultMaxBodyBytes, "REST gateway: largest request body, in bytes (413 beyond)")
	fs.DurationVar(&c.DefaultTokenTTL, "token-ttl", time.Hour, "default lifetime of an access token")
	fs.DurationVar(&c.MaxTokenTTL, "max-token-ttl", 24*time.Hour, "longest lifetime an exchange may ask for")
	fs.StringVar(&c.VaultEgressCAFile, "vault-egress-ca-file", "", "extra CA certificates trusted for HTTP Request steps")
	fs.StringVar(&c.VaultKEKFile, "vault-kek-file", "", "the vault's key-encryption key file (32 bytes raw or 64 hex, mode 0600); none: the vault is sealed")
	prevKEKs := fs.String("vault-kek-previous-files", "", "comma list of earlier key-encryption key files, to finish an interrupted rotation")
	fs.StringVar(&c.ForwardingTokenFile, "forwarding-token-file", "", "gateway only: the forwarding credential (blg_fwd_…, made by backlogd forwarding-token) that lets the services believe the client addresses it forwards; default: derived from -service-token-file when that file exists")
	initStores := fs.String("init-store", "", "comma list of stores (credential, automation, agent, vault) to start empty on purpose after losing them with no backup; their credentials held elsewhere are revoked")
	fs.BoolVar(&c.VaultEgressAllowPrivate, "vault-egress-allow-private", false, "allow HTTP Request steps to loopback/private addresses")
	fs.IntVar(&c.VaultMaxStepsPerWorkspace, "vault-max-steps-per-workspace", vault.DefaultEgressMaxStepsPerWorkspace, "most HTTP Request steps running at once in one workspace; more are refused with 429 and Retry-After")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	// Environment variables fill flags not given on the command line.
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := EnvName(f.Name)
		if v := getenv(env); v != "" {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = fmt.Errorf("%s=%q: %v", env, v, err)
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	for _, l := range []struct {
		listen *string
		addr   string
	}{
		{&c.CredentialListenAddr, c.CredentialAddr}, {&c.AutomationListenAddr, c.AutomationAddr},
		{&c.AgentListenAddr, c.AgentAddr}, {&c.VaultListenAddr, c.VaultAddr},
	} {
		if *l.listen == "" {
			*l.listen = l.addr
		}
	}
	if c.VaultMaxStepsPerWorkspace < 1 {
		return c, fmt.Errorf("-vault-max-steps-per-workspace: %d; want at least 1", c.VaultMaxStepsPerWorkspace)
	}
	for _, f := range strings.Split(*prevKEKs, ",") {
		if f = strings.TrimSpace(f); f != "" {
			c.VaultKEKPreviousFiles = append(c.VaultKEKPreviousFiles, f)
		}
	}
	for _, n := range strings.Split(*initStores, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if !slices.Contains(StoreNames, n) {
			return c, fmt.Errorf("-init-store: unknown store %q (want a comma list of %s)", n, strings.Join(StoreNames, ", "))
		}
		c.InitStores = append(c.InitStores, n)
	}
	if c.ServiceTokenFile == "" {
		c.ServiceTokenFile = filepath.Join(c.DataDir, "service-token")
	}
	var err error
	if c.Targets, err = parseTargets(*target); err != nil {
		return c, err
	}
	if c.TrustedProxies, err = clientip.ParsePrefixes(*proxies); err != nil {
		return c, fmt.Errorf("-trusted-proxies: %v", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"http-read-header-timeout", c.HTTPReadHeaderTimeout}, {"http-body-timeout", c.HTTPBodyTimeout}, {"http-idle-timeout", c.HTTPIdleTimeout}} {
		if d.v <= 0 {
			return c, fmt.Errorf("-%s must be positive", d.name)
		}
	}
	if c.HTTPMaxHeaderBytes <= 0 || c.HTTPMaxBodyBytes <= 0 {
		return c, fmt.Errorf("-http-max-header-bytes and -http-max-body-bytes must be positive")
	}
	if c.DefaultTokenTTL <= 0 || c.DefaultTokenTTL > c.MaxTokenTTL {
		return c, fmt.Errorf("-token-ttl must be positive and at most -max-token-ttl (%s)", c.MaxTokenTTL)
	}
	return c, nil
}

// EnvName is the environment variable of a flag: BACKLOG_DATA_DIR for data-dir.
func EnvName(flagName string) string {
	return "BACKLOG_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func parseTargets(s string) ([]string, error) {
	if s == "all" || s == "" {
		return AllTargets, nil
	}
	var out []string
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if !slices.Contains(AllTargets, t) {
			return nil, fmt.Errorf("-target: unknown target %q (want all, or a comma list of %s)", t, strings.Join(AllTargets, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// Getenv is os.Getenv, for ParseFlags.
var Getenv = os.Getenv

// ForwardingTokenCommand is `backlogd forwarding-token`: it prints the
// forwarding credential derived from -service-token-file, for a
// gateway-only process's -forwarding-token-file (so that the gateway never
// holds the service token).
func ForwardingTokenCommand(args []string, getenv func(string) string) (string, error) {
	cfg, err := ParseFlags("backlogd forwarding-token", args, getenv)
	if err != nil {
		return "", err
	}
	tok, err := auth.LoadOrCreateServiceToken(cfg.ServiceTokenFile, false)
	if err != nil {
		return "", err
	}
	return auth.ForwardingToken(tok), nil
}
