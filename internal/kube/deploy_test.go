package kube

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/resources"
	"github.com/weftnet/weft/internal/testutil/kubetest"
)

// manifests reads every document of deploy/kubernetes.
func manifests(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob("../../deploy/kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1) {
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if strings.TrimSpace(string(js)) == "null" {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(js); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out = append(out, u)
		}
	}
	return out
}

// TestDeployManifests: every manifest of deploy/kubernetes passes the API server's own
// validation (server-side dry run), the ClusterRole grants exactly Rules, and with only
// that role (the service account impersonated) the source lists and watches everything.
func TestDeployManifests(t *testing.T) {
	api := kubetest.StartKubeAPI(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	objs := manifests(t)
	for _, u := range objs {
		if u.GetKind() == "ConfigMap" {
			data, _, _ := unstructured.NestedStringMap(u.Object, "data")
			if _, err := v1.ParseClusterConfig([]byte(data["cluster.json"])); err != nil {
				t.Errorf("ConfigMap %s: cluster.json: %v", u.GetName(), err)
			}
		}
	}
	var role *rbacv1.ClusterRole
	for _, dryRun := range []bool{true, false} {
		for _, u := range objs {
			gvk := u.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s: %v", gvk, err)
			}
			opts := metav1.CreateOptions{}
			if dryRun {
				opts.DryRun = []string{metav1.DryRunAll}
			} else if gvk.Group != "rbac.authorization.k8s.io" && gvk.Kind != "ServiceAccount" {
				continue // for real: only what the impersonated source needs
			}
			var res dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if u.GetNamespace() != "" {
				res = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
			}
			if _, err := res.Create(ctx, u, opts); err != nil {
				t.Errorf("%s %s (dry run %v): %v", gvk.Kind, u.GetName(), dryRun, err)
			}
			if gvk.Kind == "ClusterRole" {
				role = &rbacv1.ClusterRole{}
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, role); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if role == nil {
		t.Fatal("no ClusterRole in deploy/kubernetes")
	}
	var got []Rule
	for _, r := range role.Rules {
		got = append(got, Rule{Group: strings.Join(r.APIGroups, ","), Resources: r.Resources, Verbs: r.Verbs})
	}
	if !slices.EqualFunc(got, Rules, func(a, b Rule) bool {
		return a.Group == b.Group && slices.Equal(a.Resources, b.Resources) && slices.Equal(a.Verbs, b.Verbs)
	}) {
		t.Errorf("the ClusterRole grants %+v, the source uses %+v", got, Rules)
	}

	// As the service account, with nothing but that role: the source syncs.
	as := rest.CopyConfig(api.Config)
	as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:weft"}
	client, err := kubernetes.NewForConfig(as)
	if err != nil {
		t.Fatal(err)
	}
	cache, feeder := resources.NewFedCache()
	go func() { _ = (&Source{Client: client}).Run(ctx, feeder) }()
	for deadline := time.Now().Add(20 * time.Second); !cache.Synced(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("with only its ClusterRole, the source never synced")
		}
	}
	// And the membership: it annotates its Node, gets its blocks and follows the nodes.
	admin, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.3.0/24"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m := &Members{Client: client}
	if blocks, err := m.Join(ctx, v1.Node{Name: "n1", Underlay: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}); err != nil || fmt.Sprint(blocks) != "[10.244.3.0/24]" {
		t.Fatalf("with only its ClusterRole, Join: %v %v", blocks, err)
	}
	changed := make(chan struct{}, 1)
	go func() { _ = m.Run(ctx, func() { changed <- struct{}{} }) }()
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("with only its ClusterRole, the node informer never synced")
	}
}
