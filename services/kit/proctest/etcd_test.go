package proctest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A real 3-member etcd (tools/bin/etcd): writes through the client, the
// leader SIGKILLed, a new leader elected among the two left, writes go on,
// and the killed member restarts on its data dir and catches up.
func TestEtcdClusterFailover(t *testing.T) {
	t.Parallel()
	c := NewEtcdCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if got := c.Endpoints(); len(got) != 3 || !strings.HasPrefix(got[0], "127.0.0.1:") || c.EndpointsFlag() != strings.Join(got, ",") {
		t.Fatalf("Endpoints %q, flag %q", got, c.EndpointsFlag())
	}
	if got := strings.Join(c.StoreFlags("/t"), " "); got != "-store=etcd -etcd-endpoints="+c.EndpointsFlag()+" -etcd-prefix=/t" {
		t.Errorf("StoreFlags: %s", got)
	}
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, "/proctest/a", "1"); err != nil {
		t.Fatal(err)
	}
	if resp, err := cl.Get(ctx, "/proctest/a"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "1" {
		t.Fatalf("Get after Put: %v, %v", resp, err)
	}

	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(leader)
	if c.Members()[leader].Running() {
		t.Fatal("killed leader still running")
	}
	next, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("leader %d killed, yet it is named leader again", leader)
	}
	// Writes go on on the two members left (the client fails over, and
	// retries an election's unavailability itself).
	if _, err := cl.Put(ctx, "/proctest/b", "2"); err != nil {
		t.Fatalf("Put with the old leader down: %v", err)
	}

	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	// The restarted member serves both keys itself: a client of it alone.
	one, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Members()[leader].ClientAddr}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	for k, want := range map[string]string{"/proctest/a": "1", "/proctest/b": "2"} {
		resp, err := one.Get(ctx, k)
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
			t.Errorf("restarted member: Get %s = %v, %v; want %s", k, resp, err, want)
		}
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}

	// Stop is graceful and reported clean; a second Stop is a no-op.
	if err := c.Stop(next); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := c.Stop(next); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Errorf("two of three members left, no leader: %v", err)
	}
	if err := c.Restart(ctx, next); err != nil {
		t.Fatal(err)
	}
}

// A quorum lost: no leader is reported, and a write does not succeed; a
// member back restores the quorum.
func TestEtcdClusterQuorumLoss(t *testing.T) {
	t.Parallel()
	c := NewEtcdCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	c.Kill(0)
	c.Kill(1)
	// A leader left alone steps down within an election timeout (etcd's
	// check-quorum); from then on none is reported.
	deadline := time.Now().Add(5 * time.Second)
	for {
		i, err := c.Leader(ctx)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("one member of three left, still leader %d after 5s", i)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%s: no leader", time.Since(start))
	cl, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, time.Second)
	if _, err := cl.Put(pctx, "/proctest/x", "1"); err == nil {
		t.Error("a write succeeded without a quorum")
	}
	pcancel()
	t.Logf("%s: write refused", time.Since(start))
	if err := c.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: restarted", time.Since(start))
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, "/proctest/x", "2"); err != nil {
		t.Errorf("Put with the quorum back: %v", err)
	}
}

// A cluster that cannot start is reported with the member's own words.
func TestEtcdClusterStartFailureIsReported(t *testing.T) {
	t.Parallel()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := EtcdBinary(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	_, err = StartEtcdCluster(context.Background(), EtcdConfig{Binary: bin, Dir: t.TempDir(), Members: 1, Flags: []string{"--no-such-flag"}})
	if err == nil || !strings.Contains(err.Error(), "exited before it was healthy") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("StartEtcdCluster with a bad flag: %v", err)
	}
	_, err = StartEtcdCluster(context.Background(), EtcdConfig{Binary: "/nonexistent/etcd", Dir: t.TempDir(), Members: 1})
	if err == nil || !strings.Contains(fmt.Sprint(err), "/nonexistent/etcd") {
		t.Fatalf("StartEtcdCluster with no binary: %v", err)
	}
}

// Without the wrapper module there is nothing to build: the error says
// what is missing and how to build it by hand.
func TestEtcdBinaryMissingModule(t *testing.T) {
	t.Parallel()
	_, err := EtcdBinary(context.Background(), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "cannot build etcd") || !strings.Contains(err.Error(), "tools/etcd/go.mod is missing") {
		t.Fatalf("EtcdBinary in an empty tree: %v", err)
	}
}

// A tree without tools/bin/etcd gets it built from tools/etcd (quick once
// the build cache holds it: make test-go builds tools/bin/etcd first).
func TestEtcdBinaryBuildsWhenMissing(t *testing.T) {
	t.Parallel()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := os.CopyFS(filepath.Join(tmp, "tools", "etcd"), os.DirFS(filepath.Join(root, "tools", "etcd"))); err != nil {
		t.Fatal(err)
	}
	bin, err := EtcdBinary(context.Background(), tmp)
	if err != nil {
		t.Fatal(err)
	}
	if bin != filepath.Join(tmp, "tools", "bin", "etcd") {
		t.Errorf("built %s", bin)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "etcd Version: 3.") {
		t.Fatalf("%s --version: %v\n%s", bin, err, out)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "tools", "bin", ".etcd-build-*")); len(left) > 0 {
		t.Errorf("build leftovers: %v", left)
	}
}
