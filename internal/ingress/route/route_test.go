package route

import (
	"strings"
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

type req struct {
	host, path, method string
	headers            map[string]string
}

func (r req) Host() string   { return r.host }
func (r req) Path() string   { return r.path }
func (r req) Method() string { return r.method }
func (r req) Header(n string) (string, bool) {
	v, ok := r.headers[strings.ToLower(n)]
	return v, ok
}

func be(svc string) []v1.Backend { return []v1.Backend{{Service: svc, Port: 80}} }

func table() *Table {
	return Compile([]v1.Ingress{
		{Name: "b", Namespace: "web", Hosts: []v1.IngressHost{
			{Host: "shop.example.com", Routes: []v1.Route{
				{Path: "/", Backends: be("root")},
				{Path: "/api", Backends: be("api")},
				{Path: "/api/v2", Backends: be("api-v2")},
				{Path: "/api", Headers: []v1.HeaderMatch{{Name: "X-Canary", Value: "yes"}}, Backends: be("canary")},
				{Path: "/login", PathType: v1.PathExact, Backends: be("login")},
				{Path: "/upload", Methods: []string{"POST", "PUT"}, Backends: be("upload")},
			}},
			{Host: "*.example.com", Routes: []v1.Route{{Path: "/", Backends: be("wild")}}},
			{Host: "*.b.example.com", Routes: []v1.Route{{Path: "/", Backends: be("wild-b")}}},
		}},
		// Same host and path in a later ingress: the earlier one (web/b < web/c) wins.
		{Name: "c", Namespace: "web", Hosts: []v1.IngressHost{
			{Host: "shop.example.com", Routes: []v1.Route{{Path: "/api", Backends: be("loser")}}},
			{Routes: []v1.Route{{Path: "/any", Backends: be("anyhost")}}},
		}, DefaultBackend: &v1.Backend{Service: "fallback", Port: 80}},
		{Name: "a", Namespace: "web", DefaultBackend: &v1.Backend{Service: "first-default", Port: 80}},
	})
}

func TestLookup(t *testing.T) {
	tb := table()
	for _, c := range []struct {
		r    req
		want string
	}{
		{req{host: "shop.example.com", path: "/", method: "GET"}, "root"},
		{req{host: "shop.example.com", path: "/api", method: "GET"}, "api"},
		{req{host: "shop.example.com", path: "/api/", method: "GET"}, "api"},
		{req{host: "shop.example.com", path: "/api/orders", method: "GET"}, "api"},
		{req{host: "shop.example.com", path: "/apiary", method: "GET"}, "root"}, // whole segments only
		{req{host: "shop.example.com", path: "/api/v2/x", method: "GET"}, "api-v2"},
		{req{host: "shop.example.com", path: "/api/x", method: "GET", headers: map[string]string{"x-canary": "yes"}}, "canary"},
		{req{host: "shop.example.com", path: "/api/x", method: "GET", headers: map[string]string{"x-canary": "no"}}, "api"},
		{req{host: "shop.example.com", path: "/login", method: "GET"}, "login"},
		{req{host: "shop.example.com", path: "/login/x", method: "GET"}, "root"},
		{req{host: "shop.example.com", path: "/upload", method: "POST"}, "upload"},
		{req{host: "shop.example.com", path: "/upload", method: "GET"}, "root"},
		{req{host: "x.example.com", path: "/a", method: "GET"}, "wild"},
		{req{host: "x.y.example.com", path: "/a", method: "GET"}, "wild"},
		{req{host: "x.b.example.com", path: "/a", method: "GET"}, "wild-b"}, // the longest wildcard
		{req{host: "example.com", path: "/any", method: "GET"}, "anyhost"},  // a wildcard never takes the bare domain
		{req{host: "other.org", path: "/any/x", method: "GET"}, "anyhost"},
		{req{host: "other.org", path: "/nothing", method: "GET"}, "first-default"},
	} {
		rt := tb.Lookup(c.r)
		if rt == nil || rt.Backends[0].Service != "web/"+c.want {
			got := "<nil>"
			if rt != nil {
				got = rt.Backends[0].Service
			}
			t.Errorf("%s%s %s: got %s, want web/%s", c.r.host, c.r.path, c.r.method, got, c.want)
		}
	}
	if rt := Compile(nil).Lookup(req{host: "a", path: "/"}); rt != nil {
		t.Errorf("empty table routed to %v", rt.ID)
	}
}

func TestWeightsAndKeys(t *testing.T) {
	tb := Compile([]v1.Ingress{{Name: "w", Namespace: "ns", Hosts: []v1.IngressHost{{Routes: []v1.Route{{
		Backends: []v1.Backend{{Service: "a", Port: 80, Weight: 9}, {Service: "b", PortName: "http"}, {Service: "c", Port: 81, Protocol: "H2C"}},
	}}}}}})
	bs := tb.Lookup(req{host: "x", path: "/"}).Backends
	if bs[0].Key != "ns/a:80" || bs[0].Weight != 9 || bs[1].Key != "ns/b:http" || bs[1].Weight != 1 || !bs[2].H2C {
		t.Errorf("backends %+v", bs)
	}
	if len(tb.Services()) != 3 {
		t.Errorf("services %+v", tb.Services())
	}
}

func TestRewritePath(t *testing.T) {
	for _, c := range []struct{ path, ptype, rewrite, in, want string }{
		{"/api", "", "/v2", "/api/x", "/v2/x"},
		{"/api", "", "/v2", "/api", "/v2"},
		{"/api/", "", "/", "/api/x", "/x"},
		{"/", "", "/app", "/x/y", "/app/x/y"},
		{"/", "", "/app", "/", "/app"},
		{"/old", v1.PathExact, "/new", "/old", "/new"},
	} {
		rt := compileRoute(v1.Ingress{}, v1.Route{Path: c.path, PathType: c.ptype, Rewrite: &v1.Rewrite{PathPrefix: c.rewrite}}, "")
		if got := rt.RewritePath(c.in); got != c.want {
			t.Errorf("%s→%s on %s: got %s, want %s", c.path, c.rewrite, c.in, got, c.want)
		}
	}
}

func TestCertFor(t *testing.T) {
	m := CertFor([]v1.Ingress{
		{Name: "b", Namespace: "ns", TLS: []v1.IngressTLS{{Hosts: []string{"a.example", "*.w.example"}, Certificate: "c2"}}},
		{Name: "a", Namespace: "ns", TLS: []v1.IngressTLS{{Hosts: []string{"a.example"}, Certificate: "c1"}}},
	})
	if m["a.example"] != "ns/c1" || m["*.w.example"] != "ns/c2" || m[""] != "ns/c1" {
		t.Errorf("certs %v", m)
	}
	// A tls entry without hosts is the default certificate, wherever it is listed.
	m = CertFor([]v1.Ingress{
		{Name: "a", Namespace: "ns", TLS: []v1.IngressTLS{{Hosts: []string{"a.example"}, Certificate: "c1"}}},
		{Name: "b", Namespace: "ns", TLS: []v1.IngressTLS{{Certificate: "fallback"}}},
	})
	if m[""] != "ns/fallback" || m["a.example"] != "ns/c1" {
		t.Errorf("default certificate: %v", m)
	}
}
