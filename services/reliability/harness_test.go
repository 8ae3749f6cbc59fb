package reliability

// The process harness: backlogd is built once in TestMain and started by the
// shared harness (kit/proctest) as real processes on free loopback ports
// with temp data dirs, in one of two layouts: "all" (one process,
// -target=all) and "split" (one process per target, each with its own data
// dir and the same -service-token-file).

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
)

const (
	layoutAll   = "all"
	layoutSplit = "split"
)

// binary is the backlogd executable built by TestMain ("" when fuzzing: the
// fuzz targets run in-process).
var binary string

// soak reports whether the long versions run (BACKLOG_SOAK=1, `make soak`).
func soak() bool { return os.Getenv("BACKLOG_SOAK") == "1" }

// requireSoak skips a soak-only test outside soak mode.
func requireSoak(t *testing.T) {
	t.Helper()
	if !soak() {
		t.Skip("soak only: set BACKLOG_SOAK=1 (make soak)")
	}
}

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run()) // fuzz targets build their stack in-process
	}
	os.Exit(runWithBinary(m))
}

func runWithBinary(m *testing.M) int {
	root, err := proctest.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "reliability-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if binary, err = proctest.Build(context.Background(), root, dir); err != nil {
		fmt.Fprintln(os.Stderr, "reliability: building backlogd:", err)
		return 1
	}
	return m.Run()
}

// cluster is a control plane in one layout.
type cluster struct {
	*proctest.Cluster
	layout string

	// kek is the vault's key-encryption key (in Dir()/vault.kek).
	kek []byte

	// OperatorToken is read from the credential process's data dir.
	OperatorToken string

	http *http.Client
	// onResponse, when set, sees every response the REST helpers receive.
	onResponse func(*reply)
}

// newCluster prepares (but does not start) a cluster in t.TempDir(). Every
// process runs at debug log level with the same -service-token-file and
// the vault's key-encryption key; extra flags are added to each.
func newCluster(t testing.TB, layout string, extra ...string) *cluster {
	t.Helper()
	if binary == "" {
		t.Skip("needs the backlogd binary (built by TestMain; not built when fuzzing)")
	}
	l, err := proctest.LayoutNamed(layout)
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	// The vault's key-encryption key: without one the vault is sealed.
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	kekFile := filepath.Join(base, "vault.kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	pc, err := proctest.NewCluster(proctest.Config{
		Binary: binary, Dir: base, Layout: l,
		ServiceTokenFile: filepath.Join(base, "service-token"),
		Flags:            append([]string{"-vault-kek-file=" + kekFile}, extra...),
		Logf:             t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		Cluster: pc, layout: layout, kek: kek,
		http: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second,
		}},
	}
	t.Cleanup(func() {
		c.stop(t)
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	return c
}

// startCluster prepares and starts a cluster and reads its operator token.
func startCluster(t testing.TB, layout string, extra ...string) *cluster {
	t.Helper()
	c := newCluster(t, layout, extra...)
	c.start(t)
	return c
}

// start starts every process (retrying on fresh ports if one was taken) and
// waits until each is ready. A restart keeps the ports when it can.
func (c *cluster) start(t testing.TB) {
	t.Helper()
	if err := c.Start(context.Background()); err != nil {
		c.dumpLogs(t)
		t.Fatalf("starting the %s layout: %v", c.layout, err)
	}
	tok, err := c.ReadOperatorToken()
	if err != nil {
		t.Fatalf("reading the operator token: %v", err)
	}
	c.OperatorToken = tok
}

// kill SIGKILLs every process (no graceful shutdown, no flush).
func (c *cluster) kill() {
	c.Kill()
	c.http.CloseIdleConnections()
}

// stop stops every process gracefully, in reverse start order.
func (c *cluster) stop(t testing.TB) {
	t.Helper()
	if err := c.Stop(); err != nil {
		t.Errorf("%s layout: %v", c.layout, err)
	}
	c.http.CloseIdleConnections()
}

// dbPaths lists every *.db file under the cluster's data dirs.
func (c *cluster) dbPaths(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(c.Dir(), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".db") {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking the data dirs: %v", err)
	}
	return out
}

// dbFile returns the path of a service's store ("credential" →
// …/credential.db), in either layout.
func (c *cluster) dbFile(service string) string {
	p := c.ProcFor(service)
	if p == nil {
		panic("no process for " + service)
	}
	return filepath.Join(p.DataDir, service+".db")
}

// dumpLogs prints the (redacted) tail of every process log.
func (c *cluster) dumpLogs(t testing.TB) {
	t.Helper()
	c.DumpLogs(t.Logf, redact)
}
