package agent

import (
	"context"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/dataplane/antispoof"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/policy/nftpolicy"
	"github.com/weftnet/weft/internal/reconcile"
)

// antispoofSync keeps the anti-spoofing tables equal to the node's pod attachments: every
// host veth weft made (its alias names the attachment and the pod's MAC) with the
// addresses its allocation holds. It follows link events (the agent's link watch), so a new pod is covered
// moments after its veth appears (the ADD returns a few milliseconds later). The tables
// outlive weftd: running pods stay checked while it restarts.
type antispoofSync struct {
	alloc *ipam.Allocator
	loop  *reconcile.Loop

	mu     sync.Mutex
	last   []antispoof.Port
	owners map[string]string // chain → "ns/name egress"
	totals map[string]uint64 // "ns/name egress" → drops counted by tables since replaced
}

// antispoofDelay is short: until a pod's chain is in, it is not checked.
const antispoofDelay = 2 * time.Millisecond

func (a *Agent) startAntiSpoof(g *group) *antispoofSync {
	s := &antispoofSync{alloc: a.alloc, owners: map[string]string{}, totals: map[string]uint64{}}
	s.loop = reconcile.New(antispoofDelay, s.sync, func(err error) {
		a.setProblem("anti-spoofing", err)
		if err != nil {
			a.opts.Log.Warn("anti-spoofing sync failed", "err", err)
		}
	}).WithResync(30 * time.Second).WithBackoff(reconcile.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second})
	a.metrics.reg.MustRegister(spoofDrops{s})
	g.Loop("anti-spoofing", func(ctx context.Context) {
		s.loop.Trigger()
		s.loop.Run(ctx)
	})
	return s
}

func (s *antispoofSync) Trigger() { s.loop.Trigger() }

func (s *antispoofSync) sync() error {
	allocs, err := s.alloc.List()
	if err != nil {
		return err
	}
	byKey := make(map[ipam.Key]ipam.Allocation, len(allocs))
	for _, al := range allocs {
		byKey[al.Key] = al
	}
	links, err := netlinkx.Retry((&netlink.Handle{}).LinkList)
	if err != nil {
		return err
	}
	var ports []antispoof.Port
	owners := map[string]string{}
	for _, l := range links {
		attrs := l.Attrs()
		owner, ok := podnet.ParseAlias(attrs.Alias)
		if !ok || l.Type() != "veth" || attrs.Group == podnet.ReapGroup || len(owner.PodMAC) != 6 {
			continue
		}
		al, ok := byKey[ipam.Key{Network: owner.Network, ContainerID: owner.ContainerID, IfName: owner.IfName}]
		if !ok {
			continue // not committed yet, or released: nothing it may send from
		}
		p := antispoof.Port{ID: strings.TrimPrefix(attrs.Name, "weft"), IfName: attrs.Name, MAC: owner.PodMAC}
		for _, ip := range al.IPs {
			p.IPs = append(p.IPs, ip.Address.Addr())
		}
		sort.Slice(p.IPs, func(i, j int) bool { return p.IPs[i].Less(p.IPs[j]) })
		ports = append(ports, p)
		who := owner.ContainerID
		if al.Pod != nil && al.Pod.Name != "" {
			who = al.Pod.Namespace + "/" + al.Pod.Name
		}
		owners[antispoof.ChainPrefix+p.ID] = who + " egress"
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i].IfName < ports[j].IfName })
	s.mu.Lock()
	defer s.mu.Unlock()
	live, chains, err := antispoof.DropsAndChains(-1)
	if err != nil {
		return err
	}
	if antispoof.Same(ports, s.last) && chains == 2*len(ports) {
		return nil // unchanged, and both tables are whole: keep their counters
	}
	for chain, n := range live {
		if k, ok := s.owners[chain]; ok {
			s.totals[k] += n
		}
	}
	if err := antispoof.Apply(ports, -1, nftpolicy.LogGroup); err != nil {
		return err
	}
	s.last, s.owners = ports, owners
	return nil
}

// chainOwner names the pod a chain checks.
func (s *antispoofSync) chainOwner(chain string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owners[chain]
}

// spoofDrops reports the spoofed packets dropped per pod.
type spoofDrops struct{ s *antispoofSync }

var spoofDropsDesc = prometheus.NewDesc("weft_antispoof_drops_total",
	"Packets a pod sent from an address or MAC not its own, dropped.", []string{"pod"}, nil)

func (spoofDrops) Describe(ch chan<- *prometheus.Desc) { ch <- spoofDropsDesc }

func (d spoofDrops) Collect(ch chan<- prometheus.Metric) {
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := maps.Clone(s.totals)
	if live, err := antispoof.Drops(-1); err == nil {
		for chain, n := range live {
			if k, ok := s.owners[chain]; ok {
				sum[k] += n
			}
		}
	}
	for k, n := range sum {
		pod, _, _ := strings.Cut(k, " ")
		ch <- prometheus.MustNewConstMetric(spoofDropsDesc, prometheus.CounterValue, float64(n), pod)
	}
}
