package v1

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Ingress is a set of HTTP routes from outside the cluster to its services, served by
// weft-ingress on every node. Its shape follows Kubernetes Ingress and Gateway API
// HTTPRoute where they overlap. Every field is typed: nothing in it is ever pasted into a
// configuration language, so a hostile value can only fail validation.
type Ingress struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	// Hosts route by the request's host: an exact name, "*.example.com" (one or more
	// labels in front of example.com), or "" (any host).
	Hosts []IngressHost `json:"hosts,omitempty"`
	// DefaultBackend takes requests no route matches.
	DefaultBackend *Backend `json:"defaultBackend,omitempty"`
	// TLS serves these hosts over HTTPS with a stored certificate of the namespace.
	TLS []IngressTLS `json:"tls,omitempty"`
}

// IngressHost is the routes of one host.
type IngressHost struct {
	Host   string  `json:"host,omitempty"`
	Routes []Route `json:"routes"`
}

// IngressTLS names the certificate (`weft ingress cert add`) that serves hosts. An entry
// without hosts is the default certificate: it serves clients that send no server name or
// one no entry lists (without such an entry, the first entry's certificate does).
type IngressTLS struct {
	Hosts       []string `json:"hosts,omitempty"`
	Certificate string   `json:"certificate"`
}

// Path match types.
const (
	PathPrefix = "Prefix" // whole path segments: /a matches /a and /a/b, not /ab
	PathExact  = "Exact"
)

// Route matches requests and says what to do with them: send them to backends, or
// redirect them.
type Route struct {
	Path     string        `json:"path,omitempty"`     // default "/"
	PathType string        `json:"pathType,omitempty"` // Prefix (default) or Exact
	Methods  []string      `json:"methods,omitempty"`  // any of these; none: any method
	Headers  []HeaderMatch `json:"headers,omitempty"`  // all of these

	Backends []Backend `json:"backends,omitempty"`
	Redirect *Redirect `json:"redirect,omitempty"`
	Rewrite  *Rewrite  `json:"rewrite,omitempty"`

	RequestHeaders  *HeaderChanges `json:"requestHeaders,omitempty"`
	ResponseHeaders *HeaderChanges `json:"responseHeaders,omitempty"`

	// Timeout bounds the whole exchange. 0: the answer's head within 60 s, and its body
	// may stream as long as it lasts.
	Timeout Duration     `json:"timeout,omitempty"`
	Retries *RetryPolicy `json:"retries,omitempty"`
	Balance *Balance     `json:"balance,omitempty"`
	// HealthCheck probes every endpoint of the route's backends; without it only passive
	// health (outlier ejection) applies.
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
}

// HeaderMatch is an exact match of a request header's value.
type HeaderMatch struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Backend is a service port and its share of the route's requests.
type Backend struct {
	Service  string `json:"service"`
	Port     int    `json:"port,omitempty"`     // the service's port number
	PortName string `json:"portName,omitempty"` // or its name
	Weight   int    `json:"weight,omitempty"`   // relative share; 0 means 1
	// Protocol to the endpoints: HTTP (HTTP/1.1, default) or H2C (HTTP/2 without TLS, for
	// gRPC backends).
	Protocol string `json:"protocol,omitempty"`
}

// Redirect answers with a redirect instead of proxying.
type Redirect struct {
	Scheme     string `json:"scheme,omitempty"` // http or https
	Host       string `json:"host,omitempty"`
	Port       int    `json:"port,omitempty"`
	Path       string `json:"path,omitempty"`
	StatusCode int    `json:"statusCode,omitempty"` // 301 (default), 302, 303, 307 or 308
}

// Rewrite changes the request before it goes to the backend.
type Rewrite struct {
	// PathPrefix replaces the part of the path the route's prefix matched.
	PathPrefix string `json:"pathPrefix,omitempty"`
	Host       string `json:"host,omitempty"`
}

// HeaderChanges sets, adds and removes headers.
type HeaderChanges struct {
	Set    []HeaderMatch `json:"set,omitempty"`
	Add    []HeaderMatch `json:"add,omitempty"`
	Remove []string      `json:"remove,omitempty"`
}

// RetryPolicy retries idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) that
// failed to connect or got a 502/503/504, on another endpoint.
type RetryPolicy struct {
	Attempts int `json:"attempts"` // retries after the first try, at most 5
	// BudgetPercent caps retries at this share of the route's recent requests (default
	// 20), so retries cannot multiply an overload.
	BudgetPercent int `json:"budgetPercent,omitempty"`
}

// Balancing policies.
const (
	BalanceRoundRobin   = "RoundRobin"
	BalanceLeastRequest = "LeastRequest" // the less loaded of two random endpoints
	BalanceHash         = "Hash"         // consistent hash of HashOn
)

// Balance picks an endpoint per request.
type Balance struct {
	Policy string `json:"policy,omitempty"` // default RoundRobin
	// HashOn, for Hash: "header:NAME", "cookie:NAME" or "client" (the client's address).
	HashOn string `json:"hashOn,omitempty"`
	// AffinityCookie, when set, pins a client to an endpoint with a cookie of this name.
	AffinityCookie string `json:"affinityCookie,omitempty"`
}

// HealthCheck is an active HTTP probe of every endpoint.
type HealthCheck struct {
	Path     string   `json:"path"`
	Interval Duration `json:"interval,omitempty"` // default 5 s
}

// Certificate is a TLS certificate and key (PEM), stored for ingresses to name.
type Certificate struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	CertPEM   string `json:"cert"`
	KeyPEM    string `json:"key"`
}

// Key is "namespace/name".
func (in *Ingress) Key() string { return in.Namespace + "/" + in.Name }

// Key is "namespace/name".
func (c *Certificate) Key() string { return c.Namespace + "/" + c.Name }

var (
	headerToken = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	hostLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	methodToken = regexp.MustCompile(`^[A-Z]+$`)
)

// ValidHost checks an ingress host: a lower-case DNS name, optionally "*." in front.
func ValidHost(h string) error {
	name := strings.TrimPrefix(h, "*.")
	if len(h) > 253 || name == "" {
		return fmt.Errorf("host %q: not a DNS name", h)
	}
	for _, l := range strings.Split(name, ".") {
		if !hostLabel.MatchString(l) {
			return fmt.Errorf("host %q: not a lower-case DNS name (a wildcard is only \"*.\" in front)", h)
		}
	}
	return nil
}

// validPath checks a path: absolute, printable ASCII, no dot segments.
func validPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q must start with \"/\"", p)
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] >= 0x7f || p[i] == '?' || p[i] == '#' || p[i] == '%' {
			return fmt.Errorf("%q: only printable ASCII without spaces, '?', '#' or '%%'", p)
		}
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("%q: no \".\" or \"..\" segments", p)
		}
	}
	return nil
}

// validHeaderValue refuses what could end a header line or smuggle one.
func validHeaderValue(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return fmt.Errorf("value %q: control characters are not allowed", v)
		}
	}
	return nil
}

// Validate checks every field and names the first wrong one.
func (in *Ingress) Validate() error {
	if err := ValidName("ingress name", in.Name); err != nil {
		return err
	}
	if err := ValidName("namespace", in.Namespace); err != nil {
		return err
	}
	if len(in.Hosts) == 0 && in.DefaultBackend == nil {
		return errors.New("hosts: an ingress needs a host with routes or a default backend")
	}
	seen := map[string]bool{}
	for i, h := range in.Hosts {
		where := fmt.Sprintf("hosts[%d]", i)
		if h.Host != "" {
			if err := ValidHost(h.Host); err != nil {
				return fmt.Errorf("%s.host: %w", where, err)
			}
		}
		if seen[h.Host] {
			return fmt.Errorf("%s.host: %q is listed twice", where, h.Host)
		}
		seen[h.Host] = true
		if len(h.Routes) == 0 {
			return fmt.Errorf("%s.routes: at least one route", where)
		}
		for j := range h.Routes {
			if err := h.Routes[j].validate(); err != nil {
				return fmt.Errorf("%s.routes[%d].%w", where, j, err)
			}
		}
	}
	if b := in.DefaultBackend; b != nil {
		if err := b.validate(); err != nil {
			return fmt.Errorf("defaultBackend.%w", err)
		}
	}
	for i, t := range in.TLS {
		if err := ValidName("certificate", t.Certificate); err != nil {
			return fmt.Errorf("tls[%d].certificate: %w", i, err)
		}
		for j, h := range t.Hosts {
			if err := ValidHost(h); err != nil {
				return fmt.Errorf("tls[%d].hosts[%d]: %w", i, j, err)
			}
		}
	}
	return nil
}

func (r *Route) validate() error {
	if r.Path != "" {
		if err := validPath(r.Path); err != nil {
			return fmt.Errorf("path: %w", err)
		}
	}
	switch r.PathType {
	case "", PathPrefix, PathExact:
	default:
		return fmt.Errorf("pathType: %q: use Prefix or Exact", r.PathType)
	}
	for i, m := range r.Methods {
		if !methodToken.MatchString(m) || len(m) > 16 {
			return fmt.Errorf("methods[%d]: %q is not an HTTP method", i, m)
		}
	}
	for i, h := range r.Headers {
		if err := validHeader(h); err != nil {
			return fmt.Errorf("headers[%d]: %w", i, err)
		}
	}
	if (len(r.Backends) == 0) == (r.Redirect == nil) {
		return errors.New("backends: a route has backends or a redirect, exactly one of them")
	}
	for i := range r.Backends {
		if err := r.Backends[i].validate(); err != nil {
			return fmt.Errorf("backends[%d].%w", i, err)
		}
	}
	if rd := r.Redirect; rd != nil {
		switch rd.Scheme {
		case "", "http", "https":
		default:
			return fmt.Errorf("redirect.scheme: %q: use http or https", rd.Scheme)
		}
		if rd.Host != "" {
			if err := ValidHost(rd.Host); err != nil || strings.HasPrefix(rd.Host, "*.") {
				return fmt.Errorf("redirect.host: %q is not a DNS name", rd.Host)
			}
		}
		if rd.Port < 0 || rd.Port > 65535 {
			return fmt.Errorf("redirect.port: %d is not a port", rd.Port)
		}
		if rd.Path != "" {
			if err := validPath(rd.Path); err != nil {
				return fmt.Errorf("redirect.path: %w", err)
			}
		}
		switch rd.StatusCode {
		case 0, 301, 302, 303, 307, 308:
		default:
			return fmt.Errorf("redirect.statusCode: %d: use 301, 302, 303, 307 or 308", rd.StatusCode)
		}
	}
	if rw := r.Rewrite; rw != nil {
		if rw.PathPrefix != "" {
			if err := validPath(rw.PathPrefix); err != nil {
				return fmt.Errorf("rewrite.pathPrefix: %w", err)
			}
		}
		if rw.Host != "" {
			if err := ValidHost(rw.Host); err != nil || strings.HasPrefix(rw.Host, "*.") {
				return fmt.Errorf("rewrite.host: %q is not a DNS name", rw.Host)
			}
		}
	}
	for name, hc := range map[string]*HeaderChanges{"requestHeaders": r.RequestHeaders, "responseHeaders": r.ResponseHeaders} {
		if hc == nil {
			continue
		}
		for i, h := range append(append([]HeaderMatch{}, hc.Set...), hc.Add...) {
			if err := validHeader(h); err != nil {
				return fmt.Errorf("%s[%d]: %w", name, i, err)
			}
		}
		for i, n := range hc.Remove {
			if !headerToken.MatchString(n) {
				return fmt.Errorf("%s.remove[%d]: %q is not a header name", name, i, n)
			}
		}
	}
	if r.Timeout < 0 || r.Timeout.D() > time.Hour {
		return fmt.Errorf("timeout: %v: between 0 and 1h", r.Timeout.D())
	}
	if rp := r.Retries; rp != nil && (rp.Attempts < 0 || rp.Attempts > 5 || rp.BudgetPercent < 0 || rp.BudgetPercent > 100) {
		return errors.New("retries: attempts 0..5, budgetPercent 0..100")
	}
	if b := r.Balance; b != nil {
		switch b.Policy {
		case "", BalanceRoundRobin, BalanceLeastRequest:
			if b.HashOn != "" {
				return errors.New("balance.hashOn: only with policy Hash")
			}
		case BalanceHash:
			kind, name, _ := strings.Cut(b.HashOn, ":")
			switch {
			case b.HashOn == "client":
			case (kind == "header" || kind == "cookie") && headerToken.MatchString(name):
			default:
				return fmt.Errorf("balance.hashOn: %q: use header:NAME, cookie:NAME or client", b.HashOn)
			}
		default:
			return fmt.Errorf("balance.policy: %q: use RoundRobin, LeastRequest or Hash", b.Policy)
		}
		if b.AffinityCookie != "" && !headerToken.MatchString(b.AffinityCookie) {
			return fmt.Errorf("balance.affinityCookie: %q is not a cookie name", b.AffinityCookie)
		}
	}
	if hc := r.HealthCheck; hc != nil {
		if err := validPath(hc.Path); err != nil {
			return fmt.Errorf("healthCheck.path: %w", err)
		}
		if hc.Interval < 0 || (hc.Interval != 0 && hc.Interval.D() < 100*time.Millisecond) {
			return errors.New("healthCheck.interval: at least 100ms")
		}
	}
	return nil
}

func validHeader(h HeaderMatch) error {
	if !headerToken.MatchString(h.Name) {
		return fmt.Errorf("name %q is not a header name", h.Name)
	}
	return validHeaderValue(h.Value)
}

func (b *Backend) validate() error {
	if err := ValidName("service", b.Service); err != nil {
		return fmt.Errorf("service: %w", err)
	}
	if (b.Port == 0) == (b.PortName == "") {
		return errors.New("port: give the service's port number or its name, one of them")
	}
	if b.Port < 0 || b.Port > 65535 {
		return fmt.Errorf("port: %d is not a port", b.Port)
	}
	if b.Weight < 0 || b.Weight > 1000 {
		return fmt.Errorf("weight: %d: between 0 and 1000", b.Weight)
	}
	switch b.Protocol {
	case "", "HTTP", "H2C":
	default:
		return fmt.Errorf("protocol: %q: use HTTP or H2C", b.Protocol)
	}
	return nil
}

// EffectiveWeight is the backend's share: its weight, 1 when left out.
func (b *Backend) EffectiveWeight() int { return max(b.Weight, 1) }

// Validate checks a certificate's name; its PEM is checked by whoever parses it.
func (c *Certificate) Validate() error {
	if err := ValidName("certificate name", c.Name); err != nil {
		return err
	}
	if err := ValidName("namespace", c.Namespace); err != nil {
		return err
	}
	if c.CertPEM == "" || c.KeyPEM == "" {
		return errors.New("certificate: both the certificate and its key are needed")
	}
	return nil
}

// IngressStatus is what one node's weft-ingress serves (weft ingress status).
type IngressStatus struct {
	Node      string               `json:"node"`
	Time      time.Time            `json:"time"`
	Listeners []string             `json:"listeners"`
	Routes    []IngressRouteStatus `json:"routes"`
	Upstreams []IngressUpstream    `json:"upstreams"`
	Problems  []string             `json:"problems,omitempty"`
}

// IngressRouteStatus is one compiled route and its backends.
type IngressRouteStatus struct {
	Route    string   `json:"route"`
	Backends []string `json:"backends"`
}

// IngressUpstream is one endpoint of a backend and its health: healthy, ejected (passive
// health) or down (active health check).
type IngressUpstream struct {
	Backend string `json:"backend"`
	Address string `json:"address"`
	Health  string `json:"health"`
}
