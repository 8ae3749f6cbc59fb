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
		if !hasFlag(args, "out") {
			cfg, err := ParseFlags("backlogd vault gen-kek", args, getenv)
			if err != nil {
				return "", err
			}
			if !cfg.VaultKEKPKCS11.Enabled() {
				return "", errors.New("-out PATH (a key file) or the -vault-kek-pkcs11-* flags (a key in a PKCS#11 token) are required")
			}
			return genPKCS11KEK(cfg.VaultKEKPKCS11)
		}
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
		newHSM, args, err := takePKCS11Flags(args)
		if err != nil {
			return "", err
		}
		var cfg Config
		req := &vaultv1.RotateKekRequest{}
		var abs string
		if newHSM.Key != "" {
			if hasFlag(args, "new-kek-file") {
				return "", errors.New("give -new-kek-file or -new-kek-pkcs11-key, not both")
			}
			if cfg, err = ParseFlags("backlogd vault rotate-kek", args, getenv); err != nil {
				return "", err
			}
			if req.Pkcs11, err = rotationTarget(newHSM, cfg.VaultKEKPKCS11); err != nil {
				return "", err
			}
		} else {
			var file string
			if cfg, file, err = parseWith("new-kek-file", args, getenv); err != nil {
				return "", err
			}
			if abs, err = filepath.Abs(file); err != nil {
				return "", err
			}
			req.KekFile = abs
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
		resp, err := vaultv1.NewVaultInternalServiceClient(conn).RotateKek(ctx, req)
		if err != nil {
			return "", fmt.Errorf("vault at %s: %w", cfg.VaultAddr, err)
		}
		if p := req.GetPkcs11(); p != nil {
			return fmt.Sprintf("rewrapped %d data keys under key %s (retired %v); every vault replica now uses it: restart each with -vault-kek-pkcs11-module %s -vault-kek-pkcs11-token %s -vault-kek-pkcs11-key %s -vault-kek-pkcs11-pin-file %s (and no -vault-kek-file)",
				resp.GetDataKeysRewrapped(), resp.GetKekId(), resp.GetRetiredKekIds(), p.GetModule(), p.GetToken(), p.GetKey(), p.GetPinFile()), nil
		}
		return fmt.Sprintf("rewrapped %d data keys under key %s (retired %v); every vault replica now uses it: restart each with -vault-kek-file %s",
			resp.GetDataKeysRewrapped(), resp.GetKekId(), resp.GetRetiredKekIds(), abs), nil
	}
	return "", fmt.Errorf("backlogd vault: unknown command %q (want gen-kek or rotate-kek)", sub)
}
