package manifest

import (
	"fmt"
	"sort"
	"strings"

	v1 "github.com/weftnet/weft/api/v1"
)

// Kubernetes networking.k8s.io/v1 Ingress, as written: rules by host and path, service
// backends, a default backend, TLS hosts naming a certificate (secretName); nothing else.

type k8sIngressSpec struct {
	IngressClassName string             `json:"ingressClassName"`
	DefaultBackend   *k8sIngressBackend `json:"defaultBackend"`
	TLS              []k8sIngressTLS    `json:"tls"`
	Rules            []k8sIngressRule   `json:"rules"`
}

type k8sIngressTLS struct {
	Hosts      []string `json:"hosts"`
	SecretName string   `json:"secretName"`
}

type k8sIngressRule struct {
	Host string `json:"host"`
	HTTP *struct {
		Paths []k8sIngressPath `json:"paths"`
	} `json:"http"`
}

type k8sIngressPath struct {
	Path     string            `json:"path"`
	PathType string            `json:"pathType"`
	Backend  k8sIngressBackend `json:"backend"`
}

type k8sIngressBackend struct {
	Service *struct {
		Name string `json:"name"`
		Port struct {
			Number int    `json:"number"`
			Name   string `json:"name"`
		} `json:"port"`
	} `json:"service"`
}

func (b k8sIngressBackend) toV1(where string) (v1.Backend, error) {
	if b.Service == nil {
		return v1.Backend{}, fmt.Errorf("%s: backend.service is required (weft routes to services only)", where)
	}
	return v1.Backend{Service: b.Service.Name, Port: b.Service.Port.Number, PortName: b.Service.Port.Name}, nil
}

// objectMeta decodes an object's envelope and metadata strictly; the name is required.
func objectMeta(js []byte, kind string) (k8sObject, k8sMetadata, error) {
	var obj k8sObject
	var meta k8sMetadata
	if err := strict(js, &obj, kind); err != nil {
		return obj, meta, err
	}
	if len(obj.Metadata) > 0 {
		if err := strict(obj.Metadata, &meta, kind+" metadata"); err != nil {
			return obj, meta, err
		}
	}
	if meta.Name == "" {
		return obj, meta, fmt.Errorf("%s: metadata.name is required", kind)
	}
	return obj, meta, nil
}

func parseIngress(js []byte) (*v1.Ingress, error) {
	obj, meta, err := objectMeta(js, "Ingress")
	if err != nil {
		return nil, err
	}
	where := "Ingress " + meta.Name
	// Annotations are how other controllers take settings in strings; weft takes none, and
	// one that is ignored would mean more than weft does.
	var notes []string
	for k := range meta.Annotations {
		if !strings.HasPrefix(k, "kubectl.kubernetes.io/") {
			notes = append(notes, k)
		}
	}
	if len(notes) > 0 {
		sort.Strings(notes)
		return nil, fmt.Errorf("%s: metadata.annotations[%s] is not supported by weft (its settings are typed fields of weft's ingress)", where, notes[0])
	}
	var spec k8sIngressSpec
	if len(obj.Spec) > 0 {
		if err := strict(obj.Spec, &spec, where+" spec"); err != nil {
			return nil, err
		}
	}
	if c := spec.IngressClassName; c != "" && c != "weft" {
		return nil, fmt.Errorf("%s: spec.ingressClassName %q: this ingress is for another controller (weft's class is \"weft\")", where, c)
	}
	in := &v1.Ingress{Name: meta.Name, Namespace: meta.Namespace}
	if in.Namespace == "" {
		in.Namespace = "default"
	}
	if spec.DefaultBackend != nil {
		b, err := spec.DefaultBackend.toV1(where + ": spec.defaultBackend")
		if err != nil {
			return nil, err
		}
		in.DefaultBackend = &b
	}
	hostIndex := map[string]int{}
	for i, r := range spec.Rules {
		at := fmt.Sprintf("%s: spec.rules[%d]", where, i)
		if r.HTTP == nil || len(r.HTTP.Paths) == 0 {
			return nil, fmt.Errorf("%s.http.paths: at least one path", at)
		}
		idx, ok := hostIndex[r.Host]
		if !ok {
			idx = len(in.Hosts)
			hostIndex[r.Host] = idx
			in.Hosts = append(in.Hosts, v1.IngressHost{Host: r.Host})
		}
		for j, p := range r.HTTP.Paths {
			pat := fmt.Sprintf("%s.http.paths[%d]", at, j)
			switch p.PathType {
			case "Prefix", "Exact":
			case "":
				return nil, fmt.Errorf("%s.pathType is required (Prefix or Exact)", pat)
			default:
				return nil, fmt.Errorf("%s.pathType %q: weft takes Prefix or Exact", pat, p.PathType)
			}
			b, err := p.Backend.toV1(pat)
			if err != nil {
				return nil, err
			}
			in.Hosts[idx].Routes = append(in.Hosts[idx].Routes, v1.Route{Path: p.Path, PathType: p.PathType, Backends: []v1.Backend{b}})
		}
	}
	for i, t := range spec.TLS {
		if t.SecretName == "" {
			return nil, fmt.Errorf("%s: spec.tls[%d].secretName is required (a certificate stored with `weft ingress cert add`)", where, i)
		}
		in.TLS = append(in.TLS, v1.IngressTLS{Hosts: t.Hosts, Certificate: t.SecretName})
	}
	if err := in.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return in, nil
}

// WeftAPIVersion is the apiVersion of weft's own kinds: every field of weft's ingress
// (redirects, rewrites, header changes, retries, balancing, health checks) in its spec.
const WeftAPIVersion = "weft/v1"

func parseWeftIngress(js []byte) (*v1.Ingress, error) {
	obj, meta, err := objectMeta(js, "Ingress")
	if err != nil {
		return nil, err
	}
	where := "Ingress " + meta.Name
	in := &v1.Ingress{}
	if err := strict(obj.Spec, in, where+" spec"); err != nil {
		return nil, err
	}
	if in.Name != "" || in.Namespace != "" {
		return nil, fmt.Errorf("%s: spec.name and spec.namespace: give them in metadata", where)
	}
	in.Name, in.Namespace = meta.Name, meta.Namespace
	if in.Namespace == "" {
		in.Namespace = "default"
	}
	if err := in.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return in, nil
}
