// Package kube feeds weftd's view of the cluster from a Kubernetes API (Kubernetes mode):
// client-go shared informers for Services, EndpointSlices, Pods, Namespaces and
// NetworkPolicies, converted to weft's types and put into a resources cache, so the
// service proxy, DNS and policy engine work unchanged over either source. EndpointSlices
// are the truth for endpoints here (Kubernetes' controller derives them): a service
// carries its slices' endpoints as Resolved.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/resources"
)

// Rule is what weftd may do to one API group's resources: its ClusterRole
// (deploy/kubernetes/rbac.yaml) grants exactly Rules.
type Rule struct {
	Group     string
	Resources []string
	Verbs     []string
}

// Rules are what weftd does: list and watch for Source's informers and Members' node
// informer, and on its own Node object (Members.Join) get it back from a patch of weft's
// annotations.
var Rules = []Rule{
	{Group: "", Resources: []string{"services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
	{Group: "", Resources: []string{"nodes"}, Verbs: []string{"list", "watch", "patch"}},
	{Group: "discovery.k8s.io", Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	{Group: "networking.k8s.io", Resources: []string{"networkpolicies"}, Verbs: []string{"list", "watch"}},
}

// Source is the Kubernetes API as the source of a weftd's view.
type Source struct {
	Client kubernetes.Interface
	Resync time.Duration // informers' periodic resync (0: 10 minutes)
	Log    *slog.Logger
	// NodeDeleted, if set, hears of every Node object deleted from the API: the API is
	// the authority on membership, so weftd forgets the node (and its peers its routes).
	NodeDeleted func(name string)

	mu       sync.Mutex
	services map[string]*corev1.Service                       // namespace/name
	slices   map[string]map[string]*discoveryv1.EndpointSlice // service namespace/name → slice name
}

// Run starts the informers, feeds f until ctx ends, and says f.Synced once every
// informer's first list is in.
func (s *Source) Run(ctx context.Context, f *resources.Feeder) error {
	if s.Resync == 0 {
		s.Resync = 10 * time.Minute
	}
	if s.Log == nil {
		s.Log = slog.Default()
	}
	s.services = map[string]*corev1.Service{}
	s.slices = map[string]map[string]*discoveryv1.EndpointSlice{}
	factory := informers.NewSharedInformerFactory(s.Client, s.Resync)
	watch := []informerWatch{
		{factory.Core().V1().Services().Informer(), func(o any) { s.putService(f, o.(*corev1.Service)) }, func(o any) { s.removeService(f, o) }},
		{factory.Discovery().V1().EndpointSlices().Informer(), func(o any) { s.putSlice(f, o.(*discoveryv1.EndpointSlice)) }, func(o any) { s.removeSlice(f, o) }},
		{factory.Core().V1().Pods().Informer(), func(o any) { putPod(f, o.(*corev1.Pod)) }, func(o any) { f.Delete(resources.KindPod, keyOf(o)) }},
		{factory.Core().V1().Namespaces().Informer(), func(o any) {
			ns := o.(*corev1.Namespace)
			resources.Put(f, ns.Name, v1.Namespace{Name: ns.Name, Labels: ns.Labels})
		}, func(o any) { f.Delete(resources.KindNamespace, keyOf(o)) }},
		{factory.Networking().V1().NetworkPolicies().Informer(), func(o any) { s.putPolicy(f, o.(*networkingv1.NetworkPolicy)) }, func(o any) { f.Delete(resources.KindPolicy, keyOf(o)) }},
	}
	if s.NodeDeleted != nil {
		watch = append(watch, informerWatch{factory.Core().V1().Nodes().Informer(), func(any) {}, func(o any) { s.NodeDeleted(keyOf(o)) }})
	}
	for _, w := range watch {
		// The informers keep every object: only what the conversions read (trim.go).
		if err := w.informer.SetTransform(trim); err != nil {
			return err
		}
		if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    w.put,
			UpdateFunc: func(_, o any) { w.put(o) },
			DeleteFunc: w.remove,
		}); err != nil {
			return err
		}
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("informer for %v never synced", typ)
		}
	}
	f.Synced()
	<-ctx.Done()
	return nil
}

// informerWatch is an informer and what its events do.
type informerWatch struct {
	informer cache.SharedIndexInformer
	put      func(obj any)
	remove   func(obj any)
}

// keyOf is namespace/name of an object or of a deleted object's last known state.
func keyOf(o any) string {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return d.Key
	}
	k, _ := cache.MetaNamespaceKeyFunc(o)
	return k
}

func (s *Source) putService(f *resources.Feeder, svc *corev1.Service) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := svc.Namespace + "/" + svc.Name
	s.services[key] = svc
	s.feedService(f, key)
}

func (s *Source) removeService(f *resources.Feeder, o any) {
	key := keyOf(o)
	s.mu.Lock()
	delete(s.services, key)
	s.mu.Unlock()
	f.Delete(resources.KindService, key)
}

func (s *Source) putSlice(f *resources.Feeder, sl *discoveryv1.EndpointSlice) {
	svc := sl.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return // not a service's slice
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := sl.Namespace + "/" + svc
	if s.slices[key] == nil {
		s.slices[key] = map[string]*discoveryv1.EndpointSlice{}
	}
	s.slices[key][sl.Name] = sl
	s.feedService(f, key)
}

func (s *Source) removeSlice(f *resources.Feeder, o any) {
	sl, ok := o.(*discoveryv1.EndpointSlice)
	if d, isTomb := o.(cache.DeletedFinalStateUnknown); isTomb {
		sl, ok = d.Obj.(*discoveryv1.EndpointSlice)
	}
	if !ok {
		return
	}
	key := sl.Namespace + "/" + sl.Labels[discoveryv1.LabelServiceName]
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.slices[key], sl.Name)
	s.feedService(f, key)
}

// feedService puts the service at key with its slices' endpoints (s.mu held).
func (s *Source) feedService(f *resources.Feeder, key string) {
	svc, ok := s.services[key]
	if !ok {
		return // its slices wait for it
	}
	out, ok := serviceOf(svc)
	if !ok {
		f.Delete(resources.KindService, key)
		return
	}
	var slices []*discoveryv1.EndpointSlice
	for _, sl := range s.slices[key] {
		slices = append(slices, sl)
	}
	out.Resolved = resolvedOf(slices)
	out.ChangedAt = lastChange(slices)
	resources.Put(f, key, out)
}

// lastChange is the latest trigger time the EndpointSlice controller stamped on slices
// (what kube-proxy measures network programming latency from).
func lastChange(slices []*discoveryv1.EndpointSlice) time.Time {
	var last time.Time
	for _, sl := range slices {
		if v, ok := sl.Annotations[corev1.EndpointsLastChangeTriggerTime]; ok {
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil && t.After(last) {
				last = t
			}
		}
	}
	return last
}

func putPod(f *resources.Feeder, p *corev1.Pod) {
	key := p.Namespace + "/" + p.Name
	if pod, ok := podOf(p); ok {
		resources.Put(f, key, pod)
	} else {
		f.Delete(resources.KindPod, key)
	}
}

func (s *Source) putPolicy(f *resources.Feeder, p *networkingv1.NetworkPolicy) {
	key := p.Namespace + "/" + p.Name
	pol, err := policyOf(p)
	if err != nil {
		// Every field of the API's NetworkPolicy is one weft enforces, so this is a policy
		// the API should not have admitted: it stays out, loudly.
		s.Log.Error("network policy not enforced", "policy", key, "err", err)
		f.Delete(resources.KindPolicy, key)
		return
	}
	resources.Put(f, key, pol)
}
