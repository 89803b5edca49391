package kube

import (
	"context"
	"sort"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/weftnet/weft/api/v1"
)

// Snapshot lists the API's services (with their EndpointSlices' endpoints) and pods
// once, converted as Source converts them: what `weft service ls|get|endpoints
// --kubeconfig` show.
type Snapshot struct {
	Services []v1.Service
	Pods     []v1.Pod
}

// Take lists everything a Snapshot holds.
func Take(ctx context.Context, client kubernetes.Interface) (*Snapshot, error) {
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	sl, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	pods, err := ListPods(ctx, client)
	if err != nil {
		return nil, err
	}
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for i := range sl.Items {
		s := &sl.Items[i]
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
		}
	}
	snap := &Snapshot{}
	for i := range svcs.Items {
		s, ok := serviceOf(&svcs.Items[i])
		if !ok {
			continue
		}
		s.Resolved = resolvedOf(bySvc[s.Key()])
		snap.Services = append(snap.Services, s)
	}
	sort.Slice(snap.Services, func(i, j int) bool { return snap.Services[i].Key() < snap.Services[j].Key() })
	snap.Pods = pods
	return snap, nil
}

// ListPods lists the API's pods once, converted as Source converts them.
func ListPods(ctx context.Context, client kubernetes.Interface) ([]v1.Pod, error) {
	list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []v1.Pod
	for i := range list.Items {
		if p, ok := podOf(&list.Items[i]); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// ListServices returns the snapshot's services.
func (s *Snapshot) ListServices(context.Context) ([]v1.Service, error) { return s.Services, nil }

// ListPods returns the snapshot's pods.
func (s *Snapshot) ListPods(context.Context) ([]v1.Pod, error) { return s.Pods, nil }

// GetService returns one service, or ok false.
func (s *Snapshot) GetService(namespace, name string) (v1.Service, bool) {
	for _, svc := range s.Services {
		if svc.Namespace == namespace && svc.Name == name {
			return svc, true
		}
	}
	return v1.Service{}, false
}
