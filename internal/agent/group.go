package agent

import (
	"context"
	"fmt"
	"sync"
)

// group runs weftd's components: each is a function that runs until its context ends.
// The first one to fail ends them all (weftd exits and its supervisor restarts it; the
// kernel state stays, so traffic does not notice), and Wait returns once every one has
// stopped, so a shutdown never leaves a component half-way through a sync.
type group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	err    error
}

func newGroup(parent context.Context) *group {
	ctx, cancel := context.WithCancel(parent)
	return &group{ctx: ctx, cancel: cancel}
}

// Go starts a component. A nil error on return is a clean stop (its context ended).
func (g *group) Go(name string, run func(context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := run(g.ctx); err != nil && g.ctx.Err() == nil {
			g.once.Do(func() {
				g.err = fmt.Errorf("%s: %w", name, err)
				g.cancel()
			})
		}
	}()
}

// Loop starts a component that only stops with its context.
func (g *group) Loop(name string, run func(context.Context)) {
	g.Go(name, func(ctx context.Context) error { run(ctx); return nil })
}

// Done is closed when the group is stopping.
func (g *group) Done() <-chan struct{} { return g.ctx.Done() }

// Wait stops every component and returns the first failure.
func (g *group) Wait() error {
	g.cancel()
	g.wg.Wait()
	return g.err
}
