package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/backlog/controlplane/services/kit/store"
)

// The self-rotation limits that the contract states hold across every
// replica of the service, so they live in its store, not in a replica's
// memory:
//
//   - the budget of attempts with a valid API key per client IP
//     (SelfRotationsPerIP per SelfRotationWindow, the REST contract's 3 per
//     15 minutes): a token bucket per address in selfRatesBucket;
//   - the lockout of an API key at a client IP after repeated wrong
//     rotation secrets: a failure count per address and credential id in
//     selfLockoutsBucket. Attempts for one agent take turns on every
//     replica (a lease in selfTurnsBucket), and each is counted as a
//     failure before the credential service sees it, taken back when it
//     turns out not to be one: a guess is never left uncounted, not by a
//     lost reply nor by a replica that dies mid-request;
//   - the replays of keyed self-rotations (see replay.go).
//
// Every count is read and written inside one Update, which the engines
// rerun on conflict: two replicas that take the last token at once commit
// one after the other, and the second sees it gone. A write that may or
// may not have applied (store.ErrOutcomeUnknown) fails the request: a token
// is then at worst lost, never handed out twice. Each Update writes one
// key or two (a lease and a record), far below the store's operation
// limit.
//
// The records carry their own times, judged by the service's clock; their
// store expiry (ExpiresAt) only lets the store forget them once they no
// longer matter.

// selfRate is an address's token bucket: tokens as of last.
type selfRate struct {
	tokens float64
	last   time.Time
}

// selfLockout is the failure count of one API key at one address.
type selfLockout struct {
	failures int
	since    time.Time // first failure counted
	until    time.Time // locked until (zero: not locked)
}

const limitRecordVersion = 1

func encodeRate(r selfRate) []byte {
	b := make([]byte, 0, 17)
	b = append(b, limitRecordVersion)
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(r.tokens))
	return binary.BigEndian.AppendUint64(b, uint64(r.last.UnixNano()))
}

func decodeRate(v []byte) (selfRate, error) {
	if len(v) != 17 || v[0] != limitRecordVersion {
		return selfRate{}, errLimitRecord
	}
	t := math.Float64frombits(binary.BigEndian.Uint64(v[1:]))
	if math.IsNaN(t) || math.IsInf(t, 0) {
		return selfRate{}, errLimitRecord
	}
	return selfRate{tokens: t, last: time.Unix(0, int64(binary.BigEndian.Uint64(v[9:])))}, nil
}

func encodeLockout(l selfLockout) []byte {
	b := make([]byte, 0, 21)
	b = append(b, limitRecordVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(l.failures))
	b = binary.BigEndian.AppendUint64(b, uint64(unixNano(l.since)))
	return binary.BigEndian.AppendUint64(b, uint64(unixNano(l.until)))
}

func decodeLockout(v []byte) (selfLockout, error) {
	if len(v) != 21 || v[0] != limitRecordVersion {
		return selfLockout{}, errLimitRecord
	}
	return selfLockout{
		failures: int(binary.BigEndian.Uint32(v[1:])),
		since:    fromUnixNano(int64(binary.BigEndian.Uint64(v[5:]))),
		until:    fromUnixNano(int64(binary.BigEndian.Uint64(v[13:]))),
	}, nil
}

// unixNano is t in nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// errLimitRecord: a limit record that does not decode. Only a store
// written by something else could hold one; the request fails rather than
// pass a limit it cannot read.
var errLimitRecord = fmt.Errorf("%w: a self-rotation limit record does not decode", store.ErrUnavailable)

// selfRateKey is the key of an address's budget. A call whose client
// address is not known (never through a server of the kit) shares one.
func selfRateKey(ipKey string) []byte {
	if ipKey == "" {
		ipKey = "unknown"
	}
	return []byte(ipKey)
}

func selfLockoutKey(ipKey, credential string) []byte { return store.Key(ipKey, credential) }

// selfLimits are the store-kept self-rotation limits with their settings.
type selfLimits struct {
	perIP       int           // tokens in an address's bucket
	window      time.Duration // one token comes back per window
	maxFailures int           // wrong secrets within lockFor that lock
	lockFor     time.Duration
}

// rateTokensAt is r's tokens at now: refilled at one per window since
// r.last, never more than the bucket holds.
func (l selfLimits) rateTokensAt(r selfRate, now time.Time) float64 {
	t := r.tokens
	if d := now.Sub(r.last); d > 0 {
		t += float64(d) / float64(l.window)
	}
	return math.Min(t, float64(l.perIP))
}

// takeRate takes one of ipKey's tokens in tx. When none is left it writes
// nothing and returns false with the wait until one is there. Of the
// attempts that read the same last token, the engine lets one commit.
func (l selfLimits) takeRate(tx store.WriteTx, ipKey string, now time.Time) (bool, time.Duration, error) {
	if l.perIP < 1 {
		return false, time.Duration(math.MaxInt64), nil
	}
	k := selfRateKey(ipKey)
	v, err := tx.Get(selfRatesBucket, k)
	if err != nil {
		return false, 0, err
	}
	r := selfRate{tokens: float64(l.perIP), last: now}
	if v != nil {
		if r, err = decodeRate(v); err != nil {
			return false, 0, err
		}
	}
	t := l.rateTokensAt(r, now)
	if t < 1 {
		return false, roundUpMilli(time.Duration((1 - t) * float64(l.window))), nil
	}
	r = selfRate{tokens: t - 1, last: now}
	// Full again (and so as good as absent) once the spent tokens are back.
	full := now.Add(time.Duration((float64(l.perIP) - r.tokens) * float64(l.window)))
	return true, 0, tx.Put(selfRatesBucket, k, encodeRate(r), store.ExpiresAt(full.Add(time.Second)))
}

// lockedAt reports whether the API key credential is locked at ipKey, and
// for how much longer.
func (l selfLimits) lockedAt(tx store.ReadTx, ipKey, credential string, now time.Time) (bool, time.Duration, error) {
	v, err := tx.Get(selfLockoutsBucket, selfLockoutKey(ipKey, credential))
	if err != nil || v == nil {
		return false, 0, err
	}
	st, err := decodeLockout(v)
	if err != nil {
		return false, 0, err
	}
	if !now.Before(st.until) {
		return false, 0, nil
	}
	return true, roundUpMilli(st.until.Sub(now)), nil
}

// reserveFailure counts the attempt about to be made with credential from
// ipKey as a wrong rotation secret before it is made, so that no outcome —
// a lost reply, a replica that dies — lets a guess go uncounted. It
// reports whether the key was locked there already (then nothing is
// written) and returns the record as it was and as written, for
// restoreFailure when the attempt turns out not to be a wrong secret.
// Failures while locked neither count nor extend the lock.
func (l selfLimits) reserveFailure(tx store.WriteTx, ipKey, credential string, now time.Time) (locked bool, wait time.Duration, prev, wrote []byte, err error) {
	k := selfLockoutKey(ipKey, credential)
	v, err := tx.Get(selfLockoutsBucket, k)
	if err != nil {
		return false, 0, nil, nil, err
	}
	var st selfLockout
	if v != nil {
		if st, err = decodeLockout(v); err != nil {
			return false, 0, nil, nil, err
		}
		prev = bytes.Clone(v)
	}
	if now.Before(st.until) {
		return true, roundUpMilli(st.until.Sub(now)), nil, nil, nil
	}
	if st.failures == 0 || now.Sub(st.since) >= l.lockFor {
		st = selfLockout{since: now}
	}
	st.failures++
	if st.failures >= l.maxFailures {
		st.failures, st.until = 0, now.Add(l.lockFor)
	}
	wrote = encodeLockout(st)
	return false, 0, prev, wrote, tx.Put(selfLockoutsBucket, k, wrote, store.ExpiresAt(l.lockoutExpiry(st).Add(time.Second)))
}

// restoreFailure takes back a reservation: the record goes back to prev
// (nil: none), unless something else changed it since (then it stays, the
// stricter of the two).
func (l selfLimits) restoreFailure(tx store.WriteTx, ipKey, credential string, prev, wrote []byte) error {
	k := selfLockoutKey(ipKey, credential)
	v, err := tx.Get(selfLockoutsBucket, k)
	if err != nil || !bytes.Equal(v, wrote) {
		return err
	}
	if prev == nil {
		return tx.Delete(selfLockoutsBucket, k)
	}
	st, err := decodeLockout(prev)
	if err != nil {
		return err
	}
	return tx.Put(selfLockoutsBucket, k, prev, store.ExpiresAt(l.lockoutExpiry(st).Add(time.Second)))
}

// lockoutExpiry is when st stops mattering: its lock ends, or its first
// failure leaves the window.
func (l selfLimits) lockoutExpiry(st selfLockout) time.Time {
	if !st.until.IsZero() {
		return st.until
	}
	return st.since.Add(l.lockFor)
}

// roundUpMilli pads a wait to the next millisecond, so that waiting
// exactly that long is enough despite float rounding.
func roundUpMilli(d time.Duration) time.Duration {
	return (d/time.Millisecond + 1) * time.Millisecond
}

// admission is what admitSelfRotation decided.
type admission struct {
	locked, limited bool
	wait            time.Duration
}

// admitSelfRotation decides, in one update, whether an attempt with a valid
// API key (credential) from ipKey may go on: refused while the key is
// locked out there (spending nothing), else it spends one of the address's
// tokens or is refused for want of one.
func (s *Service) admitSelfRotation(ctx context.Context, ipKey, credential string) (admission, error) {
	var a admission
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		now := s.now()
		a = admission{}
		locked, wait, err := s.limits.lockedAt(tx, ipKey, credential, now)
		if err != nil || locked {
			a.locked, a.wait = locked, wait
			return err
		}
		ok, wait, err := s.limits.takeRate(tx, ipKey, now)
		a.limited, a.wait = !ok, wait
		return err
	})
	return a, err
}

// failureReservation is an attempt counted in advance as a wrong
// rotation secret (see reserveFailure).
type failureReservation struct {
	ipKey, credential string
	prev, wrote       []byte
}

// reserveSelfFailure checks, once it is an attempt's turn, that its API key
// is not locked out at ipKey, and counts the attempt as a wrong rotation
// secret in advance. A locked key gets locked true and the wait.
func (s *Service) reserveSelfFailure(ctx context.Context, ipKey, credential string) (*failureReservation, bool, time.Duration, error) {
	r := &failureReservation{ipKey: ipKey, credential: credential}
	var locked bool
	var wait time.Duration
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		var err error
		locked, wait, r.prev, r.wrote, err = s.limits.reserveFailure(tx, ipKey, credential, s.now())
		return err
	})
	return r, locked, wait, err
}

// restoreSelfFailure takes back the reservation of an attempt that was not
// a wrong rotation secret (its pair was rotated by another request, the
// agent turned out revoked, or the credential service could not tell).
// Should that fail, the attempt stays counted: the stricter outcome.
func (s *Service) restoreSelfFailure(ctx context.Context, r *failureReservation) {
	if r == nil || r.wrote == nil {
		return
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	err := s.db.Update(ctx, func(tx store.WriteTx) error {
		return s.limits.restoreFailure(tx, r.ipKey, r.credential, r.prev, r.wrote)
	})
	if err != nil {
		s.lg.Warn("could not take back a self-rotation attempt counted towards a lockout; it counts until it expires", zap.Error(err))
	}
}

// locksOut reports whether the reservation, now that its attempt is known
// to be a wrong secret, locked the key.
func (r *failureReservation) locksOut() bool {
	st, err := decodeLockout(r.wrote)
	return err == nil && !st.until.IsZero()
}

// selfTurnTTL bounds how long an attempt holds its agent's turn (and a
// keyed self-rotation its replay's): a replica that dies holding one
// delays the next by at most this much. It outlasts compensateTimeout,
// which bounds the rotation itself.
const selfTurnTTL = 30 * time.Second

// selfTurns makes self-rotation attempts take turns across replicas, per
// agent (so that the lockout sees every wrong secret before the next
// attempt is let through) and per keyed request (so that a retry waits for
// the first request and then gets its result).
func (s *Service) selfTurns() store.Leases {
	return store.Leases{Bucket: selfTurnsBucket, TTL: selfTurnTTL, Poll: 20 * time.Millisecond, Now: s.now}
}

func selfAgentTurnKey(ws, id string) []byte { return store.Key("agent", ws, id) }

func selfReplayTurnKey(id string) []byte { return store.Key("replay", id) }

// releaseTurn ends a turn taken with selfTurns (best effort: it expires).
func (s *Service) releaseTurn(ctx context.Context, key, tok []byte) {
	ctx, cancel := detached(ctx)
	defer cancel()
	if err := s.selfTurns().Release(ctx, s.db, key, tok); err != nil && !errors.Is(err, store.ErrOutcomeUnknown) {
		s.lg.Warn("could not end a self-rotation turn; it expires by itself", zap.Duration("ttl", selfTurnTTL), zap.Error(err))
	}
}

// clearSelfTurns ends the turns a process that died mid-rotation left in a
// store only this process writes (see store.Leases.ClearAll).
func clearSelfTurns(ctx context.Context, db store.Backend, lg *zap.Logger) {
	n, err := store.Leases{Bucket: selfTurnsBucket}.ClearAll(ctx, db)
	if err != nil {
		lg.Warn("could not end the self-rotation turns left by an earlier process; they expire by themselves", zap.Duration("ttl", selfTurnTTL), zap.Error(err))
	} else if n > 0 {
		lg.Info("ended self-rotation turns left by an earlier process", zap.Int("turns", n))
	}
}

// forgetReplay drops a stored self-rotation result whose pair is no longer
// live (best effort: it expires by itself).
func (s *Service) forgetReplay(ctx context.Context, id string) {
	ctx, cancel := detached(ctx)
	defer cancel()
	if err := s.replays.forget(ctx, id); err != nil && !errors.Is(err, store.ErrOutcomeUnknown) {
		s.lg.Warn("could not drop a self-rotation replay; it expires by itself", zap.Error(err))
	}
}
