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
