package resources

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/store"
)

// Kind names what changed, for handlers that care about some kinds only.
type Kind int

const (
	KindNode Kind = iota
	KindPod
	KindService
	KindPolicy
	KindNamespace
	KindIngress
	KindCertificate
)

var allKinds = []Kind{KindNode, KindPod, KindService, KindPolicy, KindNamespace, KindIngress, KindCertificate}

// Cache is a weftd's one view of the cluster: a list, then one watch over Root, keeping
// typed copies of nodes, pods and services. Handlers hear of every change; they must not
// block (they mark their controller dirty), and they read the cache, never the store, so a
// query or a sync costs no store round trip (client-go's shared informer, in small).
type Cache struct {
	store store.Store

	mu sync.RWMutex
	tables
	synced   bool
	handlers []func(Kind)
}

// tables are the typed copies, by store key.
type tables struct {
	nodes    map[string]v1.Node
	pods     map[string]v1.Pod
	services map[string]v1.Service
	policies map[string]v1.NetworkPolicy
	spaces   map[string]v1.Namespace
	ingress  map[string]v1.Ingress
	certs    map[string]v1.Certificate
}

func newTables() tables {
	return tables{nodes: map[string]v1.Node{}, pods: map[string]v1.Pod{}, services: map[string]v1.Service{},
		policies: map[string]v1.NetworkPolicy{}, spaces: map[string]v1.Namespace{}, ingress: map[string]v1.Ingress{}, certs: map[string]v1.Certificate{}}
}

// put decodes a value of kind k into its table (a value that does not decode is left out).
func (t tables) put(k Kind, key string, value []byte) {
	switch k {
	case KindNode:
		decodeInto(t.nodes, key, value)
	case KindPod:
		decodeInto(t.pods, key, value)
	case KindService:
		decodeInto(t.services, key, value)
	case KindPolicy:
		decodeInto(t.policies, key, value)
	case KindNamespace:
		decodeInto(t.spaces, key, value)
	case KindIngress:
		decodeInto(t.ingress, key, value)
	case KindCertificate:
		decodeInto(t.certs, key, value)
	}
}

func (t tables) delete(key string) {
	delete(t.nodes, key)
	delete(t.pods, key)
	delete(t.services, key)
	delete(t.policies, key)
	delete(t.spaces, key)
	delete(t.ingress, key)
	delete(t.certs, key)
}

func decodeInto[T any](m map[string]T, key string, value []byte) {
	var v T
	if json.Unmarshal(value, &v) == nil {
		m[key] = v
	}
}

// NewCache returns a cache of s; Run fills it.
func NewCache(s store.Store) *Cache {
	return &Cache{store: s, tables: newTables()}
}

// OnChange registers a handler, called after each change is in the cache (and once for
// every kind after each full list).
func (c *Cache) OnChange(h func(Kind)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handlers = append(c.handlers, h)
}

// Synced reports whether the first list has been loaded.
func (c *Cache) Synced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced
}

// Run lists and watches until ctx ends. A watch that ends (a store restart, compacted
// history) is followed by a fresh list, so the cache converges whatever was missed.
func (c *Cache) Run(ctx context.Context) error {
	if c.store == nil { // fed by a Feeder
		<-ctx.Done()
		return nil
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		rev, err := c.relist(ctx)
		if err == nil {
			backoff = 100 * time.Millisecond
			err = c.watch(ctx, rev+1)
		}
		if ctx.Err() != nil {
			return nil
		}
		_ = err // the next list repairs whatever the watch missed
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (c *Cache) relist(ctx context.Context) (int64, error) {
	kvs, rev, err := c.store.List(ctx, Root)
	if err != nil {
		return 0, err
	}
	t := newTables()
	for _, kv := range kvs {
		t.put(kindOf(kv.Key), kv.Key, kv.Value)
	}
	c.mu.Lock()
	c.tables, c.synced = t, true
	handlers := slices.Clone(c.handlers)
	c.mu.Unlock()
	for _, h := range handlers {
		for _, k := range allKinds {
			h(k)
		}
	}
	return rev, nil
}

func (c *Cache) watch(ctx context.Context, from int64) error {
	ch, err := c.store.Watch(ctx, Root, from)
	if err != nil {
		return err
	}
	for ev := range ch {
		k := kindOf(ev.KV.Key)
		if k < 0 {
			continue
		}
		c.mu.Lock()
		c.apply(k, ev)
		handlers := slices.Clone(c.handlers)
		c.mu.Unlock()
		for _, h := range handlers {
			h(k)
		}
	}
	return errors.New("watch ended")
}

func (c *Cache) apply(k Kind, ev store.Event) {
	if ev.Type == store.Delete {
		c.tables.delete(ev.KV.Key)
		return
	}
	c.tables.put(k, ev.KV.Key, ev.KV.Value)
}

func kindOf(key string) Kind {
	switch {
	case strings.HasPrefix(key, NodesPrefix):
		return KindNode
	case strings.HasPrefix(key, PodsPrefix):
		return KindPod
	case strings.HasPrefix(key, ServicesPrefix):
		return KindService
	case strings.HasPrefix(key, PoliciesPrefix):
		return KindPolicy
	case strings.HasPrefix(key, NamespacesPrefix):
		return KindNamespace
	case strings.HasPrefix(key, IngressesPrefix):
		return KindIngress
	case strings.HasPrefix(key, CertificatesPrefix):
		return KindCertificate
	}
	return -1
}

// Pods returns every pod, sorted by namespace, name and container ID.
func (c *Cache) Pods() []v1.Pod {
	out := values(c, c.pods)
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.ContainerID < b.ContainerID
	})
	return out
}

// Services returns every service, sorted by namespace/name.
func (c *Cache) Services() []v1.Service {
	out := values(c, c.services)
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Policies returns every network policy, sorted by namespace/name.
func (c *Cache) Policies() []v1.NetworkPolicy {
	out := values(c, c.policies)
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Namespaces returns the namespaces that carry labels.
func (c *Cache) Namespaces() []v1.Namespace {
	out := values(c, c.spaces)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Ingresses returns every ingress, sorted by namespace/name.
func (c *Cache) Ingresses() []v1.Ingress {
	out := values(c, c.ingress)
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Certificates returns every stored certificate, sorted by namespace/name.
func (c *Cache) Certificates() []v1.Certificate {
	out := values(c, c.certs)
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Nodes returns every registered node, sorted by name.
func (c *Cache) Nodes() []v1.Node {
	out := values(c, c.nodes)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// values copies a map's values under the cache's read lock.
func values[T any](c *Cache, m map[string]T) []T {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]T, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
