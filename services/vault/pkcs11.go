package vault

// Key-encryption keys kept in a PKCS#11 token (an HSM, or SoftHSM).
//
// The key is an AES-256 secret key with CKA_SENSITIVE and not
// CKA_EXTRACTABLE: its bytes never leave the token. Data keys are wrapped
// and unwrapped by the token itself, with CKM_AES_GCM, in the same blob
// format and with the same AAD as a file key's (see crypto.go): only the
// kek id differs in how it is made. A token key's id is the first 8 bytes
// of SHA-256("backlog vault pkcs11 kek id v1" 0x00 | GMAC), where GMAC is
// the tag the token computes over the AAD "backlog vault kek id v1" with an
// all-zero nonce and no plaintext: it names the key material, not its label,
// so a different key under the same label is told apart.

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/ThalesGroup/crypto11"

	vaultv1 "github.com/backlog/controlplane/gen/go/backlog/vault/v1"
	"github.com/backlog/controlplane/services/kit/errs"
)

// PKCS11Config names a key-encryption key in a PKCS#11 token.
type PKCS11Config struct {
	// Module is the path of the PKCS#11 library (e.g.
	// /usr/lib/softhsm/libsofthsm2.so).
	Module string
	// Token is the token's label.
	Token string
	// Key is the key's label (CKA_LABEL).
	Key string
	// PINFile holds the token's user PIN (mode 0600 or 0400; surrounding
	// whitespace ignored).
	PINFile string
}

// Enabled reports whether any field is set.
func (c PKCS11Config) Enabled() bool {
	return c.Module != "" || c.Token != "" || c.Key != "" || c.PINFile != ""
}

func (c PKCS11Config) String() string {
	return fmt.Sprintf("PKCS#11 key %q in token %q (module %s)", c.Key, c.Token, c.Module)
}

// check names the first missing setting.
func (c PKCS11Config) check() error {
	for _, f := range []struct{ v, flag string }{
		{c.Module, "-vault-kek-pkcs11-module"}, {c.Token, "-vault-kek-pkcs11-token"},
		{c.Key, "-vault-kek-pkcs11-key"}, {c.PINFile, "-vault-kek-pkcs11-pin-file"},
	} {
		if f.v == "" {
			return fmt.Errorf("a PKCS#11 key-encryption key needs %s", f.flag)
		}
	}
	if !filepath.IsAbs(c.Module) {
		return fmt.Errorf("-vault-kek-pkcs11-module %s: must be an absolute path", c.Module)
	}
	return checkModule(c.Module)
}

// checkModule refuses a PKCS#11 module that someone other than root (or
// the vault's own user) could have put there: the vault loads it into its
// process, and a rotation names it over the internal API.
func checkModule(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("PKCS#11 module: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("PKCS#11 module %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("PKCS#11 module %s has mode %04o: it must not be writable by its group or others", path, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("PKCS#11 module %s belongs to uid %d: it must belong to root or to the vault's user", path, st.Uid)
	}
	return nil
}

const maxPINFile = 1024

// readPIN reads a PIN file with the same rules as a key file.
func readPIN(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("PKCS#11 PIN file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("PKCS#11 PIN file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("PKCS#11 PIN file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o037 != 0 {
		return "", fmt.Errorf("PKCS#11 PIN file %s has mode %04o: it must not be writable by its group nor accessible to others (chmod 600 %s)", path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return "", fmt.Errorf("PKCS#11 PIN file: %w", err)
	}
	pin := strings.TrimSpace(string(b))
	if pin == "" || len(b) > maxPINFile {
		return "", fmt.Errorf("PKCS#11 PIN file %s: want one PIN", path)
	}
	return pin, nil
}

// pkcs11Contexts shares one crypto11 context per (module, token, PIN file):
// a token's sessions are a per-process resource.
var pkcs11Contexts = struct {
	sync.Mutex
	m map[string]*sharedContext
}{m: map[string]*sharedContext{}}

type sharedContext struct {
	ctx  *crypto11.Context
	refs int
}

func openToken(c PKCS11Config) (*crypto11.Context, func(), error) {
	if err := c.check(); err != nil {
		return nil, nil, err
	}
	id := c.Module + "\x00" + c.Token + "\x00" + c.PINFile
	pkcs11Contexts.Lock()
	defer pkcs11Contexts.Unlock()
	sc := pkcs11Contexts.m[id]
	if sc == nil {
		pin, err := readPIN(c.PINFile)
		if err != nil {
			return nil, nil, err
		}
		ctx, err := crypto11.Configure(&crypto11.Config{Path: c.Module, TokenLabel: c.Token, Pin: pin, GCMIVLength: nonceLen})
		if err != nil {
			// crypto11's errors name the module, token and PKCS#11 code,
			// never the PIN.
			return nil, nil, fmt.Errorf("PKCS#11 token %q (module %s): %w", c.Token, c.Module, err)
		}
		sc = &sharedContext{ctx: ctx}
		pkcs11Contexts.m[id] = sc
	}
	sc.refs++
	var once sync.Once
	release := func() {
		once.Do(func() {
			pkcs11Contexts.Lock()
			defer pkcs11Contexts.Unlock()
			if sc.refs--; sc.refs == 0 {
				sc.ctx.Close()
				delete(pkcs11Contexts.m, id)
			}
		})
	}
	return sc.ctx, release, nil
}

func findKey(ctx *crypto11.Context, c PKCS11Config) (*crypto11.SecretKey, error) {
	keys, err := ctx.FindKeys(nil, []byte(c.Key))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	switch len(keys) {
	case 0:
		return nil, fmt.Errorf("%s: no such key (create it with backlogd vault gen-kek and the same -vault-kek-pkcs11-* flags)", c)
	case 1:
		return keys[0], nil
	}
	return nil, fmt.Errorf("%s: %d keys have that label; give the key-encryption key a label of its own", c, len(keys))
}

// loadPKCS11KEK opens the token and finds the key: the loaded kek wraps and
// unwraps inside the token.
func loadPKCS11KEK(c PKCS11Config) (*kek, error) {
	ctx, release, err := openToken(c)
	if err != nil {
		return nil, err
	}
	k, err := pkcs11KEK(ctx, c)
	if err != nil {
		release()
		return nil, err
	}
	k.release = release
	return k, nil
}

func pkcs11KEK(ctx *crypto11.Context, c PKCS11Config) (*kek, error) {
	key, err := findKey(ctx, c)
	if err != nil {
		return nil, err
	}
	aead, err := key.NewGCM()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	k := &kek{aead: aead, source: c.String()}
	tag, err := k.seal(nil, make([]byte, nonceLen), nil, []byte("backlog vault kek id v1"))
	if err != nil {
		return nil, fmt.Errorf("%s: the token cannot encrypt with it (CKM_AES_GCM): %w", c, err)
	}
	sum := sha256.Sum256(append([]byte("backlog vault pkcs11 kek id v1\x00"), tag...))
	copy(k.id[:], sum[:])
	return k, nil
}

// GeneratePKCS11KEK creates a non-extractable AES-256 key labelled c.Key in
// the token and returns its id. If a key of that label exists it is left
// as it is and existed is true.
func GeneratePKCS11KEK(c PKCS11Config) (id string, existed bool, err error) {
	ctx, release, err := openToken(c)
	if err != nil {
		return "", false, err
	}
	defer release()
	keys, err := ctx.FindKeys(nil, []byte(c.Key))
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", c, err)
	}
	if len(keys) == 0 {
		cka := make([]byte, 16)
		if _, err := rand.Read(cka); err != nil {
			return "", false, err
		}
		if _, err := ctx.GenerateSecretKeyWithLabel(cka, []byte(c.Key), 256, crypto11.CipherAES); err != nil {
			return "", false, fmt.Errorf("%s: generate: %w", c, err)
		}
	}
	k, err := pkcs11KEK(ctx, c)
	if err != nil {
		return "", false, err
	}
	return k.id.String(), len(keys) > 0, nil
}

// KEKSource says where a key-encryption key is: a file, or a PKCS#11 token.
type KEKSource struct {
	File   string
	PKCS11 PKCS11Config
}

func (s KEKSource) load() (*kek, error) {
	if s.File != "" && s.PKCS11.Enabled() {
		return nil, errors.New("give a key-encryption key file or a PKCS#11 key, not both")
	}
	if s.PKCS11.Enabled() {
		return loadPKCS11KEK(s.PKCS11)
	}
	if s.File == "" {
		return nil, errors.New("no key-encryption key given")
	}
	raw, err := LoadKEKFile(s.File)
	if err != nil {
		return nil, err
	}
	k, err := newKEK(raw)
	clear(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.File, err)
	}
	k.source = "file " + s.File
	return k, nil
}

// loadKeyring loads the configured key-encryption keys: the current one (a
// file or a token key) and the previous files. None: the vault is sealed.
func loadKeyring(cfg Config) (*keyring, error) {
	keys := newKeyring()
	if cfg.KEKFile == "" && !cfg.KEKPKCS11.Enabled() {
		if len(cfg.PreviousKEKFiles) > 0 {
			return nil, errors.New("vault: previous key-encryption keys need a current one (-vault-kek-file or -vault-kek-pkcs11-*)")
		}
		return keys, nil
	}
	cur, err := KEKSource{File: cfg.KEKFile, PKCS11: cfg.KEKPKCS11}.load()
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	keys.add(cur, true)
	for _, path := range cfg.PreviousKEKFiles {
		k, err := KEKSource{File: path}.load()
		if err != nil {
			keys.close()
			return nil, fmt.Errorf("vault: %w", err)
		}
		keys.add(k, false)
	}
	return keys, nil
}

// kekSourceOf reads the new key of a RotateKek request.
func kekSourceOf(req *vaultv1.RotateKekRequest) (KEKSource, error) {
	p := req.GetPkcs11()
	if p == nil {
		path := req.GetKekFile()
		if path == "" || !filepath.IsAbs(path) {
			return KEKSource{}, errs.Invalid("kekFile", "must be an absolute path on the vault's host")
		}
		return KEKSource{File: path}, nil
	}
	if req.GetKekFile() != "" {
		return KEKSource{}, errs.Invalid("kekFile", "give kekFile or pkcs11, not both")
	}
	c := PKCS11Config{Module: p.GetModule(), Token: p.GetToken(), Key: p.GetKey(), PINFile: p.GetPinFile()}
	for _, f := range []struct{ v, name string }{{c.Module, "pkcs11.module"}, {c.Token, "pkcs11.token"}, {c.Key, "pkcs11.key"}, {c.PINFile, "pkcs11.pinFile"}} {
		if f.v == "" {
			return KEKSource{}, errs.Invalid(f.name, "is required")
		}
	}
	if !filepath.IsAbs(c.Module) || !filepath.IsAbs(c.PINFile) {
		return KEKSource{}, errs.Invalid("pkcs11", "module and pinFile must be absolute paths on the vault's host")
	}
	return KEKSource{PKCS11: c}, nil
}
