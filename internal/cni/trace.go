package cni

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// phaseTimer prints how long each phase of a verb took to stderr when WEFT_CNI_TRACE=1,
// so an operator can see where a slow ADD spends its time. Off, it costs one getenv.
type phaseTimer struct {
	on    bool
	last  time.Time
	parts []string
}

func newPhaseTimer() *phaseTimer {
	return &phaseTimer{on: os.Getenv("WEFT_CNI_TRACE") == "1", last: time.Now()}
}

func (p *phaseTimer) mark(phase string) {
	if !p.on {
		return
	}
	now := time.Now()
	p.parts = append(p.parts, fmt.Sprintf("%s=%s", phase, now.Sub(p.last).Round(time.Microsecond)))
	p.last = now
}

func (p *phaseTimer) done(verb string) {
	if p.on {
		fmt.Fprintf(os.Stderr, "weft-cni %s phases: %s\n", verb, strings.Join(p.parts, " "))
	}
}
