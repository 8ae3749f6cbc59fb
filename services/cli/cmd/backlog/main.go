// Command backlog is the Backlog control plane's CLI. See `backlog --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/backlog/controlplane/services/cli/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.SystemEnv())
	stop()
	os.Exit(code)
}
