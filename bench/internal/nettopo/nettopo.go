// Package nettopo is the benchmarks' test bench: a client, a node and a server namespace,
// the node routing between the two (10.210.1.0/24 on the client side, 10.210.2.0/24 on
// the server's), echo servers on the server, and new-connection latency measured from the
// client in interleaved rounds, so that two setups are compared at the same moments.
package nettopo

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/weftnet/weft/internal/netns"
	"github.com/weftnet/weft/internal/probe"
)

// ServerIP is the server's address; ClientIP the client's.
const (
	ServerIP = "10.210.2.2"
	ClientIP = "10.210.1.2"
)

// Topo is one client — node — server.
type Topo struct {
	Client, Node, Server string // namespace paths
	names                []string
	listeners            []net.Listener
}

// New builds a topology whose namespaces are named tag-c, tag-n, tag-s, with TCP echo
// servers on the server's ports.
func New(tag string, ports []int) (*Topo, error) {
	t := &Topo{}
	mk := func(short string) (string, error) {
		name := tag + "-" + short
		p, err := netns.Create(name)
		if err == nil {
			t.names = append(t.names, name)
		}
		return p, err
	}
	var err error
	for _, x := range []struct {
		dst   *string
		short string
	}{{&t.Client, "c"}, {&t.Node, "n"}, {&t.Server, "s"}} {
		if *x.dst, err = mk(x.short); err != nil {
			t.Down()
			return nil, err
		}
	}
	steps := []func() error{
		func() error { return link(t.Client, t.Node, "eth0", "c0", ClientIP+"/24", "10.210.1.1/24") },
		func() error { return link(t.Server, t.Node, "eth0", "s0", ServerIP+"/24", "10.210.2.1/24") },
		func() error { return route(t.Client, "10.210.1.1") },
		func() error { return route(t.Server, "10.210.2.1") },
		func() error {
			return probe.InNS(t.Node, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) })
		},
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Down()
			return nil, err
		}
	}
	for _, port := range ports {
		ln, err := probe.ListenTCP(t.Server, fmt.Sprintf(":%d", port))
		if err != nil {
			t.Down()
			return nil, err
		}
		t.listeners = append(t.listeners, ln)
		go probe.Echo(ln)
	}
	return t, nil
}

// Down removes the namespaces.
func (t *Topo) Down() {
	for _, ln := range t.listeners {
		ln.Close()
	}
	for _, n := range t.names {
		_ = netns.Delete(n)
	}
}

// Target is an address to connect to from a topology's client.
type Target struct {
	Topo *Topo
	Addr netip.AddrPort
}

// Percentiles of new-connection latency.
type Percentiles struct{ P50, P99 time.Duration }

// Interleaved measures new-connection latency (connect, one byte each way, close) to each
// target in turn, in 20 rounds of conns/20 connections, after a warm-up, and returns each
// target's p50 and p99.
func Interleaved(targets []Target, conns int) ([]Percentiles, error) {
	const rounds = 20
	per := max(conns/rounds, 1)
	samples := make([][]time.Duration, len(targets))
	for _, tg := range targets { // warm up: neighbours, caches
		if _, err := ConnectLoop(tg, 50); err != nil {
			return nil, err
		}
	}
	for range rounds {
		for i, tg := range targets {
			s, err := ConnectLoop(tg, per)
			if err != nil {
				return nil, err
			}
			samples[i] = append(samples[i], s...)
		}
	}
	out := make([]Percentiles, len(targets))
	for i, s := range samples {
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		out[i] = Percentiles{s[len(s)/2].Round(100 * time.Nanosecond), s[len(s)*99/100].Round(100 * time.Nanosecond)}
	}
	return out, nil
}

// ConnectLoop opens n connections to the target, one after the other, timing each.
func ConnectLoop(tg Target, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	buf := make([]byte, 1)
	err := probe.InNS(tg.Topo.Client, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		for range n {
			start := time.Now()
			c, err := d.Dial("tcp", tg.Addr.String())
			if err != nil {
				return err
			}
			if _, err := c.Write(buf); err != nil {
				return err
			}
			if _, err := c.Read(buf); err != nil {
				return err
			}
			c.Close()
			out = append(out, time.Since(start))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("latency to %s: %w", tg.Addr, err)
	}
	return out, nil
}

// MAC returns the hardware address of the device name in the namespace at nsPath.
func MAC(nsPath, name string) (net.HardwareAddr, error) {
	h, err := handleAt(nsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}

func link(a, b, aName, bName, aAddr, bAddr string) error {
	h, err := handleAt(a)
	if err != nil {
		return err
	}
	defer h.Close()
	peerNS, err := vnetns.GetFromPath(b)
	if err != nil {
		return err
	}
	defer peerNS.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(peerNS)}); err != nil {
		return fmt.Errorf("veth %s: %w", aName, err)
	}
	if err := up(a, aName, aAddr); err != nil {
		return err
	}
	return up(b, bName, bAddr)
}

func handleAt(path string) (*netlink.Handle, error) {
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

func up(nsPath, name, cidr string) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(l, a); err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

func route(nsPath, gw string) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw)}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

// StreamRates measures one long TCP stream to each target in turn (the echo server sends
// every byte back; the client counts what returns), in rounds of d each, and returns each
// target's median rate in bytes per second over the rounds.
func StreamRates(targets []Target, rounds int, d time.Duration) ([]float64, error) {
	rates := make([][]float64, len(targets))
	for range rounds {
		for i, tg := range targets {
			r, err := stream(tg, d)
			if err != nil {
				return nil, err
			}
			rates[i] = append(rates[i], r)
		}
	}
	out := make([]float64, len(targets))
	for i, r := range rates {
		sort.Float64s(r)
		out[i] = r[len(r)/2]
	}
	return out, nil
}

func stream(tg Target, d time.Duration) (float64, error) {
	var rate float64
	err := probe.InNS(tg.Topo.Client, func() error {
		c, err := net.DialTimeout("tcp", tg.Addr.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		done := make(chan int64)
		go func() {
			var n int64
			buf := make([]byte, 256<<10)
			for {
				k, err := c.Read(buf)
				n += int64(k)
				if err != nil {
					done <- n
					return
				}
			}
		}()
		chunk := make([]byte, 64<<10)
		start := time.Now()
		_ = c.SetWriteDeadline(start.Add(d))
		for time.Since(start) < d {
			if _, err := c.Write(chunk); err != nil {
				break
			}
		}
		_ = c.SetReadDeadline(time.Now()) // stop counting: what came back within d
		n := <-done
		rate = float64(n) / time.Since(start).Seconds()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("stream to %s: %w", tg.Addr, err)
	}
	return rate, nil
}
