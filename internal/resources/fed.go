package resources

import (
	"slices"

	v1 "github.com/weftnet/weft/api/v1"
)

// Feeder fills a cache that no store backs (NewFedCache): a source of its own, such as
// the Kubernetes API's informers, puts and deletes typed objects and says when its first
// list is complete. Handlers hear of each change as with a store-backed cache, so every
// controller reading the cache works the same over either source.
type Feeder struct{ c *Cache }

// NewFedCache returns a cache for a Feeder to fill; its Run only waits.
func NewFedCache() (*Cache, *Feeder) {
	c := &Cache{tables: newTables()}
	return c, &Feeder{c: c}
}

// Object is what a Feeder stores.
type Object interface {
	v1.Node | v1.Pod | v1.Service | v1.NetworkPolicy | v1.Namespace
}

// Put stores obj under key (any key unique among objects of its kind) and tells the
// handlers.
func Put[T Object](f *Feeder, key string, obj T) {
	f.c.mu.Lock()
	var kind Kind
	switch o := any(obj).(type) {
	case v1.Node:
		f.c.nodes[key], kind = o, KindNode
	case v1.Pod:
		f.c.pods[key], kind = o, KindPod
	case v1.Service:
		f.c.services[key], kind = o, KindService
	case v1.NetworkPolicy:
		f.c.policies[key], kind = o, KindPolicy
	case v1.Namespace:
		f.c.spaces[key], kind = o, KindNamespace
	}
	f.notify(kind)
}

// Delete removes the object of kind under key and tells the handlers.
func (f *Feeder) Delete(kind Kind, key string) {
	f.c.mu.Lock()
	switch kind {
	case KindNode:
		delete(f.c.nodes, key)
	case KindPod:
		delete(f.c.pods, key)
	case KindService:
		delete(f.c.services, key)
	case KindPolicy:
		delete(f.c.policies, key)
	case KindNamespace:
		delete(f.c.spaces, key)
	}
	f.notify(kind)
}

// Synced says the source's first list is in: controllers may act on the view now (before,
// an empty cache would withdraw everything).
func (f *Feeder) Synced() {
	f.c.mu.Lock()
	f.c.synced = true
	handlers := slices.Clone(f.c.handlers)
	f.c.mu.Unlock()
	for _, h := range handlers {
		for _, k := range allKinds {
			h(k)
		}
	}
}

// notify releases the lock taken by the caller and calls the handlers for kind.
func (f *Feeder) notify(kind Kind) {
	handlers := slices.Clone(f.c.handlers)
	synced := f.c.synced
	f.c.mu.Unlock()
	if !synced {
		return // Synced tells everyone once the first list is in
	}
	for _, h := range handlers {
		h(kind)
	}
}
