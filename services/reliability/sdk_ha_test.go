package reliability

// The Go SDK in etcd mode with two credential replicas (real backlogd
// processes on a real etcd): a revocation made on either replica reaches the SDK's cache
// before the revoking call returns; with one replica killed, calls fail
// over to the other and nothing is cached; restarted, caching resumes.

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/sdk"
)

// sdkCredentialReplicas starts two credential replicas (and nothing else)
// on a one-member etcd: all the SDK talks to.
func sdkCredentialReplicas(t *testing.T) *proctest.Cluster {
	t.Helper()
	etcd := proctest.NewEtcdCluster(t, 1)
	base := t.TempDir()
	spec := func(name string) proctest.ProcSpec {
		return proctest.ProcSpec{Name: name, Targets: []string{proctest.TargetCredential}, DataDir: proctest.TargetCredential}
	}
	c, err := proctest.NewCluster(proctest.Config{
		Binary: binary, Dir: base, ServiceTokenFile: filepath.Join(base, "service-token"), Logf: t.Logf,
		Layout: proctest.Layout{Name: "sdk-credential-replicas", AddrLists: true, Procs: []proctest.ProcSpec{spec("credential-1"), spec("credential-2")}},
		Flags:  []string{"-store=etcd", "-etcd-endpoints=" + etcd.EndpointsFlag(), "-etcd-prefix=/sdk-test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			c.DumpLogs(t.Logf, redact)
		}
	})
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSDKVerifierEtcdReplicas(t *testing.T) {
	if binary == "" {
		t.Skip("needs the backlogd binary (built by TestMain; not built when fuzzing)")
	}
	c := sdkCredentialReplicas(t)
	op, err := c.ReadOperatorToken()
	if err != nil {
		t.Fatal(err)
	}
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}
	pub := credentialv1.NewCredentialServiceClient(c.Conn(c.Addr(proctest.TargetCredential)))
	wsResp, err := pub.CreateWorkspace(as(op), &credentialv1.CreateWorkspaceRequest{Name: "sdk-ha"})
	if err != nil {
		t.Fatal(err)
	}
	wsID, owner := wsResp.GetWorkspace().GetId(), wsResp.GetToken()
	var ids, pats []string
	for i := range 4 {
		m, err := pub.CreateMember(as(owner), &credentialv1.CreateMemberRequest{WorkspaceId: wsID, Name: fmt.Sprintf("m%d", i), Role: "member"})
		if err != nil {
			t.Fatal(err)
		}
		ids, pats = append(ids, m.GetMember().GetId()), append(pats, m.GetToken())
	}
	replicas := c.Addrs(proctest.TargetCredential)
	if len(replicas) != 2 {
		t.Fatalf("credential replicas %v, want 2", replicas)
	}
	lg, logs := sdkLogger()
	v, err := sdk.NewVerifier(replicas, sdk.WithServiceTokenFile(c.ServiceTokenPath()), sdk.WithLogger(lg))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	sdkWaitCaching(t, v, true)
	verify := func(pat string) error { _, err := v.Verify(context.Background(), pat); return err }
	// removeVia removes member i through the credential replica at addr.
	removeVia := func(i int, addr string) {
		t.Helper()
		_, err := credentialv1.NewCredentialServiceClient(c.Conn(addr)).DeleteMember(as(owner),
			&credentialv1.DeleteMemberRequest{WorkspaceId: wsID, MemberId: ids[i]})
		if err != nil {
			t.Fatalf("remove member %d via %s: %v", i, addr, err)
		}
	}

	// A revocation made on either replica: refused on the next call, though
	// the caller was cached.
	for i, addr := range replicas {
		hits := v.Stats().CacheHits
		if verify(pats[i]) != nil || verify(pats[i]) != nil || v.Stats().CacheHits == hits {
			t.Fatalf("member %d: not verified, or not from the cache: %+v", i, v.Stats())
		}
		removeVia(i, addr)
		if err := verify(pats[i]); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("member %d removed via replica %d, then: %v", i, i+1, err)
		}
	}
	if st := v.Stats(); st.Replicas[0].Authenticated == 0 || st.Replicas[1].Authenticated == 0 {
		t.Errorf("calls not spread over both replicas: %+v", st)
	}

	// One replica killed: the other answers, nothing is cached.
	first := c.ProcsFor(proctest.TargetCredential)[0]
	first.Kill()
	sdkWaitCaching(t, v, false)
	for range 3 {
		if err := verify(pats[2]); err != nil {
			t.Fatalf("no failover: %v", err)
		}
	}
	removeVia(2, replicas[1])
	if err := verify(pats[2]); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("removed while a replica was down, then: %v", err)
	}

	// Restarted: caching resumes, and its revocations still arrive.
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	sdkWaitCaching(t, v, true)
	if verify(pats[3]) != nil || verify(pats[3]) != nil {
		t.Fatal("not verified after the restart")
	}
	removeVia(3, replicas[0])
	if err := verify(pats[3]); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("removed via the restarted replica, then: %v", err)
	}
	sdkNoCredentialLogged(t, logs)
}
