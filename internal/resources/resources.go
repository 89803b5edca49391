// Package resources owns the cluster store's key schema and offers typed access to it:
// the cluster configuration, nodes, pods (published by their node, withdrawn with its
// lease), services with their ClusterIPs and node ports (allocated by compare-and-swap, so
// nothing is given out twice). Cache is the one shared watch a weftd runs over all of it.
//
// Pure: it speaks only store.Store, so etcd and the bbolt store serve it alike.
package resources

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/store"
)

// The key schema. Everything weft keeps in a cluster store is under Root.
const (
	Root             = "/weft/"
	ConfigKey        = "/weft/config"
	NodesPrefix      = "/weft/nodes/"      // + node name
	LeasesPrefix     = "/weft/leases/"     // + block (internal/lease)
	PodsPrefix       = "/weft/pods/"       // + node/containerID
	ServicesPrefix   = "/weft/services/"   // + namespace/name
	ServiceIPsPrefix = "/weft/serviceips/" // + address → namespace/name
	NodePortsPrefix  = "/weft/nodeports/"  // + protocol/port → namespace/name
	BGPPeersPrefix   = "/weft/bgppeers/"   // + name
	PoliciesPrefix   = "/weft/policies/"   // + namespace/name
	NamespacesPrefix = "/weft/namespaces/" // + name (labels)
)

// ErrExists means a service of that name exists already.
var ErrExists = errors.New("already exists")

// NodeKey is a node's key.
func NodeKey(name string) string { return NodesPrefix + name }

// PodKey is the key of a pod attachment published by node.
func PodKey(node, containerID string) string { return PodsPrefix + node + "/" + containerID }

// ServiceKey is a service's key.
func ServiceKey(namespace, name string) string { return ServicesPrefix + namespace + "/" + name }

func serviceIPKey(a netip.Addr) string { return ServiceIPsPrefix + a.String() }

func nodePortKey(protocol string, port int) string {
	return fmt.Sprintf("%s%s/%d", NodePortsPrefix, strings.ToLower(protocol), port)
}

// Client is typed access to a cluster store.
type Client struct {
	Store store.Store
}

// PublishPods makes node's published pods exactly pods, writing only what changed. With a
// lease, the keys go when the lease expires (the node died). Level-triggered: call it with
// the whole desired set after any change, and periodically.
func (c Client) PublishPods(ctx context.Context, node string, lease int64, pods []v1.Pod) error {
	kvs, _, err := c.Store.List(ctx, PodsPrefix+node+"/")
	if err != nil {
		return fmt.Errorf("list published pods: %w", err)
	}
	have := make(map[string]store.KV, len(kvs))
	for _, kv := range kvs {
		have[kv.Key] = kv
	}
	var ops []store.Op
	for _, p := range pods {
		if p.ContainerID == "" || strings.Contains(p.ContainerID, "/") {
			return fmt.Errorf("pod %s/%s: container ID %q cannot be a key", p.Namespace, p.Name, p.ContainerID)
		}
		p.Node = node
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		key := PodKey(node, p.ContainerID)
		old, ok := have[key]
		delete(have, key)
		if ok && string(old.Value) == string(b) && old.Lease == lease {
			continue
		}
		ops = append(ops, store.Op{Key: key, Value: b, Lease: lease})
	}
	for key := range have {
		ops = append(ops, store.Op{Key: key, Delete: true})
	}
	if len(ops) == 0 {
		return nil
	}
	if _, err := c.Store.Txn(ctx, nil, ops); err != nil {
		return fmt.Errorf("publish pods: %w", err)
	}
	return nil
}

// ListPods returns every published pod of the cluster.
func (c Client) ListPods(ctx context.Context) ([]v1.Pod, error) {
	return listAs[v1.Pod](ctx, c.Store, PodsPrefix)
}

// listAs decodes every value under prefix as a T.
func listAs[T any](ctx context.Context, s store.Store, prefix string) ([]T, error) {
	kvs, _, err := s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var v T
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// GetService reads one service.
func (c Client) GetService(ctx context.Context, namespace, name string) (v1.Service, error) {
	kv, err := c.Store.Get(ctx, ServiceKey(namespace, name))
	if err != nil {
		return v1.Service{}, err
	}
	var s v1.Service
	if err := json.Unmarshal(kv.Value, &s); err != nil {
		return v1.Service{}, fmt.Errorf("%s: %w", kv.Key, err)
	}
	return s, nil
}

// PutPolicy creates or replaces a network policy (kubectl apply's meaning).
func (c Client) PutPolicy(ctx context.Context, p v1.NetworkPolicy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(p)
	_, err := c.Store.Txn(ctx, nil, []store.Op{{Key: PoliciesPrefix + p.Namespace + "/" + p.Name, Value: b}})
	return err
}

// GetPolicy reads one network policy.
func (c Client) GetPolicy(ctx context.Context, namespace, name string) (v1.NetworkPolicy, error) {
	kv, err := c.Store.Get(ctx, PoliciesPrefix+namespace+"/"+name)
	if err != nil {
		return v1.NetworkPolicy{}, err
	}
	var p v1.NetworkPolicy
	if err := json.Unmarshal(kv.Value, &p); err != nil {
		return p, fmt.Errorf("%s: %w", kv.Key, err)
	}
	return p, nil
}

// ListPolicies returns every network policy.
func (c Client) ListPolicies(ctx context.Context) ([]v1.NetworkPolicy, error) {
	return listAs[v1.NetworkPolicy](ctx, c.Store, PoliciesPrefix)
}

// DeletePolicy removes a network policy.
func (c Client) DeletePolicy(ctx context.Context, namespace, name string) error {
	if _, err := c.Store.Get(ctx, PoliciesPrefix+namespace+"/"+name); err != nil {
		return err
	}
	_, err := c.Store.Txn(ctx, nil, []store.Op{{Key: PoliciesPrefix + namespace + "/" + name, Delete: true}})
	return err
}

// PutNamespace sets a namespace's labels.
func (c Client) PutNamespace(ctx context.Context, n v1.Namespace) error {
	if err := v1.ValidName("namespace", n.Name); err != nil {
		return err
	}
	b, _ := json.Marshal(n)
	_, err := c.Store.Txn(ctx, nil, []store.Op{{Key: NamespacesPrefix + n.Name, Value: b}})
	return err
}

// ListNamespaces returns the namespaces that have labels.
func (c Client) ListNamespaces(ctx context.Context) ([]v1.Namespace, error) {
	return listAs[v1.Namespace](ctx, c.Store, NamespacesPrefix)
}

// PutBGPPeer creates or replaces an external BGP peer.
func (c Client) PutBGPPeer(ctx context.Context, p v1.BGPPeer) error {
	if err := p.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(p)
	_, err := c.Store.Txn(ctx, nil, []store.Op{{Key: BGPPeersPrefix + p.Name, Value: b}})
	return err
}

// ListBGPPeers returns every external BGP peer.
func (c Client) ListBGPPeers(ctx context.Context) ([]v1.BGPPeer, error) {
	return listAs[v1.BGPPeer](ctx, c.Store, BGPPeersPrefix)
}

// DeleteBGPPeer removes an external BGP peer.
func (c Client) DeleteBGPPeer(ctx context.Context, name string) error {
	if _, err := c.Store.Get(ctx, BGPPeersPrefix+name); err != nil {
		return err
	}
	_, err := c.Store.Txn(ctx, nil, []store.Op{{Key: BGPPeersPrefix + name, Delete: true}})
	return err
}

// ListServices returns every service.
func (c Client) ListServices(ctx context.Context) ([]v1.Service, error) {
	return listAs[v1.Service](ctx, c.Store, ServicesPrefix)
}

// DeleteService removes a service and frees its ClusterIPs and node ports in the same
// transaction.
func (c Client) DeleteService(ctx context.Context, namespace, name string) error {
	for {
		kv, err := c.Store.Get(ctx, ServiceKey(namespace, name))
		if err != nil {
			return err
		}
		var s v1.Service
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			return err
		}
		ops := []store.Op{{Key: kv.Key, Delete: true}}
		for _, a := range s.ClusterIPs {
			ops = append(ops, store.Op{Key: serviceIPKey(a), Delete: true})
		}
		for _, p := range s.Ports {
			if p.NodePort != 0 {
				ops = append(ops, store.Op{Key: nodePortKey(p.Protocol, p.NodePort), Delete: true})
			}
		}
		_, err = c.Store.Txn(ctx, []store.Cond{{Key: kv.Key, ModRevision: kv.ModRevision}}, ops)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
}

// RemoveNode forgets a node in one transaction: its registration and its pod CIDR leases
// (under leasePrefix). Every other node's fabric then withdraws its routes. It returns how
// many keys went; a node already gone is not an error.
func RemoveNode(ctx context.Context, st store.Store, leasePrefix, name string) (int, error) {
	ops := []store.Op{{Key: NodesPrefix + name, Delete: true}}
	kvs, _, err := st.List(ctx, leasePrefix)
	if err != nil {
		return 0, err
	}
	for _, kv := range kvs {
		var l v1.Lease
		if json.Unmarshal(kv.Value, &l) == nil && l.Node == name {
			ops = append(ops, store.Op{Key: kv.Key, Delete: true})
		}
	}
	if _, err := st.Txn(ctx, nil, ops); err != nil {
		return 0, err
	}
	return len(ops), nil
}
