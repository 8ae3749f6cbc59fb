package keylock

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestLockSerialisesOneKey(t *testing.T) {
	l := New()
	var mu sync.Mutex
	inside, max := 0, 0
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := l.Lock(context.Background(), "auto_1")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			if inside > max {
				max = inside
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			unlock()
		}()
	}
	wg.Wait()
	if max != 1 {
		t.Fatalf("%d holders at once, want 1", max)
	}
	unlock, _ := l.Lock(context.Background(), "k")
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := l.Lock(ctx, "k"); err == nil {
		t.Fatal("a held slot was taken twice")
	}
}

// Distinct keys never wait for each other (a fixed set of slots made a third
// of concurrent rotations queue behind unrelated ones), and a key's lock is
// forgotten once nobody holds or waits for it.
func TestDistinctKeysNeverWait(t *testing.T) {
	l := New()
	var unlocks []func()
	for i := range 500 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		unlock, err := l.Lock(ctx, fmt.Sprintf("auto_%d", i))
		cancel()
		if err != nil {
			t.Fatalf("key %d waited for another key's lock: %v", i, err)
		}
		unlocks = append(unlocks, unlock)
	}
	if n := l.held(); n != 500 {
		t.Fatalf("%d keys held, want 500", n)
	}
	for _, u := range unlocks {
		u()
		u() // a second call is harmless
	}
	if n := l.held(); n != 0 {
		t.Fatalf("%d keys still remembered after every unlock", n)
	}
	// A waiter that gives up leaves nothing behind either.
	unlock, _ := l.Lock(context.Background(), "k")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Lock(ctx, "k"); err == nil {
		t.Fatal("a second lock of a held key did not wait")
	}
	unlock()
	if n := l.held(); n != 0 {
		t.Fatalf("%d keys remembered after a waiter gave up", n)
	}
}
