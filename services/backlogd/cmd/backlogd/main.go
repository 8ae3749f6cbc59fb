// Command backlogd runs the Backlog control plane: every service in one
// process (-target=all, each on its own gRPC listener) or any subset.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

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

func run(args []string) error {
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
	lg.Info("backlogd started", zap.Strings("targets", cfg.Targets), zap.String("data-dir", cfg.DataDir))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		lg.Info("shutting down", zap.String("signal", s.String()))
		a.Stop()
		return nil
	case err := <-a.Errc():
		a.Stop()
		return err
	}
}
