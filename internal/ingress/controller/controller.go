// Package controller feeds the ingress proxy from the cluster store: on every change of
// an ingress, certificate, service or pod it compiles the routes, resolves each backend
// to the ready endpoints of its service port, and swaps both into the proxy; it picks the
// TLS certificates by server name; and it publishes what it serves (weft ingress status).
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/endpoints"
	"github.com/weftnet/weft/internal/ingress/proxy"
	"github.com/weftnet/weft/internal/ingress/route"
	"github.com/weftnet/weft/internal/reconcile"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/store"
)

// Controller keeps a proxy equal to the cluster's ingresses.
type Controller struct {
	Node      string
	Listeners []string // what the proxy listens on, for the status
	Target    Target
	Cache     *resources.Cache
	Store     store.Store
	Log       func(msg string, args ...any)

	mu     sync.Mutex
	status v1.IngressStatus
}

// Snapshot is everything a proxy serves, in a form that crosses a process boundary (JSON):
// the ingresses, the ready endpoints of each backend key, and the certificates (PEM
// certificate and key) by server name.
type Snapshot struct {
	Ingresses []v1.Ingress                `json:"ingresses"`
	Endpoints map[string][]netip.AddrPort `json:"endpoints"`
	Certs     map[string][2]string        `json:"certs"`
	// TicketKeys are the TLS session ticket keys (32 bytes each, the first encrypts) that
	// weft-ingress's master gives all its workers; none: the proxy's own.
	TicketKeys [][]byte `json:"ticketKeys,omitempty"`

	table *route.Table // Ingresses compiled, when the sender has it (not sent to workers)
}

// Target is where snapshots go: the proxy of this process (Local), or the proxies of
// weft-ingress's worker processes.
type Target interface {
	Apply(s Snapshot) error
	Health() map[string]string // upstream address → health
}

// Local applies snapshots to a proxy in this process.
type Local struct{ Proxy *proxy.Proxy }

// Apply compiles the routes and swaps them, the endpoints and the certificates in.
func (l Local) Apply(s Snapshot) error {
	if s.table == nil {
		s.table = route.Compile(s.Ingresses)
	}
	l.Proxy.Update(s.table, s.Endpoints)
	var keys [][32]byte
	for _, k := range s.TicketKeys {
		if len(k) == 32 {
			keys = append(keys, [32]byte(k))
		}
	}
	l.Proxy.SetTicketKeys(keys)
	return l.Proxy.SetCertificates(s.Certs)
}

// Health is the proxy's view of its upstreams.
func (l Local) Health() map[string]string { return l.Proxy.Health() }

// delay gathers a burst of changes (a rollout's endpoint churn) into one swap.
const delay = 20 * time.Millisecond

// Run syncs until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	loop := reconcile.New(delay, c.sync, func(err error) {
		if err != nil && c.Log != nil {
			c.Log("ingress sync failed", "err", err)
		}
	}).WithResync(30 * time.Second)
	c.Cache.OnChange(func(k resources.Kind) {
		switch k {
		case resources.KindIngress, resources.KindCertificate, resources.KindService, resources.KindPod:
			loop.Trigger()
		}
	})
	go c.publish(ctx)
	loop.Trigger()
	loop.Run(ctx)
}

func (c *Controller) sync() error {
	if !c.Cache.Synced() {
		return nil // an empty cache would drop every route
	}
	ingresses := c.Cache.Ingresses()
	table := route.Compile(ingresses)
	services := map[string]*v1.Service{}
	for _, s := range c.Cache.Services() {
		s := s
		services[s.Key()] = &s
	}
	pods := c.Cache.Pods()
	eps := map[string][]netip.AddrPort{}
	var problems []string
	for _, b := range table.Services() {
		svc := services[b.Service]
		if svc == nil {
			problems = append(problems, fmt.Sprintf("backend %s: no such service", b.Key))
			continue
		}
		found := false
		for _, port := range endpoints.For(svc, pods) {
			if (b.PortName != "" && port.Name == b.PortName) || (b.PortName == "" && port.Port == b.Port) {
				found = true
				for _, e := range port.Endpoints {
					if e.Ready {
						eps[b.Key] = append(eps[b.Key], netip.AddrPortFrom(e.IP, uint16(e.Port)))
					}
				}
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("backend %s: the service has no such port", b.Key))
		}
	}

	// Certificates by server name.
	certs := map[string]v1.Certificate{}
	for _, cert := range c.Cache.Certificates() {
		certs[cert.Key()] = cert
	}
	byName := map[string][2]string{}
	for name, key := range route.CertFor(ingresses) {
		cert, ok := certs[key]
		if !ok {
			problems = append(problems, fmt.Sprintf("certificate %s: not stored (weft ingress cert add)", key))
			continue
		}
		byName[name] = [2]string{cert.CertPEM, cert.KeyPEM}
	}
	if err := c.Target.Apply(Snapshot{Ingresses: ingresses, Endpoints: eps, Certs: byName, table: table}); err != nil {
		problems = append(problems, err.Error())
	}

	st := v1.IngressStatus{Node: c.Node, Listeners: c.Listeners, Problems: problems}
	for _, r := range table.Routes {
		rs := v1.IngressRouteStatus{Route: r.ID}
		for _, b := range r.Backends {
			rs.Backends = append(rs.Backends, b.Key)
		}
		st.Routes = append(st.Routes, rs)
	}
	st.Upstreams = upstreams(eps)
	c.mu.Lock()
	c.status = st
	c.mu.Unlock()
	if len(problems) > 0 {
		sort.Strings(problems)
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// upstreams lists the endpoints by backend; Status adds their live health (asking a
// master's workers for it on every sync would be a round of requests per change).
func upstreams(eps map[string][]netip.AddrPort) []v1.IngressUpstream {
	var out []v1.IngressUpstream
	for key, aps := range eps {
		for _, ap := range aps {
			out = append(out, v1.IngressUpstream{Backend: key, Address: ap.String()})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Backend != out[j].Backend {
			return out[i].Backend < out[j].Backend
		}
		return out[i].Address < out[j].Address
	})
	return out
}

// Status is what the node serves now, with live upstream health.
func (c *Controller) Status() v1.IngressStatus {
	c.mu.Lock()
	st := c.status
	c.mu.Unlock()
	health := c.Target.Health()
	ups := append([]v1.IngressUpstream(nil), st.Upstreams...)
	for i := range ups {
		if h, ok := health[ups[i].Address]; ok {
			ups[i].Health = h
		}
	}
	st.Upstreams = ups
	st.Time = time.Now().UTC().Truncate(time.Second)
	return st
}

// publish writes the status into the store every few seconds, for `weft ingress status`.
func (c *Controller) publish(ctx context.Context) {
	tick := time.NewTicker(3 * time.Second)
	defer tick.Stop()
	for {
		b, _ := json.Marshal(c.Status())
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, _ = c.Store.Txn(wctx, nil, []store.Op{{Key: resources.IngressStatusPrefix + c.Node, Value: b}})
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
