package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/automation"
	"github.com/backlog/controlplane/services/credential"
	"github.com/backlog/controlplane/services/gateway"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/clientip"
	"github.com/backlog/controlplane/services/kit/metrics"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/kit/server"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
	"github.com/backlog/controlplane/services/vault"
)

const shutdownGrace = 10 * time.Second

// App is a running set of targets.
type App struct {
	cfg      Config
	svcToken string
	// mTLS, when the -tls-* flags are set.
	serverTLS grpc.ServerOption
	// local carries the gateway's calls to the services of this process
	// in memory (nil: over TCP). See localHop.
	local *localHop
	// inproc carries the calls between the parts of this process as
	// function calls (nil: over their connections). See inProcess.
	inproc    *inProcess
	clientTLS credentials.TransportCredentials
	// httpCert is the REST listener's certificate, when it serves TLS.
	httpCert *certReloader
	lg       *zap.Logger
	closers  []func()
	errc     chan error
	cancel   context.CancelFunc
	etcd     *clientv3.Client // -store=etcd: one client for every store of the process
	auditw   *auditWiring     // the audit signing key and export sink, shared by the services
}

// Start opens every selected target's store and starts its listener. It
// returns once all are listening; Wait reports the first serving error.
func Start(cfg Config, lg *zap.Logger) (*App, error) {
	ctx, cancel := context.WithCancel(context.Background())
	a := &App{cfg: cfg, lg: lg, errc: make(chan error, 8), cancel: cancel}
	ok := false
	var err error
	if a.serverTLS, a.clientTLS, err = cfg.loadTLS(); err != nil {
		cancel()
		return nil, err
	}
	if a.serverTLS == nil && a.clientTLS == nil && len(cfg.Targets) > 1 && slices.Contains(cfg.Targets, TargetGateway) {
		a.local = newLocalHop()
	}
	if a.serverTLS == nil && a.clientTLS == nil && len(cfg.Targets) > 1 {
		a.inproc = newInProcess()
	}
	if !(len(cfg.Targets) == 1 && cfg.Targets[0] == TargetGateway) { // the gateway never holds it
		tok, err := auth.LoadOrCreateServiceToken(cfg.ServiceTokenFile, true)
		if err != nil {
			cancel()
			return nil, err
		}
		a.svcToken = tok
	}
	defer func() {
		if !ok {
			a.Stop()
		}
	}()
	if cfg.MetricsAddr != "" {
		if err := a.startMetrics(); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	for _, t := range cfg.Targets {
		var err error
		switch t {
		case TargetCredential:
			err = a.startCredential()
		case TargetAutomation:
			err = a.startAutomation(ctx)
		case TargetAgent:
			err = a.startAgent(ctx)
		case TargetVault:
			err = a.startVault(ctx)
		case TargetGateway:
			err = a.startGateway()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
	}
	ok = true
	return a, nil
}

// Errc reports a target that stopped serving.
func (a *App) Errc() <-chan error { return a.errc }

// Stop shuts every target down gracefully, in reverse start order.
func (a *App) Stop() {
	a.cancel()
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

func (a *App) onClose(f func()) { a.closers = append(a.closers, f) }

// dial connects to a sibling service, presenting the service credential
// (over mTLS when configured). addr may be a comma list of the service's
// replicas: calls are balanced over those that are up (round robin), and a
// replica that goes down is skipped until it is back.
func (a *App) dial(addr string) (*grpc.ClientConn, error) {
	var creds credentials.TransportCredentials = insecure.NewCredentials()
	if a.clientTLS != nil {
		creds = a.clientTLS
	}
	target, extra := replicaTarget(addr)
	return grpc.NewClient(target, append(extra, grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: a.svcToken, Secure: a.clientTLS != nil}),
		// Reconnect quickly after a sibling restarts (gRPC's default grows to 2 minutes).
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second,
		}, MinConnectTimeout: 5 * time.Second}))...)
}

// sibling is the channel to the sibling service at addr: in process when
// this process serves it (see inProcess), else conn (a.dial's connection),
// which also carries what is not served in process.
func (a *App) sibling(addr string, conn *grpc.ClientConn) grpc.ClientConnInterface {
	if a.inproc == nil {
		return conn
	}
	return a.inproc.conn(addr, conn, auth.ServiceCredentials{Token: a.svcToken})
}

// stores opens each service's store: a bbolt file in the data dir, or
// (-store=etcd) a prefix in the etcd cluster, shared by every replica.
func (a *App) stores() (store.Opener, error) {
	if a.cfg.Store != "etcd" {
		return boltstore.Dir(a.cfg.DataDir, a.lg, a.cfg.InitStores...), nil
	}
	if a.etcd == nil {
		cli, err := etcdstore.Dial(context.Background(), etcdstore.ClientConfig{
			Endpoints: a.cfg.EtcdEndpoints, CAFile: a.cfg.EtcdCAFile, CertFile: a.cfg.EtcdCertFile, KeyFile: a.cfg.EtcdKeyFile, Logger: a.lg,
		})
		if err != nil {
			return nil, err
		}
		a.etcd = cli
		a.onClose(func() { cli.Close() }) // after every store: closers run in reverse
	}
	return etcdstore.Opener(a.etcd, a.cfg.EtcdPrefix, etcdstore.Options{
		Logger: a.lg, MarkerDir: a.cfg.DataDir, Fingerprint: etcdstore.Fingerprint([]byte(a.svcToken)),
	}, a.cfg.InitStores...), nil
}

// forwardingToken is the credential the gateway presents so that services
// believe the client addresses it forwards: derived from the service token
// when this process holds it, else read from -forwarding-token-file, else
// derived from -service-token-file when that file exists (and the service
// token then forgotten: a gateway-only process never presents it).
func (a *App) forwardingToken() (string, error) {
	switch {
	case a.svcToken != "":
		return auth.ForwardingToken(a.svcToken), nil
	case a.cfg.ForwardingTokenFile != "":
		tok, err := auth.LoadForwardingToken(a.cfg.ForwardingTokenFile)
		if err != nil {
			return "", fmt.Errorf("-forwarding-token-file: %w", err)
		}
		return tok, nil
	}
	svc, err := auth.LoadOrCreateServiceToken(a.cfg.ServiceTokenFile, false)
	if err != nil {
		a.lg.Warn("the services will see the gateway's address as every client's (per-address limits and the audit trail lose the client): give the gateway -forwarding-token-file",
			zap.String("service-token-file", a.cfg.ServiceTokenFile), zap.Error(err))
		return "", nil
	}
	return auth.ForwardingToken(svc), nil
}

// serverOptions are the gRPC options every service's server shares.
func (a *App) serverOptions() []grpc.ServerOption {
	if a.serverTLS == nil {
		return nil
	}
	return []grpc.ServerOption{a.serverTLS}
}

// serve mounts svc (mount.New: the one wiring tests use too) and serves it
// on addr.
func (a *App) serve(name, addr string, svc mount.Service, authn auth.Authenticator) error {
	if addr == "" {
		return fmt.Errorf("-%s-addr lists several replicas: give this replica's own address with -%s-listen-addr", name, name)
	}
	if err := a.startAuditTrail(name, svc.DB()); err != nil {
		return err
	}
	srv := mount.New(svc, mount.Options{Name: name, Logger: a.lg, Auth: authn,
		ServiceToken: a.svcToken, ServerOptions: a.serverOptions()})
	// A service that knows it cannot serve (a sealed vault) says so in its
	// health before it serves.
	if h, ok := svc.(interface{ ReportHealth(*health.Server) }); ok {
		h.ReportHealth(srv.Health)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			a.errc <- fmt.Errorf("%s: %w", name, err)
		}
	}()
	if a.local != nil {
		ll := a.local.listen(addr, a.cfg.serviceAddr(name))
		go func() {
			if err := srv.Serve(ll); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				a.errc <- fmt.Errorf("%s (in-process): %w", name, err)
			}
		}()
	}
	stopLocal := func(time.Duration) {}
	if a.inproc != nil {
		stopLocal = a.inproc.serve(srv, svc.Register, addr, a.cfg.serviceAddr(name))
	}
	a.onClose(func() {
		var wg sync.WaitGroup
		wg.Go(func() { stopLocal(shutdownGrace) })
		srv.Stop(shutdownGrace)
		wg.Wait()
	})
	return nil
}

func (a *App) startCredential() error {
	peers := map[string]auditv1.AuditServiceClient{}
	var events credential.EventPublisher // rotations and revocations, as workspace events
	for name, addr := range map[string]string{TargetAutomation: a.cfg.AutomationAddr, TargetAgent: a.cfg.AgentAddr, TargetVault: a.cfg.VaultAddr} {
		conn, err := a.dial(addr)
		if err != nil {
			return err
		}
		a.onClose(func() { conn.Close() })
		peer := a.sibling(addr, conn)
		peers[name] = auditv1.NewAuditServiceClient(peer)
		if name == TargetVault {
			events = vaultv1.NewVaultInternalServiceClient(peer)
		}
	}
	opener, err := a.stores()
	if err != nil {
		return err
	}
	svc, err := credential.New(credential.Config{
		DataDir: a.cfg.DataDir, Store: opener, Logger: a.lg, DefaultTokenTTL: a.cfg.DefaultTokenTTL,
		MaxTokenTTL: a.cfg.MaxTokenTTL, AuditPeers: peers, Events: events,
	})
	if err != nil {
		return err
	}
	a.onClose(func() { svc.Close() })
	if err := a.serve(TargetCredential, a.cfg.CredentialListenAddr, svc, svc.Authenticator()); err != nil {
		return err
	}
	a.onClose(svc.EndWatches) // runs before the graceful stop, which would wait for them
	return nil
}

// remoteAuth dials the credential service and follows its revocations.
func (a *App) remoteAuth(ctx context.Context) (auth.Authenticator, credentialv1.CredentialInternalServiceClient, error) {
	conn, err := a.dial(a.cfg.CredentialAddr)
	if err != nil {
		return nil, nil, err
	}
	a.onClose(func() { conn.Close() })
	client := credentialv1.NewCredentialInternalServiceClient(a.sibling(a.cfg.CredentialAddr, conn))
	remote := auth.NewRemote(client, a.lg)
	// The credential service audits refused credentials with the end
	// client's address and request id, not this service's.
	remote.Forward = func(ctx context.Context) []string {
		return []string{clientip.MetadataKey, server.ClientIP(ctx), server.RequestIDKey, server.RequestID(ctx)}
	}
	// Each credential replica fans out the revocations made on it and waits
	// for its watchers: watch every replica on a connection of its own.
	if addrs := splitAddrs(a.cfg.CredentialAddr); len(addrs) > 1 {
		var watched []credentialv1.CredentialInternalServiceClient
		for _, addr := range addrs {
			c, err := a.dial(addr)
			if err != nil {
				return nil, nil, err
			}
			a.onClose(func() { c.Close() })
			watched = append(watched, credentialv1.NewCredentialInternalServiceClient(a.sibling(addr, c)))
		}
		remote.WatchReplicas(watched...)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); remote.Watch(ctx) }()
	a.onClose(wg.Wait)
	return remote, client, nil
}

func (a *App) startAutomation(ctx context.Context) error {
	authn, client, err := a.remoteAuth(ctx)
	if err != nil {
		return err
	}
	opener, err := a.stores()
	if err != nil {
		return err
	}
	svc, err := automation.New(automation.Config{DataDir: a.cfg.DataDir, Store: opener, Logger: a.lg, Credential: client, SweepOrphans: true})
	if err != nil {
		return err
	}
	a.onClose(func() { svc.Close() })
	return a.serve(TargetAutomation, a.cfg.AutomationListenAddr, svc, authn)
}

func (a *App) startAgent(ctx context.Context) error {
	authn, client, err := a.remoteAuth(ctx)
	if err != nil {
		return err
	}
	opener, err := a.stores()
	if err != nil {
		return err
	}
	svc, err := agent.New(agent.Config{DataDir: a.cfg.DataDir, Store: opener, Logger: a.lg, Credential: client, SweepOrphans: true})
	if err != nil {
		return err
	}
	a.onClose(func() { svc.Close() })
	return a.serve(TargetAgent, a.cfg.AgentListenAddr, svc, authn)
}

func (a *App) startVault(ctx context.Context) error {
	authn, _, err := a.remoteAuth(ctx)
	if err != nil {
		return err
	}
	opener, err := a.stores()
	if err != nil {
		return err
	}
	svc, err := vault.New(vault.Config{
		DataDir: a.cfg.DataDir, Store: opener, Logger: a.lg,
		KEKFile: a.cfg.VaultKEKFile, PreviousKEKFiles: a.cfg.VaultKEKPreviousFiles, KEKPKCS11: a.cfg.VaultKEKPKCS11,
		EgressCAFile: a.cfg.VaultEgressCAFile, EgressAllowPrivate: a.cfg.VaultEgressAllowPrivate,
		ServiceToken: a.svcToken, EgressMaxStepsPerWorkspace: a.cfg.VaultMaxStepsPerWorkspace,
		ReminderInterval: a.cfg.VaultReminderInterval, EventPoll: a.cfg.VaultEventPoll,
	})
	if err != nil {
		return err
	}
	a.onClose(func() { svc.Close() })
	return a.serve(TargetVault, a.cfg.VaultListenAddr, svc, authn)
}

func (a *App) startGateway() error {
	fwd, err := a.forwardingToken()
	if err != nil {
		return err
	}
	gw, err := gateway.New(gateway.Config{
		CredentialAddr: a.cfg.CredentialAddr, AutomationAddr: a.cfg.AutomationAddr,
		AgentAddr: a.cfg.AgentAddr, VaultAddr: a.cfg.VaultAddr,
		TrustedProxies: a.cfg.TrustedProxies, Logger: a.lg, TransportCredentials: a.clientTLS,
		MaxBodyBytes: a.cfg.HTTPMaxBodyBytes, MaxHeaderBytes: a.cfg.HTTPMaxHeaderBytes,
		ReadHeaderTimeout: a.cfg.HTTPReadHeaderTimeout, BodyTimeout: a.cfg.HTTPBodyTimeout, IdleTimeout: a.cfg.HTTPIdleTimeout,
		ForwardingToken: fwd, Dialer: a.local.dialer(), Channels: a.gatewayChannels(),
	})
	if err != nil {
		return err
	}
	hs := gw.Server()
	scheme := "http"
	if a.cfg.httpTLSConfigured() {
		if a.httpCert, err = newCertReloader(a.cfg.HTTPTLSCertFile, a.cfg.HTTPTLSKeyFile); err != nil {
			gw.Close()
			return err
		}
		hs.TLSConfig, hs.Handler, scheme = a.httpCert.tlsConfig(), hsts(hs.Handler), "https"
	}
	lis, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		gw.Close()
		return fmt.Errorf("listen %s: %w", a.cfg.HTTPAddr, err)
	}
	go func() {
		var err error
		if hs.TLSConfig != nil {
			err = hs.ServeTLS(lis, "", "") // the certificate comes from TLSConfig.GetCertificate
		} else {
			err = hs.Serve(lis)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.errc <- fmt.Errorf("gateway: %w", err)
		}
	}()
	a.lg.Info("serving", zap.String("service", TargetGateway), zap.String("addr", lis.Addr().String()), zap.String("scheme", scheme))
	a.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		hs.Shutdown(ctx)
		gw.Close()
	})
	return nil
}

// gatewayChannels are the gateway's channels to the services of this
// process (nil: it calls every service over its connection).
func (a *App) gatewayChannels() map[string]grpc.ClientConnInterface {
	if a.inproc == nil {
		return nil
	}
	chans := map[string]grpc.ClientConnInterface{}
	for _, t := range a.cfg.Targets {
		// A list of replicas stays balanced over the connection.
		if addr := a.cfg.serviceAddr(t); addr != "" && !strings.Contains(addr, ",") {
			// The gateway adds its own credential (the forwarding one).
			chans[t] = a.inproc.conn(addr, nil, nil)
		}
	}
	return chans
}

// startMetrics serves the process's Prometheus registry on -metrics-addr.
func (a *App) startMetrics() error {
	lis, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	reg := metrics.NewRegistry()
	reg.MustRegister(buildInfoMetric())
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(lis)
	a.onClose(func() { hs.Close() })
	return nil
}

// Has reports whether target is selected.
func (c Config) Has(target string) bool { return slices.Contains(c.Targets, target) }
