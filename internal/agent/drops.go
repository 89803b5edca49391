package agent

import (
	"context"
	"strings"
	"sync"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane/antispoof"
	"github.com/weftnet/weft/internal/policy/nftpolicy"
)

// dropLog keeps the recent drops the nflog group reported (weft policy log): those of the
// policy table and of anti-spoofing, which log to the same group with their chain's name.
type dropLog struct {
	policy, spoof func(chain string) string // chain → "ns/name direction [policies]", or ""

	mu    sync.Mutex
	drops []v1.PolicyDrop // a ring, newest last
	seq   uint64
}

// dropsKept bounds the ring of recent drops.
const dropsKept = 1000

// run reads the log until ctx ends, resubscribing after an error.
func (l *dropLog) run(ctx context.Context, warn func(msg string, args ...any)) {
	for ctx.Err() == nil {
		if err := nftpolicy.ReadLog(ctx, l.logged); err != nil {
			warn("reading the drop log", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

func (l *dropLog) logged(d nftpolicy.Drop) {
	reason, name := "policy", l.policy
	if strings.HasPrefix(d.Chain, antispoof.ChainPrefix) {
		reason, name = "spoofed source", l.spoof
	}
	var who string
	if name != nil {
		who = name(d.Chain)
	}
	pod, rest, _ := strings.Cut(who, " ")
	dir, policies, _ := strings.Cut(rest, " ")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	var sel []string
	if policies != "" {
		sel = strings.Split(policies, ",")
	}
	l.drops = append(l.drops, v1.PolicyDrop{Seq: l.seq, Time: d.Time, Pod: pod, Direction: dir, Reason: reason, Policies: sel, Protocol: d.Proto,
		Src: d.Src, Dst: d.Dst, SrcPort: d.SPort, DstPort: d.DPort})
	if len(l.drops) > dropsKept {
		l.drops = append(l.drops[:0:0], l.drops[len(l.drops)-dropsKept:]...)
	}
}

// recent are the drops after sequence number since.
func (l *dropLog) recent(since uint64) []v1.PolicyDrop {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []v1.PolicyDrop
	for _, d := range l.drops {
		if d.Seq > since {
			out = append(out, d)
		}
	}
	return out
}
