// Package reconcile is the controller loop every weftd reconciler runs on: triggers only
// mark the loop dirty, and one sync at a time recomputes and applies the whole desired
// state. Triggers that arrive while a sync waits or runs fold into the next single sync.
package reconcile

import (
	"context"
	"time"
)

// Loop coalesces triggers into syncs.
type Loop struct {
	kick    chan struct{}
	delay   time.Duration
	sync    func() error
	onError func(error)
	resync  time.Duration // 0: none
	backoff Backoff
}

// Backoff bounds the retries after a failed sync: the first after Min, doubling up to
// Max. The zero Backoff retries only on the next trigger.
type Backoff struct {
	Min, Max time.Duration
}

// WithResync makes the loop also sync every d (repairing drift nobody announced).
func (l *Loop) WithResync(d time.Duration) *Loop {
	l.resync = d
	return l
}

// WithBackoff makes a failed sync retry by itself, after b.Min doubling to b.Max.
func (l *Loop) WithBackoff(b Backoff) *Loop {
	l.backoff = b
	return l
}

// New returns a loop that, once triggered, waits delay (gathering more triggers) and runs
// sync. onError receives every sync's result, nil included, so callers can clear a problem.
func New(delay time.Duration, sync func() error, onError func(error)) *Loop {
	return &Loop{kick: make(chan struct{}, 1), delay: delay, sync: sync, onError: onError}
}

// Trigger marks the loop dirty. It never blocks.
func (l *Loop) Trigger() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Run serves triggers (and the resync period and retries) until ctx ends.
func (l *Loop) Run(ctx context.Context) {
	var resync <-chan time.Time
	if l.resync > 0 {
		t := time.NewTicker(l.resync)
		defer t.Stop()
		resync = t.C
	}
	var retry <-chan time.Time
	wait := l.backoff.Min
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
		case <-resync:
		case <-retry:
		}
		retry = nil
		if l.delay > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(l.delay):
			}
			select { // a trigger that came during the delay is served by this sync
			case <-l.kick:
			default:
			}
		}
		err := l.sync()
		l.onError(err)
		switch {
		case err == nil:
			wait = l.backoff.Min
		case l.backoff.Min > 0:
			retry = time.After(wait)
			wait = min(2*wait, max(l.backoff.Max, l.backoff.Min))
		}
	}
}
