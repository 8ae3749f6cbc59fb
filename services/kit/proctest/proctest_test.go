package proctest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The harness is tested against a stand-in for backlogd: this test binary,
// re-executed with PROCTEST_FAKE set, speaks enough of backlogd's command
// line, health service, /readyz and "serving" log lines, in a few
// milliseconds. The real binary is exercised by the suites that use the
// harness (backlogd/e2e, reliability, bench).
func TestMain(m *testing.M) {
	if mode := os.Getenv("PROCTEST_FAKE"); mode != "" {
		os.Exit(fakeBacklogd(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeBacklogd modes: "serve"; "refuse" (exits 1 at start with a message
// on stderr); "port-taken-once" (the first run in a data dir fails to bind);
// "hang" (never listens). PROCTEST_TERM_EXIT sets the exit code on SIGTERM.
func fakeBacklogd(mode string, args []string) int {
	flags := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		flags[k] = v
	}
	logf := func(level, msg, kv string) {
		fmt.Fprintf(os.Stderr, `{"level":%q,"msg":%q%s}`+"\n", level, msg, kv)
	}
	logf("debug", "args", fmt.Sprintf(`,"args":%q`, strings.Join(args, " ")))
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "BACKLOG_") {
			logf("error", "a BACKLOG_ variable reached the process", "")
			return 2
		}
	}
	dataDir := flags["data-dir"]
	switch mode {
	case "refuse":
		logf("error", "refusing to start: automation.db is missing but its marker exists", "")
		return 1
	case "port-taken-once":
		marker := filepath.Join(dataDir, "tried")
		if _, err := os.Stat(marker); err != nil {
			_ = os.WriteFile(marker, nil, 0o600)
			logf("error", "listen tcp "+flags["http-addr"]+": bind: address already in use", "")
			return 1
		}
	case "hang":
		time.Sleep(time.Minute)
		return 0
	}
	if err := os.WriteFile(filepath.Join(dataDir, "operator-token"), []byte("op-token\n"), 0o600); err != nil {
		logf("error", err.Error(), "")
		return 1
	}
	targets := Targets
	if t := flags["target"]; t != "all" {
		targets = strings.Split(t, ",")
	}
	var stops []func()
	for _, t := range targets {
		addr := flags[t+"-listen-addr"]
		if addr == "" {
			addr = flags[t+"-addr"]
		}
		if t == TargetGateway {
			addr = flags["http-addr"]
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			logf("error", err.Error(), "")
			return 1
		}
		if t == TargetGateway {
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/readyz" {
					http.NotFound(w, r)
				}
			})}
			go srv.Serve(lis)
			stops = append(stops, func() { srv.Close() })
		} else {
			srv := grpc.NewServer()
			healthpb.RegisterHealthServer(srv, health.NewServer())
			go srv.Serve(lis)
			stops = append(stops, srv.GracefulStop)
		}
		if lvl := flags["log-level"]; lvl == "debug" || lvl == "info" {
			logf("info", "serving", fmt.Sprintf(`,"service":%q,"addr":%q`, t, lis.Addr().String()))
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	for _, s := range stops {
		s()
	}
	if os.Getenv("PROCTEST_TERM_EXIT") != "" {
		return 3
	}
	return 0
}

func fakeCluster(t *testing.T, layout Layout, env ...string) *Cluster {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCluster(Config{
		Binary: self, Dir: t.TempDir(), Layout: layout,
		// Under -race, the stand-in would sleep a second at exit.
		Env:          append([]string{"GORACE=atexit_sleep_ms=0"}, env...),
		ReadyTimeout: 5 * time.Second, StopTimeout: 5 * time.Second, PollInterval: 5 * time.Millisecond,
		Logf: t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			c.DumpLogs(t.Logf, nil)
		}
	})
	return c
}

func TestFreeAddrsNeverRepeat(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 10 {
				got, err := FreeAddrs(5)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, a := range got {
					if seen[a] {
						t.Errorf("%s handed out twice", a)
					}
					seen[a] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != 20*10*5 {
		t.Fatalf("got %d addresses, want %d", len(seen), 20*10*5)
	}
	// Handed out means free: each can be bound.
	for a := range seen {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Fatalf("%s is not a loopback address", a)
		}
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Logf("%s was taken since (another test's listener): %v", a, err)
			continue
		}
		l.Close()
		break
	}
}

// A process that refuses to start is reported with what it said, and the
// refusal is not reported again by a later Stop.
func TestRefusalIsReportedWithStderr(t *testing.T) {
	t.Parallel()
	c := fakeCluster(t, All(), "PROCTEST_FAKE=refuse")
	err := c.Start(context.Background())
	var se *StartError
	if !errors.As(err, &se) {
		t.Fatalf("Start: %v, want a *StartError", err)
	}
	if se.Proc != "all" || !se.Exited || se.PortTaken() {
		t.Errorf("StartError %+v: want process all, exited, no port taken", se)
	}
	if !strings.Contains(se.Log, "refusing to start: automation.db is missing") || !strings.Contains(se.Tail(1), "refusing") {
		t.Errorf("StartError.Log does not hold the refusal:\n%s", se.Log)
	}
	if !strings.Contains(err.Error(), "exited before it was ready: exit status 1") {
		t.Errorf("error %q does not say how it exited", err)
	}
	if c.Procs()[0].Running() {
		t.Error("the refusing process is reported running")
	}
	if err := c.Stop(); err != nil {
		t.Errorf("Stop after a reported refusal: %v", err)
	}
}

func TestNotReadyInTimeIsKilled(t *testing.T) {
	t.Parallel()
	c := fakeCluster(t, All(), "PROCTEST_FAKE=hang")
	c.cfg.ReadyTimeout = 200 * time.Millisecond
	err := c.Start(context.Background())
	var se *StartError
	if !errors.As(err, &se) || se.Exited || !strings.Contains(se.Error(), "not ready after 200ms") {
		t.Fatalf("Start: %v, want not ready after 200ms", err)
	}
	if p := c.Procs()[0]; p.Running() {
		t.Error("a process that never became ready was left running")
	}
}

func TestPortTakenRetriesOnFreshPorts(t *testing.T) {
	t.Parallel()
	self, _ := os.Executable()
	var notes []string
	c, err := NewCluster(Config{Binary: self, Dir: t.TempDir(), Layout: All(), Env: []string{"PROCTEST_FAKE=port-taken-once", "GORACE=atexit_sleep_ms=0"},
		PollInterval: 5 * time.Millisecond, Logf: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Kill()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "retrying on fresh ports") {
		t.Errorf("notes %q: want one retry", notes)
	}
	if n := strings.Count(string(c.Procs()[0].Log()), `"msg":"args"`); n != 2 {
		t.Errorf("%d runs logged, want 2", n)
	}
}

func TestSplitLifecycle(t *testing.T) {
	t.Setenv("BACKLOG_DATA_DIR", "/nonexistent") // must not reach the processes
	c := fakeCluster(t, Split(), "PROCTEST_FAKE=serve")
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var names []string
	addrs := map[string]bool{}
	for _, p := range c.Procs() {
		names = append(names, p.Name)
		if !p.Running() || p.Pid() == 0 || p.ReadyIn() <= 0 {
			t.Errorf("%s: running %v, pid %d, ready in %v", p.Name, p.Running(), p.Pid(), p.ReadyIn())
		}
		if len(p.Targets) != 1 || p.Addr(p.Targets[0]) != c.Addr(p.Targets[0]) || addrs[p.Addr(p.Targets[0])] {
			t.Errorf("%s: targets %v, address %q (cluster %q)", p.Name, p.Targets, p.Addr(p.Targets[0]), c.Addr(p.Targets[0]))
		}
		addrs[p.Addr(p.Targets[0])] = true
		run := string(p.RunLog())
		for _, want := range []string{"-target=" + p.Name, "-data-dir=" + p.DataDir, "-log-level=debug",
			"-service-token-file=" + filepath.Join(c.Dir(), "service-token"), "-vault-addr=" + c.Addr("vault"), "-http-addr=" + c.Addr("gateway")} {
			if !strings.Contains(run, want) {
				t.Errorf("%s was not given %s: %s", p.Name, want, run)
			}
		}
		if strings.Contains(run, "listen-addr") {
			t.Errorf("%s was given a listen address apart from its cluster address: %s", p.Name, run)
		}
	}
	if !slices.Equal(names, Targets) {
		t.Errorf("split processes %v, want %v", names, Targets)
	}
	if got := c.ServiceTokenPath(); got != filepath.Join(c.Dir(), "service-token") {
		t.Errorf("ServiceTokenPath %q", got)
	}
	if tok, err := c.ReadOperatorToken(); err != nil || tok != "op-token" {
		t.Errorf("ReadOperatorToken: %q, %v", tok, err)
	}
	if err := c.Health(ctx, c.Addr("vault"), ""); err != nil {
		t.Errorf("Health of vault: %v", err)
	}

	// One process killed and started again, alone, on the same address.
	cred := c.ProcFor(TargetCredential)
	addr := cred.Addr(TargetCredential)
	cred.Kill()
	if cred.Running() {
		t.Fatal("killed, still running")
	}
	if exited, err := cred.Exited(); !exited || err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("after Kill: exited %v, %v", exited, err)
	}
	if err := cred.Start(ctx, "-extra-for-this-run"); err != nil {
		t.Fatal(err)
	}
	if cred.Addr(TargetCredential) != addr || !strings.Contains(string(cred.RunLog()), "-extra-for-this-run") {
		t.Error("a process started alone changed its address or lost its extra flag")
	}
	if strings.Count(string(cred.Log()), `"msg":"args"`) != 2 || strings.Count(string(cred.RunLog()), `"msg":"args"`) != 1 {
		t.Error("Log should hold both runs, RunLog the last")
	}

	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Addr("gateway") == "" || !c.LogsContain(`"msg":"serving"`) || !c.LogsMatch(regexp.MustCompile(`"service":"vault","addr":"127\.0\.0\.1:\d+"`)) {
		t.Error("log helpers do not see the serving lines")
	}
	var dumped []string
	c.DumpLogs(func(f string, a ...any) { dumped = append(dumped, fmt.Sprintf(f, a...)) }, func(s string) string { return strings.ReplaceAll(s, "serving", "[x]") })
	if len(dumped) != 5 || !strings.Contains(dumped[0], "credential process log (split layout)") || strings.Contains(strings.Join(dumped, ""), `"serving"`) {
		t.Errorf("DumpLogs: %q", dumped)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("a second Stop: %v", err)
	}
}

// A process that exits non-zero on SIGTERM (a race report does) fails Stop.
func TestStopReportsABadExit(t *testing.T) {
	t.Parallel()
	c := fakeCluster(t, All(), "PROCTEST_FAKE=serve", "PROCTEST_TERM_EXIT=3")
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err == nil || !strings.Contains(err.Error(), "exited after SIGTERM with exit status 3") {
		t.Errorf("Stop: %v, want exit status 3", err)
	}
}

func TestLayouts(t *testing.T) {
	t.Parallel()
	if _, err := NewCluster(Config{Binary: "x", Dir: "d", Layout: Layout{Procs: []ProcSpec{{Name: "a"}, {Name: "a"}}}}); err == nil {
		t.Error("repeated process names accepted")
	}
	if _, err := NewCluster(Config{Binary: "x", Dir: "d", Layout: Layout{Procs: []ProcSpec{{Name: "a", Targets: []string{"nope"}}}}}); err == nil {
		t.Error("unknown target accepted")
	}
	// Two replicas of a service: the second listens on its own address,
	// and every process is told the first's.
	c, err := NewCluster(Config{Binary: "x", Dir: "d", Layout: Layout{Name: "replicas", Procs: []ProcSpec{
		{Name: "cred-1", Targets: []string{"credential"}}, {Name: "cred-2", Targets: []string{"credential"}}, {Name: "rest", Targets: []string{"automation", "agent", "vault", "gateway"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.allocate(); err != nil {
		t.Fatal(err)
	}
	second := c.Proc("cred-2")
	flags := strings.Join(c.addrFlags(second), " ")
	if !strings.Contains(flags, "-credential-addr="+c.Addr("credential")) || !strings.Contains(flags, "-credential-listen-addr="+second.Addr("credential")) ||
		c.Addr("credential") == second.Addr("credential") || c.ProcFor("credential").Name != "cred-1" {
		t.Errorf("replica flags: %s", flags)
	}
	for _, tc := range []struct {
		args []string
		want bool
	}{{nil, true}, {[]string{"-log-level=warn"}, false}, {[]string{"-log-level=warn", "--log-level=info"}, true}, {[]string{"-log-level", "error"}, false}} {
		if got := logsInfo(tc.args); got != tc.want {
			t.Errorf("logsInfo(%q) = %v", tc.args, got)
		}
	}
}
