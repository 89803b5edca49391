// Package route compiles ingresses into a routing table and looks requests up in it:
// host (exact, then the longest "*." wildcard, then any host), then path (Exact before
// Prefix, longer prefixes first, whole segments only), then method and headers (routes
// with more conditions first), then the default backend. Where two ingresses claim the
// same host, path and conditions, the first by namespace/name wins, so the answer never
// depends on the order the store listed them in.
//
// Pure: no I/O; the proxy asks it, weft-ingress builds it on every change.
package route

import (
	"fmt"
	"sort"
	"strings"

	v1 "github.com/weftnet/weft/api/v1"
)

// Backend is one weighted target of a route: a service port, by key.
type Backend struct {
	Key      string // "namespace/service:port" (port number or name)
	Service  string // namespace/name
	Port     int
	PortName string
	Weight   int
	H2C      bool
}

// Route is a compiled route, shared by every request that matches it.
type Route struct {
	ID      string // "namespace/ingress host path#n": names the route in logs and metrics
	Ingress string // namespace/name
	v1.Route
	Backends []Backend
	exact    bool
	prefix   string // Path, without a trailing slash unless it is "/"
}

// Table answers which route a request takes.
type Table struct {
	exact    map[string]*hostRoutes
	wildcard []wildcardHost // longest suffix first
	any      *hostRoutes
	fallback *Route // the first default backend
	Routes   []*Route
}

type wildcardHost struct {
	suffix string // ".example.com"
	routes *hostRoutes
}

type hostRoutes struct {
	exact  map[string][]*Route // by path
	prefix []*Route            // longest prefix first
}

// Compile builds the table of ingresses (each already valid).
func Compile(ingresses []v1.Ingress) *Table {
	ins := append([]v1.Ingress(nil), ingresses...)
	sort.Slice(ins, func(i, j int) bool { return ins[i].Key() < ins[j].Key() })
	t := &Table{exact: map[string]*hostRoutes{}}
	wild := map[string]*hostRoutes{}
	for _, in := range ins {
		for _, h := range in.Hosts {
			var hr *hostRoutes
			switch {
			case h.Host == "":
				if t.any == nil {
					t.any = newHostRoutes()
				}
				hr = t.any
			case strings.HasPrefix(h.Host, "*."):
				suffix := h.Host[1:]
				if wild[suffix] == nil {
					wild[suffix] = newHostRoutes()
				}
				hr = wild[suffix]
			default:
				if t.exact[h.Host] == nil {
					t.exact[h.Host] = newHostRoutes()
				}
				hr = t.exact[h.Host]
			}
			for i, r := range h.Routes {
				cr := compileRoute(in, r, fmt.Sprintf("%s %s%s#%d", in.Key(), HostOrAny(h.Host), pathOrRoot(r.Path), i))
				hr.add(cr)
				t.Routes = append(t.Routes, cr)
			}
		}
		if in.DefaultBackend != nil && t.fallback == nil {
			t.fallback = compileRoute(in, v1.Route{Backends: []v1.Backend{*in.DefaultBackend}}, in.Key()+" default")
			t.Routes = append(t.Routes, t.fallback)
		}
	}
	for suffix, hr := range wild {
		t.wildcard = append(t.wildcard, wildcardHost{suffix, hr})
	}
	sort.Slice(t.wildcard, func(i, j int) bool {
		a, b := t.wildcard[i].suffix, t.wildcard[j].suffix
		if len(a) != len(b) {
			return len(a) > len(b)
		}
		return a < b
	})
	for _, hr := range t.hostRoutes() {
		hr.sort()
	}
	return t
}

// HostOrAny names a host for people: "*" for any.
func HostOrAny(h string) string {
	if h == "" {
		return "*"
	}
	return h
}

func pathOrRoot(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

func (t *Table) hostRoutes() []*hostRoutes {
	var out []*hostRoutes
	for _, hr := range t.exact {
		out = append(out, hr)
	}
	for _, w := range t.wildcard {
		out = append(out, w.routes)
	}
	if t.any != nil {
		out = append(out, t.any)
	}
	return out
}

func compileRoute(in v1.Ingress, r v1.Route, id string) *Route {
	cr := &Route{ID: id, Ingress: in.Key(), Route: r}
	path := pathOrRoot(r.Path)
	cr.exact = r.PathType == v1.PathExact
	cr.prefix = path
	if !cr.exact && len(path) > 1 {
		cr.prefix = strings.TrimSuffix(path, "/")
	}
	for _, b := range r.Backends {
		port := fmt.Sprint(b.Port)
		if b.PortName != "" {
			port = b.PortName
		}
		cr.Backends = append(cr.Backends, Backend{
			Key: in.Namespace + "/" + b.Service + ":" + port, Service: in.Namespace + "/" + b.Service,
			Port: b.Port, PortName: b.PortName, Weight: b.EffectiveWeight(), H2C: b.Protocol == "H2C",
		})
	}
	return cr
}

func newHostRoutes() *hostRoutes { return &hostRoutes{exact: map[string][]*Route{}} }

func (hr *hostRoutes) add(r *Route) {
	if r.exact {
		hr.exact[r.prefix] = append(hr.exact[r.prefix], r)
		return
	}
	hr.prefix = append(hr.prefix, r)
}

// conditions ranks routes of the same path: more header matches first, then a method
// condition; ties keep the ingresses' order (stable sort).
func conditions(r *Route) int {
	n := 2 * len(r.Headers)
	if len(r.Methods) > 0 {
		n++
	}
	return n
}

func (hr *hostRoutes) sort() {
	for _, rs := range hr.exact {
		sort.SliceStable(rs, func(i, j int) bool { return conditions(rs[i]) > conditions(rs[j]) })
	}
	sort.SliceStable(hr.prefix, func(i, j int) bool {
		a, b := hr.prefix[i], hr.prefix[j]
		if len(a.prefix) != len(b.prefix) {
			return len(a.prefix) > len(b.prefix)
		}
		return conditions(a) > conditions(b)
	})
}

// Request is what a lookup needs of a request. Header returns the first value of a
// header (name in canonical or any case, as the caller's storage allows).
type Request interface {
	Host() string   // lower case, without the port
	Path() string   // the path, without the query
	Method() string // upper case
	Header(name string) (string, bool)
}

// Lookup returns the route r takes, or nil (404).
func (t *Table) Lookup(r Request) *Route {
	host := r.Host()
	if hr := t.exact[host]; hr != nil {
		if rt := hr.match(r); rt != nil {
			return rt
		}
	}
	for _, w := range t.wildcard {
		// "*.example.com" takes a.example.com and a.b.example.com, never example.com.
		if len(host) > len(w.suffix) && strings.HasSuffix(host, w.suffix) {
			if rt := w.routes.match(r); rt != nil {
				return rt
			}
			break
		}
	}
	if t.any != nil {
		if rt := t.any.match(r); rt != nil {
			return rt
		}
	}
	return t.fallback
}

func (hr *hostRoutes) match(r Request) *Route {
	path := r.Path()
	for _, rt := range hr.exact[path] {
		if rt.conditionsHold(r) {
			return rt
		}
	}
	for _, rt := range hr.prefix {
		if prefixMatch(rt.prefix, path) && rt.conditionsHold(r) {
			return rt
		}
	}
	return nil
}

// prefixMatch matches whole segments: "/a" takes "/a", "/a/" and "/a/b", not "/ab".
func prefixMatch(prefix, path string) bool {
	if prefix == "/" {
		return strings.HasPrefix(path, "/")
	}
	return strings.HasPrefix(path, prefix) && (len(path) == len(prefix) || path[len(prefix)] == '/')
}

func (rt *Route) conditionsHold(r Request) bool {
	if len(rt.Methods) > 0 {
		m, ok := r.Method(), false
		for _, want := range rt.Methods {
			if m == want {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for _, h := range rt.Headers {
		if v, ok := r.Header(h.Name); !ok || v != h.Value {
			return false
		}
	}
	return true
}

// RewritePath applies the route's prefix rewrite to path (the query is the caller's).
func (rt *Route) RewritePath(path string) string {
	if rt.Rewrite == nil || rt.Rewrite.PathPrefix == "" {
		return path
	}
	rest := path
	if rt.exact {
		rest = ""
	} else if rt.prefix != "/" {
		rest = path[len(rt.prefix):]
	} else {
		rest = path[1:]
		if rest != "" {
			rest = "/" + rest
		}
	}
	np := rt.Rewrite.PathPrefix
	if rest == "" {
		return np
	}
	return strings.TrimSuffix(np, "/") + rest
}

// Services lists every backend key the table routes to.
func (t *Table) Services() []Backend {
	seen := map[string]bool{}
	var out []Backend
	for _, r := range t.Routes {
		for _, b := range r.Backends {
			if !seen[b.Key] {
				seen[b.Key] = true
				out = append(out, b)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// CertFor maps TLS server names (exact, or "*." wildcards) to certificates
// (namespace/name), and "" to the default certificate, for clients that send no name or
// an unknown one: the first `tls` entry without hosts, else the first entry of all. The
// first ingress by namespace/name wins a name.
func CertFor(ingresses []v1.Ingress) map[string]string {
	out := map[string]string{}
	ins := append([]v1.Ingress(nil), ingresses...)
	sort.Slice(ins, func(i, j int) bool { return ins[i].Key() < ins[j].Key() })
	first := ""
	for _, in := range ins {
		for _, t := range in.TLS {
			key := in.Namespace + "/" + t.Certificate
			if first == "" {
				first = key
			}
			if _, ok := out[""]; !ok && len(t.Hosts) == 0 {
				out[""] = key
			}
			for _, h := range t.Hosts {
				if _, ok := out[h]; !ok {
					out[h] = key
				}
			}
		}
	}
	if _, ok := out[""]; !ok && first != "" {
		out[""] = first
	}
	return out
}
