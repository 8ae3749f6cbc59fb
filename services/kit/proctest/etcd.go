package proctest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The etcd server the HA mode is tested against is built from the Go module
// proxy by a pinned wrapper module (tools/etcd: go.etcd.io/etcd/server/v3's
// etcdmain), into tools/bin/etcd (`make tools/bin/etcd`).

// etcdBuild serialises EtcdBinary's builds within a process.
var etcdBuild sync.Mutex

// EtcdBinary is tools/bin/etcd under repoRoot, built first from tools/etcd
// (with GOWORK=off, as `make tools/bin/etcd` does) when it is missing. The
// build writes beside the binary and renames, so test binaries of several
// packages building at once never run a half-written file.
func EtcdBinary(ctx context.Context, repoRoot string) (string, error) {
	etcdBuild.Lock()
	defer etcdBuild.Unlock()
	out := filepath.Join(repoRoot, "tools", "bin", "etcd")
	if isFile(out) {
		return out, nil
	}
	src := filepath.Join(repoRoot, "tools", "etcd")
	if !isFile(filepath.Join(src, "go.mod")) {
		return "", fmt.Errorf("cannot build etcd: %s/go.mod is missing (the pinned etcd wrapper module)", src)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", fmt.Errorf("cannot build etcd: %v", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".etcd-build-*")
	if err != nil {
		return "", fmt.Errorf("cannot build etcd: %v", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", tmp.Name(), ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cannot build etcd (run `make tools/bin/etcd` to see why; it needs the Go module proxy once): go build in %s: %v\n%s", src, err, buf.String())
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("cannot build etcd: %v", err)
	}
	return out, nil
}

// EtcdConfig is an etcd cluster to start.
type EtcdConfig struct {
	Binary string // the etcd executable (EtcdBinary)
	// Dir holds every member's data dir and log; the caller owns it.
	Dir string
	// Members is the cluster's size (default 3).
	Members int
	// Flags are added to every member's command line (a later flag wins),
	// e.g. "--quota-backend-bytes=…" or "--election-timeout=…".
	Flags []string

	ReadyTimeout time.Duration // per start of the cluster or of a member (default 30s)
	StopTimeout  time.Duration // from SIGTERM to SIGKILL (default 10s)
}

// EtcdCluster is etcd members running as real processes on loopback, each
// with its own data dir, client and peer ports.
type EtcdCluster struct {
	cfg     EtcdConfig
	token   string
	members []*EtcdMember
	poll    *http.Client

	mu     sync.Mutex
	client *clientv3.Client
}

// EtcdMember is one member process.
type EtcdMember struct {
	Name    string
	DataDir string
	LogPath string
	// ClientAddr and PeerAddr are the member's loopback host:port.
	ClientAddr string
	PeerAddr   string

	c   *EtcdCluster
	mu  sync.Mutex
	cur *etcdRun
}

type etcdRun struct {
	cmd      *exec.Cmd
	done     chan struct{}
	err      error
	logStart int64
	taken    bool
}

func (r *etcdRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// StartEtcdCluster picks free ports, starts every member at once (a member
// waits for a quorum of its peers) and waits until each reports healthy.
// On failure it kills what it started; the error holds the end of the
// logs. Close stops the cluster.
func StartEtcdCluster(ctx context.Context, cfg EtcdConfig) (*EtcdCluster, error) {
	if cfg.Binary == "" || cfg.Dir == "" {
		return nil, errors.New("proctest: EtcdConfig needs Binary and Dir")
	}
	if cfg.Members <= 0 {
		cfg.Members = 3
	}
	cfg.ReadyTimeout = orDefault(cfg.ReadyTimeout, 30*time.Second)
	cfg.StopTimeout = orDefault(cfg.StopTimeout, 10*time.Second)
	var tok [8]byte
	_, _ = rand.Read(tok[:])
	c := &EtcdCluster{
		cfg:   cfg,
		token: "proctest-" + hex.EncodeToString(tok[:]),
		poll:  &http.Client{Timeout: 2 * time.Second},
	}
	addrs, err := FreeAddrs(2 * cfg.Members)
	if err != nil {
		return nil, err
	}
	for i := range cfg.Members {
		name := fmt.Sprintf("etcd-%d", i)
		c.members = append(c.members, &EtcdMember{
			Name: name, DataDir: filepath.Join(cfg.Dir, name), LogPath: filepath.Join(cfg.Dir, name+".log"),
			ClientAddr: addrs[2*i], PeerAddr: addrs[2*i+1], c: c,
		})
	}
	for _, m := range c.members {
		if err := m.exec(); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: %v", m.Name, err)
		}
	}
	for _, m := range c.members {
		if err := m.waitHealthy(ctx); err != nil {
			err = fmt.Errorf("etcd member %s: %v\n--- last 30 lines of its log ---\n%s", m.Name, err, m.Tail(30))
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// TB is the part of testing.TB that NewEtcdCluster uses.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	TempDir() string
	Failed() bool
}

// NewEtcdCluster starts an etcd cluster of the given size for a test, from
// tools/bin/etcd (built first when missing), in a temp dir, and closes it in
// t.Cleanup (logging the end of every member's log when the test failed).
// It fails the test with the reason when etcd cannot be built or started.
func NewEtcdCluster(t TB, members int, flags ...string) *EtcdCluster {
	t.Helper()
	ctx := context.Background()
	root, err := RepoRoot()
	if err != nil {
		t.Fatalf("etcd cluster: %v", err)
	}
	bin, err := EtcdBinary(ctx, root)
	if err != nil {
		t.Fatalf("etcd cluster: %v", err)
	}
	c, err := StartEtcdCluster(ctx, EtcdConfig{Binary: bin, Dir: t.TempDir(), Members: members, Flags: flags})
	if err != nil {
		t.Fatalf("etcd cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(t.Logf)
		}
		if err := c.Close(); err != nil {
			t.Logf("etcd cluster: %v", err)
		}
	})
	return c
}

// Members are the members, in order (index i is Kill(i)'s i).
func (c *EtcdCluster) Members() []*EtcdMember { return c.members }

// Endpoints are every member's client address (host:port), in order: what
// -etcd-endpoints and clientv3.Config.Endpoints take.
func (c *EtcdCluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.ClientAddr
	}
	return out
}

// EndpointsFlag is Endpoints as one comma list, for -etcd-endpoints.
func (c *EtcdCluster) EndpointsFlag() string { return strings.Join(c.Endpoints(), ",") }

// StoreFlags are the backlogd flags that keep every store in this cluster
// under prefix: -store=etcd, -etcd-endpoints (every member), -etcd-prefix.
// Give them to every process of a layout (Config.Flags).
func (c *EtcdCluster) StoreFlags(prefix string) []string {
	return []string{"-store=etcd", "-etcd-endpoints=" + c.EndpointsFlag(), "-etcd-prefix=" + prefix}
}

// Client is a client of every member, made on first use and closed by
// Close.
func (c *EtcdCluster) Client() (*clientv3.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, nil
	}
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	c.client = cl
	return cl, nil
}

// Leader is the index of the member every running member that answers
// names as its leader. It fails while there is none (an election is under
// way, or a quorum is down) or when running members disagree.
func (c *EtcdCluster) Leader(ctx context.Context) (int, error) {
	cl, err := c.Client()
	if err != nil {
		return -1, err
	}
	ids := map[uint64]int{}
	var leaders []uint64
	var errs []error
	for i, m := range c.members {
		if !m.Running() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cl.Status(sctx, m.ClientAddr)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", m.Name, err))
			continue
		}
		ids[st.Header.MemberId] = i
		leaders = append(leaders, st.Leader)
	}
	if len(leaders) == 0 {
		return -1, fmt.Errorf("no etcd member answered: %v", errors.Join(errs...))
	}
	for _, l := range leaders {
		if l != leaders[0] {
			return -1, fmt.Errorf("etcd members disagree on the leader (%x and %x)", leaders[0], l)
		}
	}
	i, ok := ids[leaders[0]]
	if leaders[0] == 0 || !ok {
		return -1, fmt.Errorf("no running etcd member is the leader (leader id %x)", leaders[0])
	}
	return i, nil
}

// WaitLeader polls Leader until it names one, or ctx ends.
func (c *EtcdCluster) WaitLeader(ctx context.Context) (int, error) {
	for {
		i, err := c.Leader(ctx)
		if err == nil {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("waiting for an etcd leader: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Kill SIGKILLs member i and waits until it is gone (no-op if it is not
// running).
func (c *EtcdCluster) Kill(i int) { c.members[i].Kill() }

// Stop stops member i (SIGTERM, SIGKILL after the stop timeout).
func (c *EtcdCluster) Stop(i int) error { return c.members[i].Stop() }

// Restart stops member i if it runs, starts it again on its data dir and
// ports, and waits until it is healthy.
func (c *EtcdCluster) Restart(ctx context.Context, i int) error {
	m := c.members[i]
	stopErr := m.Stop()
	if err := m.exec(); err != nil {
		return errors.Join(stopErr, fmt.Errorf("%s: %v", m.Name, err))
	}
	if err := m.waitHealthy(ctx); err != nil {
		return errors.Join(stopErr, fmt.Errorf("etcd member %s: %v\n--- last 30 lines of its log ---\n%s", m.Name, err, m.Tail(30)))
	}
	return stopErr
}

// Close closes the client and stops every member. It returns the members'
// stop errors.
func (c *EtcdCluster) Close() error {
	c.mu.Lock()
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
	c.mu.Unlock()
	var errs []error
	for _, m := range c.members {
		errs = append(errs, m.Stop())
	}
	c.poll.CloseIdleConnections()
	return errors.Join(errs...)
}

// DumpLogs writes the last 40 lines of every member's log to logf.
func (c *EtcdCluster) DumpLogs(logf func(format string, args ...any)) {
	for _, m := range c.members {
		logf("--- last 40 lines of the %s log ---\n%s", m.Name, m.Tail(40))
	}
}

func (m *EtcdMember) args() []string {
	var initial []string
	for _, o := range m.c.members {
		initial = append(initial, o.Name+"=http://"+o.PeerAddr)
	}
	args := []string{
		"--name=" + m.Name,
		"--data-dir=" + m.DataDir,
		"--listen-client-urls=http://" + m.ClientAddr,
		"--advertise-client-urls=http://" + m.ClientAddr,
		"--listen-peer-urls=http://" + m.PeerAddr,
		"--initial-advertise-peer-urls=http://" + m.PeerAddr,
		"--initial-cluster=" + strings.Join(initial, ","),
		// Ignored once the data dir holds a member: a restart rejoins.
		"--initial-cluster-state=new",
		"--initial-cluster-token=" + m.c.token,
		"--logger=zap",
		"--log-outputs=stderr",
	}
	return append(args, m.c.cfg.Flags...)
}

func (m *EtcdMember) exec() error {
	if m.Running() {
		return errors.New("already running")
	}
	if err := os.MkdirAll(filepath.Dir(m.DataDir), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	r := &etcdRun{done: make(chan struct{})}
	if fi, err := logf.Stat(); err == nil {
		r.logStart = fi.Size()
	}
	cmd := exec.Command(m.c.cfg.Binary, m.args()...)
	// etcd reads ETCD_<FLAG> for flags not given: keep a developer's
	// settings away from it.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Dir = m.c.cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	r.cmd = cmd
	m.mu.Lock()
	m.cur = r
	m.mu.Unlock()
	go func() {
		r.err = cmd.Wait()
		logf.Close()
		close(r.done)
	}()
	return nil
}

func (m *EtcdMember) last() *etcdRun {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

// Running reports whether the member was started and has not exited.
func (m *EtcdMember) Running() bool {
	r := m.last()
	return r != nil && !r.exited()
}

// Pid is the current run's process id (0 before the first start).
func (m *EtcdMember) Pid() int {
	if r := m.last(); r != nil {
		return r.cmd.Process.Pid
	}
	return 0
}

// waitHealthy polls the member's GET /health (it has a leader and serves a
// linearizable read) until it answers {"health":"true"}, the member exits,
// or the ready timeout (or ctx) ends. A member that did not become healthy
// is killed.
func (m *EtcdMember) waitHealthy(ctx context.Context) error {
	r := m.last()
	ctx, cancel := context.WithTimeout(ctx, m.c.cfg.ReadyTimeout)
	defer cancel()
	var last error
	for {
		if last = m.health(ctx); last == nil && !r.exited() {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("exited before it was healthy: %v", r.err)
		case <-ctx.Done():
			m.Kill()
			return fmt.Errorf("not healthy after %s: %v", m.c.cfg.ReadyTimeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *EtcdMember) health(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.ClientAddr+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := m.c.poll.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &h) != nil || h.Health != "true" {
		return fmt.Errorf("GET /health: %s %s", resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

func (m *EtcdMember) take() *etcdRun {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.cur
	if r == nil || r.taken {
		return nil
	}
	r.taken = true
	return r
}

// Kill SIGKILLs the member and waits until it is gone.
func (m *EtcdMember) Kill() {
	if r := m.take(); r != nil {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.done
	}
}

// Stop sends SIGTERM and waits; after the stop timeout it sends SIGKILL
// and reports it. Stopping a member that is not running is a no-op; one
// that had exited on its own is reported.
func (m *EtcdMember) Stop() error {
	r := m.take()
	if r == nil {
		return nil
	}
	if r.exited() {
		return fmt.Errorf("%s had already exited: %v", m.Name, r.err)
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return nil // etcd exits non-zero on SIGTERM by design; it is a clean stop
	case <-time.After(m.c.cfg.StopTimeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", m.Name, m.c.cfg.StopTimeout)
	}
}

// Log is the member's whole captured output, every run.
func (m *EtcdMember) Log() []byte {
	b, _ := os.ReadFile(m.LogPath)
	return b
}

// Tail is the last n lines of the member's log.
func (m *EtcdMember) Tail(n int) string { return tailLines(string(m.Log()), n) }
