// Package e2e tests backlogd end to end: it builds the real binary once, starts
// real processes on free loopback ports with temp data dirs, waits for them to
// be healthy, and talks REST and gRPC to them as a user would.
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
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

const (
	layoutAll   = "all"
	layoutSplit = "split"

	readyTimeout = 15 * time.Second
	stopTimeout  = 5 * time.Second
	// maxTokenTTL is passed as -max-token-ttl, so that the exchange tests
	// prove the flag is honoured (the built-in default is 24h).
	maxTokenTTL = 2 * time.Hour
)

var layouts = []string{layoutAll, layoutSplit}

// splitTargets is the start order of the split layout (dependencies first).
var splitTargets = []string{"credential", "automation", "agent", "vault", "gateway"}

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
	dir, err := os.MkdirTemp("", "backlogd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if binary, err = build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building backlogd:", err)
		return 1
	}
	return m.Run()
}

// build compiles backlogd into dir, from the backlogd module (the parent of
// this package's directory) so that go.work and go.mod resolve as usual.
func build(dir string) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the e2e package directory")
	}
	moduleDir := filepath.Dir(filepath.Dir(self))
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "backlogd")
	args := []string{"build", "-o", out}
	if os.Getenv("BACKLOG_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	args = append(args, "github.com/backlog/controlplane/services/backlogd/cmd/backlogd")
	cmd := exec.Command(goTool, args...)
	cmd.Dir = moduleDir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, stderr.String())
	}
	return out, nil
}

// addrs are a cluster's listen addresses.
type addrs struct {
	HTTP, Credential, Automation, Agent, Vault string
}

func (a addrs) flags() []string {
	return []string{
		"-http-addr=" + a.HTTP,
		"-credential-addr=" + a.Credential,
		"-automation-addr=" + a.Automation,
		"-agent-addr=" + a.Agent,
		"-vault-addr=" + a.Vault,
	}
}

// service returns the gRPC address of a service target.
func (a addrs) service(name string) string {
	return map[string]string{
		"credential": a.Credential, "automation": a.Automation,
		"agent": a.Agent, "vault": a.Vault,
	}[name]
}

// handedOut holds every address freeAddrs returned in this test binary: a
// port just closed is free again for the kernel, and another cluster
// starting in parallel must not be given it too.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

// freeAddrs picks five free loopback ports, none handed out before. The
// listeners are closed before backlogd binds them, so another program could
// still take one in between: waitReady notices (the process does not log
// that it serves there) and startCluster retries with fresh ports.
func freeAddrs(t testing.TB) addrs {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for len(out) < 5 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("picking a free port: %v", err)
		}
		ls = append(ls, l)
		if a := l.Addr().String(); !handedOut.m[a] {
			handedOut.m[a] = true
			out = append(out, a)
		}
	}
	return addrs{HTTP: out[0], Credential: out[1], Automation: out[2], Agent: out[3], Vault: out[4]}
}

// proc is one backlogd process.
type proc struct {
	name    string // "all" or the split target
	targets string // value of -target
	dataDir string
	logPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	// logStart is the size of the log when this run of the process began.
	logStart int64
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) start(extra []string) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if fi, err := logf.Stat(); err == nil {
		p.logStart = fi.Size()
	}
	args := append([]string{
		"-target=" + p.targets,
		"-data-dir=" + p.dataDir,
		"-log-level=debug",
	}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	p.cmd, p.done, p.waitErr = cmd, make(chan struct{}), nil
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return nil
}

// stop sends SIGTERM and waits; after stopTimeout it sends SIGKILL. It
// returns an error when the process did not exit cleanly and in time.
func (p *proc) stop() error {
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	if p.exited() {
		return fmt.Errorf("%s had already exited: %v", p.name, p.waitErr)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.waitErr != nil {
			return fmt.Errorf("%s exited after SIGTERM with %v", p.name, p.waitErr)
		}
		return nil
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, stopTimeout)
	}
}

// cleanEnv is the environment without BACKLOG_* variables, so that a
// developer's settings cannot change what the flags say.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BACKLOG_") {
			out = append(out, kv)
		}
	}
	return out
}

// cluster is a running control plane in one layout.
type cluster struct {
	layout  string
	baseDir string
	addrs   addrs
	procs   []*proc
	extra   []string

	// OperatorToken is read from the credential process's data dir.
	OperatorToken string
	// creds holds every raw credential the cluster handed out.
	creds *credSet
	// leaksChecked is set once checkLeaks ran (it runs on cleanup otherwise).
	leaksChecked bool

	http  *http.Client
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// startCluster starts backlogd in layout and registers its shutdown, leak
// check and (on failure) log dump with t.Cleanup.
func startCluster(t *testing.T, layout string, extra ...string) *cluster {
	t.Helper()
	if binary == "" {
		t.Skip("end-to-end tests need the backlogd binary (not built in -short mode)")
	}
	c := &cluster{
		layout: layout, baseDir: t.TempDir(),
		extra: append([]string{"-max-token-ttl=" + maxTokenTTL.String()}, extra...),
		creds: newCredSet(),
		http:  &http.Client{Timeout: 10 * time.Second},
		conns: map[string]*grpc.ClientConn{},
	}
	switch layout {
	case layoutAll:
		c.procs = []*proc{{name: "all", targets: "all", dataDir: filepath.Join(c.baseDir, "all")}}
	case layoutSplit:
		for _, tgt := range splitTargets {
			c.procs = append(c.procs, &proc{name: tgt, targets: tgt, dataDir: filepath.Join(c.baseDir, tgt)})
		}
		// Separate data dirs, as on separate hosts, so every process
		// needs to be given the one service credential they share (the
		// first to start creates it). The all layout uses the default,
		// <data-dir>/service-token.
		c.extra = append(c.extra, "-service-token-file="+filepath.Join(c.baseDir, "service-token"))
	default:
		t.Fatalf("unknown layout %q", layout)
	}
	for _, p := range c.procs {
		p.logPath = filepath.Join(c.baseDir, p.name+".log")
		if err := os.MkdirAll(p.dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		c.closeConns()
		c.stop(t)
		if !c.leaksChecked {
			c.checkLeaks(t)
		}
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	c.start(t)
	tok, err := os.ReadFile(filepath.Join(c.credentialProc().dataDir, "operator-token"))
	if err != nil {
		t.Fatalf("reading the operator token: %v", err)
	}
	c.OperatorToken = strings.TrimSpace(string(tok))
	c.creds.add(c.OperatorToken)
	// The service credential must never leak either.
	svc, err := os.ReadFile(c.serviceTokenPath())
	if err != nil {
		t.Fatalf("reading the service token: %v", err)
	}
	c.creds.add(strings.TrimSpace(string(svc)))
	return c
}

// serviceTokenPath is where the processes keep their shared service
// credential.
func (c *cluster) serviceTokenPath() string {
	if c.layout == layoutSplit {
		return filepath.Join(c.baseDir, "service-token")
	}
	return filepath.Join(c.credentialProc().dataDir, "service-token")
}

// start starts every process (on fresh ports if a port was taken) and waits
// until each is healthy.
func (c *cluster) start(t testing.TB) {
	t.Helper()
	const attempts = 3
	for i := 1; ; i++ {
		if c.addrs.HTTP == "" || i > 1 {
			c.addrs = freeAddrs(t)
		}
		err := c.startOnce()
		if err == nil {
			return
		}
		portTaken := c.logsContain("address already in use")
		for j := len(c.procs) - 1; j >= 0; j-- {
			_ = c.procs[j].stop() // some never started or already exited: not news
		}
		if !portTaken || i == attempts {
			c.dumpLogs(t)
			t.Fatalf("starting the %s layout: %v", c.layout, err)
		}
		t.Logf("a port was taken; retrying with fresh ports (%v)", err)
	}
}

func (c *cluster) startOnce() error {
	for _, p := range c.procs {
		if err := c.startProc(p); err != nil {
			return err
		}
	}
	return nil
}

// startProc starts one process of the cluster and waits until it is ready.
func (c *cluster) startProc(p *proc) error {
	if err := p.start(append(c.addrs.flags(), c.extra...)); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	return c.waitReady(p)
}

// waitReady polls GET /readyz (for a process running the gateway) or the
// gRPC health service (for one running a single service) until it answers
// 200 / SERVING, the process exits, or readyTimeout passes.
func (c *cluster) waitReady(p *proc) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var check func(context.Context) error
	if p.targets == "all" || strings.Contains(p.targets, "gateway") {
		check = func(ctx context.Context) error { return c.readyz(ctx) }
	} else {
		check = func(ctx context.Context) error { return c.healthCheck(ctx, c.addrs.service(p.targets), "") }
	}
	// Something answering on the port is not enough: it could be another
	// program that took the port first. The process must also have logged
	// that it serves on each of its addresses.
	var mine []string
	for _, a := range c.servedBy(p) {
		mine = append(mine, `"addr":"`+a+`"`)
	}
	servesAll := func() error {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			return err
		}
		b = b[min(p.logStart, int64(len(b))):] // this run only
		for _, m := range mine {
			if !bytes.Contains(b, []byte(m)) {
				return fmt.Errorf("%s has not logged serving on %s", p.name, m)
			}
		}
		return nil
	}
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			last = servesAll()
		}
		if last == nil && !p.exited() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", p.name, p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v", p.name, readyTimeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// servedBy lists the addresses process p listens on.
func (c *cluster) servedBy(p *proc) []string {
	if p.targets == "all" {
		return []string{c.addrs.HTTP, c.addrs.Credential, c.addrs.Automation, c.addrs.Agent, c.addrs.Vault}
	}
	if p.targets == "gateway" {
		return []string{c.addrs.HTTP}
	}
	return []string{c.addrs.service(p.targets)}
}

func (c *cluster) readyz(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/readyz"), nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /readyz: %s", resp.Status)
	}
	return nil
}

// healthCheck asks grpc.health.v1 at addr about service ("" = the server).
func (c *cluster) healthCheck(ctx context.Context, addr, service string) error {
	resp, err := healthpb.NewHealthClient(c.conn(addr)).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health of %q at %s: %s", service, addr, resp.GetStatus())
	}
	return nil
}

// stop stops the processes in reverse start order and reports any that did
// not exit cleanly within stopTimeout of SIGTERM.
func (c *cluster) stop(t testing.TB) {
	t.Helper()
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].stop(); err != nil {
			t.Errorf("stopping the %s layout: %v", c.layout, err)
		}
	}
}

// restart stops every process and starts it again on the same data dirs
// and ports.
func (c *cluster) restart(t testing.TB) {
	t.Helper()
	c.closeConns()
	c.stop(t)
	c.start(t)
}

func (c *cluster) credentialProc() *proc {
	for _, p := range c.procs {
		if p.targets == "all" || p.targets == "credential" {
			return p
		}
	}
	panic("no credential process")
}

func (c *cluster) url(path string) string { return "http://" + c.addrs.HTTP + path }

// conn returns a (shared, lazily connecting) gRPC client connection to addr.
func (c *cluster) conn(addr string) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc
	}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Readiness polls a port before anything listens on it: retry
		// within milliseconds, not after the default one-second backoff.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		panic(err) // only for a malformed target, which freeAddrs never makes
	}
	c.conns[addr] = cc
	return cc
}

func (c *cluster) closeConns() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, cc := range c.conns {
		cc.Close()
		delete(c.conns, addr)
	}
}

// logs returns every process's captured output, by process name.
func (c *cluster) logs() map[string][]byte {
	out := map[string][]byte{}
	for _, p := range c.procs {
		b, err := os.ReadFile(p.logPath)
		if err == nil {
			out[p.name] = b
		}
	}
	return out
}

func (c *cluster) logsContain(s string) bool {
	for _, b := range c.logs() {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// dbFiles returns the contents of every *.db file under the data dirs.
func (c *cluster) dbFiles(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(c.baseDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".db") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(c.baseDir, path)
			out[rel] = b
		}
		return nil
	})
	if err != nil {
		t.Errorf("reading the data dirs: %v", err)
	}
	return out
}

// checkLeaks asserts that no credential the cluster issued appears in any
// process log or *.db file, and that the logs hold no well-formed credential
// at all. Call it once the processes are stopped (the stores are flushed).
func (c *cluster) checkLeaks(t testing.TB) {
	t.Helper()
	c.leaksChecked = true
	for name, b := range c.logs() {
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
	const tail = 40
	for _, p := range c.procs {
		b, _ := os.ReadFile(p.logPath)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > tail {
			lines = lines[len(lines)-tail:]
		}
		t.Logf("--- last %d lines of the %s process log (%s layout) ---\n%s", len(lines), p.name, c.layout, c.creds.redact(strings.Join(lines, "\n")))
	}
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
