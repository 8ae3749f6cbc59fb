package reliability

// The process harness: backlogd is built once in TestMain and started as real
// processes on free loopback ports with temp data dirs, in one of two
// layouts: "all" (one process, -target=all) and "split" (one process per
// target, each with its own data dir and the same -service-token-file).

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

	readyTimeout = 20 * time.Second
	stopTimeout  = 10 * time.Second
)

// splitTargets is the start order of the split layout (dependencies first).
var splitTargets = []string{"credential", "automation", "agent", "vault", "gateway"}

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
	dir, err := os.MkdirTemp("", "reliability-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reliability:", err)
		os.Exit(1)
	}
	binary, err = buildBackend(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reliability: building backlogd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBackend compiles backlogd from its own module directory, so that
// go.work (or the module's replaces without it) resolve as usual.
func buildBackend(dir string) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate this package's directory")
	}
	moduleDir := filepath.Join(filepath.Dir(self), "..", "backlogd")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "backlogd")
	cmd := exec.Command(goTool, "build", "-o", out, "./cmd/backlogd")
	cmd.Dir = moduleDir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, buf.String())
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

func (a addrs) service(name string) string {
	return map[string]string{"credential": a.Credential, "automation": a.Automation, "agent": a.Agent, "vault": a.Vault}[name]
}

// freeAddrs picks five free loopback ports (closed again before backlogd
// binds them: start retries on fresh ports if one was taken meanwhile).
func freeAddrs(t testing.TB) addrs {
	t.Helper()
	var out [5]string
	var ls []net.Listener
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("picking a free port: %v", err)
		}
		ls = append(ls, l)
		out[i] = l.Addr().String()
	}
	for _, l := range ls {
		l.Close()
	}
	return addrs{HTTP: out[0], Credential: out[1], Automation: out[2], Agent: out[3], Vault: out[4]}
}

// proc is one backlogd process. Its log file is appended to across
// restarts, so that a leak scan sees every run.
type proc struct {
	name    string
	targets string
	dataDir string
	logPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

func (p *proc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) start(args []string) error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(binary, append([]string{"-target=" + p.targets, "-data-dir=" + p.dataDir}, args...)...)
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

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// stop sends SIGTERM and waits; after stopTimeout it sends SIGKILL.
func (p *proc) stop() error {
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	select {
	case <-p.done:
		return fmt.Errorf("%s had already exited: %v", p.name, p.waitErr)
	default:
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

// cleanEnv is the environment without BACKLOG_* variables (BACKLOG_SOAK
// included), so that nothing but the flags configures backlogd.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BACKLOG_") {
			out = append(out, kv)
		}
	}
	return out
}

// cluster is a control plane in one layout.
type cluster struct {
	layout  string
	baseDir string
	addrs   addrs
	procs   []*proc
	// extra flags for every process (besides addresses, data dir, target).
	extra []string

	// kek is the vault's key-encryption key (in baseDir/vault.kek).
	kek []byte

	// OperatorToken is read from the credential process's data dir.
	OperatorToken string

	http *http.Client
	// onResponse, when set, sees every response the REST helpers receive.
	onResponse func(*reply)

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn
}

// newCluster prepares (but does not start) a cluster in t.TempDir(). Every
// process runs at debug log level with the same -service-token-file; extra
// flags are added to each.
func newCluster(t testing.TB, layout string, extra ...string) *cluster {
	t.Helper()
	if binary == "" {
		t.Skip("needs the backlogd binary (built by TestMain; not built when fuzzing)")
	}
	base := t.TempDir()
	// The vault's key-encryption key: without one the vault is sealed.
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	kekFile := filepath.Join(base, "vault.kek")
	if err := os.WriteFile(kekFile, kek, 0o600); err != nil {
		t.Fatal(err)
	}
	c := &cluster{
		layout: layout, baseDir: base, kek: kek,
		extra: append([]string{"-log-level=debug", "-service-token-file=" + filepath.Join(base, "service-token"), "-vault-kek-file=" + kekFile}, extra...),
		http: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: 30 * time.Second,
		}},
		conns: map[string]*grpc.ClientConn{},
	}
	switch layout {
	case layoutAll:
		c.procs = []*proc{{name: "all", targets: "all", dataDir: filepath.Join(base, "all")}}
	case layoutSplit:
		for _, tgt := range splitTargets {
			c.procs = append(c.procs, &proc{name: tgt, targets: tgt, dataDir: filepath.Join(base, tgt)})
		}
	default:
		t.Fatalf("unknown layout %q", layout)
	}
	for _, p := range c.procs {
		p.logPath = filepath.Join(base, p.name+".log")
		if err := os.MkdirAll(p.dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		c.closeConns()
		for i := len(c.procs) - 1; i >= 0; i-- {
			if err := c.procs[i].stop(); err != nil {
				t.Errorf("%s layout: %v", c.layout, err)
			}
		}
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
	const attempts = 3
	for i := 1; ; i++ {
		if c.addrs.HTTP == "" || i > 1 {
			c.addrs = freeAddrs(t)
		}
		err := c.startOnce()
		if err == nil {
			break
		}
		portTaken := c.logsContain("address already in use")
		for _, p := range c.procs {
			if p.running() {
				p.kill()
			}
			p.cmd = nil
		}
		if !portTaken || i == attempts {
			c.dumpLogs(t)
			t.Fatalf("starting the %s layout: %v", c.layout, err)
		}
		t.Logf("a port was taken; retrying on fresh ports (%v)", err)
	}
	tok, err := os.ReadFile(filepath.Join(c.credentialProc().dataDir, "operator-token"))
	if err != nil {
		t.Fatalf("reading the operator token: %v", err)
	}
	c.OperatorToken = strings.TrimSpace(string(tok))
}

func (c *cluster) startOnce() error {
	args := append(c.addrs.flags(), c.extra...)
	for _, p := range c.procs {
		if err := p.start(args); err != nil {
			return fmt.Errorf("start %s: %w", p.name, err)
		}
		if err := c.waitReady(p); err != nil {
			return err
		}
	}
	return nil
}

// waitReady polls /readyz (a process with the gateway) or grpc.health.v1
// (a single service) until it answers, the process exits, or readyTimeout.
func (c *cluster) waitReady(p *proc) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	check := func(ctx context.Context) error {
		if p.targets == "all" || p.targets == "gateway" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/readyz"), nil)
			resp, err := c.http.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET /readyz: %s", resp.Status)
			}
			return nil
		}
		resp, err := healthpb.NewHealthClient(c.conn(c.addrs.service(p.targets))).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("%s: %s", p.name, resp.GetStatus())
		}
		return nil
	}
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", p.name, p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v", p.name, readyTimeout, last)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// kill SIGKILLs every process (no graceful shutdown, no flush).
func (c *cluster) kill() {
	c.closeConns()
	for _, p := range c.procs {
		p.kill()
	}
	c.http.CloseIdleConnections()
}

// stop stops every process gracefully, in reverse start order.
func (c *cluster) stop(t testing.TB) {
	t.Helper()
	c.closeConns()
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].stop(); err != nil {
			t.Errorf("%s layout: %v", c.layout, err)
		}
	}
	c.http.CloseIdleConnections()
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

// conn returns a shared plain (no service credential) gRPC connection.
func (c *cluster) conn(addr string) *grpc.ClientConn {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc
	}
	// Processes (re)start under these connections: reconnect quickly.
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		panic(err)
	}
	c.conns[addr] = cc
	return cc
}

func (c *cluster) closeConns() {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	for addr, cc := range c.conns {
		cc.Close()
		delete(c.conns, addr)
	}
}

// serving reports whether the gRPC server at the named service's address
// has registered fullService (the kit server marks every registered service
// SERVING; a health-only placeholder registers none).
func (c *cluster) serving(ctx context.Context, service, fullService string) bool {
	resp, err := healthpb.NewHealthClient(c.conn(c.addrs.service(service))).Check(ctx, &healthpb.HealthCheckRequest{Service: fullService})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// logs returns every process's captured output by process name.
func (c *cluster) logs() map[string][]byte {
	out := map[string][]byte{}
	for _, p := range c.procs {
		if b, err := os.ReadFile(p.logPath); err == nil {
			out[p.name] = b
		}
	}
	return out
}

func (c *cluster) logsMatch(re *regexp.Regexp) bool {
	for _, b := range c.logs() {
		if re.Match(b) {
			return true
		}
	}
	return false
}

func (c *cluster) logsContain(s string) bool {
	for _, b := range c.logs() {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// dbPaths lists every *.db file under the cluster's data dirs.
func (c *cluster) dbPaths(t testing.TB) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(c.baseDir, func(path string, d fs.DirEntry, err error) error {
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
	for _, p := range c.procs {
		if p.targets == "all" || p.targets == service {
			return filepath.Join(p.dataDir, service+".db")
		}
	}
	panic("no process for " + service)
}

// dumpLogs prints the (redacted) tail of every process log.
func (c *cluster) dumpLogs(t testing.TB) {
	t.Helper()
	const tail = 40
	for _, p := range c.procs {
		b, _ := os.ReadFile(p.logPath)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > tail {
			lines = lines[len(lines)-tail:]
		}
		t.Logf("--- last %d lines of the %s process log (%s layout) ---\n%s", len(lines), p.name, c.layout, redact(strings.Join(lines, "\n")))
	}
}
