package reliability

// Crash durability: concurrent creates and rotations through REST, SIGKILL
// mid-write, restart on the same data dir, and then prove that nothing
// acknowledged was lost and nothing was left half-done.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
)

type crashConfig struct {
	rounds  int
	workers int
	// each round runs for a random time in [minRun, maxRun] before SIGKILL.
	minRun, maxRun time.Duration
}

// crashAuto is what the clients know about one automation.
type crashAuto struct {
	id    string
	owner int
	// acked are the secrets acknowledged (200 received), oldest first: the
	// create's, then every acknowledged rotation's.
	acked []string
	// deadChecked: acked[:deadChecked] were proven dead already.
	deadChecked int
	// uncertain: a rotation was sent and its answer was lost in a crash.
	// The live secret is then the last acknowledged one, or one that no
	// client ever saw (never both).
	uncertain bool
}

func (a *crashAuto) last() string { return a.acked[len(a.acked)-1] }

// crashFigures are a round's numbers, for the report.
type crashFigures struct {
	round                      int
	ran                        time.Duration
	ackedCreates, ackedRotates int64
	lostCreates, lostRotates   int64
	lostRotatesCommitted       int
	orphans                    int
	staleRecords               int
	// undoneCreates: records of creates lost in flight whose secret never
	// became live (marked pending; they count as no automation).
	undoneCreates []string
	// pendingMarkers: records still marked pending in the files.
	pendingMarkers              int
	boltFiles, boltKeys, boltOK int
	restart                     time.Duration
}

func (f crashFigures) String() string {
	return fmt.Sprintf("round %d: ran %s; acknowledged %d creates, %d rotations; in flight at SIGKILL: %d creates, %d rotations (%d of those rotations had committed); "+
		"bbolt check: %d/%d files clean, %d keys; orphan subjects with a live secret: %d; records naming a dead credential after a lost rotation: %d; "+
		"records marked pending: %d, of which creates whose secret never became live: %d; restart to ready: %s",
		f.round, f.ran.Round(time.Millisecond), f.ackedCreates, f.ackedRotates, f.lostCreates, f.lostRotates, f.lostRotatesCommitted,
		f.boltOK, f.boltFiles, f.boltKeys, f.orphans, f.staleRecords, f.pendingMarkers, len(f.undoneCreates), f.restart.Round(time.Millisecond))
}

func TestCrashDurability(t *testing.T) {
	runCrash(t, crashConfig{rounds: 3, workers: 16, minRun: 400 * time.Millisecond, maxRun: 900 * time.Millisecond})
}

func TestSoakCrashDurability(t *testing.T) {
	requireSoak(t)
	runCrash(t, crashConfig{rounds: 25, workers: 16, minRun: 200 * time.Millisecond, maxRun: 3 * time.Second})
}

func runCrash(t *testing.T, cfg crashConfig) {
	c := startCluster(t, layoutAll)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "crash")
	var autos []*crashAuto
	byID := map[string]*crashAuto{}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var all []crashFigures

	for round := 1; round <= cfg.rounds; round++ {
		f := crashFigures{round: round}
		runFor := cfg.minRun + time.Duration(rng.Int64N(int64(cfg.maxRun-cfg.minRun)+1))

		// Each automation belongs to one worker, so its rotations are
		// sequential and "the last acknowledged secret" is well defined.
		mine := make([][]*crashAuto, cfg.workers)
		for _, a := range autos {
			if !a.uncertain {
				mine[a.owner] = append(mine[a.owner], a)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var mu sync.Mutex // guards autos and byID while workers run
		var ackC, ackR, lostC, lostR atomic.Int64
		for w := range cfg.workers {
			seed := rng.Uint64()
			wg.Go(func() {
				wr := rand.New(rand.NewPCG(seed, uint64(w)))
				n := 0
				for ctx.Err() == nil {
					if len(mine[w]) == 0 || wr.IntN(100) < 35 {
						n++
						r, err := rc.do(ctx, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations", ws.OwnerToken,
							map[string]any{"name": fmt.Sprintf("r%d-w%d-%d", round, w, n), "scopes": []string{"automations:read"}})
						if err != nil {
							lostC.Add(1)
							return
						}
						if r.Status != http.StatusOK {
							t.Errorf("round %d: %s: want 200 before the crash", round, r)
							return
						}
						o := r.JSON()
						a := &crashAuto{id: o.str("automation.id"), owner: w, acked: []string{o.str("secret")}}
						if a.id == "" || kindOf(a.last()) != "auto" {
							t.Errorf("round %d: incomplete create response %s", round, r)
							return
						}
						mine[w] = append(mine[w], a)
						mu.Lock()
						autos = append(autos, a)
						byID[a.id] = a
						mu.Unlock()
						ackC.Add(1)
						continue
					}
					a := mine[w][wr.IntN(len(mine[w]))]
					r, err := rc.do(ctx, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations/"+a.id+"/rotate-secret", ws.OwnerToken, map[string]any{})
					if err != nil {
						a.uncertain = true
						lostR.Add(1)
						return
					}
					if r.Status != http.StatusOK {
						t.Errorf("round %d: %s: want 200 before the crash", round, r)
						return
					}
					s := r.JSON().str("secret")
					if kindOf(s) != "auto" {
						t.Errorf("round %d: rotation returned no secret: %s", round, r)
						return
					}
					a.acked = append(a.acked, s)
					ackR.Add(1)
				}
			})
		}
		start := time.Now()
		time.Sleep(runFor)
		c.kill() // SIGKILL with requests in flight
		f.ran = time.Since(start)
		cancel()
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		f.ackedCreates, f.ackedRotates, f.lostCreates, f.lostRotates = ackC.Load(), ackR.Load(), lostC.Load(), lostR.Load()

		// The files as the crash left them: bbolt-consistent, and every
		// acknowledged write in them.
		for _, p := range c.dbPaths(t) {
			problems, keys := boltCheck(t, p)
			f.boltFiles++
			f.boltKeys += keys
			if len(problems) == 0 {
				f.boltOK++
			}
			for _, e := range problems {
				t.Errorf("round %d: bbolt check of %s: %v", round, p, e)
			}
		}
		live := checkCrashStores(t, c, round, autos, &f)

		begin := time.Now()
		c.start(t)
		f.restart = time.Since(begin)
		verifyAfterRestart(t, rc, ws, round, autos, live, &f)
		all = append(all, f)
		t.Log(f)
		if t.Failed() {
			t.FailNow()
		}
	}

	// The automation service sweeps, at start, the subjects that creates
	// killed half-way left behind: wait for it, then stop gracefully.
	deadline := time.Now().Add(20 * time.Second)
	sweepDone := regexp.MustCompile(`"msg":"orphan sweep finished"[^\n]*"subject-kind":"automation"`)
	for !c.LogsMatch(sweepDone) {
		if time.Now().After(deadline) {
			t.Fatal("the automation service's orphan sweep did not finish after the last restart")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A last graceful stop: the files are consistent after a clean shutdown too,
	// and no subject is left live without a record.
	c.stop(t)
	for _, p := range c.dbPaths(t) {
		if problems, _ := boltCheck(t, p); len(problems) > 0 {
			t.Errorf("after the final clean stop, bbolt check of %s: %v", p, problems)
		}
	}
	var final crashFigures
	checkCrashStores(t, c, len(all)+1, autos, &final)
	if final.orphans != 0 {
		t.Errorf("after the sweep, %d automation subjects still hold a live secret without a record", final.orphans)
	}
	if final.staleRecords != 0 {
		t.Errorf("after the sweep, %d automation records still name a dead secret", final.staleRecords)
	}
	if final.pendingMarkers != 0 {
		t.Errorf("after the sweep and a clean stop, %d automation records are still marked pending (%d of them creates never done)", final.pendingMarkers, len(final.undoneCreates))
	}
	var sum crashFigures
	for _, f := range all {
		sum.ackedCreates += f.ackedCreates
		sum.ackedRotates += f.ackedRotates
		sum.lostCreates += f.lostCreates
		sum.lostRotates += f.lostRotates
		sum.lostRotatesCommitted += f.lostRotatesCommitted
		sum.orphans = f.orphans // cumulative in the store
	}
	sum.orphans = final.orphans
	t.Logf("total over %d SIGKILLs: %d automations and %d rotations acknowledged, all durable; %d creates and %d rotations lost in flight (%d rotations had committed); orphan subjects after the sweep: %d",
		len(all), sum.ackedCreates, sum.ackedRotates, sum.lostCreates, sum.lostRotates, sum.lostRotatesCommitted, sum.orphans)
}

// checkCrashStores reads the stores of the killed cluster and checks what
// must hold whatever the moment of the crash. It returns the id of the one
// live secret credential of every automation.
//
// A record written while its secret was being issued carries a pending
// marker, and counts only once that secret was issued: a marked create
// whose secret never was is no automation (it must not be one a client was
// told about), a marked rotation whose new secret never was shows the
// previous secret.
func checkCrashStores(t *testing.T, c *cluster, round int, autos []*crashAuto, f *crashFigures) map[string]string {
	t.Helper()
	records := readAutomations(t, c.dbFile("automation"))
	pending := readPendingSecrets(t, c.dbFile("automation"))
	subjects := readCredentialStore(t, c.dbFile("credential"))
	live := map[string]string{}
	acked := map[string]bool{}

	for _, a := range autos {
		acked[a.id] = true
		if _, ok := records[a.id]; !ok {
			t.Errorf("round %d: automation %s was acknowledged but is not in automation.db after the crash", round, a.id)
		}
	}
	f.pendingMarkers = len(pending)
	for id := range pending {
		if _, ok := records[id]; !ok {
			t.Errorf("round %d: a pending marker names automation %s, which has no record", round, id)
		}
	}
	for id, rec := range records {
		s, ok := subjects[id]
		if m := pending[id]; m != nil {
			if rec.GetCredential().GetId() != m.GetCredentialId() {
				t.Errorf("round %d: automation %s is marked pending for credential %s but its record names %s", round, id, m.GetCredentialId(), rec.GetCredential().GetId())
			}
			if !ok || s.revoked || !s.issued[m.GetCredentialId()] {
				if m.GetPrevious() == nil {
					if acked[id] {
						t.Errorf("round %d: automation %s was acknowledged but the secret its record names (%s) was never issued", round, id, m.GetCredentialId())
					}
					f.undoneCreates = append(f.undoneCreates, id)
					continue
				}
				rec = proto.CloneOf(rec)
				rec.Credential = m.GetPrevious()
			}
		}
		switch {
		case !ok:
			t.Errorf("round %d: automation %s is recorded but the credential service has no subject for it", round, id)
		case s.revoked:
			t.Errorf("round %d: automation %s is recorded but its subject is revoked", round, id)
		case len(s.live[credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET]) != 1:
			t.Errorf("round %d: automation %s has %d live secrets, want exactly 1", round, id, len(s.live[credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET]))
		default:
			live[id] = s.live[credentialv1.CredentialKind_CREDENTIAL_KIND_AUTOMATION_SECRET][0]
			if rec.GetCredential().GetId() != live[id] {
				f.staleRecords++ // the record names a secret that is not the live one
			}
		}
		if rec.GetWorkspaceId() == "" || rec.GetCredential().GetId() == "" {
			t.Errorf("round %d: automation %s is recorded half-written: %v", round, id, rec)
		}
	}
	for id, s := range subjects {
		n := 0
		for _, ids := range s.live {
			n += len(ids)
		}
		if s.revoked && n > 0 {
			t.Errorf("round %d: subject %s is revoked but keeps %d live credentials", round, id, n)
		}
		if s.kind == credentialv1.SubjectKind_SUBJECT_KIND_AUTOMATION && !s.revoked && n > 0 {
			if _, ok := records[id]; !ok {
				// A secret was issued for an automation whose record was
				// never written: the process died between the two writes,
				// before the compensating revocation could run. Nobody
				// ever received it; it is counted, not failed.
				f.orphans++
			}
		}
	}
	return live
}

// verifyAfterRestart proves through REST that every acknowledged automation
// exists and that its one live secret is the last acknowledged one (or, only
// after a rotation lost in flight, one nobody saw), and that every earlier
// secret is dead.
func verifyAfterRestart(t *testing.T, rc *restClient, ws workspace, round int, autos []*crashAuto, live map[string]string, f *crashFigures) {
	t.Helper()
	var mu sync.Mutex
	var problems []string
	fail := func(format string, args ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	exchange := func(secret string) int {
		r, err := rc.do(context.Background(), http.MethodPost, "/v1/auth/exchange", secret, map[string]any{})
		if err != nil {
			fail("exchange: %v", err)
			return 0
		}
		return r.Status
	}
	// A create lost in flight whose secret never became live is no
	// automation, whether or not the sweep has removed its record yet.
	for _, id := range f.undoneCreates {
		r, err := rc.do(context.Background(), http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations/"+id, ws.OwnerToken, nil)
		if err != nil || r.Status != http.StatusNotFound {
			fail("round %d: automation %s, a create lost in flight whose secret was never issued, answers %v %v after restart, want 404", round, id, r, err)
		}
	}
	work := make(chan *crashAuto)
	var wg sync.WaitGroup
	var committed, stale atomic.Int64
	for range 8 {
		wg.Go(func() {
			for a := range work {
				r, err := rc.do(context.Background(), http.MethodGet, "/v1/workspaces/"+ws.ID+"/automations/"+a.id, ws.OwnerToken, nil)
				if err != nil || r.Status != http.StatusOK {
					fail("round %d: acknowledged automation %s after restart: %v %v", round, a.id, r, err)
					continue
				}
				recorded := r.JSON().str("automation.credential.id")
				switch st := exchange(a.last()); {
				case st == http.StatusOK:
					a.uncertain = false // the lost rotation, if any, never committed
					if recorded != live[a.id] {
						fail("round %d: automation %s: its live secret works but its record names credential %s, the store's live one is %s", round, a.id, recorded, live[a.id])
					}
				case st == http.StatusUnauthorized && a.uncertain:
					// The lost rotation committed: its secret, which no
					// client received, is the live one.
					committed.Add(1)
					if recorded != live[a.id] {
						stale.Add(1)
					}
				default:
					fail("round %d: automation %s: its last acknowledged secret answers %d on exchange (uncertain=%v), want 200", round, a.id, st, a.uncertain)
				}
				for i := a.deadChecked; i < len(a.acked)-1; i++ {
					if st := exchange(a.acked[i]); st != http.StatusUnauthorized {
						fail("round %d: automation %s: superseded secret #%d answers %d on exchange, want 401 (a rotation kept two live)", round, a.id, i, st)
					}
				}
				a.deadChecked = len(a.acked) - 1
			}
		})
	}
	for _, a := range autos {
		work <- a
	}
	close(work)
	wg.Wait()
	f.lostRotatesCommitted, f.staleRecords = int(committed.Load()), int(stale.Load())
	sort.Strings(problems)
	for _, p := range problems {
		t.Error(p)
	}
	if len(problems) > 0 {
		return
	}
	// Give the automations whose live secret nobody holds a known one again
	// (what their owner would do), so later rounds can rotate them.
	for _, a := range autos {
		if !a.uncertain {
			continue
		}
		o := rc.expect(t, http.StatusOK, http.MethodPost, "/v1/workspaces/"+ws.ID+"/automations/"+a.id+"/rotate-secret", ws.OwnerToken, map[string]any{})
		a.acked = append(a.acked, o.str("secret"))
		a.uncertain = false
		if st := exchange(a.last()); st != http.StatusOK {
			t.Errorf("round %d: automation %s: a fresh rotation after the crash does not exchange (%d)", round, a.id, st)
		}
	}
}
