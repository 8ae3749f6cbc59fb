package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// ErrNotLeader: a fenced write found that this replica no longer leads.
var ErrNotLeader = errors.New("this replica no longer leads the job")

// Leadership elects one replica, among those sharing a store, to do a
// background job that no two may do at once (an orphan sweep, a key
// rewrap, reminders). The leader holds a key in LeaderBucket that expires
// after TTL unless renewed, so a leader that dies hands over within TTL.
// Writes the job makes are fenced with Fence: they commit only while this
// replica still holds the key, so a leader that stalled past its TTL (a long
// pause, a partition) cannot overwrite its successor's work.
type Leadership struct {
	DB     Backend
	Job    string        // e.g. "orphan-sweep"
	TTL    time.Duration // default 10 s; renewed every TTL/3
	Now    func() time.Time
	Logger *zap.Logger
	// Sole says this is the only process writing the store and the only
	// Leadership of its job in it (a bbolt file, which one process locks):
	// a lead held by another token was left by a process that died, and is
	// taken over at once instead of after its TTL.
	Sole bool

	token []byte
}

func (l *Leadership) defaults() {
	if l.TTL <= 0 {
		l.TTL = 10 * time.Second
	}
	if l.Now == nil {
		l.Now = time.Now
	}
	if l.Logger == nil {
		l.Logger = zap.NewNop()
	}
	if l.token == nil {
		l.token = make([]byte, 16)
		rand.Read(l.token)
	}
}

func (l *Leadership) key() []byte { return []byte(l.Job) }

// Fence fails with ErrNotLeader unless this replica holds the job's lead. Call
// it inside the job's write transactions: the engine then commits the write
// only if the lead is still ours at commit.
func (l *Leadership) Fence(tx ReadTx) error {
	v, err := tx.Get(LeaderBucket, l.key())
	if err != nil {
		return err
	}
	if l.token == nil || !bytes.Equal(v, l.token) {
		return fmt.Errorf("%w: %s", ErrNotLeader, l.Job)
	}
	return nil
}

// claim takes or renews the lead; it reports whether this replica leads.
func (l *Leadership) claim(ctx context.Context) (bool, error) {
	lead := false
	err := l.DB.Update(ctx, func(tx WriteTx) error {
		v, err := tx.Get(LeaderBucket, l.key())
		if err != nil {
			return err
		}
		lead = v == nil || bytes.Equal(v, l.token) || l.Sole
		if !lead {
			return nil
		}
		return tx.Put(LeaderBucket, l.key(), l.token, ExpiresAt(l.Now().Add(l.TTL)))
	})
	return lead && err == nil, err
}

// Run campaigns until ctx ends. While this replica leads, job runs with a
// context that ends when the lead is lost (a renewal failed, or found another
// leader); when job returns, the lead is given up and the campaign goes on.
func (l *Leadership) Run(ctx context.Context, job func(ctx context.Context)) {
	l.defaults()
	every := l.TTL / 3
	for ctx.Err() == nil {
		lead, err := l.claim(ctx)
		if err != nil && ctx.Err() == nil {
			l.Logger.Debug("leadership claim failed", zap.String("job", l.Job), zap.Error(err))
		}
		if lead {
			l.lead(ctx, job, every)
		}
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}
}

func (l *Leadership) lead(ctx context.Context, job func(ctx context.Context), every time.Duration) {
	l.Logger.Info("leading a background job", zap.String("job", l.Job))
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); job(jctx) }()
	deadline := l.Now().Add(l.TTL)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			cancel()
			l.resign()
			return
		case <-ctx.Done():
			cancel()
			<-done
			l.resign()
			return
		case <-t.C:
		}
		lead, err := l.claim(ctx)
		if lead {
			deadline = l.Now().Add(l.TTL)
			continue
		}
		// Lost for sure (another leads), or unsure past the point where
		// another may have taken over: stop the job.
		if err == nil || !l.Now().Before(deadline.Add(-every)) {
			l.Logger.Warn("lost the lead of a background job", zap.String("job", l.Job), zap.Error(err))
			cancel()
			<-done
			return
		}
	}
}

// resign gives the lead up at once, so that another replica need not wait
// for it to expire.
func (l *Leadership) resign() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l.DB.Update(ctx, func(tx WriteTx) error {
		if l.Fence(tx) != nil {
			return nil
		}
		return tx.Delete(LeaderBucket, l.key())
	})
}
