package agent

import (
	"context"

	"github.com/weftnet/weft/internal/podnet"
)

// reaper deletes retired veths in the background. Requests only mark it dirty (a
// 1-buffered channel), so a burst of DELs costs one deletion pass per pass already running.
type reaper struct {
	kick chan struct{}
	reap func() error
	fail func(error)
}

func newReaper(fail func(error)) *reaper {
	return &reaper{kick: make(chan struct{}, 1), reap: podnet.ReapAll, fail: fail}
}

// Trigger asks for a pass; it never blocks.
func (r *reaper) Trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *reaper) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
			r.fail(r.reap())
		}
	}
}
