package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
)

// healthCheck probes one endpoint with an HTTP GET every interval: two failures in a row
// take it out (down), one success brings it back.
type healthCheck struct {
	cfg    v1.HealthCheck
	cancel context.CancelFunc
}

// syncHealthChecks runs exactly the wanted checks (endpoint address → check); p.mu held.
func (p *Proxy) syncHealthChecks(want map[string]*v1.HealthCheck) {
	for addr, hc := range p.checks {
		if w, ok := want[addr]; !ok || *w != hc.cfg {
			hc.cancel()
			delete(p.checks, addr)
			if e := p.endpoints[addr]; e != nil && !ok {
				e.down.Store(false)
			}
		}
	}
	for addr, cfg := range want {
		if _, ok := p.checks[addr]; ok {
			continue
		}
		e := p.endpoints[addr]
		ctx, cancel := context.WithCancel(context.Background())
		p.checks[addr] = &healthCheck{cfg: *cfg, cancel: cancel}
		go probeLoop(ctx, e, *cfg)
	}
}

func probeLoop(ctx context.Context, e *endpoint, cfg v1.HealthCheck) {
	interval := cfg.Interval.D()
	if interval == 0 {
		interval = 5 * time.Second
	}
	fails := 0
	for {
		if probe(ctx, e.addr, cfg.Path, min(interval, 2*time.Second)) {
			fails = 0
			e.down.Store(false)
		} else if fails++; fails >= 2 {
			e.down.Store(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func probe(ctx context.Context, addr, path string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: weft-ingress-health\r\nConnection: close\r\n\r\n")); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}
