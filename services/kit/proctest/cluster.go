package proctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The targets backlogd runs (its -target values), in start order:
// dependencies first. They mirror backlogd's app.AllTargets, which kit
// cannot import.
const (
	TargetCredential = "credential"
	TargetAutomation = "automation"
	TargetAgent      = "agent"
	TargetVault      = "vault"
	TargetGateway    = "gateway"
)

// Targets is every target, in start order.
var Targets = []string{TargetCredential, TargetAutomation, TargetAgent, TargetVault, TargetGateway}

// ProcSpec is one process of a layout.
type ProcSpec struct {
	// Name is unique in the cluster; the process's data dir (<Dir>/<Name>)
	// and log file (<Dir>/<Name>.log) are named after it.
	Name string
	// Targets is the process's -target list; empty means -target=all.
	Targets []string
	// Flags are added to this process's command line only.
	Flags []string
	// DataDir, when set, names the process's data dir (<Dir>/<DataDir>)
	// instead of Name. Replicas of one service in etcd mode share one, and
	// with it their key files (credential.key, operator-token).
	DataDir string
}

// Layout is the processes of a cluster, in start order (each waits for the
// one before it to be healthy). Every process gets its own loopback address
// per target it serves. Each target's cluster address (what every process
// is told with -<target>-addr, -http-addr for the gateway, and what Addr
// returns) is that of the first process serving it; another process serving
// the same target listens on its own address (-<target>-listen-addr).
//
// With AddrLists, -<target>-addr is instead the comma list of every
// replica's address, in layout order (callers balance over them and fail
// over), and each replica of a target served more than once is given its
// own -<target>-listen-addr.
type Layout struct {
	Name      string
	Procs     []ProcSpec
	AddrLists bool
}

// All is one process running every target (-target=all).
func All() Layout {
	return Layout{Name: "all", Procs: []ProcSpec{{Name: "all"}}}
}

// Split is one process per target, dependencies first, each with its own
// data dir as on separate hosts.
func Split() Layout {
	l := Layout{Name: "split"}
	for _, t := range Targets {
		l.Procs = append(l.Procs, ProcSpec{Name: t, Targets: []string{t}})
	}
	return l
}

// Replicas is n processes per target (named <target>-1 … <target>-n),
// dependencies first and replica by replica, with address lists. The
// replicas of a service share its data dir (<Dir>/<target>: its key
// files); they need a shared store, so Config.Flags must select one
// (-store=etcd -etcd-endpoints=… -etcd-prefix=…). Gateways are stateless
// and get their own data dirs.
func Replicas(n int) Layout {
	l := Layout{Name: fmt.Sprintf("replicas-%d", n), AddrLists: true}
	for _, t := range Targets {
		for i := 1; i <= n; i++ {
			s := ProcSpec{Name: fmt.Sprintf("%s-%d", t, i), Targets: []string{t}}
			if t != TargetGateway {
				s.DataDir = t
			}
			l.Procs = append(l.Procs, s)
		}
	}
	return l
}

// LayoutNamed is All, Split or Replicas(2) ("replicas") by name.
func LayoutNamed(name string) (Layout, error) {
	switch name {
	case "all":
		return All(), nil
	case "split":
		return Split(), nil
	case "replicas":
		return Replicas(2), nil
	}
	return Layout{}, fmt.Errorf("unknown layout %q (want all, split or replicas)", name)
}

// Config is a cluster to start.
type Config struct {
	Binary string // the backlogd executable (Build)
	// Dir holds every process's data dir and log; the caller owns it
	// (t.TempDir()).
	Dir    string
	Layout Layout
	// LogLevel is every process's -log-level (default debug). At warn or
	// error a process does not log "serving", and readiness cannot tell it
	// from another program that took its port first.
	LogLevel string
	// Flags are added to every process's command line.
	Flags []string
	// Env is added to the environment, which is otherwise CleanEnv().
	Env []string
	// ServiceTokenFile is every process's -service-token-file. Default:
	// <Dir>/service-token when the layout has more than one process (they
	// must share the credential and have separate data dirs); none (the
	// process's <data-dir>/service-token) otherwise.
	ServiceTokenFile string

	ReadyTimeout  time.Duration // per process start (default 20s)
	StopTimeout   time.Duration // from SIGTERM to SIGKILL (default 10s)
	PollInterval  time.Duration // between readiness polls (default 25ms)
	StartAttempts int           // Start's tries on fresh ports when one was taken (default 3)
	// Logf, when set, is told when Start retries on fresh ports.
	Logf func(format string, args ...any)
}

// Cluster is backlogd in a layout on loopback.
type Cluster struct {
	cfg      Config
	procs    []*Proc
	addrs    map[string]string   // cluster address per target
	replicas map[string][]string // every serving process's address per target, in layout order
	poll     *http.Client        // readiness polls

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewCluster prepares (does not start) a cluster: it checks the layout and
// fills the config's defaults.
func NewCluster(cfg Config) (*Cluster, error) {
	if cfg.Binary == "" || cfg.Dir == "" {
		return nil, errors.New("proctest: Config needs Binary and Dir")
	}
	if len(cfg.Layout.Procs) == 0 {
		return nil, errors.New("proctest: the layout has no process")
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.ServiceTokenFile == "" && len(cfg.Layout.Procs) > 1 {
		cfg.ServiceTokenFile = filepath.Join(cfg.Dir, "service-token")
	}
	cfg.ReadyTimeout = orDefault(cfg.ReadyTimeout, 20*time.Second)
	cfg.StopTimeout = orDefault(cfg.StopTimeout, 10*time.Second)
	cfg.PollInterval = orDefault(cfg.PollInterval, 25*time.Millisecond)
	if cfg.StartAttempts <= 0 {
		cfg.StartAttempts = 3
	}
	c := &Cluster{
		cfg:   cfg,
		conns: map[string]*grpc.ClientConn{},
		// One kept-alive connection for the polls: a dial per poll would
		// be measured as start-up time.
		poll: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}},
	}
	seen := map[string]bool{}
	for _, s := range cfg.Layout.Procs {
		if s.Name == "" || seen[s.Name] || strings.ContainsAny(s.Name, `/\`) {
			return nil, fmt.Errorf("proctest: process name %q is empty, repeated or not a file name", s.Name)
		}
		seen[s.Name] = true
		dataDir := s.Name
		if s.DataDir != "" {
			if strings.ContainsAny(s.DataDir, `/\`) || s.DataDir == "." || s.DataDir == ".." {
				return nil, fmt.Errorf("proctest: process %s: data dir %q is not a file name", s.Name, s.DataDir)
			}
			dataDir = s.DataDir
		}
		targets := s.Targets
		if len(targets) == 0 || slices.Equal(targets, []string{"all"}) {
			targets = Targets
		}
		for _, t := range targets {
			if !slices.Contains(Targets, t) {
				return nil, fmt.Errorf("proctest: process %s: unknown target %q", s.Name, t)
			}
		}
		c.procs = append(c.procs, &Proc{
			Name: s.Name, Targets: slices.Clone(targets),
			DataDir: filepath.Join(cfg.Dir, dataDir), LogPath: filepath.Join(cfg.Dir, s.Name+".log"),
			c: c, spec: s,
		})
	}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// allocate gives every process a fresh address per target it serves, and
// every target no process serves a spare one (so that no flag points at a
// default port some other backlogd may be using).
func (c *Cluster) allocate() error {
	n := 0
	for _, p := range c.procs {
		n += len(p.Targets)
	}
	served := map[string]bool{}
	for _, p := range c.procs {
		for _, t := range p.Targets {
			served[t] = true
		}
	}
	n += len(Targets) - len(served)
	free, err := FreeAddrs(n)
	if err != nil {
		return err
	}
	c.addrs = map[string]string{}
	c.replicas = map[string][]string{}
	for _, p := range c.procs {
		p.addrs = map[string]string{}
		for _, t := range p.Targets {
			p.addrs[t], free = free[0], free[1:]
			if c.addrs[t] == "" {
				c.addrs[t] = p.addrs[t]
			}
			c.replicas[t] = append(c.replicas[t], p.addrs[t])
		}
	}
	for _, t := range Targets {
		if c.addrs[t] == "" {
			c.addrs[t], free = free[0], free[1:]
		}
	}
	return nil
}

// addrFlags tell process p where every target is, and where p listens when
// that differs from the target's cluster address.
func (c *Cluster) addrFlags(p *Proc) []string {
	var out []string
	for _, t := range Targets {
		if t == TargetGateway {
			a := c.addrs[t]
			if p.Serves(t) {
				a = p.addrs[t]
			}
			out = append(out, "-http-addr="+a)
			continue
		}
		if c.cfg.Layout.AddrLists && len(c.replicas[t]) > 1 {
			out = append(out, "-"+t+"-addr="+strings.Join(c.replicas[t], ","))
			if p.Serves(t) {
				out = append(out, "-"+t+"-listen-addr="+p.addrs[t])
			}
			continue
		}
		out = append(out, "-"+t+"-addr="+c.addrs[t])
		if p.Serves(t) && p.addrs[t] != c.addrs[t] {
			out = append(out, "-"+t+"-listen-addr="+p.addrs[t])
		}
	}
	return out
}

// Start starts every process in layout order, each healthy before the next
// starts. It keeps the addresses of an earlier start; if a process could
// not bind a port (another program took it), it kills what it started and
// tries again on fresh ports, up to StartAttempts times. Every process must
// be stopped. The error is a *StartError.
func (c *Cluster) Start(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		if c.addrs == nil || attempt > 1 {
			c.CloseConns()
			if err := c.allocate(); err != nil {
				return err
			}
		}
		err := c.StartOnce(ctx)
		if err == nil {
			return nil
		}
		c.Kill()
		var se *StartError
		if !errors.As(err, &se) || !se.PortTaken() || attempt >= c.cfg.StartAttempts || ctx.Err() != nil {
			return err
		}
		if c.cfg.Logf != nil {
			c.cfg.Logf("proctest: a port was taken; retrying on fresh ports (%v)", err)
		}
	}
}

// StartOnce starts every process once on the current addresses (picking
// them on the first start), in layout order, and stops at the first that
// does not become ready: its *StartError says why, with its output. The
// processes started before it keep running.
func (c *Cluster) StartOnce(ctx context.Context) error {
	if c.addrs == nil {
		if err := c.allocate(); err != nil {
			return err
		}
	}
	for _, p := range c.procs {
		if p.Running() {
			return &StartError{Proc: p.Name, Err: errors.New("already running")}
		}
	}
	for _, p := range c.procs {
		if err := p.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Stop stops every process (SIGTERM, see Proc.Stop) in reverse start order
// and closes the cluster's connections. It returns every process's error.
func (c *Cluster) Stop() error {
	c.CloseConns()
	var errs []error
	for i := len(c.procs) - 1; i >= 0; i-- {
		errs = append(errs, c.procs[i].Stop())
	}
	c.poll.CloseIdleConnections()
	return errors.Join(errs...)
}

// Kill SIGKILLs every process and closes the cluster's connections.
func (c *Cluster) Kill() {
	c.CloseConns()
	for _, p := range c.procs {
		p.Kill()
	}
	c.poll.CloseIdleConnections()
}

// Restart stops every process and starts them again on the same data dirs
// (and addresses, unless one was taken meanwhile).
func (c *Cluster) Restart(ctx context.Context) error {
	stopErr := c.Stop()
	return errors.Join(stopErr, c.Start(ctx))
}

// Layout is the cluster's layout.
func (c *Cluster) Layout() Layout { return c.cfg.Layout }

// Dir is the directory holding the data dirs and logs.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// Procs are the processes in start order.
func (c *Cluster) Procs() []*Proc { return c.procs }

// Proc is the process named name, or nil.
func (c *Cluster) Proc(name string) *Proc {
	for _, p := range c.procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// ProcFor is the first process serving target, or nil.
func (c *Cluster) ProcFor(target string) *Proc {
	for _, p := range c.procs {
		if p.Serves(target) {
			return p
		}
	}
	return nil
}

// Addr is target's cluster address ("gateway": the REST address); "" before
// the first start.
func (c *Cluster) Addr(target string) string { return c.addrs[target] }

// Addrs is the address of every process serving target, in layout order
// ("gateway": every REST address); nil before the first start.
func (c *Cluster) Addrs(target string) []string { return slices.Clone(c.replicas[target]) }

// ProcsFor are the processes serving target, in layout order.
func (c *Cluster) ProcsFor(target string) []*Proc {
	var out []*Proc
	for _, p := range c.procs {
		if p.Serves(target) {
			out = append(out, p)
		}
	}
	return out
}

// URL is the gateway's http:// URL of path.
func (c *Cluster) URL(path string) string { return "http://" + c.addrs[TargetGateway] + path }

// ServiceTokenPath is where the processes keep their shared service
// credential.
func (c *Cluster) ServiceTokenPath() string {
	if c.cfg.ServiceTokenFile != "" {
		return c.cfg.ServiceTokenFile
	}
	if p := c.ProcFor(TargetCredential); p != nil {
		return filepath.Join(p.DataDir, "service-token")
	}
	return ""
}

// ReadOperatorToken reads the operator credential the credential process wrote
// into its data dir.
func (c *Cluster) ReadOperatorToken() (string, error) {
	p := c.ProcFor(TargetCredential)
	if p == nil {
		return "", errors.New("no process serves credential")
	}
	b, err := os.ReadFile(filepath.Join(p.DataDir, "operator-token"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Conn is a shared, lazily connecting, plaintext gRPC connection to addr.
// Processes (re)start under it, so it reconnects within milliseconds
// rather than after gRPC's default one-second backoff.
func (c *Cluster) Conn(addr string) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc
	}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		panic(err) // only for a malformed target, which FreeAddrs never makes
	}
	c.conns[addr] = cc
	return cc
}

// CloseConns closes every connection Conn made.
func (c *Cluster) CloseConns() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, cc := range c.conns {
		cc.Close()
		delete(c.conns, addr)
	}
}

// Health asks grpc.health.v1 at addr about service ("": the server) and
// fails unless it is SERVING.
func (c *Cluster) Health(ctx context.Context, addr, service string) error {
	return c.health(ctx, addr, service, false)
}

func (c *Cluster) health(ctx context.Context, addr, service string, poll bool) error {
	cc := c.Conn(addr)
	if poll && cc.GetState() == connectivity.TransientFailure {
		// Polling a process that is coming up: dial now, not after the
		// backoff, or the start-up time would include it.
		cc.ResetConnectBackoff()
	}
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health of %q at %s: %s", service, addr, resp.GetStatus())
	}
	return nil
}

// Logs is every process's captured output (all runs), by process name.
func (c *Cluster) Logs() map[string][]byte {
	out := map[string][]byte{}
	for _, p := range c.procs {
		if b := p.Log(); b != nil {
			out[p.Name] = b
		}
	}
	return out
}

// LogsContain reports whether any process's log holds s.
func (c *Cluster) LogsContain(s string) bool {
	for _, b := range c.Logs() {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// LogsMatch reports whether any process's log matches re.
func (c *Cluster) LogsMatch(re *regexp.Regexp) bool {
	for _, b := range c.Logs() {
		if re.Match(b) {
			return true
		}
	}
	return false
}

// DumpLogs writes the last 40 lines of every process's log to logf (t.Logf
// for a failed test), each passed through redact when it is not nil.
func (c *Cluster) DumpLogs(logf func(format string, args ...any), redact func(string) string) {
	const tail = 40
	for _, p := range c.procs {
		s := p.Tail(tail)
		if redact != nil {
			s = redact(s)
		}
		logf("--- last %d lines of the %s process log (%s layout) ---\n%s", tail, p.Name, c.cfg.Layout.Name, s)
	}
}
