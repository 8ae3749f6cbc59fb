package proctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one backlogd process of a cluster. Its log file (stdout and
// stderr) is appended to across restarts, so that a scan of it sees every
// run; RunLog is the current (or last) run's part.
type Proc struct {
	Name    string
	Targets []string // what it serves, "all" expanded
	DataDir string
	LogPath string

	c     *Cluster
	spec  ProcSpec
	addrs map[string]string // own listen address per target

	mu  sync.Mutex
	cur *run // the current or last run; nil before the first start
}

// run is one start of a process.
type run struct {
	cmd      *exec.Cmd
	done     chan struct{}
	err      error // cmd.Wait's result, set before done is closed
	logStart int64 // the log's size when this run began
	started  time.Time
	readyIn  time.Duration
	taken    bool // Stop or Kill has been called (guarded by Proc.mu)
}

func (r *run) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Addr is the address this process listens on for target ("gateway" is the
// REST address), or "" if it does not serve target.
func (p *Proc) Addr(target string) string { return p.addrs[target] }

// Serves reports whether the process runs target.
func (p *Proc) Serves(target string) bool { _, ok := p.addrs[target]; return ok }

func (p *Proc) last() *run {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

// Running reports whether the process was started and has not exited.
func (p *Proc) Running() bool {
	r := p.last()
	return r != nil && !r.exited()
}

// Pid is the current run's process id (0 before the first start).
func (p *Proc) Pid() int {
	if r := p.last(); r != nil {
		return r.cmd.Process.Pid
	}
	return 0
}

// ReadyIn is how long the last successful start took, from the exec to the
// first poll that found the process healthy.
func (p *Proc) ReadyIn() time.Duration {
	if r := p.last(); r != nil {
		return r.readyIn
	}
	return 0
}

// Exited reports whether the last run has ended, and how (nil: exit 0).
func (p *Proc) Exited() (bool, error) {
	r := p.last()
	if r == nil || !r.exited() {
		return false, nil
	}
	return true, r.err
}

// StartError is a process that did not become ready: it exited (refused to
// start, or could not bind), was not healthy in time, or could not be
// executed. Log is that run's output, at most its last 64 KiB.
type StartError struct {
	Proc   string
	Exited bool
	Err    error
	Log    string
}

func (e *StartError) Error() string { return fmt.Sprintf("%s: %v", e.Proc, e.Err) }
func (e *StartError) Unwrap() error { return e.Err }

// PortTaken reports whether the process could not bind one of its ports
// (another program took it after FreeAddrs found it free).
func (e *StartError) PortTaken() bool {
	return e.Exited && strings.Contains(e.Log, "address already in use")
}

// Tail is the last n lines of Log.
func (e *StartError) Tail(n int) string { return tailLines(e.Log, n) }

// Start starts the process on its addresses, with extra flags for this run
// only, and waits until it is healthy (see Cluster). On failure it returns
// a *StartError, after killing the process if it was still running. It
// never picks new ports (its siblings know these): Cluster.Start does.
func (p *Proc) Start(ctx context.Context, extra ...string) error {
	if p.Running() {
		return &StartError{Proc: p.Name, Err: errors.New("already running")}
	}
	if p.c.addrs == nil {
		if err := p.c.allocate(); err != nil {
			return &StartError{Proc: p.Name, Err: err}
		}
	}
	r, err := p.exec(extra)
	if err != nil {
		return &StartError{Proc: p.Name, Err: err}
	}
	if err := p.waitReady(ctx, r, logsInfo(p.args(extra))); err != nil {
		exited := r.exited()
		p.Kill() // reported here: a later Stop has nothing to say about this run
		return &StartError{Proc: p.Name, Exited: exited, Err: err, Log: string(lastBytes(p.runLog(r), 64<<10))}
	}
	return nil
}

func (p *Proc) exec(extra []string) (*run, error) {
	if err := os.MkdirAll(p.DataDir, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	r := &run{done: make(chan struct{})}
	if fi, err := logf.Stat(); err == nil {
		r.logStart = fi.Size()
	}
	cmd := exec.Command(p.c.cfg.Binary, p.args(extra)...)
	cmd.Env = append(CleanEnv(), p.c.cfg.Env...)
	cmd.Dir = p.DataDir
	cmd.Stdout, cmd.Stderr = logf, logf
	r.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	r.cmd = cmd
	p.mu.Lock()
	p.cur = r
	p.mu.Unlock()
	go func() {
		r.err = cmd.Wait()
		logf.Close()
		close(r.done)
	}()
	return r, nil
}

// args is the command line: target, data dir, log level, the address flags,
// the shared service credential, the cluster's flags, the process's flags,
// then extra (a later flag wins over an earlier one).
func (p *Proc) args(extra []string) []string {
	target := "all"
	if len(p.spec.Targets) > 0 {
		target = strings.Join(p.spec.Targets, ",")
	}
	args := []string{"-target=" + target, "-data-dir=" + p.DataDir, "-log-level=" + p.c.cfg.LogLevel}
	args = append(args, p.c.addrFlags(p)...)
	if f := p.c.cfg.ServiceTokenFile; f != "" {
		args = append(args, "-service-token-file="+f)
	}
	args = append(args, p.c.cfg.Flags...)
	args = append(args, p.spec.Flags...)
	return append(args, extra...)
}

// waitReady polls until every check passes on a running process, the
// process exits, or the ready timeout (or ctx) ends.
func (p *Proc) waitReady(ctx context.Context, r *run, logsServing bool) error {
	timeout := p.c.cfg.ReadyTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		last = p.checkReady(ctx, r, logsServing)
		if last == nil && !r.exited() {
			r.readyIn = time.Since(r.started)
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("exited before it was ready: %v", r.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %v", timeout, last)
		case <-time.After(p.c.cfg.PollInterval):
		}
	}
}

// checkReady: the gateway's GET /readyz answers 200, the gRPC health
// service of each service target answers SERVING, and (when the process
// logs at info or below) the process has logged that it serves on each of
// its addresses — something answering on a port is not enough, it could be
// another program that took the port first.
func (p *Proc) checkReady(ctx context.Context, r *run, logsServing bool) error {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if a := p.addrs[TargetGateway]; a != "" {
		if err := p.c.readyz(cctx, a); err != nil {
			return err
		}
	}
	for _, t := range p.Targets {
		if t == TargetGateway {
			continue
		}
		if err := p.c.health(cctx, p.addrs[t], "", true); err != nil {
			return err
		}
	}
	if logsServing {
		b := p.runLog(r)
		for _, t := range p.Targets {
			if !bytes.Contains(b, []byte(`"addr":"`+p.addrs[t]+`"`)) {
				return fmt.Errorf("has not logged serving %s on %s", t, p.addrs[t])
			}
		}
	}
	return nil
}

// logsInfo reports whether the last -log-level in args is info or debug.
func logsInfo(args []string) bool {
	level := ""
	for i, a := range args {
		a = strings.TrimPrefix(a, "-")
		switch {
		case strings.HasPrefix(a, "-log-level="), strings.HasPrefix(a, "log-level="):
			level = a[strings.Index(a, "=")+1:]
		case (a == "log-level" || a == "-log-level") && i+1 < len(args):
			level = args[i+1]
		}
	}
	return level == "debug" || level == "info" || level == ""
}

// Stop sends SIGTERM and waits; after the stop timeout it sends SIGKILL. It
// returns an error when the process had already exited, exited non-zero
// (a race report makes it exit 66), or did not exit in time.
func (p *Proc) Stop() error {
	r := p.take()
	if r == nil {
		return nil
	}
	if r.exited() {
		return fmt.Errorf("%s had already exited: %v", p.Name, r.err)
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		if r.err != nil {
			return fmt.Errorf("%s exited after SIGTERM with %v", p.Name, r.err)
		}
		return nil
	case <-time.After(p.c.cfg.StopTimeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.Name, p.c.cfg.StopTimeout)
	}
}

// Kill sends SIGKILL (kill -9: no graceful shutdown, no flush) and waits
// until the process is gone.
func (p *Proc) Kill() {
	r := p.take()
	if r == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// take returns the current run unless it was stopped or killed already,
// and marks it so: a second Stop or Kill is a no-op.
func (p *Proc) take() *run {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.cur
	if r == nil || r.taken {
		return nil
	}
	r.taken = true
	return r
}

// Restart stops the process (SIGTERM) and starts it again on the same data
// dir and addresses.
func (p *Proc) Restart(ctx context.Context) error {
	stopErr := p.Stop()
	return errors.Join(stopErr, p.Start(ctx))
}

// Log is the process's whole captured output, every run.
func (p *Proc) Log() []byte {
	b, _ := os.ReadFile(p.LogPath)
	return b
}

// RunLog is the current (or last) run's output.
func (p *Proc) RunLog() []byte {
	r := p.last()
	if r == nil {
		return nil
	}
	return p.runLog(r)
}

func (p *Proc) runLog(r *run) []byte {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(r.logStart, io.SeekStart); err != nil {
		return nil
	}
	b, _ := io.ReadAll(f)
	return b
}

// Tail is the last n lines of the process's log.
func (p *Proc) Tail(n int) string { return tailLines(string(p.Log()), n) }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// readyz asks the gateway at addr for GET /readyz.
func (c *Cluster) readyz(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.poll.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /readyz at %s: %s", addr, resp.Status)
	}
	return nil
}
