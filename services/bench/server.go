package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RepoRoot finds the repository root (the directory holding go.work): from
// this source file when the harness runs from source (go run, go test),
// otherwise upwards from the working directory.
func RepoRoot() (string, error) {
	var starts []string
	if _, self, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(self))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
				if _, err := os.Stat(filepath.Join(d, "services", "backlogd")); err == nil {
					return d, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("cannot find the repository root (a directory with go.work and services/backlogd); pass -backlogd")
}

// BuildBacklogd compiles backlogd into dir and returns the binary's path.
// It builds exactly what `make build` builds, without -race.
func BuildBacklogd(ctx context.Context, dir string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "backlogd")
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", out, "./services/backlogd/cmd/backlogd")
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build backlogd: %v\n%s", err, buf.String())
	}
	return out, nil
}

// Addrs are one backlogd's listen addresses (loopback, free ports).
type Addrs struct {
	HTTP, Credential, Automation, Agent, Vault string
}

func freeAddrs() (Addrs, error) {
	var out [5]string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Addrs{}, fmt.Errorf("picking a free port: %w", err)
		}
		ls = append(ls, l)
		out[i] = l.Addr().String()
	}
	return Addrs{HTTP: out[0], Credential: out[1], Automation: out[2], Agent: out[3], Vault: out[4]}, nil
}

// Server is a backlogd process (-target=all) on loopback.
type Server struct {
	Binary  string
	DataDir string
	LogPath string
	Addrs   Addrs
	// VaultKEK is the vault's key-encryption key file (as `make run` makes
	// one), so that the vault is unsealed; kept outside the data dir.
	VaultKEK string
	// ExtraArgs are appended to the command line (the vault's egress flags
	// for the http-request scenario's local HTTPS target).
	ExtraArgs []string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Start starts backlogd and waits until GET /readyz answers 200. It returns
// the time from process start to that answer. Ports are chosen free; if one
// was taken in between (the process exits before it is ready), Start tries
// again with fresh ones.
func (s *Server) Start(ctx context.Context) (time.Duration, error) {
	var lastErr error
	for range 3 {
		if s.Addrs == (Addrs{}) {
			a, err := freeAddrs()
			if err != nil {
				return 0, err
			}
			s.Addrs = a
		}
		d, err := s.startOnce(ctx)
		if err == nil {
			return d, nil
		}
		lastErr = err
		if !s.exited() || !strings.Contains(s.tailLog(), "address already in use") {
			return 0, err
		}
		s.Addrs = Addrs{}
	}
	return 0, lastErr
}

func (s *Server) startOnce(ctx context.Context) (time.Duration, error) {
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	a := s.Addrs
	args := []string{"-target=all", "-data-dir=" + s.DataDir, "-log-level=warn",
		"-http-addr=" + a.HTTP, "-credential-addr=" + a.Credential, "-automation-addr=" + a.Automation,
		"-agent-addr=" + a.Agent, "-vault-addr=" + a.Vault}
	if s.VaultKEK != "" {
		args = append(args, "-vault-kek-file="+s.VaultKEK)
	}
	args = append(args, s.ExtraArgs...)
	cmd := exec.Command(s.Binary, args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	// Ready-polling client: a fresh connection per poll would measure dials.
	client := &http.Client{Timeout: time.Second}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return 0, err
	}
	s.cmd, s.done, s.waitErr = cmd, make(chan struct{}), nil
	go func() {
		s.waitErr = cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	url := "http://" + a.HTTP + "/readyz"
	deadline := t0.Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(t0), nil
			}
		}
		if s.exited() {
			return 0, fmt.Errorf("backlogd exited before it was ready (%v): %s", s.waitErr, s.tailLog())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Stop()
			return 0, fmt.Errorf("backlogd not ready after 30s: %s", s.tailLog())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (s *Server) exited() bool {
	if s.done == nil {
		return true
	}
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Pid is the running process's id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Stop sends SIGTERM and waits (SIGKILL after 15 s).
func (s *Server) Stop() error {
	if s.cmd == nil || s.exited() {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	return nil
}

// tailLog is the end of the process log, for error messages.
func (s *Server) tailLog() string {
	b, _ := os.ReadFile(s.LogPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// LogLines counts the lines backlogd wrote at -log-level=warn, and those at
// level error (worth a look after a run: -keep keeps the log).
func (s *Server) LogLines() (all, errs int) {
	f, err := os.Open(s.LogPath)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		all++
		if bytes.Contains(sc.Bytes(), []byte(`"level":"error"`)) {
			errs++
		}
	}
	return all, errs
}

// cleanEnv is the harness's environment without BACKLOG_* variables, which
// would otherwise configure backlogd behind the flags' back.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BACKLOG_") {
			env = append(env, kv)
		}
	}
	return env
}

// ProcStatus reads a field of /proc/<pid>/status in bytes (e.g. "RssAnon").
func ProcStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			break
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, err
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		return n, nil
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTick = 100

// ProcessCPU is the user + system CPU time a process has used so far.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after it are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTick, nil
}

// writeKEK writes a fresh 32-byte key-encryption key, hex, mode 0600.
func writeKEK(path string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o600)
}
