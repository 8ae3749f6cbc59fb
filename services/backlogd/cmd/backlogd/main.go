// Command backlogd runs the Backlog control plane: every service in one
// process (-target=all, each on its own gRPC listener) or any subset.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/backlogd/app"
	"github.com/backlog/controlplane/services/kit/logging"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "backlogd:", err)
		os.Exit(1)
	}
}

// gcPercent: the services keep little live heap (tens of MB with 100k
// records) and allocate per request; collecting at 4x the live heap instead
// of 2x halves GC work for a few more MB. GOGC, when set, wins.
const gcPercent = 400

func run(args []string) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if handled, err := app.Help(os.Stdout, args); handled {
		return err
	}
	if len(args) > 0 && args[0] == "version" {
		fmt.Println(app.Build())
		return nil
	}
	if len(args) > 0 && args[0] == "service-token" {
		if len(args) < 2 {
			return errors.New("usage: backlogd service-token create -out FILE")
		}
		msg, err := app.ServiceTokenCommand(args[1], args[2:])
		if err == nil {
			fmt.Println(msg)
		}
		return err
	}
	if len(args) > 0 && (args[0] == "backup" || args[0] == "restore") {
		return runBackup(args[0], args[1:])
	}
	if len(args) > 0 && args[0] == "forwarding-token" {
		tok, err := app.ForwardingTokenCommand(args[1:], os.Getenv)
		if err != nil {
			return err
		}
		fmt.Println(tok)
		return nil
	}
	if len(args) > 0 && args[0] == "audit" {
		if len(args) < 2 {
			return errors.New("usage: backlogd audit verify -data-dir DIR | backlogd audit verify -export-file FILE[,FILE…]")
		}
		return app.AuditCommand(args[1], args[2:], os.Stdout)
	}
	if len(args) > 0 && args[0] == "vault" {
		if len(args) < 2 {
			return errors.New("usage: backlogd vault gen-kek -out FILE | backlogd vault gen-kek -vault-kek-pkcs11-module M -vault-kek-pkcs11-token T -vault-kek-pkcs11-key K -vault-kek-pkcs11-pin-file F | backlogd vault rotate-kek -new-kek-file FILE | backlogd vault rotate-kek -new-kek-pkcs11-key K [-vault-kek-pkcs11-*]")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		msg, err := app.VaultCommand(ctx, args[1], args[2:], os.Getenv)
		if err == nil {
			fmt.Println(msg)
		}
		return err
	}
	cfg, err := app.ParseFlags("backlogd", args, os.Getenv)
	if err != nil {
		return err
	}
	lg, err := logging.New(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer lg.Sync()
	a, err := app.Start(cfg, lg)
	if err != nil {
		return err
	}
	lg.Info("backlogd started", zap.Strings("targets", cfg.Targets), zap.String("data-dir", cfg.DataDir), zap.String("version", app.Build().Version))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				// Renewed certificates, without a restart.
				if err := a.Reload(); err != nil {
					lg.Error("reload on SIGHUP failed; the previous certificate stays in use", zap.Error(err))
				} else {
					lg.Info("reloaded on SIGHUP")
				}
				continue
			}
			lg.Info("shutting down", zap.String("signal", s.String()))
			a.Stop()
			return nil
		case err := <-a.Errc():
			a.Stop()
			return err
		}
	}
}

// runBackup runs `backlogd backup -out DIR` (online, against running
// services) or `backlogd restore -from DIR` (offline, into -data-dir).
func runBackup(cmd string, args []string) error {
	cfg, dir, err := app.ParseBackupFlags(cmd, args, os.Getenv)
	if err != nil {
		return err
	}
	if cmd == "backup" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		m, err := app.Backup(ctx, cfg, dir)
		if err != nil {
			return err
		}
		for name, n := range m.Stores {
			fmt.Printf("backed up %s (%d bytes) to %s\n", name, n, dir)
		}
		fmt.Println("key files (credential.key, the vault key-encryption key, service-token) are not in the backup: keep copies of them apart")
		return nil
	}
	if cfg.Store == "etcd" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		restored, err := app.RestoreEtcd(ctx, dir, cfg)
		for _, name := range restored {
			fmt.Printf("restored %s into etcd under %s\n", name, cfg.EtcdPrefix)
		}
		return err
	}
	restored, err := app.Restore(dir, cfg.DataDir)
	for _, name := range restored {
		fmt.Printf("restored %s into %s\n", name, cfg.DataDir)
	}
	return err
}
