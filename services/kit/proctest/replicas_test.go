package proctest

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Replicas(2): two processes per target, each on its own address, every one
// told the comma list of a service's replicas, each replica its own listen
// address; a service's replicas share its data dir, gateways do not.
func TestReplicasLayout(t *testing.T) {
	t.Parallel()
	c := fakeCluster(t, Replicas(2), "PROCTEST_FAKE=serve")
	c.cfg.Flags = []string{"-store=etcd", "-etcd-endpoints=127.0.0.1:1,127.0.0.1:2"}
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if len(c.Procs()) != 2*len(Targets) {
		t.Fatalf("%d processes, want %d", len(c.Procs()), 2*len(Targets))
	}
	seen := map[string]bool{}
	for _, target := range Targets {
		procs := c.ProcsFor(target)
		addrs := c.Addrs(target)
		if len(procs) != 2 || len(addrs) != 2 || procs[0].Name != target+"-1" || procs[1].Name != target+"-2" {
			t.Fatalf("%s: processes %d, addresses %q", target, len(procs), addrs)
		}
		if addrs[0] != c.Addr(target) || addrs[0] == addrs[1] {
			t.Errorf("%s: Addrs %q, Addr %q", target, addrs, c.Addr(target))
		}
		for i, p := range procs {
			if p.Addr(target) != addrs[i] || seen[addrs[i]] {
				t.Errorf("%s: address %q repeated or not its own", p.Name, p.Addr(target))
			}
			seen[addrs[i]] = true
			wantDir := filepath.Join(c.Dir(), target)
			if target == TargetGateway {
				wantDir = filepath.Join(c.Dir(), p.Name)
			}
			if p.DataDir != wantDir {
				t.Errorf("%s: data dir %s, want %s", p.Name, p.DataDir, wantDir)
			}
		}
	}
	for _, p := range c.Procs() {
		run := string(p.RunLog())
		for _, target := range Targets {
			if target == TargetGateway {
				continue
			}
			want := "-" + target + "-addr=" + strings.Join(c.Addrs(target), ",")
			if !strings.Contains(run, want) {
				t.Errorf("%s was not given %s: %s", p.Name, want, run)
			}
			listen := "-" + target + "-listen-addr="
			if p.Serves(target) != strings.Contains(run, listen+p.Addr(target)) || strings.Count(run, listen) > 1 {
				t.Errorf("%s: listen address flags for %s wrong: %s", p.Name, target, run)
			}
		}
		for _, want := range []string{"-store=etcd", "-etcd-endpoints=127.0.0.1:1,127.0.0.1:2", "-service-token-file=" + filepath.Join(c.Dir(), "service-token")} {
			if !strings.Contains(run, want) {
				t.Errorf("%s was not given %s", p.Name, want)
			}
		}
		if p.Serves(TargetGateway) && !strings.Contains(run, "-http-addr="+p.Addr(TargetGateway)) {
			t.Errorf("%s does not listen on its own REST address: %s", p.Name, run)
		}
	}
	// A replica killed and started again keeps its address; the others run on.
	second := c.Proc("credential-2")
	second.Kill()
	if !c.Proc("credential-1").Running() {
		t.Fatal("killing one replica stopped the other")
	}
	if err := second.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if second.Addr(TargetCredential) != c.Addrs(TargetCredential)[1] {
		t.Error("a restarted replica moved")
	}
	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// Without AddrLists (every existing layout), one replica's address is the
// cluster address, as before.
func TestReplicasWithoutAddrLists(t *testing.T) {
	t.Parallel()
	l := Replicas(2)
	l.AddrLists = false
	c, err := NewCluster(Config{Binary: "x", Dir: t.TempDir(), Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.allocate(); err != nil {
		t.Fatal(err)
	}
	flags := c.addrFlags(c.Proc("vault-2"))
	if !slices.Contains(flags, "-vault-addr="+c.Addr(TargetVault)) || !slices.Contains(flags, "-vault-listen-addr="+c.Addrs(TargetVault)[1]) {
		t.Errorf("flags %q", flags)
	}
	for _, f := range flags {
		if strings.Contains(f, ",") {
			t.Errorf("a list without AddrLists: %s", f)
		}
	}
	if _, err := NewCluster(Config{Binary: "x", Dir: "d", Layout: Layout{Procs: []ProcSpec{{Name: "a", DataDir: "../x"}}}}); err == nil {
		t.Error("a data dir outside Dir accepted")
	}
	if l, err := LayoutNamed("replicas"); err != nil || !l.AddrLists || len(l.Procs) != 10 {
		t.Errorf("LayoutNamed(replicas): %+v, %v", l, err)
	}
}
