package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/agent"
	"github.com/backlog/controlplane/services/kit/auth"
	"github.com/backlog/controlplane/services/kit/credfmt"
	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/mount"
	"github.com/backlog/controlplane/services/kit/proctest"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/etcdstore"
)

// selfhaEtcd opens the agent store under prefix in the cluster, with a
// client of its own, as each replica's process would.
func selfhaEtcd(t *testing.T, c *proctest.EtcdCluster, prefix string) (store.Opener, *clientv3.Client) {
	t.Helper()
	cli, err := etcdstore.Dial(bg(), etcdstore.ClientConfig{Endpoints: c.Endpoints(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return func(name string, buckets []store.Bucket) (store.Backend, error) {
		return etcdstore.Open(bg(), cli, prefix, name, buckets, etcdstore.Options{Logger: zaptest.NewLogger(t)})
	}, cli
}

// selfhaReplica starts another agent service on h's credential service and
// clock, with its store opened by open (an etcd store that h's shares), on
// a loopback listener of its own, mounted as backlogd mounts it. Its
// credentials are recorded in h, as h's own are.
func selfhaReplica(t *testing.T, h *harness, open store.Opener, opts ...func(*agent.Config)) agentv1.AgentServiceClient {
	t.Helper()
	lg := zaptest.NewLogger(t)
	capture := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if r, ok := reply.(*credentialv1.RotateCredentialsResponse); ok {
			for _, c := range r.GetCredentials() {
				h.seen.add(c.GetCredential())
			}
			if err == nil {
				h.rotated.Add(1)
			}
		}
		return err
	}
	credConn, err := grpc.NewClient(h.env.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(capture),
		grpc.WithPerRPCCredentials(auth.ServiceCredentials{Token: h.env.ServiceToken}))
	if err != nil {
		t.Fatal(err)
	}
	cfg := agent.Config{Store: open, Logger: lg, Credential: credentialv1.NewCredentialInternalServiceClient(credConn), Now: h.clock.Now}
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	remote := auth.NewRemote(h.env.Internal, lg)
	go remote.Watch(ctx)
	srv := mount.New(svc, mount.Options{Name: "agent", Logger: lg, Auth: remote, ServiceToken: harnessServiceToken})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop(time.Second)
		cancel()
		svc.Close()
		credConn.Close()
	})
	return agentv1.NewAgentServiceClient(conn)
}

// selfhaRotate calls POST /v1/agents/self/rotate-key on client c.
func selfhaRotate(h *harness, c agentv1.AgentServiceClient, ctx context.Context, key, secret string) (*agentv1.RotateSelfKeyResponse, error) {
	resp, err := c.RotateSelfKey(as(ctx, key), &agentv1.RotateSelfKeyRequest{RotationSecret: secret})
	h.seen.add(resp.GetApiKey(), resp.GetRotationSecret())
	return resp, err
}

// TestSelfRotationLimitsAcrossReplicas: two agent services share one store
// in a real 3-member etcd cluster. The contract's limits hold across them:
// the per-address budget (3 per 15 minutes), the lockout after 5 wrong
// rotation secrets, and idempotent replays — however requests are spread
// over the two, one after another or all at once; and the replays in etcd
// hold no credential.
func TestSelfRotationLimitsAcrossReplicas(t *testing.T) {
	cluster := proctest.NewEtcdCluster(t, 3)

	t.Run("per address budget", func(t *testing.T) {
		open, _ := selfhaEtcd(t, cluster, "/selfha-rate")
		h := newHarness(t, func(c *agent.Config) { c.Store = open })
		open2, _ := selfhaEtcd(t, cluster, "/selfha-rate")
		replicas := []agentv1.AgentServiceClient{h.client, selfhaReplica(t, h, open2)}
		ws, owner := h.env.NewWorkspace(t, "acme")
		inst := h.installation(t, ws, owner, "app")
		created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
		key, secret := created.GetApiKey(), created.GetRotationSecret()

		// Three rotations from one address, spread over both replicas...
		ip := fromIP(bg(), "203.0.113.40")
		for i := range 3 {
			r, err := selfhaRotate(h, replicas[i%2], ip, key, secret)
			if err != nil {
				t.Fatalf("rotation %d on replica %d: %v", i+1, i%2, err)
			}
			key, secret = r.GetApiKey(), r.GetRotationSecret()
			h.clock.Advance(time.Minute)
		}
		// ...and the fourth is refused on either, with the same Retry-After.
		before := h.rotated.Load()
		for i, c := range replicas {
			_, err := selfhaRotate(h, c, ip, key, secret)
			wantCode(t, err, codes.ResourceExhausted, "ROTATION_RATE_LIMITED")
			if wait, ok := retryDelay(err); !ok || wait < 11*time.Minute+55*time.Second || wait > 12*time.Minute+time.Second {
				t.Fatalf("replica %d: retry delay %v %v, want about 12m", i, wait, ok)
			}
		}
		if h.rotated.Load() != before {
			t.Fatal("a refused attempt rotated")
		}

		// All at once: twelve agents rotate from one fresh address, six on
		// each replica. Exactly three get through, whoever wins the races.
		const n = 12
		pairs := make([][2]string, n)
		for i := range n {
			c := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: fmt.Sprintf("racer-%d", i)})
			pairs[i] = [2]string{c.GetApiKey(), c.GetRotationSecret()}
		}
		crowd := fromIP(bg(), "203.0.113.41")
		errsOut := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				_, errsOut[i] = selfhaRotate(h, replicas[i%2], crowd, pairs[i][0], pairs[i][1])
			})
		}
		close(start)
		wg.Wait()
		ok, limited := 0, 0
		for i, err := range errsOut {
			switch {
			case err == nil:
				ok++
			case status.Code(err) == codes.ResourceExhausted:
				limited++
			default:
				t.Fatalf("racer %d: %v", i, err)
			}
		}
		if ok != 3 || limited != n-3 {
			t.Fatalf("%d rotated and %d refused of %d at once from one address; want 3 and %d", ok, limited, n, n-3)
		}
		// Once the window has passed, the address may rotate again.
		h.clock.Advance(12*time.Minute + time.Second)
		if _, err := selfhaRotate(h, replicas[1], ip, key, secret); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("lockout", func(t *testing.T) {
		wide := func(c *agent.Config) { c.SelfRotationsPerIP = 1000 }
		open, _ := selfhaEtcd(t, cluster, "/selfha-lock")
		h := newHarness(t, wide, func(c *agent.Config) { c.Store = open })
		open2, _ := selfhaEtcd(t, cluster, "/selfha-lock")
		replicas := []agentv1.AgentServiceClient{h.client, selfhaReplica(t, h, open2, wide)}
		ws, owner := h.env.NewWorkspace(t, "acme")
		inst := h.installation(t, ws, owner, "app")
		created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
		key, secret := created.GetApiKey(), created.GetRotationSecret()
		guesser := fromIP(bg(), "192.0.2.50")
		guess := func(c agentv1.AgentServiceClient, ctx context.Context, key string) error {
			_, err := selfhaRotate(h, c, ctx, key, credfmt.New(credfmt.RotationSecret))
			return err
		}

		// Five wrong secrets spread over both replicas lock the key there on
		// both: even the right pair is refused, and nothing rotates.
		for i := range 5 {
			wantCode(t, guess(replicas[i%2], guesser, key), codes.Unauthenticated, "INVALID_ROTATION_SECRET")
		}
		for i, c := range replicas {
			_, err := selfhaRotate(h, c, guesser, key, secret)
			wantCode(t, err, codes.ResourceExhausted, "ROTATION_LOCKED_OUT")
			if wait, ok := retryDelay(err); !ok || wait <= 14*time.Minute || wait > 15*time.Minute+time.Second {
				t.Fatalf("replica %d: retry delay %v %v", i, wait, ok)
			}
		}
		if h.rotated.Load() != 0 {
			t.Fatal("a locked-out attempt rotated")
		}
		// Elsewhere the pair works, on either replica.
		r, err := selfhaRotate(h, replicas[1], fromIP(bg(), "192.0.2.51"), key, secret)
		if err != nil {
			t.Fatal(err)
		}
		key = r.GetApiKey()

		// All at once: ten wrong secrets from one address, five on each
		// replica. Exactly five are tried (401); the rest find the key
		// locked (429).
		crowd := fromIP(bg(), "192.0.2.52")
		errsOut := make([]error, 10)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range errsOut {
			wg.Go(func() {
				<-start
				errsOut[i] = guess(replicas[i%2], crowd, key)
			})
		}
		close(start)
		wg.Wait()
		wrong, locked := 0, 0
		for i, err := range errsOut {
			switch errs.Reason(err) {
			case "INVALID_ROTATION_SECRET":
				wrong++
			case "ROTATION_LOCKED_OUT":
				locked++
			default:
				t.Fatalf("guess %d: %v", i, err)
			}
		}
		if wrong != 5 || locked != 5 {
			t.Fatalf("%d guesses tried and %d locked out at once; want 5 and 5", wrong, locked)
		}
	})

	t.Run("replays", func(t *testing.T) {
		open, cli := selfhaEtcd(t, cluster, "/selfha-replay")
		h := newHarness(t, func(c *agent.Config) { c.Store = open })
		open2, _ := selfhaEtcd(t, cluster, "/selfha-replay")
		replicas := []agentv1.AgentServiceClient{h.client, selfhaReplica(t, h, open2)}
		ws, owner := h.env.NewWorkspace(t, "acme")
		inst := h.installation(t, ws, owner, "app")
		var idemKeys []string
		var sealKeys [][]byte

		// A keyed rotation on one replica, retried on the other (and back):
		// the same pair every time, one rotation.
		created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
		key, secret := created.GetApiKey(), created.GetRotationSecret()
		ip := fromIP(bg(), "198.51.100.70")
		idemKeys = append(idemKeys, "selfha-8d1e-first")
		sealKeys = append(sealKeys, agent.ReplaySealKey(idemKeys[0], key, secret))
		first, err := selfhaRotate(h, replicas[0], withIdem(ip, idemKeys[0]), key, secret)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			again, err := selfhaRotate(h, replicas[(i+1)%2], withIdem(ip, idemKeys[0]), key, secret)
			if err != nil {
				t.Fatalf("retry %d on replica %d: %v", i, (i+1)%2, err)
			}
			if again.GetApiKey() != first.GetApiKey() || again.GetRotationSecret() != first.GetRotationSecret() {
				t.Fatalf("retry %d on replica %d got another pair", i, (i+1)%2)
			}
		}
		if h.rotated.Load() != 1 {
			t.Fatalf("%d rotations, want 1", h.rotated.Load())
		}

		// Duplicates sent to both replicas at once: they wait for the
		// first, wherever it runs, and get its pair.
		key, secret = first.GetApiKey(), first.GetRotationSecret()
		idemKeys = append(idemKeys, "selfha-8d1e-second")
		sealKeys = append(sealKeys, agent.ReplaySealKey(idemKeys[1], key, secret))
		const n = 6
		results := make([]*agentv1.RotateSelfKeyResponse, n)
		errsOut := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				results[i], errsOut[i] = selfhaRotate(h, replicas[i%2], withIdem(fromIP(bg(), "198.51.100.71"), idemKeys[1]), key, secret)
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errsOut[i] != nil {
				t.Fatalf("duplicate %d: %v", i, errsOut[i])
			}
			if results[i].GetApiKey() != results[0].GetApiKey() {
				t.Fatal("duplicates on two replicas got different pairs")
			}
		}
		if h.rotated.Load() != 2 {
			t.Fatalf("%d rotations, want 2", h.rotated.Load())
		}
		if _, err := h.self(results[0].GetApiKey()); err != nil {
			t.Fatal(err)
		}

		// The raw bytes in etcd hold neither pair — old or new, key or
		// secret, in full or their random part — nor the Idempotency-Keys,
		// nor the keys the replays are sealed under. (Replays are there: a
		// look at nothing would prove nothing.)
		if n := h.svc.Replays(); n != 2 {
			t.Fatalf("%d replays stored, want 2", n)
		}
		resp, err := cli.Get(bg(), "/selfha-replay/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var raw bytes.Buffer
		for _, kv := range resp.Kvs {
			raw.Write(kv.Key)
			raw.Write(kv.Value)
		}
		if !bytes.Contains(raw.Bytes(), []byte("agent_self_rotation_replays")) {
			t.Fatal("no replay among the etcd keys")
		}
		selfhaNoSecrets(t, "etcd", raw.Bytes(), h.seen.list(), idemKeys, sealKeys)
	})
}

// TestSelfRotationReplayStoredSealed: the bbolt file, read raw, holds
// neither the presented pair, nor the new one, nor the Idempotency-Key,
// nor the key the replay is sealed under.
func TestSelfRotationReplayStoredSealed(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	key, secret := created.GetApiKey(), created.GetRotationSecret()
	const idemKey = "selfha-5b07-sealed"
	ip := withIdem(fromIP(bg(), "198.51.100.80"), idemKey)
	first := h.mustSelfRotate(t, ip, key, secret)
	if again := h.mustSelfRotate(t, ip, key, secret); again.GetApiKey() != first.GetApiKey() {
		t.Fatal("the retry got another pair")
	}
	if n := h.svc.Replays(); n != 1 {
		t.Fatalf("%d replays stored, want 1", n)
	}
	sealKey := agent.ReplaySealKey(idemKey, key, secret)
	h.stop()
	raw, err := os.ReadFile(filepath.Join(h.dataDir, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	selfhaNoSecrets(t, "agent.db", raw, h.seen.list(), []string{idemKey}, [][]byte{sealKey})
}

// selfhaNoSecrets fails the test if raw holds any credential (in full or
// its random part), Idempotency-Key or sealing key.
func selfhaNoSecrets(t *testing.T, where string, raw []byte, creds, idemKeys []string, sealKeys [][]byte) {
	t.Helper()
	if len(creds) < 4 {
		t.Fatalf("only %d credentials seen", len(creds))
	}
	for _, s := range creds {
		i := strings.LastIndexByte(s, '_')
		for _, needle := range []string{s, s[i+1 : len(s)-6]} {
			if bytes.Contains(raw, []byte(needle)) {
				t.Errorf("%s holds a %s credential", where, s[:i])
			}
		}
	}
	for _, k := range idemKeys {
		if bytes.Contains(raw, []byte(k)) {
			t.Errorf("%s holds an Idempotency-Key", where)
		}
	}
	for _, k := range sealKeys {
		if len(k) != 32 || bytes.Contains(raw, k) {
			t.Errorf("%s holds a replay's sealing key (or the key is not one)", where)
		}
	}
}

// TestSelfRotationBudgetFailsClosed: when the store applies the spending of
// a token but its reply is lost, the attempt fails (503, nothing rotated)
// and the token stays spent: a lost reply can lose a token, never hand one
// out twice.
func TestSelfRotationBudgetFailsClosed(t *testing.T) {
	h := newHarness(t)
	ws, owner := h.env.NewWorkspace(t, "acme")
	inst := h.installation(t, ws, owner, "app")
	created := h.createAgent(t, ws, owner, inst, &agentv1.CreateAgentRequest{Name: "bot"})
	key, secret := created.GetApiKey(), created.GetRotationSecret()
	ip := fromIP(bg(), "198.51.100.90")

	h.svc.DB().(store.Faults).SetLoseReply(true)
	_, err := h.selfRotate(ip, key, secret)
	h.svc.DB().(store.Faults).SetLoseReply(false)
	wantCode(t, err, codes.Unavailable, "")
	if h.rotated.Load() != 0 {
		t.Fatal("an attempt whose budget was not known to be spent rotated")
	}
	for range 2 {
		r := h.mustSelfRotate(t, ip, key, secret)
		key, secret = r.GetApiKey(), r.GetRotationSecret()
	}
	_, err = h.selfRotate(ip, key, secret)
	wantCode(t, err, codes.ResourceExhausted, "ROTATION_RATE_LIMITED")
}
