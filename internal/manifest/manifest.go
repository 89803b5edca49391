// Package manifest reads Kubernetes manifests (YAML or JSON, several documents per file)
// into weft's resources: the fields weft implements are honoured and every other field is
// refused with a message naming it, so a manifest never means more than weft does.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	v1 "github.com/weftnet/weft/api/v1"
)

// Object is one document of a manifest file.
type Object struct {
	Kind    string
	Service *v1.Service
	Policy  *v1.NetworkPolicy
	Ingress *v1.Ingress
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// Parse reads every document of data. A document that is empty or only comments is
// skipped; a List (kind: List, items) is unpacked.
func Parse(data []byte) ([]Object, error) {
	var out []Object
	for i, doc := range docSeparator.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		objs, err := parseJSON(js)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		out = append(out, objs...)
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func parseJSON(js []byte) ([]Object, error) {
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, err
	}
	switch {
	case head.Kind == "List" && head.APIVersion == "v1":
		var out []Object
		for i, item := range head.Items {
			objs, err := parseJSON(item)
			if err != nil {
				return nil, fmt.Errorf("items[%d]: %w", i, err)
			}
			out = append(out, objs...)
		}
		return out, nil
	case head.Kind == "Service" && head.APIVersion == "v1":
		s, err := parseService(js)
		if err != nil {
			return nil, err
		}
		return []Object{{Kind: "Service", Service: s}}, nil
	case head.Kind == "NetworkPolicy" && head.APIVersion == "networking.k8s.io/v1":
		p, err := parsePolicy(js)
		if err != nil {
			return nil, err
		}
		return []Object{{Kind: "NetworkPolicy", Policy: p}}, nil
	case head.Kind == "Ingress" && head.APIVersion == WeftAPIVersion:
		in, err := parseWeftIngress(js)
		if err != nil {
			return nil, err
		}
		return []Object{{Kind: "Ingress", Ingress: in}}, nil
	case head.Kind == "Ingress" && head.APIVersion == "networking.k8s.io/v1":
		in, err := parseIngress(js)
		if err != nil {
			return nil, err
		}
		return []Object{{Kind: "Ingress", Ingress: in}}, nil
	case head.Kind == "":
		return nil, errors.New("no kind")
	}
	return nil, fmt.Errorf("%s %s: weft does not take this kind (it takes v1 Service, networking.k8s.io/v1 NetworkPolicy and Ingress, weft/v1 Ingress)", head.APIVersion, head.Kind)
}

// strict decodes js into v refusing unknown fields, and names the field path.
func strict(js []byte, v any, path string) error {
	d := json.NewDecoder(bytes.NewReader(js))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		msg := err.Error()
		if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
			return fmt.Errorf("%s: field %s is not supported by weft", path, f)
		}
		return fmt.Errorf("%s: %s", path, strings.TrimPrefix(msg, "json: "))
	}
	return nil
}

type k8sObject struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
}

type k8sServiceSpec struct {
	Type                  string             `json:"type"`
	ClusterIP             string             `json:"clusterIP"`
	ClusterIPs            []string           `json:"clusterIPs"`
	IPFamilies            []string           `json:"ipFamilies"`
	IPFamilyPolicy        string             `json:"ipFamilyPolicy"`
	Ports                 []json.RawMessage  `json:"ports"`
	Selector              map[string]string  `json:"selector"`
	SessionAffinity       string             `json:"sessionAffinity"`
	SessionAffinityConfig *k8sAffinityConfig `json:"sessionAffinityConfig"`
	InternalTrafficPolicy string             `json:"internalTrafficPolicy"`
	ExternalTrafficPolicy string             `json:"externalTrafficPolicy"`
}

// k8sMetadata: labels and annotations are accepted and not used (they describe the
// object, they do not change what weft programs).
type k8sMetadata struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type k8sServicePort struct {
	Name       string      `json:"name"`
	Protocol   string      `json:"protocol"`
	Port       int         `json:"port"`
	TargetPort intOrString `json:"targetPort"`
	NodePort   int         `json:"nodePort"`
}

type k8sAffinityConfig struct {
	ClientIP *struct {
		TimeoutSeconds int `json:"timeoutSeconds"`
	} `json:"clientIP"`
}

// intOrString is Kubernetes' IntOrString: 8080 or "http".
type intOrString struct {
	Int int
	Str string
}

func (v *intOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if n, err := strconv.Atoi(s); err == nil { // "8080" means the number, as in Kubernetes
			v.Int = n
			return nil
		}
		v.Str = s
		return nil
	}
	return json.Unmarshal(b, &v.Int)
}

func parseService(js []byte) (*v1.Service, error) {
	var obj k8sObject
	if err := strict(js, &obj, "Service"); err != nil {
		return nil, err
	}
	var k struct {
		Metadata k8sMetadata
		Spec     k8sServiceSpec
	}
	if len(obj.Metadata) > 0 {
		if err := strict(obj.Metadata, &k.Metadata, "Service metadata"); err != nil {
			return nil, err
		}
	}
	name := k.Metadata.Name
	if name == "" {
		return nil, errors.New("Service: metadata.name is required")
	}
	where := "Service " + name
	if len(obj.Spec) > 0 {
		if err := strict(obj.Spec, &k.Spec, where+" spec"); err != nil {
			return nil, err
		}
	}
	s := &v1.Service{
		Name: name, Namespace: k.Metadata.Namespace, Type: k.Spec.Type, ClusterIP: k.Spec.ClusterIP,
		IPFamilies: k.Spec.IPFamilies, Selector: k.Spec.Selector, SessionAffinity: k.Spec.SessionAffinity,
		InternalTrafficPolicy: k.Spec.InternalTrafficPolicy, ExternalTrafficPolicy: k.Spec.ExternalTrafficPolicy,
	}
	if len(k.Spec.ClusterIPs) > 0 {
		if s.ClusterIP != "" && s.ClusterIP != k.Spec.ClusterIPs[0] {
			return nil, fmt.Errorf("%s: spec.clusterIP %s differs from spec.clusterIPs[0] %s", where, s.ClusterIP, k.Spec.ClusterIPs[0])
		}
		if len(k.Spec.ClusterIPs) > 1 {
			return nil, fmt.Errorf("%s: spec.clusterIPs: weft takes one requested address (the first family's); leave the second out to have it allocated", where)
		}
		s.ClusterIP = k.Spec.ClusterIPs[0]
	}
	switch k.Spec.IPFamilyPolicy {
	case "", "SingleStack":
	case "PreferDualStack", "RequireDualStack":
		if len(s.IPFamilies) < 2 {
			s.IPFamilies = dualFamilies(s.IPFamilies, s.ClusterIP)
		}
	default:
		return nil, fmt.Errorf("%s: spec.ipFamilyPolicy %q: use SingleStack, PreferDualStack or RequireDualStack", where, k.Spec.IPFamilyPolicy)
	}
	if c := k.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil {
		s.AffinityTimeout = c.ClientIP.TimeoutSeconds
	}
	for i, raw := range k.Spec.Ports {
		var p k8sServicePort
		if err := strict(raw, &p, fmt.Sprintf("%s spec.ports[%d]", where, i)); err != nil {
			return nil, err
		}
		sp := v1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: p.TargetPort.Int, TargetPortName: p.TargetPort.Str, NodePort: p.NodePort}
		s.Ports = append(s.Ports, sp)
	}
	s.Defaults()
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return s, nil
}

// dualFamilies completes a family list to both, the requested address's family first.
func dualFamilies(have []string, clusterIP string) []string {
	first := "IPv4"
	if len(have) == 1 {
		first = have[0]
	} else if a, err := netip.ParseAddr(clusterIP); err == nil && a.Is6() {
		first = "IPv6"
	}
	if first == "IPv4" {
		return []string{"IPv4", "IPv6"}
	}
	return []string{"IPv6", "IPv4"}
}
