package testutil

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/weftnet/weft/internal/probe"
)

// HTTPClient returns a client whose connections are made inside ns. http.Transport dials
// on goroutines of its own, so each dial is done by probe on a thread inside ns.
func (n NS) HTTPClient() *http.Client {
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		return probe.DialTCP(n.Path, ap, 5*time.Second)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}
