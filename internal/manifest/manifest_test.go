package manifest

import (
	"strings"
	"testing"
)

const services = `
# two services and a list
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: grpc, port: 9090, targetPort: grpc, protocol: TCP}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalTrafficPolicy: Local
---
{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
   "spec": {"clusterIP": "10.96.0.10", "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 53, "protocol": "UDP", "targetPort": "53"}], "selector": {"app": "dns"}}}
]}
---
# nothing here
`

func TestParse(t *testing.T) {
	objs, err := Parse([]byte(services))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("%d objects", len(objs))
	}
	web, dns := objs[0].Service, objs[1].Service
	if web.Name != "web" || web.Namespace != "shop" || web.Type != "NodePort" || web.Ports[0].NodePort != 30080 ||
		web.Ports[1].TargetPortName != "grpc" || web.AffinityTimeout != 60 || web.ExternalTrafficPolicy != "Local" {
		t.Errorf("web %+v", web)
	}
	if dns.Namespace != "default" || dns.ClusterIP != "10.96.0.10" || len(dns.IPFamilies) != 2 || dns.IPFamilies[0] != "IPv4" ||
		dns.Ports[0].Protocol != "UDP" || dns.Ports[0].TargetPort != 53 {
		t.Errorf("dns %+v", dns)
	}
}

func TestParseRefuses(t *testing.T) {
	cases := map[string]string{
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}], externalIPs: [1.2.3.4]}": "Service a spec: field \"externalIPs\" is not supported",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a, finalizers: [x]}\nspec: {ports: [{port: 80}]}":        "Service metadata: field \"finalizers\" is not supported",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, appProtocol: h2}]}":        "Service a spec.ports[0]: field \"appProtocol\" is not supported",
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}":                                              "apps/v1 Deployment: weft does not take this kind",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: LoadBalancer, ports: [{port: 80}]}":     "type \"LoadBalancer\"",
		"apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}":                                              "metadata.name is required",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 99999}]}":                      "ports[0].port 99999",
		"kind: [": "document 1",
		"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ipFamilyPolicy: Sometimes, ports: [{port: 80}]}": "ipFamilyPolicy \"Sometimes\"",
	}
	for in, want := range cases {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(services))
	f.Add([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: x}]}"))
	f.Add([]byte(docsIngress))
	f.Add([]byte(weftIngress))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Parse(data)
		if err != nil {
			return
		}
		for _, o := range objs {
			switch {
			case o.Service != nil:
				if o.Service.Validate() != nil {
					t.Fatalf("Parse returned an invalid service: %+v", o.Service)
				}
			case o.Policy != nil:
				if o.Policy.Validate() != nil {
					t.Fatalf("Parse returned an invalid policy: %+v", o.Policy)
				}
			case o.Ingress != nil:
				if o.Ingress.Validate() != nil {
					t.Fatalf("Parse returned an invalid ingress: %+v", o.Ingress)
				}
			default:
				t.Fatalf("Parse returned an empty object: %+v", o)
			}
		}
	})
}

// The upstream documentation's example policy (kubernetes.io, "Network Policies").
const docsPolicy = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
    - port: dns
`

func TestParsePolicy(t *testing.T) {
	objs, err := Parse([]byte(docsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	p := objs[0].Policy
	if len(objs) != 1 || p == nil || p.Key() != "default/test-network-policy" || p.PodSelector.MatchLabels["role"] != "db" {
		t.Fatalf("%+v", objs)
	}
	in, eg := p.Types()
	from := p.Ingress[0].From
	if !in || !eg || len(from) != 3 || from[0].IPBlock.Except[0].String() != "172.17.1.0/24" ||
		from[1].NamespaceSelector.MatchLabels["project"] != "myproject" || from[2].PodSelector.MatchLabels["role"] != "frontend" ||
		p.Ingress[0].Ports[0].Port != 6379 {
		t.Errorf("ingress %+v", p.Ingress)
	}
	ports := p.Egress[0].Ports
	if ports[0].Port != 32000 || ports[0].EndPort != 32768 || ports[1].PortName != "dns" || ports[1].Protocol != "TCP" {
		t.Errorf("egress ports %+v", ports)
	}
}

func TestParsePolicyRefuses(t *testing.T) {
	head := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n"
	for in, want := range map[string]string{
		head + "spec: {podSelector: {}, ingress: [{from: [{serviceAccountSelector: {}}]}]}":                     "field \"serviceAccountSelector\" is not supported",
		head + "spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}": "spec.egress[0].to[0].ipBlock.except[0]",
		head + "spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}":                         "spec.ingress[0].ports[0].endPort",
		head + "spec: {podSelector: {matchExpressions: [{key: k, operator: Near}]}}":                            "spec.podSelector.matchExpressions[0].operator",
		head + "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]}":                      "spec.ingress[0].from[0].ipBlock.cidr",
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {podSelector: {}}":                        "metadata.name is required",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
}

// An Ingress as the upstream documentation writes one (kubernetes.io, "Ingress"), with TLS.
const docsIngress = `
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: name-virtual-host-ingress
spec:
  ingressClassName: weft
  tls:
  - hosts: [foo.bar.com]
    secretName: foo-tls
  defaultBackend:
    service: {name: fallback, port: {number: 80}}
  rules:
  - host: foo.bar.com
    http:
      paths:
      - pathType: Prefix
        path: "/"
        backend:
          service: {name: service1, port: {number: 80}}
  - host: "*.foo.com"
    http:
      paths:
      - pathType: Exact
        path: "/exact"
        backend:
          service: {name: service2, port: {name: http}}
  - host: foo.bar.com
    http:
      paths:
      - pathType: Prefix
        path: "/api"
        backend:
          service: {name: api, port: {number: 8080}}
`

const weftIngress = `
apiVersion: weft/v1
kind: Ingress
metadata: {name: shop, namespace: web}
spec:
  hosts:
  - host: shop.example.com
    routes:
    - path: /api
      methods: [GET, POST]
      headers: [{name: X-Canary, value: "yes"}]
      backends: [{service: api-v2, port: 80, weight: 9}, {service: api-v1, port: 80}]
      timeout: 5s
      retries: {attempts: 2}
      balance: {policy: Hash, hashOn: "cookie:session"}
      rewrite: {pathPrefix: /v2}
      requestHeaders: {set: [{name: X-From, value: weft}], remove: [X-Debug]}
    - path: /
      redirect: {scheme: https, statusCode: 308}
`

func TestParseIngress(t *testing.T) {
	objs, err := Parse([]byte(docsIngress + "\n---\n" + weftIngress))
	if err != nil {
		t.Fatal(err)
	}
	in := objs[0].Ingress
	if in == nil || in.Namespace != "default" || len(in.Hosts) != 2 || in.Hosts[0].Host != "foo.bar.com" || len(in.Hosts[0].Routes) != 2 ||
		in.Hosts[1].Routes[0].Backends[0].PortName != "http" || in.DefaultBackend.Service != "fallback" ||
		len(in.TLS) != 1 || in.TLS[0].Certificate != "foo-tls" {
		t.Fatalf("parsed %+v", in)
	}
	w := objs[1].Ingress
	if w == nil || w.Namespace != "web" || w.Hosts[0].Routes[0].Retries.Attempts != 2 || w.Hosts[0].Routes[0].Timeout.D().Seconds() != 5 ||
		w.Hosts[0].Routes[1].Redirect.StatusCode != 308 {
		t.Fatalf("parsed %+v", w)
	}
}

func TestParseIngressRefuses(t *testing.T) {
	head := "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\n"
	path := func(p string) string {
		return head + "spec: {rules: [{host: a.example, http: {paths: [" + p + "]}}]}"
	}
	weft := "apiVersion: weft/v1\nkind: Ingress\nmetadata: {name: i}\n"
	for in, want := range map[string]string{
		"apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i, annotations: {nginx.ingress.kubernetes.io/rewrite-target: /}}\nspec: {}":         "metadata.annotations[nginx.ingress.kubernetes.io/rewrite-target]",
		path("{path: /, pathType: ImplementationSpecific, backend: {service: {name: s, port: {number: 80}}}}"):                                                 "pathType \"ImplementationSpecific\"",
		path("{path: /, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}"):                                                                      "field \"resource\" is not supported",
		path("{path: x, pathType: Prefix, backend: {service: {name: s, port: {number: 80}}}}"):                                                                 "path: \"x\" must start with",
		path("{path: /a/../b, pathType: Prefix, backend: {service: {name: s, port: {number: 80}}}}"):                                                           "no \".\" or \"..\" segments",
		path("{path: /, pathType: Prefix, backend: {service: {name: s}}}"):                                                                                     "port: give the service's port number or its name",
		head + "spec: {rules: [{host: \"a.*.example\", http: {paths: [{path: /, pathType: Exact, backend: {service: {name: s, port: {number: 1}}}}]}}]}":       "hosts[0].host",
		head + "spec: {ingressClassName: nginx, defaultBackend: {service: {name: s, port: {number: 1}}}}":                                                      "another controller",
		head + "spec: {tls: [{hosts: [a.example]}], defaultBackend: {service: {name: s, port: {number: 1}}}}":                                                  "secretName is required",
		weft + "spec: {hosts: [{host: a.example, routes: [{backends: [{service: s, port: 1}], requestHeaders: {set: [{name: X, value: \"a\\r\\nB: c\"}]}}]}]}": "control characters",
		weft + "spec: {hosts: [{host: a.example, routes: [{backends: [{service: s, port: 1}], balance: {policy: Hash, hashOn: \"query:x\"}}]}]}":               "balance.hashOn",
		weft + "spec: {hosts: [{host: a.example, routes: [{redirect: {statusCode: 200}}]}]}":                                                                   "redirect.statusCode",
		weft + "spec: {hosts: [{host: a.example, routes: [{backends: [{service: s, port: 1}], redirect: {scheme: https}}]}]}":                                  "exactly one",
		weft + "spec: {hosts: [{host: a.example, routes: [{backends: [{service: s, port: 1}], mirror: x}]}]}":                                                  "field \"mirror\" is not supported",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
}
