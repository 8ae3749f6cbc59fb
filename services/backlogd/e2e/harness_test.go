// Package e2e tests backlogd end to end: it builds the real binary once, starts
// real processes on free loopback ports with temp data dirs, waits for them to
// be healthy, and talks REST and gRPC to them as a user would. The processes
// are run by the shared harness, kit/proctest.
//
// Every scenario runs in two layouts: "all" (one process, -target=all) and
// "split" (one process per target, each with its own data dir). Every cluster,
// once stopped, is checked for leaks: no credential it issued may appear in
// the process logs (captured at debug level) or in any *.db file.
//
// Set BACKLOG_E2E_RACE=1 to build backlogd with -race as well (a race then
// fails the test: the process exits non-zero after SIGTERM).
package e2e

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/vault"
)

const (
	layoutAll   = "all"
	layoutSplit = "split"
	// layoutHA is 2 replicas of every service and 2 gateways, each its own
	// process, on a 3-member etcd cluster (-store=etcd) shared by the
	// package's tests, each under a prefix of its own; requests alternate
	// between the gateways.
	layoutHA = "ha"

	readyTimeout = 15 * time.Second
	stopTimeout  = 5 * time.Second
	// maxTokenTTL is passed as -max-token-ttl, so that the exchange tests
	// prove the flag is honoured (the built-in default is 24h).
	maxTokenTTL = 2 * time.Hour
)

var layouts = []string{layoutAll, layoutSplit, layoutHA}

// binary is the backlogd executable built by TestMain.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if testing.Short() {
		fmt.Fprintln(os.Stderr, "e2e: -short: skipping the end-to-end tests")
		return m.Run() // every test skips itself when binary == ""
	}
	root, err := proctest.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "backlogd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	var buildFlags []string
	if os.Getenv("BACKLOG_E2E_RACE") == "1" {
		buildFlags = append(buildFlags, "-race")
	}
	if binary, err = proctest.Build(context.Background(), root, dir, buildFlags...); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building backlogd:", err)
		return 1
	}
	defer func() {
		if sharedEtcd != nil {
			sharedEtcd.Close()
		}
	}()
	return m.Run()
}

// The HA layout's etcd cluster, started by the first test that needs it.
var (
	etcdOnce     sync.Once
	sharedEtcd   *proctest.EtcdCluster
	etcdErr      error
	etcdPrefixes atomic.Int64
)

func haEtcd(t testing.TB) *proctest.EtcdCluster {
	t.Helper()
	etcdOnce.Do(func() {
		root, err := proctest.RepoRoot()
		if err != nil {
			etcdErr = err
			return
		}
		bin, err := proctest.EtcdBinary(context.Background(), root)
		if err != nil {
			etcdErr = err
			return
		}
		dir, err := os.MkdirTemp("", "backlogd-e2e-etcd-")
		if err != nil {
			etcdErr = err
			return
		}
		sharedEtcd, etcdErr = proctest.StartEtcdCluster(context.Background(), proctest.EtcdConfig{Binary: bin, Dir: dir, Members: 3})
	})
	if etcdErr != nil {
		t.Fatalf("etcd for the HA layout: %v", etcdErr)
	}
	return sharedEtcd
}

// haRoundRobin sends each request to the next gateway in turn.
type haRoundRobin struct {
	c    *proctest.Cluster
	next atomic.Uint64
	base http.RoundTripper
}

func (r *haRoundRobin) RoundTrip(req *http.Request) (*http.Response, error) {
	gws := r.c.Addrs(proctest.TargetGateway)
	req = req.Clone(req.Context())
	u := *req.URL
	if u.Host == r.c.Addr(proctest.TargetGateway) && len(gws) > 1 {
		u.Host = gws[r.next.Add(1)%uint64(len(gws))]
		req.URL, req.Host = &u, u.Host
	}
	return r.base.RoundTrip(req)
}

// cluster is a running control plane in one layout, with what the leak
// check needs.
type cluster struct {
	*proctest.Cluster
	layout string

	// OperatorToken is read from the credential process's data dir.
	OperatorToken string
	// creds holds every raw credential the cluster handed out.
	creds *credSet
	// leaksChecked is set once checkLeaks ran (it runs on cleanup otherwise).
	leaksChecked bool

	http *http.Client
}

// startCluster starts backlogd in layout and registers its shutdown, leak
// check and (on failure) log dump with t.Cleanup.
func startCluster(t *testing.T, layout string, extra ...string) *cluster {
	t.Helper()
	if binary == "" {
		t.Skip("end-to-end tests need the backlogd binary (not built in -short mode)")
	}
	var l proctest.Layout
	var err error
	if layout == layoutHA {
		l = proctest.Replicas(2)
		extra = append([]string{"-store=etcd", "-etcd-endpoints=" + haEtcd(t).EndpointsFlag(),
			fmt.Sprintf("-etcd-prefix=/e2e-%d", etcdPrefixes.Add(1))}, extra...)
	} else if l, err = proctest.LayoutNamed(layout); err != nil {
		t.Fatal(err)
	}
	// A sealed vault is not ready: every cluster gets a key-encryption key
	// unless the test brings its own.
	if !slices.ContainsFunc(extra, func(f string) bool { return strings.HasPrefix(f, "-vault-kek-") }) {
		kek := filepath.Join(t.TempDir(), "vault.kek")
		if err := vault.GenerateKEKFile(kek); err != nil {
			t.Fatal(err)
		}
		extra = append([]string{"-vault-kek-file=" + kek}, extra...)
	}
	// The split layout's processes have separate data dirs, as on separate
	// hosts, so proctest gives them one -service-token-file (the first to
	// start creates it); the all layout uses <data-dir>/service-token.
	pc, err := proctest.NewCluster(proctest.Config{
		Binary: binary, Dir: t.TempDir(), Layout: l,
		Flags:        append([]string{"-max-token-ttl=" + maxTokenTTL.String()}, extra...),
		ReadyTimeout: readyTimeout, StopTimeout: stopTimeout, Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{Cluster: pc, layout: layout, creds: newCredSet(), http: &http.Client{Timeout: 10 * time.Second}}
	if layout == layoutHA {
		c.http.Transport = &haRoundRobin{c: pc, base: http.DefaultTransport}
	}
	t.Cleanup(func() {
		c.stop(t)
		if !c.leaksChecked {
			c.checkLeaks(t)
		}
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	c.start(t)
	if c.OperatorToken, err = c.ReadOperatorToken(); err != nil {
		t.Fatalf("reading the operator token: %v", err)
	}
	c.creds.add(c.OperatorToken)
	// The service credential must never leak either.
	svc, err := os.ReadFile(c.ServiceTokenPath())
	if err != nil {
		t.Fatalf("reading the service token: %v", err)
	}
	c.creds.add(strings.TrimSpace(string(svc)))
	return c
}

// start starts every process (on fresh ports if a port was taken) and waits
// until each is healthy.
func (c *cluster) start(t testing.TB) {
	t.Helper()
	if err := c.Start(context.Background()); err != nil {
		c.dumpLogs(t)
		t.Fatalf("starting the %s layout: %v", c.layout, err)
	}
}

// stop stops the processes in reverse start order and reports any that did
// not exit cleanly within stopTimeout of SIGTERM.
func (c *cluster) stop(t testing.TB) {
	t.Helper()
	if err := c.Stop(); err != nil {
		t.Errorf("stopping the %s layout: %v", c.layout, err)
	}
}

// restart stops every process and starts it again on the same data dirs
// and ports.
func (c *cluster) restart(t testing.TB) {
	t.Helper()
	c.stop(t)
	c.start(t)
}

// dbFiles returns the contents of every *.db file under the data dirs.
func (c *cluster) dbFiles(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(c.Dir(), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".db") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(c.Dir(), path)
			out[rel] = b
		}
		return nil
	})
	if err != nil {
		t.Errorf("reading the data dirs: %v", err)
	}
	if c.layout == layoutHA {
		// What etcd keeps on disk: every member's bbolt file and WAL.
		for _, m := range sharedEtcd.Members() {
			filepath.WalkDir(m.DataDir, func(path string, d fs.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					if b, err := os.ReadFile(path); err == nil {
						out["etcd:"+filepath.Base(m.DataDir)+"/"+filepath.Base(path)] = b
					}
				}
				return nil
			})
		}
	}
	return out
}

// checkLeaks asserts that no credential the cluster issued appears in any
// process log or *.db file, and that the logs hold no well-formed credential
// at all. Call it once the processes are stopped (the stores are flushed).
func (c *cluster) checkLeaks(t testing.TB) {
	t.Helper()
	c.leaksChecked = true
	for name, b := range c.Logs() {
		for _, what := range c.creds.findIn(b) {
			t.Errorf("%s layout: %s appears in the log of the %s process", c.layout, what, name)
		}
		for _, m := range credentialRE.FindAll(b, -1) {
			if wellFormed(string(m)) {
				t.Errorf("%s layout: a well-formed %s credential appears in the log of the %s process", c.layout, kindOf(string(m)), name)
			}
		}
	}
	for name, b := range c.dbFiles(t) {
		for _, what := range c.creds.findIn(b) {
			t.Errorf("%s layout: %s appears in %s", c.layout, what, name)
		}
	}
}

// dumpLogs prints the tail of every process's log (redacted) for a failed
// test.
func (c *cluster) dumpLogs(t testing.TB) {
	t.Helper()
	c.DumpLogs(t.Logf, c.creds.redact)
}

// forEachLayout runs f as a parallel subtest per layout, each with its own
// cluster.
func forEachLayout(t *testing.T, f func(t *testing.T, c *cluster)) {
	t.Helper()
	for _, layout := range layouts {
		t.Run(layout, func(t *testing.T) {
			t.Parallel()
			f(t, startCluster(t, layout))
		})
	}
}
