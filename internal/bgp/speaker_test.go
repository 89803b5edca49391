package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Speakers peer over loopback addresses (127.0.0.0/8 all answer on lo) on unprivileged
// ports: no root, no namespaces, as GoBGP's own server tests do.

var cluster = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")}

func freePort(t *testing.T, addr string) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

type node struct {
	*Speaker
	addr netip.Addr
	port uint16
	asn  uint32
}

func startNode(t *testing.T, addr string, asn uint32, mutate ...func(*Config)) *node {
	t.Helper()
	a := netip.MustParseAddr(addr)
	port := freePort(t, addr)
	cfg := Config{ASN: asn, RouterID: a, ListenAddrs: []netip.Addr{a}, ListenPort: int32(port), Accept: cluster, Export: cluster}
	for _, m := range mutate {
		m(&cfg)
	}
	s, err := Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return &node{Speaker: s, addr: a, port: port, asn: asn}
}

func (n *node) peerOf(o *node) Peer {
	return Peer{Name: o.addr.String(), Address: o.addr, Port: o.port, ASN: o.asn, LocalAddress: n.addr, HoldTime: 3 * time.Second,
		Passive: WaitsFor(n.addr, o.addr)}
}

func mesh(t *testing.T, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		var ps []Peer
		for _, o := range nodes {
			if o != n {
				ps = append(ps, n.peerOf(o))
			}
		}
		if err := n.SetPeers(context.Background(), ps); err != nil {
			t.Fatal(err)
		}
	}
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
	}
	t.Fatalf("%s: never happened; last: %s", what, last)
}

// routesAre checks the routes the speaker reports, which follow GoBGP's best-path events,
// and the same read from GoBGP's table: both must be want.
func routesAre(n *node, want map[string][]string) func() (bool, string) {
	return func() (bool, string) {
		rs, err := n.Routes()
		if err != nil {
			return false, err.Error()
		}
		if ok, got := sameRoutes(rs, want); !ok {
			return false, "from events: " + got
		}
		table, err := n.tableRoutes()
		if err != nil {
			return false, err.Error()
		}
		if ok, got := sameRoutes(table.sorted(), want); !ok {
			return false, "from the table: " + got
		}
		return true, ""
	}
}

func sameRoutes(rs []Route, want map[string][]string) (bool, string) {
	got := map[string][]string{}
	for _, r := range rs {
		for _, h := range r.NextHops {
			got[r.Prefix.String()] = append(got[r.Prefix.String()], h.String())
		}
	}
	if len(got) != len(want) {
		return false, fmt.Sprint(got)
	}
	for p, hs := range want {
		if !slices.Equal(got[p], hs) {
			return false, fmt.Sprint(got)
		}
	}
	return true, ""
}

func announce(t *testing.T, n *node, as ...string) {
	t.Helper()
	var want []Announcement
	for i := 0; i < len(as); i += 2 {
		want = append(want, Announcement{Prefix: netip.MustParsePrefix(as[i]), NextHop: netip.MustParseAddr(as[i+1])})
	}
	if err := n.Announce(context.Background(), want); err != nil {
		t.Fatal(err)
	}
}

func TestAnnounceLearnWithdraw(t *testing.T) {
	a := startNode(t, "127.0.0.11", 64512)
	b := startNode(t, "127.0.0.12", 64512)
	mesh(t, a, b)
	announce(t, a, "10.244.1.0/24", "192.168.255.1", "fd00:244:0:1::/64", "fd00:255::1")
	announce(t, b, "10.244.2.0/24", "192.168.255.2")
	eventually(t, "b learns a's blocks (IPv4 and, over MP-BGP, IPv6)", routesAre(b, map[string][]string{
		"10.244.1.0/24": {"192.168.255.1"}, "fd00:244:0:1::/64": {"fd00:255::1"}}))
	eventually(t, "a learns b's block", routesAre(a, map[string][]string{"10.244.2.0/24": {"192.168.255.2"}}))

	// A moved next hop replaces the route; a dropped prefix is withdrawn.
	announce(t, a, "10.244.1.0/24", "192.168.255.9")
	eventually(t, "b follows the new next hop, v6 withdrawn", routesAre(b, map[string][]string{"10.244.1.0/24": {"192.168.255.9"}}))
	announce(t, a)
	eventually(t, "b forgets a's withdrawn block", routesAre(b, map[string][]string{}))

	ps, err := a.Peers(context.Background())
	if err != nil || len(ps) != 1 || ps[0].State != "established" || !ps[0].Synced || ps[0].Accepted != 1 {
		t.Fatalf("a's peers = %+v, %v", ps, err)
	}
	if !a.Synced() {
		t.Fatal("a is established with End-of-RIB from its only peer but not synced")
	}
}

func TestFiltersKeepToTheClusterNetworks(t *testing.T) {
	// a may announce anything (its export filter is wide open); b accepts only the cluster.
	a := startNode(t, "127.0.0.21", 64512, func(c *Config) { c.Export = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")} })
	b := startNode(t, "127.0.0.22", 64512)
	// c exports only the cluster: what it originates outside it never leaves.
	c := startNode(t, "127.0.0.23", 64512)
	mesh(t, a, b, c)
	announce(t, a, "10.244.1.0/24", "192.168.255.1", "10.99.0.0/16", "192.168.255.1", "0.0.0.0/0", "192.168.255.1")
	announce(t, c, "10.244.3.0/24", "192.168.255.3", "172.16.0.0/12", "192.168.255.3")
	eventually(t, "b learns only cluster blocks", routesAre(b, map[string][]string{
		"10.244.1.0/24": {"192.168.255.1"}, "10.244.3.0/24": {"192.168.255.3"}}))
	eventually(t, "a hears nothing from c outside the cluster", routesAre(a, map[string][]string{"10.244.3.0/24": {"192.168.255.3"}}))
	// Nothing slips in later either.
	time.Sleep(500 * time.Millisecond)
	if ok, got := routesAre(b, map[string][]string{"10.244.1.0/24": {"192.168.255.1"}, "10.244.3.0/24": {"192.168.255.3"}})(); !ok {
		t.Fatalf("b's routes changed: %s", got)
	}
}

func TestEqualPathsGiveECMPAndPeerRemovalWithdraws(t *testing.T) {
	// Two eBGP neighbours announce the same anycast-style block: b keeps both next hops.
	a := startNode(t, "127.0.0.31", 64601)
	c := startNode(t, "127.0.0.33", 64603)
	b := startNode(t, "127.0.0.32", 64512)
	for _, pair := range [][2]*node{{a, b}, {c, b}} {
		if err := pair[0].SetPeers(context.Background(), []Peer{pair[0].peerOf(pair[1])}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.SetPeers(context.Background(), []Peer{b.peerOf(a), b.peerOf(c)}); err != nil {
		t.Fatal(err)
	}
	announce(t, a, "10.244.9.0/24", "127.0.0.31")
	announce(t, c, "10.244.9.0/24", "127.0.0.33")
	eventually(t, "b has both next hops", routesAre(b, map[string][]string{"10.244.9.0/24": {"127.0.0.31", "127.0.0.33"}}))

	// With the sessions settled, changes reach b's routes through best-path events alone:
	// one path leaves the equal-cost set and comes back. A session that restarts meanwhile
	// (both sides connecting at once can end in a reconnect) rightly makes b read the table
	// again: then the round proves nothing and is run again.
	sessions := func() string {
		ps, err := b.Peers(context.Background())
		var out []string
		for _, p := range ps {
			out = append(out, p.Address+" "+p.State+" "+p.Since.String())
		}
		return fmt.Sprint(out, err)
	}
	for round := 1; ; round++ {
		eventually(t, "b's sessions settled and read", func() (bool, string) {
			now := sessions()
			// Routes reads GoBGP's table when a session event asked for it (as the
			// agent's sync does); nothing else here would.
			if _, err := b.Routes(); err != nil {
				return false, err.Error()
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			return !b.reread && strings.Count(now, "established") == 2, now
		})
		before := sessions()
		b.mu.Lock()
		readAt := b.readAt
		b.mu.Unlock()
		announce(t, a)
		eventually(t, "a's path leaves the set", routesAre(b, map[string][]string{"10.244.9.0/24": {"127.0.0.33"}}))
		announce(t, a, "10.244.9.0/24", "127.0.0.31")
		eventually(t, "a's path is back", routesAre(b, map[string][]string{"10.244.9.0/24": {"127.0.0.31", "127.0.0.33"}}))
		b.mu.Lock()
		reread := b.readAt != readAt
		b.mu.Unlock()
		if !reread {
			break
		}
		if after := sessions(); after == before || round == 3 {
			t.Errorf("b read GoBGP's table again (sessions %s, then %s): the changes were not followed from events alone", before, after)
			break
		}
	}

	// Dropping a peer drops what it taught at once.
	if err := b.SetPeers(context.Background(), []Peer{b.peerOf(c)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "only c's next hop is left", routesAre(b, map[string][]string{"10.244.9.0/24": {"127.0.0.33"}}))
}

// TestGracefulRestartKeepsRoutes kills a speaker running in a child process (no Cease is
// sent, as when weftd is killed) and checks that its peer keeps the routes while it is
// away and until the restarted speaker has re-announced what it still has; a prefix the
// restarted speaker no longer announces is then withdrawn.
func TestGracefulRestartKeepsRoutes(t *testing.T) {
	b := startNode(t, "127.0.0.42", 64512)
	aAddr := netip.MustParseAddr("127.0.0.41")
	aPort := freePort(t, aAddr.String())
	child := func(restarting bool, prefixes string) *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"=1", "CHILD_ADDR="+aAddr.String(), "CHILD_PORT="+strconv.Itoa(int(aPort)),
			"PEER_ADDR="+b.addr.String(), "PEER_PORT="+strconv.Itoa(int(b.port)),
			"CHILD_RESTARTING="+strconv.FormatBool(restarting), "CHILD_PREFIXES="+prefixes)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	if err := b.SetPeers(context.Background(), []Peer{{Name: "a", Address: aAddr, Port: aPort, ASN: 64512, LocalAddress: b.addr, HoldTime: 3 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	first := child(false, "10.244.1.0/24,10.244.7.0/24")
	both := map[string][]string{"10.244.1.0/24": {"127.0.0.41"}, "10.244.7.0/24": {"127.0.0.41"}}
	eventually(t, "b learns a's blocks", routesAre(b, both))

	_ = first.Process.Signal(syscall.SIGKILL)
	_, _ = first.Process.Wait()
	// Past the hold time (3 s) the routes are still there: a's restart time holds them.
	for range 40 {
		time.Sleep(100 * time.Millisecond)
		if ok, got := routesAre(b, both)(); !ok {
			t.Fatalf("b dropped a's routes while a restarts: %s", got)
		}
	}
	child(true, "10.244.1.0/24")
	eventually(t, "after a's restart, b keeps what a still announces and drops the rest",
		routesAre(b, map[string][]string{"10.244.1.0/24": {"127.0.0.41"}}))
}

const childEnv = "WEFT_BGP_CHILD"

// TestMain doubles as the speaker TestGracefulRestartKeepsRoutes runs and kills.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		time.Sleep(time.Minute) // until killed
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild() error {
	addr := netip.MustParseAddr(os.Getenv("CHILD_ADDR"))
	port, _ := strconv.Atoi(os.Getenv("CHILD_PORT"))
	peerPort, _ := strconv.Atoi(os.Getenv("PEER_PORT"))
	s, err := Start(context.Background(), Config{ASN: 64512, RouterID: addr, ListenAddrs: []netip.Addr{addr}, ListenPort: int32(port),
		Accept: cluster, Export: cluster, Restarting: os.Getenv("CHILD_RESTARTING") == "true"}, nil)
	if err != nil {
		return err
	}
	var as []Announcement
	for _, p := range splitComma(os.Getenv("CHILD_PREFIXES")) {
		as = append(as, Announcement{Prefix: netip.MustParsePrefix(p), NextHop: addr})
	}
	if err := s.Announce(context.Background(), as); err != nil {
		return err
	}
	return s.SetPeers(context.Background(), []Peer{{Address: netip.MustParseAddr(os.Getenv("PEER_ADDR")), Port: uint16(peerPort),
		ASN: 64512, LocalAddress: addr, HoldTime: 3 * time.Second}})
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// A restarted speaker knows nothing of its peers until told: it must not call its view
// complete (and let stale kernel routes be swept) before then.
func TestNotSyncedBeforePeersAreKnown(t *testing.T) {
	a := startNode(t, "127.0.0.51", 64512)
	if a.Synced() {
		t.Fatal("synced before SetPeers")
	}
	b := startNode(t, "127.0.0.52", 64512)
	mesh(t, a, b)
	if a.Synced() {
		t.Fatal("synced before the session is up")
	}
	eventually(t, "a synced once b's End-of-RIB arrived", func() (bool, string) { return a.Synced(), "" })
}

// TCP MD5 (RFC 2385): the same password on both sides establishes; a wrong one never does.
func TestMD5Password(t *testing.T) {
	a := startNode(t, "127.0.0.61", 64512)
	b := startNode(t, "127.0.0.62", 64512)
	c := startNode(t, "127.0.0.63", 64512)
	withPassword := func(p Peer, pw string) Peer { p.Password = pw; return p }
	for _, set := range []struct {
		n     *node
		peers []Peer
	}{
		{a, []Peer{withPassword(a.peerOf(b), "s3cret"), withPassword(a.peerOf(c), "s3cret")}},
		{b, []Peer{withPassword(b.peerOf(a), "s3cret")}},
		{c, []Peer{withPassword(c.peerOf(a), "wrong")}},
	} {
		if err := set.n.SetPeers(context.Background(), set.peers); err != nil {
			t.Fatal(err)
		}
	}
	state := func(n *node, addr netip.Addr) string {
		ps, _ := n.Peers(context.Background())
		for _, p := range ps {
			if p.Address == addr.String() {
				return p.State
			}
		}
		return ""
	}
	eventually(t, "a and b establish with the same password", func() (bool, string) {
		return state(a, b.addr) == "established", state(a, b.addr)
	})
	time.Sleep(2 * time.Second)
	if s := state(a, c.addr); s == "established" {
		t.Fatal("a established with c, whose password differs")
	}
}

// Route reflection: two clients that peer only with the reflector learn each other's
// blocks through it, with the originator's next hop (iBGP: unchanged).
func TestRouteReflector(t *testing.T) {
	rr := startNode(t, "127.0.0.81", 64512)
	c1 := startNode(t, "127.0.0.82", 64512)
	c2 := startNode(t, "127.0.0.83", 64512)
	client := func(p Peer) Peer { p.RRClient = true; return p }
	for _, set := range []struct {
		n     *node
		peers []Peer
	}{
		{rr, []Peer{client(rr.peerOf(c1)), client(rr.peerOf(c2))}},
		{c1, []Peer{c1.peerOf(rr)}},
		{c2, []Peer{c2.peerOf(rr)}},
	} {
		if err := set.n.SetPeers(context.Background(), set.peers); err != nil {
			t.Fatal(err)
		}
	}
	announce(t, c1, "10.244.1.0/24", "192.168.255.1")
	announce(t, c2, "10.244.2.0/24", "192.168.255.2")
	eventually(t, "c1 learns c2's block through the reflector", routesAre(c1, map[string][]string{"10.244.2.0/24": {"192.168.255.2"}}))
	eventually(t, "c2 learns c1's block through the reflector", routesAre(c2, map[string][]string{"10.244.1.0/24": {"192.168.255.1"}}))
}
