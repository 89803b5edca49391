package agent

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/dataplane/fastpath"
	"github.com/weftnet/weft/internal/policy"
	"github.com/weftnet/weft/internal/policy/nftpolicy"
	"github.com/weftnet/weft/internal/proxy/nftproxy"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
)

// policyEnforcer keeps the node's policy table equal to what the cluster's policies say
// for the node's pods: on every change of a pod, policy or namespace anywhere, it compiles
// each local pod's selecting policies (policy.Model.Compile) and replaces the table. The
// eBPF fast path gets the same rules: it carries a policed pod's TCP with other local pods
// only where the policies allow it both ways without state (fastpath/policy.go), and
// leaves the rest to the kernel's path and the table.
type policyEnforcer struct {
	node    string
	dns     []netip.Addr // the node's DNS addresses (a peer as policy.NodeDNS)
	sysctls bool         // may turn on bridge netfilter (pods on a bridge talk past the forward hook otherwise)
	cluster []netip.Prefix
	cache   *resources.Cache
	fast    *fastpathSync // nil: no fast path
	loop    *reconcile.Loop
	// policed are the node's policed pods' rules by address (the agent's, read by the
	// fast path).
	policed *atomic.Pointer[map[netip.Addr]policy.PodRules]
	pods    prometheus.Gauge

	// Drops: each sync rewrites the table (and its counters), so what the chains counted
	// is added to totals first; chains maps the table's chains to "ns/name direction
	// policy,policy" (the policies selecting the pod in that direction).
	mu     sync.Mutex
	totals map[string]uint64
	chains map[string]string
}

// policyDelay gathers a burst of changes into one sync, well under the one second a change
// may take to reach every node.
const policyDelay = 20 * time.Millisecond

func (a *Agent) startPolicy(g *group, cache *resources.Cache) {
	e := &policyEnforcer{node: a.opts.NodeName, cluster: a.opts.ClusterCIDRs, cache: cache, fast: a.fast, policed: &a.policedPods, sysctls: a.opts.ManageSysctls, dns: a.dnsAddrs,
		pods:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_policy_pods", Help: "Pods of this node selected by a network policy."}),
		totals: map[string]uint64{}, chains: map[string]string{}}
	if len(e.cluster) == 0 {
		e.cluster = a.opts.PodCIDRs
	}
	a.metrics.reg.MustRegister(e.pods, policyDrops{e})
	e.loop = reconcile.New(policyDelay, e.sync, func(err error) {
		a.setProblem("policy", err)
		if err != nil {
			a.opts.Log.Warn("network policy sync failed", "err", err)
		}
	}).WithResync(30 * time.Second).WithBackoff(reconcile.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second})
	cache.OnChange(func(k resources.Kind) {
		if k == resources.KindPod || k == resources.KindPolicy || k == resources.KindNamespace {
			e.loop.Trigger()
		}
	})
	g.Loop("policy", func(ctx context.Context) {
		e.loop.Trigger()
		e.loop.Run(ctx)
	})
	a.drops.policy = e.chainOwner
}

// chainOwner names the pod and direction a chain of the table polices.
func (e *policyEnforcer) chainOwner(chain string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.chains[chain]
}

// policedRules are a policed pod address's rules, as the enforcer last said.
func (a *Agent) policedRules(ip netip.Addr) (policy.PodRules, bool) {
	m := a.policedPods.Load()
	if m == nil {
		return policy.PodRules{}, false
	}
	r, ok := (*m)[ip]
	return r, ok
}

func (e *policyEnforcer) sync() error {
	if !e.cache.Synced() {
		return nil // an empty cache would lift every policy
	}
	model := policy.New(e.cache.Policies(), e.cache.Namespaces())
	all := e.cache.Pods()
	peers := all
	if len(e.dns) > 0 {
		peers = append(append([]v1.Pod(nil), all...), policy.NodeDNS(e.dns))
	}
	st := nftpolicy.State{Cluster: e.cluster, DNS: e.dns}
	policed := map[netip.Addr]policy.PodRules{}
	chains := map[string]string{}
	for i := range all {
		p := &all[i]
		if p.Node != e.node {
			continue
		}
		rules := model.Compile(p, peers)
		if rules.Ingress == nil && rules.Egress == nil {
			continue
		}
		id := podID(p.Namespace, p.Name, p.ContainerID)
		st.Pods = append(st.Pods, nftpolicy.Pod{ID: id, IPs: p.IPs, Rules: rules})
		ing, eg := model.Selecting(p)
		chains["i-"+id] = p.Namespace + "/" + p.Name + " ingress " + strings.Join(ing, ",")
		chains["e-"+id] = p.Namespace + "/" + p.Name + " egress " + strings.Join(eg, ",")
		for _, ip := range p.IPs {
			policed[ip] = rules
		}
	}
	old := e.policed.Load()
	if old == nil || !reflect.DeepEqual(*old, policed) {
		if e.fast != nil {
			// The rules at once (a stricter rule must not wait for the fast path's next
			// pass), then the pods' flags in the fast path's map. Stored only once
			// written, so a failed write is retried.
			if err := e.fast.fp.SyncPolicy(fastpath.PolicyEntries(policed)); err != nil {
				return fmt.Errorf("fast path policy: %w", err)
			}
		}
		e.policed.Store(&policed)
		if e.fast != nil {
			e.fast.Trigger()
		}
	}
	e.pods.Set(float64(len(st.Pods)))
	var bridgeErr error
	if len(st.Pods) > 0 && e.sysctls {
		// Same-node pods on a bridge reach each other bridged: only bridge netfilter shows
		// that traffic to the forward hook (the service proxy turns it on too). Without it
		// the table still holds for routed traffic; the failure is reported.
		bridgeErr = nftproxy.PrepareNode()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if live, err := nftpolicy.Drops(-1); err == nil {
		for chain, n := range live {
			if k, ok := e.chains[chain]; ok {
				e.totals[k] += n
			}
		}
	}
	if err := nftpolicy.Apply(st, -1); err != nil {
		return err
	}
	e.chains = chains
	if bridgeErr != nil {
		return fmt.Errorf("pods on the same bridge are not policed: %w", bridgeErr)
	}
	return nil
}

// policyDrops reports packets dropped by policy per pod and direction.
type policyDrops struct{ e *policyEnforcer }

var policyDropsDesc = prometheus.NewDesc("weft_policy_drops_total",
	"Packets of new connections dropped because no network policy selecting the pod allowed them, by pod, direction and the policies (namespace/name, comma separated) that select it.",
	[]string{"pod", "direction", "policies"}, nil)

func (policyDrops) Describe(ch chan<- *prometheus.Desc) { ch <- policyDropsDesc }

func (d policyDrops) Collect(ch chan<- prometheus.Metric) {
	e := d.e
	e.mu.Lock()
	defer e.mu.Unlock()
	sum := maps.Clone(e.totals)
	if live, err := nftpolicy.Drops(-1); err == nil {
		for chain, n := range live {
			if k, ok := e.chains[chain]; ok {
				sum[k] += n
			}
		}
	}
	for k, n := range sum {
		pod, rest, _ := strings.Cut(k, " ")
		dir, policies, _ := strings.Cut(rest, " ")
		ch <- prometheus.MustNewConstMetric(policyDropsDesc, prometheus.CounterValue, float64(n), pod, dir, policies)
	}
}

var podIDEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// podID names a pod's chains: short, stable, unique on the node.
func podID(namespace, name, containerID string) string {
	h := sha256.Sum256([]byte(namespace + "/" + name + "/" + containerID))
	return strings.ToLower(podIDEncoding.EncodeToString(h[:]))[:12]
}
