// Package app runs backlogd: any set of targets (services and the gateway) in
// one process, each service on its own gRPC listener, talking to the others
// over gRPC even when they share the process.
package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/backlog/controlplane/services/gateway"
	"github.com/backlog/controlplane/services/kit/audit"
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
	// TLS on the REST listener (1.2+, reloaded on SIGHUP, with HSTS).
	HTTPTLSCertFile, HTTPTLSKeyFile string

	DefaultTokenTTL time.Duration
	MaxTokenTTL     time.Duration

	VaultEgressCAFile       string
	VaultEgressAllowPrivate bool
	// VaultMaxStepsPerWorkspace caps the HTTP Request steps running at once
	// in one workspace; beyond it a step is refused with 429.
	VaultMaxStepsPerWorkspace int
	// VaultReminderInterval is how often the vault checks secrets for
	// expiry reminders; VaultEventPoll how often it fans out events and
	// attempts due deliveries.
	VaultReminderInterval, VaultEventPoll time.Duration
	// VaultKEKFile is the vault's key-encryption key (32 bytes, 0600); without
	// one the vault is sealed: metadata only, no values.
	VaultKEKFile string
	// VaultKEKPreviousFiles finish an interrupted key rotation at start.
	VaultKEKPreviousFiles []string
	// VaultKEKPKCS11, instead of VaultKEKFile: the KEK is in a PKCS#11 token.
	VaultKEKPKCS11 vault.PKCS11Config
	// AuditSigningKeyFile is the Ed25519 key that signs audit digests
	// (default <data-dir>/audit-signing.key, created if missing).
	AuditSigningKeyFile string
	// AuditDigestInterval is how often each service signs its audit chain.
	AuditDigestInterval time.Duration
	// AuditRetention: audit events older than this are pruned (0: kept for
	// good; the default with -store=etcd is DefaultEtcdAuditRetention).
	AuditRetention time.Duration
	// AuditExportFile receives every audit event as a JSON line ("-": stdout).
	AuditExportFile     string
	AuditExportMaxBytes int64
	// AuditExportURL receives every audit event in signed HTTPS batches.
	AuditExportURL, AuditExportCAFile string
	// ForwardingTokenFile holds the gateway's forwarding credential
	// (backlogd forwarding-token), for a gateway-only process.
	ForwardingTokenFile string
	// Store is the engine: "bbolt" (files in DataDir) or "etcd".
	Store string
	// etcd: the cluster's client endpoints, the deployment's key prefix
	// (each service under <prefix>/<service>/), and TLS to etcd.
	EtcdEndpoints                         []string
	EtcdPrefix                            string
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	// InitStores names stores to create empty on purpose although their
	// marker (or their siblings) show that they existed: the deliberate fresh
	// start after a store was lost with no backup.
	InitStores []string
}

// DefaultEtcdAuditRetention is -audit-retention's default with -store=etcd.
const DefaultEtcdAuditRetention = 90 * 24 * time.Hour

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
	fs.StringVar(&c.HTTPTLSCertFile, "http-tls-cert-file", "", "REST listener: serve HTTPS (TLS 1.2+, with HSTS) with this certificate chain (PEM); re-read on SIGHUP")
	fs.StringVar(&c.HTTPTLSKeyFile, "http-tls-key-file", "", "REST listener: the private key (PEM) of -http-tls-cert-file; re-read on SIGHUP")
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
	fs.StringVar(&c.VaultKEKPKCS11.Module, "vault-kek-pkcs11-module", "", "the vault's key-encryption key is in a PKCS#11 token: path of the PKCS#11 module (instead of -vault-kek-file)")
	fs.StringVar(&c.VaultKEKPKCS11.Token, "vault-kek-pkcs11-token", "", "label of the PKCS#11 token holding the key-encryption key")
	fs.StringVar(&c.VaultKEKPKCS11.Key, "vault-kek-pkcs11-key", "", "label of the key-encryption key (AES-256) in the PKCS#11 token")
	fs.StringVar(&c.VaultKEKPKCS11.PINFile, "vault-kek-pkcs11-pin-file", "", "file holding the PKCS#11 token's user PIN (mode 0600)")
	fs.StringVar(&c.AuditSigningKeyFile, "audit-signing-key-file", "", "Ed25519 key (PEM) that signs every service's audit digests (default <data-dir>/audit-signing.key, created if missing; give every replica the same one)")
	fs.DurationVar(&c.AuditDigestInterval, "audit-digest-interval", audit.DefaultDigestInterval, "how often each service signs a digest of its audit hash chain")
	fs.DurationVar(&c.AuditRetention, "audit-retention", 0, "prune audit events older than this (hourly, by one replica, keeping the hash chain verifiable); 0 keeps them for good; default with -store=etcd: 2160h (90 days: etcd keeps every key in memory and its quota is small)")
	fs.StringVar(&c.AuditExportFile, "audit-export-file", "", "append every audit event as one JSON line to this file (rotated by size), or - for stdout; at least once across restarts")
	fs.StringVar(&c.AuditExportURL, "audit-export-url", "", "also deliver every audit event to this https:// URL: POSTs of JSON lines signed with -audit-signing-key-file, retried until answered 2xx (at least once)")
	fs.StringVar(&c.AuditExportCAFile, "audit-export-ca-file", "", "extra CA certificates (PEM) trusted for -audit-export-url")
	fs.Int64Var(&c.AuditExportMaxBytes, "audit-export-max-bytes", audit.DefaultExportMaxBytes, "size at which -audit-export-file is rotated (to FILE.1, FILE.2, … keeping 10)")
	fs.StringVar(&c.ForwardingTokenFile, "forwarding-token-file", "", "gateway only: the forwarding credential (blg_fwd_…, made by backlogd forwarding-token) that lets the services believe the client addresses it forwards; default: derived from -service-token-file when that file exists")
	initStores := fs.String("init-store", "", "comma list of stores (credential, automation, agent, vault) to start empty on purpose after losing them with no backup; their credentials held elsewhere are revoked")
	fs.StringVar(&c.Store, "store", "bbolt", "storage engine: bbolt (a file per service in -data-dir) or etcd (an etcd ≥ 3.6 cluster shared by any number of replicas; see -etcd-*)")
	etcdEndpoints := fs.String("etcd-endpoints", "", "-store=etcd: comma list of the cluster's client endpoints, e.g. 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379")
	fs.StringVar(&c.EtcdPrefix, "etcd-prefix", "/backlog", "-store=etcd: key prefix of this deployment; each service keeps its store under <prefix>/<service>/")
	fs.StringVar(&c.EtcdCAFile, "etcd-ca-file", "", "-store=etcd: CA (PEM) of the etcd cluster's certificates; turns on TLS to etcd")
	fs.StringVar(&c.EtcdCertFile, "etcd-cert-file", "", "-store=etcd: client certificate (PEM) presented to etcd")
	fs.StringVar(&c.EtcdKeyFile, "etcd-key-file", "", "-store=etcd: the private key (PEM) of -etcd-cert-file")
	fs.BoolVar(&c.VaultEgressAllowPrivate, "vault-egress-allow-private", false, "allow HTTP Request steps to loopback/private addresses")
	fs.DurationVar(&c.VaultReminderInterval, "vault-reminder-interval", vault.DefaultReminderInterval, "how often the vault checks secrets for expiry reminders (30, 7 and 1 days before expiry and at expiry)")
	fs.DurationVar(&c.VaultEventPoll, "vault-event-poll", vault.DefaultEventPoll, "how often the vault fans out events to subscriptions and attempts due deliveries")
	fs.IntVar(&c.VaultMaxStepsPerWorkspace, "vault-max-steps-per-workspace", vault.DefaultEgressMaxStepsPerWorkspace, "most HTTP Request steps running at once in one workspace; more are refused with 429 and Retry-After")
	// Errors are returned (the caller prints them once); -help prints the
	// usage (subcommands, flags and their BACKLOG_* variables) on stdout.
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(UsageOutput, fs)
			return c, err
		}
		return c, fmt.Errorf("%w (backlogd --help lists the flags)", err)
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
		name   string
		listen *string
		addr   string
	}{
		{TargetCredential, &c.CredentialListenAddr, c.CredentialAddr}, {TargetAutomation, &c.AutomationListenAddr, c.AutomationAddr},
		{TargetAgent, &c.AgentListenAddr, c.AgentAddr}, {TargetVault, &c.VaultListenAddr, c.VaultAddr},
	} {
		if *l.listen != "" {
			continue
		}
		// A comma list names every replica: this process's own address
		// must then be given.
		if strings.Contains(l.addr, ",") {
			continue // checked when the service starts here
		}
		*l.listen = l.addr
	}
	switch c.Store {
	case "bbolt":
	case "etcd":
		if !given["audit-retention"] && getenv(EnvName("audit-retention")) == "" {
			c.AuditRetention = DefaultEtcdAuditRetention
		}
		for _, e := range strings.Split(*etcdEndpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				c.EtcdEndpoints = append(c.EtcdEndpoints, e)
			}
		}
		if len(c.EtcdEndpoints) == 0 {
			return c, fmt.Errorf("-store=etcd needs -etcd-endpoints (a comma list of the cluster's client endpoints)")
		}
	default:
		return c, fmt.Errorf("-store: unknown engine %q (want bbolt or etcd)", c.Store)
	}
	if c.VaultReminderInterval < 10*time.Millisecond || c.VaultEventPoll < 10*time.Millisecond {
		return c, fmt.Errorf("-vault-reminder-interval and -vault-event-poll must be at least 10ms")
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
	if c.AuditSigningKeyFile == "" {
		c.AuditSigningKeyFile = filepath.Join(c.DataDir, audit.SigningKeyFile)
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
	if (c.HTTPTLSCertFile == "") != (c.HTTPTLSKeyFile == "") {
		return c, fmt.Errorf("TLS on the REST listener needs both -http-tls-cert-file and -http-tls-key-file")
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
