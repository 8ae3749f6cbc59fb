package app

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// auditWiring is what every service of the process shares for its audit
// trail: the digest signing key and the export sink.
type auditWiring struct {
	key   ed25519.PrivateKey
	sink  *audit.Sink
	https *audit.HTTPSink
}

// startAuditTrail runs, for the service name and its store, a Digester (a
// signed digest of the audit chain every -audit-digest-interval and at
// stop) and, with -audit-export-file and -audit-export-url, an Exporter
// each.
func (a *App) startAuditTrail(name string, db store.Backend) error {
	if a.auditw == nil {
		key, err := audit.LoadOrCreateSigningKey(a.cfg.AuditSigningKeyFile, true)
		if err != nil {
			return fmt.Errorf("-audit-signing-key-file: %w", err)
		}
		w := &auditWiring{key: key}
		if a.cfg.Store == "etcd" && a.cfg.AuditSigningKeyFile == filepath.Join(a.cfg.DataDir, audit.SigningKeyFile) {
			a.lg.Warn("each replica signs audit digests with the key in its own data dir: give every replica the same -audit-signing-key-file, or verify with all their public keys",
				zap.String("audit-signing-key-file", a.cfg.AuditSigningKeyFile), zap.String("key-id", audit.KeyID(key.Public().(ed25519.PublicKey))))
		}
		if a.cfg.AuditExportFile != "" {
			if w.sink, err = audit.OpenSink(a.cfg.AuditExportFile, a.cfg.AuditExportMaxBytes, audit.DefaultExportKeep); err != nil {
				return fmt.Errorf("-audit-export-file: %w", err)
			}
			a.onClose(func() { w.sink.Close() }) // after every exporter stopped
		}
		if a.cfg.AuditExportURL != "" {
			if w.https, err = audit.NewHTTPSink(a.cfg.AuditExportURL, key, a.cfg.AuditExportCAFile, 0); err != nil {
				return fmt.Errorf("-audit-export-url: %w", err)
			}
		}
		a.auditw = w
	}
	ctx, cancel := context.WithCancel(context.Background())
	lg := a.lg.With(zap.String("service", name))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		(&audit.Digester{DB: db, Service: name, Key: a.auditw.key, Interval: a.cfg.AuditDigestInterval, Logger: lg}).Run(ctx)
	}()
	if a.cfg.AuditRetention > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.pruneAudit(ctx, name, db, lg)
		}()
	}
	if a.auditw.sink != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			(&audit.Exporter{DB: db, Sink: a.auditw.sink, Logger: lg}).Run(ctx)
		}()
	}
	if a.auditw.https != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			(&audit.Exporter{DB: db, Sink: a.auditw.https, Name: "https", Logger: lg}).Run(ctx)
		}()
	}
	a.onClose(func() { cancel(); wg.Wait() })
	return nil
}

// AuditCommand runs `backlogd audit verify`: offline, over the stopped
// stores in -data-dir (or a backup directory), or over exported JSON lines
// (-export-file, comma list, oldest first). It writes one line per store
// and fails when any chain was tampered with.
func AuditCommand(sub string, args []string, out io.Writer) error {
	if sub != "verify" {
		return fmt.Errorf("backlogd audit: unknown command %q (want verify)", sub)
	}
	fs := flag.NewFlagSet("backlogd audit verify", flag.ContinueOnError)
	fs.SetOutput(out)
	dataDir := fs.String("data-dir", "", "directory of stopped stores (credential.db, …) or a backup")
	exports := fs.String("export-file", "", "verify exported JSON lines instead: comma list of files, e.g. audit.jsonl.2,audit.jsonl.1,audit.jsonl")
	keyFile := fs.String("audit-signing-key-file", "", "the audit signing key or its public key (audit-signing.key.pub); a comma list when replicas signed with keys of their own (default <data-dir>/audit-signing.key.pub, else <data-dir>/audit-signing.key)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *exports != "" {
		return verifyExports(strings.Split(*exports, ","), out)
	}
	if *dataDir == "" {
		return errors.New("backlogd audit verify: give -data-dir DIR (stopped stores or a backup) or -export-file FILE")
	}
	if fi, err := os.Stat(*dataDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("-data-dir %s: not a directory of stores", *dataDir)
	}
	pubs, err := verifyKeys(*dataDir, *keyFile)
	if err != nil {
		return err
	}
	tampered, found := 0, 0
	for _, name := range StoreNames {
		path := filepath.Join(*dataDir, name+".db")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		found++
		if err := boltstore.EnsureClosed(path); err != nil {
			return err
		}
		id, err := boltstore.ReadID(path)
		if err != nil {
			return err
		}
		rd, err := boltstore.OpenReader(path)
		if err != nil {
			return err
		}
		var r *audit.Report
		err = rd.View(func(tx store.ReadTx) error {
			var err error
			r, err = audit.VerifyStore(tx, name, id, pubs...)
			return err
		})
		rd.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		fmt.Fprintln(out, r)
		if !r.Intact() {
			tampered++
		}
	}
	if found == 0 {
		return fmt.Errorf("no store (credential.db, automation.db, agent.db, vault.db) in %s", *dataDir)
	}
	if tampered > 0 {
		return fmt.Errorf("audit trail TAMPERED in %d of %d stores", tampered, found)
	}
	fmt.Fprintf(out, "intact: %d stores\n", found)
	return nil
}

// verifyKeys loads the public keys digests are checked with.
func verifyKeys(dataDir, keyFiles string) ([]ed25519.PublicKey, error) {
	if keyFiles != "" {
		var out []ed25519.PublicKey
		for _, f := range strings.Split(keyFiles, ",") {
			pub, err := audit.LoadVerifyKey(strings.TrimSpace(f))
			if err != nil {
				return nil, err
			}
			out = append(out, pub)
		}
		return out, nil
	}
	def := filepath.Join(dataDir, audit.SigningKeyFile)
	if _, err := os.Stat(def + ".pub"); err == nil {
		pub, err := audit.LoadVerifyKey(def + ".pub")
		return []ed25519.PublicKey{pub}, err
	}
	pub, err := audit.LoadVerifyKey(def)
	if err != nil {
		return nil, fmt.Errorf("%w (give the key that signed the digests with -audit-signing-key-file)", err)
	}
	return []ed25519.PublicKey{pub}, nil
}

func verifyExports(files []string, out io.Writer) error {
	var readers []io.Reader
	for _, f := range files {
		f = strings.TrimSpace(f)
		fh, err := os.Open(f)
		if err != nil {
			return err
		}
		defer fh.Close()
		readers = append(readers, fh, strings.NewReader("\n"))
	}
	evs, err := audit.ReadExport(io.MultiReader(readers...))
	if err != nil {
		return err
	}
	tampered := 0
	reports := audit.VerifyExport(evs)
	for _, r := range reports {
		fmt.Fprintln(out, r)
		if !r.Intact() {
			tampered++
		}
	}
	if tampered > 0 {
		return fmt.Errorf("audit export TAMPERED for %d of %d services", tampered, len(reports))
	}
	fmt.Fprintf(out, "intact: %d lines, %d services\n", len(evs), len(reports))
	return nil
}

// auditPruneEvery is how often the leading replica prunes old audit events.
const auditPruneEvery = time.Hour

// pruneAudit removes audit events older than -audit-retention, on the one
// replica that leads the job, every auditPruneEvery (audit.Prune keeps the
// chain verifiable: a signed digest vouches for the first event kept).
func (a *App) pruneAudit(ctx context.Context, name string, db store.Backend, lg *zap.Logger) {
	lead := store.Leadership{DB: db, Job: "audit-retention", Logger: lg, Sole: db.Info().Engine == "bbolt"}
	lead.Run(ctx, func(ctx context.Context) {
		for ctx.Err() == nil {
			res, err := audit.Prune(ctx, db, name, a.auditw.key, time.Now().Add(-a.cfg.AuditRetention))
			switch {
			case err != nil && ctx.Err() == nil:
				lg.Error("audit retention: pruning failed", zap.Error(err))
			case err == nil && res.Events+res.Legacy > 0:
				lg.Info("audit retention: pruned old events", zap.Int("events", res.Events), zap.Int("legacy-events", res.Legacy), zap.Uint64("through", res.Through))
			}
			select {
			case <-ctx.Done():
			case <-time.After(auditPruneEvery):
			}
		}
	})
}
