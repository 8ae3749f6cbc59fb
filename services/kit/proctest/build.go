// Package proctest runs backlogd as real processes for the suites that need
// them: the end-to-end tests, the reliability suites and the benchmark
// harness. It builds the binary, picks free loopback ports (never the same
// one twice in a test binary), starts the processes of a layout in order,
// waits until each is healthy, captures each process's output to a file, and
// stops, kills and restarts them.
//
// It is an ordinary package (the benchmark harness uses it outside tests)
// and reports failures as errors; the suites turn them into t.Fatal.
// After etcd's tests/framework/e2e (cluster.go, etcd_process.go).
package proctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// RepoRoot finds the repository root (the directory holding go.work and
// services/backlogd): upwards from this source file when the caller runs
// from source (go test, go run), otherwise upwards from the working
// directory.
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
			if isFile(filepath.Join(d, "go.work")) && isDir(filepath.Join(d, "services", "backlogd")) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("cannot find the repository root (a directory with go.work and services/backlogd)")
}

func isFile(p string) bool { fi, err := os.Stat(p); return err == nil && !fi.IsDir() }
func isDir(p string) bool  { fi, err := os.Stat(p); return err == nil && fi.IsDir() }

// Build compiles services/backlogd/cmd/backlogd into outDir, from inside
// its module (so it builds with go.work and with GOWORK=off alike), and
// returns the binary's path. buildFlags go to `go build` (e.g. "-race"). A test binary
// calls it once, from TestMain.
func Build(ctx context.Context, repoRoot, outDir string, buildFlags ...string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(outDir, "backlogd")
	args := append([]string{"build", "-o", out}, buildFlags...)
	args = append(args, "./cmd/backlogd")
	cmd := exec.CommandContext(ctx, goTool, args...)
	cmd.Dir = filepath.Join(repoRoot, "services", "backlogd")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build backlogd: %v\n%s", err, buf.String())
	}
	return out, nil
}

// CleanEnv is this process's environment without BACKLOG_* variables:
// backlogd reads BACKLOG_<FLAG> for every flag not given, so a developer's
// settings would otherwise configure it behind the flags' back.
func CleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BACKLOG_") {
			out = append(out, kv)
		}
	}
	return out
}
