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

// Run serves triggers until ctx ends.
func (l *Loop) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
		}
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
		l.onError(l.sync())
	}
}
