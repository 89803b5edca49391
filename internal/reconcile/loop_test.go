package reconcile

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestTriggersCoalesce(t *testing.T) {
	var syncs atomic.Int32
	done := make(chan error, 10)
	l := New(30*time.Millisecond, func() error { syncs.Add(1); return nil }, func(err error) { done <- err })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	for range 50 {
		l.Trigger()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("50 triggers within the delay caused a second sync")
	case <-time.After(100 * time.Millisecond):
	}
	if syncs.Load() != 1 {
		t.Fatalf("%d syncs", syncs.Load())
	}
	l.Trigger()
	<-done
	if syncs.Load() != 2 {
		t.Fatalf("a later trigger did not sync again")
	}
}

func TestErrorsReachTheHandler(t *testing.T) {
	boom := errors.New("boom")
	got := make(chan error, 1)
	l := New(0, func() error { return boom }, func(err error) { got <- err })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	l.Trigger()
	if err := <-got; !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
}

func TestLoopResyncAndBackoff(t *testing.T) {
	var syncs atomic.Int64
	fail := atomic.Bool{}
	fail.Store(true)
	l := New(0, func() error {
		syncs.Add(1)
		if fail.Load() {
			return errors.New("not yet")
		}
		return nil
	}, func(error) {}).WithBackoff(Backoff{Min: 10 * time.Millisecond, Max: 40 * time.Millisecond}).WithResync(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	l.Trigger()
	// One trigger, and the failing sync retries by itself (10, 20, 40, 40 ms…).
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
		}
	}
	waitFor("4 syncs from one trigger", func() bool { return syncs.Load() >= 4 })
	// Once it succeeds, it stops retrying.
	fail.Store(false)
	time.Sleep(100 * time.Millisecond)
	settled := syncs.Load()
	time.Sleep(150 * time.Millisecond)
	if syncs.Load() != settled {
		t.Fatalf("kept syncing after success: %d then %d", settled, syncs.Load())
	}
	// The resync period syncs without a trigger.
	l2 := New(0, func() error { syncs.Add(1); return nil }, func(error) {}).WithResync(20 * time.Millisecond)
	before := syncs.Load()
	go l2.Run(ctx)
	waitFor("3 resyncs without a trigger", func() bool { return syncs.Load()-before >= 3 })
}
