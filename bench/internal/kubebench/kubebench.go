// Package kubebench is what the Kubernetes-mode benchmarks share: a client of a lab's API
// server, and services with EndpointSlices created in bulk (addresses never contacted).
package kubebench

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/lab"
)

// Open loads a lab made with --kubernetes and returns it with a client of its API server
// (through the host's kubeconfig), allowed to go fast.
func Open(name string) (*lab.Lab, kubernetes.Interface, error) {
	l, err := lab.Load(name)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		return nil, nil, err
	}
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(cfg)
	return l, client, err
}

// Spec is a bulk of services, each with one EndpointSlice.
type Spec struct {
	Prefix    string // service names: PREFIX-i
	Services  int
	Endpoints int
	// Decorate, if set, changes slice i before it is created (annotations, node names).
	Decorate func(i int, sl *discoveryv1.EndpointSlice)
}

// Create makes the services (ClusterIP, port 80 → 8080) and their slices in "default",
// endpoint e of service i at 10.(200+e).(i/250).(1+i%250), and returns the slices.
func Create(ctx context.Context, client kubernetes.Interface, s Spec) ([]*discoveryv1.EndpointSlice, error) {
	out := make([]*discoveryv1.EndpointSlice, s.Services)
	for i := range s.Services {
		name := fmt.Sprintf("%s-%d", s.Prefix, i)
		if _, err := client.CoreV1().Services("default").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: Ptr("http"), Port: Ptr(int32(8080)), Protocol: Ptr(corev1.ProtocolTCP)}},
		}
		for e := range s.Endpoints {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 200+e, i/250, 1+i%250)},
				Conditions: discoveryv1.EndpointConditions{Ready: Ptr(true)}})
		}
		if s.Decorate != nil {
			s.Decorate(i, sl)
		}
		var err error
		if out[i], err = client.DiscoveryV1().EndpointSlices("default").Create(ctx, sl, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Ptr is a pointer to v.
func Ptr[T any](v T) *T { return &v }
