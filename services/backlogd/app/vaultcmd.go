package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/vault"
)

// VaultCommand runs `backlogd vault gen-kek -out FILE` (a new key-encryption
// key, 0600, never overwriting; exists=true if it was there already) and
// `backlogd vault rotate-kek -new-kek-file FILE` (online: the running vault
// rewraps every data key under the new key).
func VaultCommand(ctx context.Context, sub string, args []string, getenv func(string) string) (string, error) {
	switch sub {
	case "gen-kek":
		_, out, err := parseWith("out", args, getenv)
		if err != nil {
			return "", err
		}
		if err := vault.GenerateKEKFile(out); errors.Is(err, fs.ErrExist) {
			return fmt.Sprintf("%s exists; left as it is", out), nil
		} else if err != nil {
			return "", err
		}
		return fmt.Sprintf("wrote a new key-encryption key to %s (mode 0600); start backlogd with -vault-kek-file %s", out, out), nil
	case "rotate-kek":
		cfg, file, err := parseWith("new-kek-file", args, getenv)
		if err != nil {
			return "", err
		}
		abs, err := filepath.Abs(file)
		if err != nil {
			return "", err
		}
		token, err := auth.LoadOrCreateServiceToken(cfg.ServiceTokenFile, false)
		if err != nil {
			return "", err
		}
		a := &App{svcToken: token}
		if a.serverTLS, a.clientTLS, err = cfg.loadTLS(); err != nil {
			return "", err
		}
		conn, err := a.dial(cfg.VaultAddr)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		resp, err := vaultv1.NewVaultInternalServiceClient(conn).RotateKek(ctx, &vaultv1.RotateKekRequest{KekFile: abs})
		if err != nil {
			return "", fmt.Errorf("vault at %s: %w", cfg.VaultAddr, err)
		}
		return fmt.Sprintf("rewrapped %d data keys under key %s (retired %v); restart the vault with -vault-kek-file %s",
			resp.GetDataKeysRewrapped(), resp.GetKekId(), resp.GetRetiredKekIds(), abs), nil
	}
	return "", fmt.Errorf("backlogd vault: unknown command %q (want gen-kek or rotate-kek)", sub)
}
