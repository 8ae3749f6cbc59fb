package app

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/vault"
)

// genPKCS11KEK runs `backlogd vault gen-kek -vault-kek-pkcs11-*`.
func genPKCS11KEK(c vault.PKCS11Config) (string, error) {
	id, existed, err := vault.GeneratePKCS11KEK(c)
	if err != nil {
		return "", err
	}
	if existed {
		return fmt.Sprintf("%s exists (id %s); left as it is", c, id), nil
	}
	return fmt.Sprintf("created a non-extractable AES-256 key-encryption key %q (id %s) in token %q; start backlogd with the same -vault-kek-pkcs11-* flags", c.Key, id, c.Token), nil
}

// hasFlag reports whether args set -name (or --name).
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// takePKCS11Flags removes -new-kek-pkcs11-{module,token,key,pin-file} from
// args: the key rotate-kek moves to.
func takePKCS11Flags(args []string) (vault.PKCS11Config, []string, error) {
	var c vault.PKCS11Config
	fields := map[string]*string{"new-kek-pkcs11-module": &c.Module, "new-kek-pkcs11-token": &c.Token, "new-kek-pkcs11-key": &c.Key, "new-kek-pkcs11-pin-file": &c.PINFile}
	rest := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		name, val, hasVal := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(args[i], "-"), "-"), "=")
		dst, ok := fields[name]
		if !ok || !strings.HasPrefix(args[i], "-") {
			rest = append(rest, args[i])
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return c, nil, fmt.Errorf("-%s needs a value", name)
			}
			val = args[i+1]
			i++
		}
		*dst = val
	}
	if c.Enabled() && c.Key == "" {
		return c, nil, errors.New("-new-kek-pkcs11-key LABEL is required to rotate to a PKCS#11 key")
	}
	return c, rest, nil
}

// rotationTarget completes the new token key's settings from the current
// ones (-vault-kek-pkcs11-*): a new label in the same token needs only
// -new-kek-pkcs11-key. Paths are made absolute (the vault reads them).
func rotationTarget(n, cur vault.PKCS11Config) (*vaultv1.Pkcs11Kek, error) {
	for _, f := range []struct {
		v    *string
		def  string
		flag string
	}{{&n.Module, cur.Module, "module"}, {&n.Token, cur.Token, "token"}, {&n.PINFile, cur.PINFile, "pin-file"}} {
		if *f.v == "" {
			*f.v = f.def
		}
		if *f.v == "" {
			return nil, fmt.Errorf("-new-kek-pkcs11-%s (or -vault-kek-pkcs11-%s) is required", f.flag, f.flag)
		}
	}
	pin, err := filepath.Abs(n.PINFile)
	if err != nil {
		return nil, err
	}
	mod := n.Module
	if !filepath.IsAbs(mod) {
		return nil, fmt.Errorf("-new-kek-pkcs11-module %s: must be an absolute path", mod)
	}
	return &vaultv1.Pkcs11Kek{Module: mod, Token: n.Token, Key: n.Key, PinFile: pin}, nil
}
