package agent

import (
	"context"
	"net/netip"
	"sort"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
)

// publishDelay gathers the attachments of a burst of ADDs into one store write.
const publishDelay = 20 * time.Millisecond

// podsFromAllocations is what this node publishes: one pod per container, with every
// address of its attachments, its identity and labels from the runtime. A pod the runtime
// did not name is named after its container. Attached means ready: weft has no probes of
// its own, and a pod that is deleted is withdrawn by its DEL.
func podsFromAllocations(node string, allocs []ipam.Allocation) []v1.Pod {
	byContainer := map[string]*v1.Pod{}
	var order []string
	for _, al := range allocs {
		p, ok := byContainer[al.ContainerID]
		if !ok {
			p = &v1.Pod{Node: node, ContainerID: al.ContainerID, Namespace: "default", Ready: true, IPs: []netip.Addr{}}
			name := al.ContainerID
			if len(name) > 12 {
				name = name[:12]
			}
			p.Name = name
			if id := al.Pod; id != nil {
				if id.Name != "" {
					p.Name = id.Name
				}
				if id.Namespace != "" {
					p.Namespace = id.Namespace
				}
				p.Labels = id.Labels
			}
			byContainer[al.ContainerID] = p
			order = append(order, al.ContainerID)
		}
		for _, ip := range al.IPs {
			p.IPs = append(p.IPs, ip.Address.Addr())
		}
	}
	sort.Strings(order)
	out := make([]v1.Pod, 0, len(order))
	for _, id := range order {
		p := byContainer[id]
		sort.Slice(p.IPs, func(i, j int) bool { return p.IPs[i].Less(p.IPs[j]) })
		out = append(out, *p)
	}
	return out
}

// startPodPublisher keeps this node's pods in the cluster store, bound to its lease so
// they vanish with the node.
func (a *Agent) startPodPublisher(g *group, m *storeMembers) {
	client := resources.Client{Store: m.st}
	a.publish = reconcile.New(publishDelay, func() error {
		allocs, err := a.alloc.List()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return client.PublishPods(ctx, a.opts.NodeName, m.leaseID.Load(), podsFromAllocations(a.opts.NodeName, allocs))
	}, func(err error) {
		a.setProblem("pods", err)
		if err != nil {
			a.opts.Log.Warn("publishing pods failed; retrying at the next change or resync", "err", err)
		}
	})
	m.onLease = a.publish.Trigger
	g.Loop("pod-publisher", a.publish.Run)
	a.publish.Trigger()
}
