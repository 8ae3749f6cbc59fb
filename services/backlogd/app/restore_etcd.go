package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
)

// RestoreEtcd loads a backup (`backlogd backup`, from either engine) into
// the etcd cluster of cfg (-store=etcd), each store under
// <-etcd-prefix>/<service>/ that must not exist yet. Every file is checked
// against the manifest's SHA-256 and bbolt's consistency check before
// anything is written; a store whose load fails is removed again.
func RestoreEtcd(ctx context.Context, from string, cfg Config) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(from, "MANIFEST.json"))
	if err != nil {
		return nil, fmt.Errorf("%s is not a backup (no MANIFEST.json): %w", from, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("MANIFEST.json: %w", err)
	}
	var names []string
	for name := range m.Stores {
		names = append(names, filepath.Base(name))
	}
	sort.Strings(names)
	for _, name := range names {
		if m.SHA256 != nil {
			want, ok := m.SHA256[name]
			if !ok {
				return nil, fmt.Errorf("MANIFEST.json has no SHA-256 for %s: refusing to restore it", name)
			}
			if err := checkSum(name, want)(filepath.Join(from, name)); err != nil {
				return nil, err
			}
		}
		if err := checkBolt(filepath.Join(from, name)); err != nil {
			return nil, err
		}
	}
	tok, err := auth.LoadOrCreateServiceToken(cfg.ServiceTokenFile, false)
	if err != nil {
		return nil, fmt.Errorf("-service-token-file (the deployment's, which the etcd prefix is tied to): %w", err)
	}
	cli, err := etcdstore.Dial(ctx, etcdstore.ClientConfig{Endpoints: cfg.EtcdEndpoints, CAFile: cfg.EtcdCAFile, CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	var restored []string
	for _, name := range names {
		store := strings.TrimSuffix(name, ".db")
		n, err := etcdstore.Restore(ctx, cli, cfg.EtcdPrefix, store, filepath.Join(from, name), etcdstore.Options{
			MarkerDir: cfg.DataDir, Fingerprint: etcdstore.Fingerprint([]byte(tok)),
		})
		if err != nil {
			return restored, err
		}
		restored = append(restored, fmt.Sprintf("%s (%d keys)", store, n))
	}
	return restored, nil
}
