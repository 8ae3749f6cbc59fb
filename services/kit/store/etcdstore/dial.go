package etcdstore

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/backlog/controlplane/services/kit/store"
)

// ClientConfig is how a process reaches its etcd cluster.
type ClientConfig struct {
	Endpoints                 []string
	CAFile, CertFile, KeyFile string // TLS to etcd (all optional; CAFile turns TLS on)
	Logger                    *zap.Logger
	DialTimeout               time.Duration // default 5 s
}

// Dial connects to the cluster and checks, with a linearizable read, that it
// answers with a leader: an unreachable cluster stops start-up with an error
// that names the endpoints.
func Dial(ctx context.Context, cfg ClientConfig) (*clientv3.Client, error) {
	eps := strings.Join(cfg.Endpoints, ",")
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("-store=etcd needs -etcd-endpoints (a comma list such as 127.0.0.1:2379)")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	lg := cfg.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	// The client logs every retry at info; keep warnings and up.
	lg = lg.Named("etcd").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
	var tlsCfg *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("-etcd-ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("-etcd-ca-file %s holds no PEM certificate", cfg.CAFile)
			}
			tlsCfg.RootCAs = pool
		}
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("-etcd-cert-file/-etcd-key-file: %w", err)
			}
			tlsCfg.Certificates = []tls.Certificate{cert}
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Logger:               lg,
		RejectOldCluster:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", eps, err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(clientv3.WithRequireLeader(pctx), "/", clientv3.WithKeysOnly(), clientv3.WithLimit(1)); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd at %s is unreachable or has no leader: %v (is the cluster running? check -etcd-endpoints and the -etcd-*-file TLS flags)", eps, err)
	}
	return cli, nil
}

// Fingerprint is a deployment's identity derived from a key every process
// of it shares (the service token): one-way, so it reveals nothing.
func Fingerprint(sharedKey []byte) string {
	h := sha256.Sum256(append([]byte("backlog deployment fingerprint v1\x00"), sharedKey...))
	return hex.EncodeToString(h[:12])
}

// Opener opens each store under prefix, keeping markers in markerDir;
// initStores names stores that Options.Init applies to.
func Opener(cli *clientv3.Client, prefix string, opts Options, initStores ...string) store.Opener {
	return func(name string, buckets []store.Bucket) (store.Backend, error) {
		o := opts
		for _, n := range initStores {
			if n == name {
				o.Init = true
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return Open(ctx, cli, prefix, name, buckets, o)
	}
}
