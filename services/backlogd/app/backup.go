package app

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	adminv1 "github.com/backlog/controlplane/gen/go/backlog/admin/v1"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

// StoreTargets are the services that own a store, with their address flag.
func (c Config) storeAddrs() []struct{ name, addr string } {
	return []struct{ name, addr string }{
		{TargetCredential, c.CredentialAddr}, {TargetAutomation, c.AutomationAddr},
		{TargetAgent, c.AgentAddr}, {TargetVault, c.VaultAddr},
	}
}

// Manifest describes a backup directory (MANIFEST.json).
type Manifest struct {
	Time   time.Time        `json:"time"`
	Stores map[string]int64 `json:"stores"` // file → bytes
	// SHA256 is each file's SHA-256 (hex); restore refuses a file that
	// does not match. (Backups made before checksums have none.)
	SHA256 map[string]string `json:"sha256,omitempty"`
}

// Backup takes an online snapshot of every store through the running
// services' AdminService and writes them to out, each checked with bbolt's
// consistency check before it is kept. Key files (credential.key, the vault
// key-encryption key, service-token, operator-token) are not in the snapshot:
// back them up with your secret management.
func Backup(ctx context.Context, cfg Config, out string) (*Manifest, error) {
	token, err := auth.LoadOrCreateServiceToken(cfg.ServiceTokenFile, false)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return nil, err
	}
	a := &App{svcToken: token}
	if a.serverTLS, a.clientTLS, err = cfg.loadTLS(); err != nil {
		return nil, err
	}
	m := &Manifest{Time: time.Now().UTC(), Stores: map[string]int64{}, SHA256: map[string]string{}}
	for _, s := range cfg.storeAddrs() {
		conn, err := a.dial(s.addr)
		if err != nil {
			return nil, err
		}
		name, n, sum, err := snapshotTo(ctx, adminv1.NewAdminServiceClient(conn), out)
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("%s service at %s: %w", s.name, s.addr, err)
		}
		m.Stores[name], m.SHA256[name] = n, sum
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	return m, writeAtomic(filepath.Join(out, "MANIFEST.json"), func(w io.Writer) error { _, err := w.Write(b); return err })
}

// snapshotTo writes one store's snapshot into dir and returns its file
// name, size and SHA-256 (hex).
func snapshotTo(ctx context.Context, c adminv1.AdminServiceClient, dir string) (string, int64, string, error) {
	stream, err := c.Snapshot(ctx, &adminv1.SnapshotRequest{})
	if err != nil {
		return "", 0, "", err
	}
	first, err := stream.Recv()
	if err != nil {
		return "", 0, "", err
	}
	name := filepath.Base(first.GetStore())
	if name == "." || name == "/" || filepath.Ext(name) != ".db" {
		return "", 0, "", fmt.Errorf("snapshot names an odd store %q", first.GetStore())
	}
	var n int64
	h := sha256.New()
	err = writeAtomic(filepath.Join(dir, name), func(f io.Writer) error {
		w := io.MultiWriter(f, h)
		msg := first
		for {
			k, err := w.Write(msg.GetChunk())
			n += int64(k)
			if err != nil {
				return err
			}
			if msg, err = stream.Recv(); err == io.EOF {
				break
			} else if err != nil {
				return err
			}
		}
		if n != first.GetSize() {
			return fmt.Errorf("snapshot of %s truncated: %d of %d bytes", name, n, first.GetSize())
		}
		return nil
	}, checkBolt)
	return name, n, hex.EncodeToString(h.Sum(nil)), err
}

// fileSHA256 is the SHA-256 (hex) of the file at path.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkSum returns a check that the file at a path has the SHA-256 want.
func checkSum(name, want string) func(string) error {
	return func(path string) error {
		got, err := fileSHA256(path)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			return fmt.Errorf("%s does not match the backup's MANIFEST.json: SHA-256 %s, the manifest says %s (the file is damaged or not the one backed up)", name, got, want)
		}
		return nil
	}
}

// writeAtomic writes path through a temp file (mode 0600), runs checks on
// the temp file, and renames it into place only if all pass.
func writeAtomic(path string, write func(io.Writer) error, checks ...func(string) error) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	for _, check := range checks {
		if err == nil {
			err = check(tmp)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// checkBolt runs bbolt's consistency check on a file no one else has open.
func checkBolt(path string) error {
	if err := boltstore.Check(path); err != nil {
		return fmt.Errorf("%s fails the consistency check: %w", filepath.Base(path), err)
	}
	return nil
}

// Restore puts a backup back into dataDir. backlogd must be stopped: a store
// still open by a running process is refused.
func Restore(from, dataDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(from, "MANIFEST.json"))
	if err != nil {
		return nil, fmt.Errorf("%s is not a backup (no MANIFEST.json): %w", from, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("MANIFEST.json: %w", err)
	}
	if m.SHA256 == nil {
		fmt.Fprintf(os.Stderr, "warning: %s has no checksums (a backup made before they were added): only bbolt's consistency check is run\n", filepath.Join(from, "MANIFEST.json"))
	}
	for name := range m.Stores {
		if m.SHA256 != nil {
			want, ok := m.SHA256[name]
			if !ok {
				return nil, fmt.Errorf("MANIFEST.json has no SHA-256 for %s: refusing to restore it", name)
			}
			if err := checkSum(name, want)(filepath.Join(from, filepath.Base(name))); err != nil {
				return nil, err
			}
		}
		if err := checkBolt(filepath.Join(from, filepath.Base(name))); err != nil {
			return nil, err
		}
		if err := boltstore.EnsureClosed(filepath.Join(dataDir, filepath.Base(name))); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	var restored []string
	for name := range m.Stores {
		name = filepath.Base(name)
		src, err := os.Open(filepath.Join(from, name))
		if err != nil {
			return restored, err
		}
		dst := filepath.Join(dataDir, name)
		var checks []func(string) error
		if m.SHA256 != nil { // the copy too, before it takes the store's place
			checks = append(checks, checkSum(name, m.SHA256[name]))
		}
		err = writeAtomic(dst, func(w io.Writer) error { _, err := io.Copy(w, src); return err }, checks...)
		src.Close()
		if err != nil {
			return restored, err
		}
		// The store's marker names the restored file's id, so that start-up
		// takes it as this store's own.
		id, err := boltstore.ReadID(dst)
		if err != nil {
			return restored, err
		}
		marker := boltstore.MarkerPath(dst)
		if id == "" {
			err = os.Remove(marker) // a store from before ids: start-up gives it one
			if errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		} else {
			err = writeAtomic(marker, func(w io.Writer) error { _, err := io.WriteString(w, id+"\n"); return err })
		}
		if err != nil {
			return restored, err
		}
		restored = append(restored, name)
	}
	return restored, nil
}

// ParseBackupFlags parses `backlogd backup` / `backlogd restore` arguments:
// the server flags plus -out (backup) or -from (restore).
func ParseBackupFlags(cmd string, args []string, getenv func(string) string) (Config, string, error) {
	return parseWith(map[string]string{"backup": "out", "restore": "from"}[cmd], args, getenv)
}

// parseWith parses the server flags plus one required -want PATH flag.
func parseWith(want string, args []string, getenv func(string) string) (Config, string, error) {
	var dir string
	rest := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-"+want || a == "--"+want {
			if i+1 >= len(args) {
				return Config{}, "", fmt.Errorf("-%s needs a path", want)
			}
			dir = args[i+1]
			i++
			continue
		}
		if len(a) > len(want)+2 && (a[:len(want)+2] == "-"+want+"=") {
			dir = a[len(want)+2:]
			continue
		}
		rest = append(rest, a)
	}
	if dir == "" {
		return Config{}, "", fmt.Errorf("-%s PATH is required", want)
	}
	cfg, err := ParseFlags("backlogd", rest, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return cfg, "", err
	}
	return cfg, dir, err
}
