package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/storetest"
)

var things = store.Bucket("things")

func TestGroupCommitIsolatesFailingFunctions(t *testing.T) {
	db := storetest.New(t, []store.Bucket{things})
	ctx := context.Background()
	errBad := errors.New("bad write")
	var wg sync.WaitGroup
	errsOut := make([]error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errsOut[i] = db.Update(ctx, func(tx *store.Tx) error {
				if err := store.Put(tx, things, store.Key("k", fmt.Sprint(i)), wrapperspb.Int64(int64(i))); err != nil {
					return err
				}
				if i%7 == 0 {
					return errBad // written above, must be rolled back
				}
				return nil
			})
		}(i)
	}
	wg.Wait()
	err := db.View(func(tx *store.Tx) error {
		for i := 0; i < 64; i++ {
			var v wrapperspb.Int64Value
			ok, err := store.Get(tx, things, store.Key("k", fmt.Sprint(i)), &v)
			if err != nil {
				return err
			}
			if i%7 == 0 {
				if !errors.Is(errsOut[i], errBad) || ok {
					t.Errorf("write %d: err=%v present=%v, want errBad and absent", i, errsOut[i], ok)
				}
			} else if errsOut[i] != nil || !ok || v.Value != int64(i) {
				t.Errorf("write %d: err=%v present=%v value=%d", i, errsOut[i], ok, v.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestFaultLeavesNothing(t *testing.T) {
	db := storetest.New(t, []store.Bucket{things})
	db.SetFault(func() error { return errors.New("disk full") })
	err := db.Update(context.Background(), func(tx *store.Tx) error {
		return store.Put(tx, things, []byte("a"), wrapperspb.String("x"))
	})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	db.SetFault(nil)
	db.View(func(tx *store.Tx) error {
		if tx.Bucket(things).Get([]byte("a")) != nil {
			t.Fatal("failed commit left data behind")
		}
		return nil
	})
}

func TestPanicInTransactionIsAnError(t *testing.T) {
	db := storetest.New(t, []store.Bucket{things})
	err := db.Update(context.Background(), func(tx *store.Tx) error { panic("boom") })
	if err == nil {
		t.Fatal("panic in a transaction was swallowed")
	}
}

func TestScanPaginates(t *testing.T) {
	db := storetest.New(t, []store.Bucket{things})
	ctx := context.Background()
	for i := 0; i < 25; i++ {
		db.Update(ctx, func(tx *store.Tx) error {
			return tx.Bucket(things).Put(store.Key("ws1", fmt.Sprintf("%03d", i)), []byte{1})
		})
	}
	db.Update(ctx, func(tx *store.Tx) error { return tx.Bucket(things).Put(store.Key("ws2", "000"), []byte{1}) })
	var all []string
	var after []byte
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		var err error
		db.View(func(tx *store.Tx) error {
			after, err = store.Scan(tx, things, []byte("ws1/"), after, 10, func(k, v []byte) (bool, error) {
				all = append(all, string(k))
				return true, nil
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if after == nil {
			break
		}
	}
	if len(all) != 25 || all[0] != "ws1/000" || all[24] != "ws1/024" {
		t.Fatalf("scan got %d keys: %v", len(all), all)
	}
}

func BenchmarkLoneWriter(b *testing.B) {
	db := storetest.New(b, []store.Bucket{things})
	for i := 0; i < b.N; i++ {
		db.Update(context.Background(), func(tx *store.Tx) error {
			return tx.Bucket(things).Put([]byte(fmt.Sprint(i)), []byte{1})
		})
	}
}
