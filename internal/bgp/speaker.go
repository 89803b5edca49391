// Package bgp is weft's BGP speaker: GoBGP embedded as a library behind plain Go types
// (no protobuf or GoBGP type leaves this package). It keeps a set of peers and a set of
// announced prefixes equal to what the caller last asked for, accepts from peers only
// prefixes inside the cluster's networks, and reports the learned routes (with every
// equal-cost next hop) and the state of each session. It speaks graceful restart
// (RFC 4724) both ways: peers keep this node's routes while it restarts, and it keeps
// theirs while they do.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Defaults.
const (
	DefaultPort        = 179
	DefaultHoldTime    = 9 * time.Second // Calico/BIRD-style short timers: a dead peer is noticed in seconds
	DefaultKeepalive   = 3 * time.Second
	DefaultRestartTime = 120 * time.Second
	// syncDeadline bounds how long a restarted speaker waits for its peers' End-of-RIB
	// before it treats what it has as complete (and may sweep stale kernel routes).
	syncDeadline = 30 * time.Second
)

// Config is the speaker itself.
type Config struct {
	ASN         uint32
	RouterID    netip.Addr
	ListenAddrs []netip.Addr // empty: every address
	ListenPort  int32        // 0: 179; -1: only connect out
	// Accept bounds what is learned: a route is kept only if it lies inside one of these
	// (the cluster's pod networks). Export bounds what is announced (pod networks and,
	// when asked, service ranges).
	Accept, Export []netip.Prefix
	// Restarting says this node announced routes before this start: peers are asked to
	// keep them (the Restart State bit), and selection waits for their End-of-RIB.
	Restarting  bool
	RestartTime time.Duration // how long peers keep this node's routes while it is away
	Log         *slog.Logger
}

// Peer is one BGP neighbour.
type Peer struct {
	Name         string // for people: a node name or the peer object's name
	Address      netip.Addr
	Port         uint16 // 0: 179
	ASN          uint32
	LocalAddress netip.Addr // optional source address
	Password     string     // TCP MD5 (RFC 2385), optional
	HoldTime     time.Duration
	Keepalive    time.Duration
	RRClient     bool  // this speaker reflects routes to the peer
	Multihop     uint8 // eBGP TTL; 0: directly connected
	Passive      bool  // wait for the peer to connect
}

// Announcement is a prefix this node originates, with the next hop peers should use.
type Announcement struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}

// Route is a learned destination with every equally good next hop.
type Route struct {
	Prefix   netip.Prefix
	NextHops []netip.Addr
}

// PeerStatus is what `weft bgp peers` shows.
type PeerStatus struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	ASN        uint32    `json:"asn"`
	State      string    `json:"state"`
	Since      time.Time `json:"since,omitzero"` // when it reached its state
	Received   uint64    `json:"received"`
	Accepted   uint64    `json:"accepted"`
	Advertised uint64    `json:"advertised"`
	Synced     bool      `json:"synced"` // End-of-RIB received for every family
	// DownSince is when the session last left Established (or the peer was added); zero
	// while established. A flapping session keeps its DownSince.
	DownSince time.Time `json:"downSince,omitzero"`
}

// Speaker is a running BGP speaker.
type Speaker struct {
	cfg Config
	srv *server.BgpServer
	log *slog.Logger

	mu        sync.Mutex
	peers     map[netip.Addr]Peer
	announced map[netip.Prefix]announced
	state     map[netip.Addr]*peerState
	started   time.Time
	peersSet  bool // SetPeers has run: until then nothing is known of the peers
	notify    func()
	// learned follows GoBGP's best paths from its events; reread says it must be read
	// from GoBGP's table again (at start, after a session change, every resyncEvery).
	learned *learned
	reread  bool
	full    bool // the next Changes is to report every route: the table was read again
	readAt  time.Time
	readMu  sync.Mutex // one full read at a time
}

// resyncEvery bounds how long the learned routes follow events alone before they are
// read from GoBGP's table again.
const resyncEvery = 30 * time.Second

type announced struct {
	nextHop netip.Addr
	id      uuid.UUID
}

type peerState struct {
	state     string
	since     time.Time
	downSince time.Time
	eor       map[bgp.Family]bool
}

var families = []bgp.Family{bgp.RF_IPv4_UC, bgp.RF_IPv6_UC}

// Start runs a speaker; notify (optional) is called, without locks held, whenever learned
// routes or a session's state may have changed.
func Start(ctx context.Context, cfg Config, notify func()) (*Speaker, error) {
	if cfg.ASN == 0 {
		return nil, errors.New("bgp: an AS number is needed")
	}
	if !cfg.RouterID.Is4() {
		return nil, fmt.Errorf("bgp: router ID %s is not an IPv4 address", cfg.RouterID)
	}
	if cfg.ListenPort == 0 {
		cfg.ListenPort = DefaultPort
	}
	if cfg.RestartTime == 0 {
		cfg.RestartTime = DefaultRestartTime
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if notify == nil {
		notify = func() {}
	}
	// GoBGP logs every session transition at info; weft logs those itself.
	level := new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	srv := server.NewBgpServer(server.LoggerOption(slog.New(atLeast{cfg.Log.Handler(), level}).With("component", "gobgp"), level))
	go srv.Serve()
	s := &Speaker{cfg: cfg, srv: srv, log: cfg.Log, peers: map[netip.Addr]Peer{}, announced: map[netip.Prefix]announced{},
		state: map[netip.Addr]*peerState{}, started: time.Now(), notify: notify,
		learned: newLearned(), reread: true}
	global := &api.Global{
		Asn: cfg.ASN, RouterId: cfg.RouterID.String(), ListenPort: cfg.ListenPort,
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: uint32(cfg.RestartTime / time.Second)},
		// Best-path events then carry every equal-cost path (ECMP), not just the best.
		UseMultiplePaths: true,
	}
	for _, a := range cfg.ListenAddrs {
		global.ListenAddresses = append(global.ListenAddresses, a.String())
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("bgp: start: %w", err)
	}
	if err := s.setPolicies(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	err := srv.WatchEvent(context.WithoutCancel(ctx), server.WatchEventMessageCallbacks{
		OnBestPath: func(paths []*apiutil.Path, _ time.Time) {
			s.mu.Lock()
			for _, p := range paths {
				s.learned.apply(p)
			}
			s.mu.Unlock()
			s.notify()
		},
		OnPathEor: func(p *apiutil.Path, _ time.Time) {
			s.mu.Lock()
			if ps := s.state[p.PeerAddress]; ps != nil {
				ps.eor[p.Family] = true
			}
			s.mu.Unlock()
			s.notify()
		},
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, at time.Time) {
			if ev.Type != apiutil.PEER_EVENT_STATE {
				return
			}
			st := sessionState(ev.Peer.State.SessionState)
			s.mu.Lock()
			ps := s.state[ev.Peer.State.NeighborAddress]
			s.reread = true
			if ps != nil && ps.state != st {
				switch {
				case st == "established":
					ps.downSince = time.Time{}
				case ps.state == "established":
					ps.downSince = at
				}
				ps.state, ps.since = st, at
				if st != "established" {
					ps.eor = map[bgp.Family]bool{}
				}
			}
			s.mu.Unlock()
			if ps != nil {
				s.log.Info("bgp session", "peer", ev.Peer.State.NeighborAddress, "state", st)
			}
			s.notify()
		},
	}, server.WatchBestPath(false), server.WatchEor(false), server.WatchPeer())
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("bgp: watch: %w", err)
	}
	return s, nil
}

// Stop ends every session with a Cease: peers withdraw this node's routes at once. A
// restart that should keep them (graceful restart) exits without calling Stop.
func (s *Speaker) Stop() {
	s.srv.Stop()
}

// atLeast passes on records at or above a level.
type atLeast struct {
	slog.Handler
	min slog.Leveler
}

func (h atLeast) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min.Level() && h.Handler.Enabled(ctx, l)
}

func (h atLeast) WithAttrs(as []slog.Attr) slog.Handler {
	return atLeast{h.Handler.WithAttrs(as), h.min}
}
func (h atLeast) WithGroup(g string) slog.Handler { return atLeast{h.Handler.WithGroup(g), h.min} }

func sessionState(st bgp.FSMState) string {
	switch st {
	case bgp.BGP_FSM_IDLE:
		return "idle"
	case bgp.BGP_FSM_CONNECT:
		return "connect"
	case bgp.BGP_FSM_ACTIVE:
		return "active"
	case bgp.BGP_FSM_OPENSENT:
		return "opensent"
	case bgp.BGP_FSM_OPENCONFIRM:
		return "openconfirm"
	case bgp.BGP_FSM_ESTABLISHED:
		return "established"
	}
	return "unknown"
}

// setPolicies installs the import and export filters: learn only inside Accept (plus
// this node's own announcements), announce only inside Export.
func (s *Speaker) setPolicies(ctx context.Context) error {
	accept := &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT}
	// A prefix set holds one family: one set, and one accepting statement, per family.
	statements := func(name string, ps []netip.Prefix) ([]*api.Statement, error) {
		var out []*api.Statement
		for _, v4 := range []bool{true, false} {
			ds := &api.DefinedSet{DefinedType: api.DefinedType_DEFINED_TYPE_PREFIX, Name: name + map[bool]string{true: "-v4", false: "-v6"}[v4]}
			for _, p := range ps {
				if p.Addr().Is4() == v4 {
					ds.Prefixes = append(ds.Prefixes, &api.Prefix{IpPrefix: p.Masked().String(),
						MaskLengthMin: uint32(p.Bits()), MaskLengthMax: uint32(p.Addr().BitLen())})
				}
			}
			if len(ds.Prefixes) == 0 {
				continue
			}
			if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
				return nil, fmt.Errorf("bgp: prefix set %s: %w", ds.Name, err)
			}
			out = append(out, &api.Statement{Name: ds.Name, Actions: accept,
				Conditions: &api.Conditions{PrefixSet: &api.MatchSet{Type: api.MatchSet_TYPE_ANY, Name: ds.Name}}})
		}
		return out, nil
	}
	importSt, err := statements("weft-accept", s.cfg.Accept)
	if err != nil {
		return err
	}
	exportSt, err := statements("weft-export", s.cfg.Export)
	if err != nil {
		return err
	}
	stmts := map[string][]*api.Statement{
		"weft-import": append([]*api.Statement{{Name: "weft-import-local", Actions: accept,
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL}}}, importSt...),
		"weft-export": exportSt,
	}
	for name, dir := range map[string]api.PolicyDirection{"weft-import": api.PolicyDirection_POLICY_DIRECTION_IMPORT,
		"weft-export": api.PolicyDirection_POLICY_DIRECTION_EXPORT} {
		if len(stmts[name]) > 0 {
			if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{Name: name, Statements: stmts[name]}}); err != nil {
				return fmt.Errorf("bgp: policy %s: %w", name, err)
			}
		}
		pa := &api.PolicyAssignment{Name: "global", Direction: dir, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT}
		if len(stmts[name]) > 0 {
			pa.Policies = []*api.Policy{{Name: name}}
		}
		if err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: pa}); err != nil {
			return fmt.Errorf("bgp: assign %s: %w", name, err)
		}
	}
	return nil
}

// SetPeers makes the speaker's neighbours exactly want (by address): new ones are added,
// gone ones removed (their routes with them), changed ones re-added.
func (s *Speaker) SetPeers(ctx context.Context, want []Peer) error {
	wanted := map[netip.Addr]Peer{}
	for _, p := range want {
		if p.HoldTime == 0 {
			p.HoldTime = DefaultHoldTime
		}
		if p.Keepalive == 0 {
			p.Keepalive = p.HoldTime / 3
		}
		wanted[p.Address] = p
	}
	s.mu.Lock()
	s.peersSet = true
	s.reread = true
	have := make(map[netip.Addr]Peer, len(s.peers))
	for a, p := range s.peers {
		have[a] = p
	}
	s.mu.Unlock()
	var errs []error
	for a, p := range have {
		if w, ok := wanted[a]; ok && w == p {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			errs = append(errs, fmt.Errorf("remove peer %s: %w", a, err))
			continue
		}
		s.mu.Lock()
		delete(s.peers, a)
		delete(s.state, a)
		s.mu.Unlock()
		s.log.Info("bgp peer removed", "peer", a, "name", p.Name)
	}
	for a, p := range wanted {
		s.mu.Lock()
		_, ok := s.peers[a]
		s.mu.Unlock()
		if ok {
			continue
		}
		s.mu.Lock()
		now := time.Now()
		s.state[a] = &peerState{state: "idle", since: now, downSince: now, eor: map[bgp.Family]bool{}}
		s.mu.Unlock()
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			s.mu.Lock()
			delete(s.state, a)
			s.mu.Unlock()
			errs = append(errs, fmt.Errorf("add peer %s: %w", a, err))
			continue
		}
		s.mu.Lock()
		s.peers[a] = p
		s.mu.Unlock()
		s.log.Info("bgp peer added", "peer", a, "asn", p.ASN, "name", p.Name)
	}
	s.notify()
	return errors.Join(errs...)
}

func (s *Speaker) apiPeer(p Peer) *api.Peer {
	ap := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password, Description: p.Name},
		Timers: &api.Timers{Config: &api.TimersConfig{HoldTime: uint64(p.HoldTime / time.Second),
			KeepaliveInterval: uint64(max(p.Keepalive/time.Second, 1)), ConnectRetry: 1, IdleHoldTimeAfterReset: 1}},
		Transport: &api.Transport{PassiveMode: p.Passive, RemotePort: uint32(p.Port)},
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: uint32(s.cfg.RestartTime / time.Second),
			LocalRestarting: s.cfg.Restarting && time.Since(s.started) < syncDeadline},
	}
	if p.LocalAddress.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.ASN != s.cfg.ASN {
		// Every node has the cluster's AS: a route one node announced comes back through
		// a top-of-rack router with that AS in its path, and must not be taken for a loop.
		ap.Conf.AllowOwnAsn = 1
	}
	if p.RRClient {
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: s.cfg.RouterID.String()}
	}
	if p.Multihop > 0 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.Multihop)}
	}
	for _, f := range families {
		afi, safi := f.Afi(), f.Safi()
		ap.AfiSafis = append(ap.AfiSafis, &api.AfiSafi{
			Config:            &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_Afi(afi), Safi: api.Family_Safi(safi)}, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		})
	}
	return ap
}

// Announce makes the originated prefixes exactly want.
func (s *Speaker) Announce(ctx context.Context, want []Announcement) error {
	wanted := map[netip.Prefix]netip.Addr{}
	for _, a := range want {
		wanted[a.Prefix.Masked()] = a.NextHop
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	// Withdrawals name their paths (GoBGP's delete by UUID scans every path per UUID).
	var gone []netip.Prefix
	var withdraw []*apiutil.Path
	for p, a := range s.announced {
		if nh, ok := wanted[p]; !ok || nh != a.nextHop {
			path, err := localPath(p, a.nextHop)
			if err != nil {
				return err
			}
			gone, withdraw = append(gone, p), append(withdraw, path)
		}
	}
	if len(withdraw) > 0 {
		if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: withdraw}); err != nil {
			return fmt.Errorf("withdraw %d prefixes: %w", len(withdraw), err)
		}
		for _, p := range gone {
			delete(s.announced, p)
		}
	}
	// New prefixes go in one AddPath call: GoBGP then sends them in as few UPDATEs as it
	// can, and thousands of announcements cost one call, not thousands.
	var prefixes []netip.Prefix
	var paths []*apiutil.Path
	for p, nh := range wanted {
		if _, ok := s.announced[p]; ok {
			continue
		}
		path, err := localPath(p, nh)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		prefixes, paths = append(prefixes, p), append(paths, path)
	}
	if len(paths) > 0 {
		res, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: paths})
		if err == nil && len(res) != len(paths) {
			err = fmt.Errorf("GoBGP answered %d of %d paths", len(res), len(paths))
		}
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("announce: %w", err))...)
		}
		for i, r := range res {
			if r.Error != nil {
				errs = append(errs, fmt.Errorf("announce %s: %w", prefixes[i], r.Error))
				continue
			}
			s.announced[prefixes[i]] = announced{nextHop: wanted[prefixes[i]], id: r.UUID}
		}
	}
	return errors.Join(errs...)
}

func localPath(p netip.Prefix, nh netip.Addr) (*apiutil.Path, error) {
	if p.Addr().Is4() != nh.Is4() {
		return nil, fmt.Errorf("announce %s: next hop %s is of the other family", p, nh)
	}
	nlri, err := bgp.NewIPAddrPrefix(p.Masked())
	if err != nil {
		return nil, fmt.Errorf("announce %s: %w", p, err)
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	fam := bgp.RF_IPv4_UC
	if p.Addr().Is4() {
		nha, err := bgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nha)
	} else {
		fam = bgp.RF_IPv6_UC
		mp, err := bgp.NewPathAttributeMpReachNLRI(fam, []bgp.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs}, nil
}

// Routes are the learned destinations (this node's own announcements left out), each
// with the next hops of every path as good as the best one (GoBGP's multipath set: same
// local preference, AS path length, origin and MED): the kernel spreads flows over them
// (ECMP). They follow GoBGP's best-path events; GoBGP's table is read back in full only
// when a session changed state or resyncEvery has passed.
func (s *Speaker) Routes() ([]Route, error) {
	if err := s.readIfDue(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.learned.sorted(), nil
}

// readIfDue reads GoBGP's table when a session changed state or resyncEvery has passed.
func (s *Speaker) readIfDue() error {
	s.mu.Lock()
	due := s.reread || time.Since(s.readAt) > resyncEvery
	s.mu.Unlock()
	if !due {
		return nil
	}
	return s.readTable()
}

// Changes reports what changed in the learned routes since its last call: each changed
// destination with its next hops (none: withdrawn). When GoBGP's table was read again
// since (the first call, after a session change, every resyncEvery), full is true and
// routes are all the learned routes, sorted.
func (s *Speaker) Changes() (routes []Route, full bool, err error) {
	if err := s.readIfDue(); err != nil {
		return nil, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full {
		s.full = false
		clear(s.learned.changed)
		return s.learned.sorted(), true, nil
	}
	return s.learned.takeChanges(), false, nil
}

// readTable rebuilds the learned routes from GoBGP's table, then replays the events that
// arrived during the read (some may predate it: replaying them again is harmless, as
// events are in order and the later ones restore what the read saw).
func (s *Speaker) readTable() error {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	s.mu.Lock()
	s.reread, s.readAt = false, time.Now() // a session change from now on asks again
	s.learned.recording, s.learned.recorded = true, nil
	s.mu.Unlock()
	fresh, err := s.tableRoutes()
	s.mu.Lock()
	defer s.mu.Unlock()
	events := s.learned.recorded
	s.learned.recording, s.learned.recorded = false, nil
	if err != nil {
		s.reread = true
		return err
	}
	for _, p := range events {
		fresh.apply(p)
	}
	s.learned, s.full = fresh, true
	return nil
}

// tableRoutes reads the learned routes from GoBGP's table.
func (s *Speaker) tableRoutes() (*learned, error) {
	l := newLearned()
	for _, fam := range families {
		if err := s.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: fam}, l.fromTable); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Announced are the prefixes this node originates.
func (s *Speaker) Announced() []Announcement {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Announcement, 0, len(s.announced))
	for p, a := range s.announced {
		out = append(out, Announcement{Prefix: p, NextHop: a.nextHop})
	}
	slices.SortFunc(out, func(a, b Announcement) int { return comparePrefixes(a.Prefix, b.Prefix) })
	return out
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// nextHopOf is a path's next hop (NEXT_HOP, or MP_REACH_NLRI's for IPv6).
func nextHopOf(p *apiutil.Path) netip.Addr {
	var nh netip.Addr
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			nh = a.Value
		case *bgp.PathAttributeMpReachNLRI:
			nh = a.Nexthop
		}
	}
	return nh
}

func nlriPrefix(n bgp.NLRI) (netip.Prefix, bool) {
	if p, ok := n.(*bgp.IPAddrPrefix); ok {
		return p.Prefix, true
	}
	p, err := netip.ParsePrefix(n.String())
	return p, err == nil
}

// Peers reports every session.
func (s *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr, _ := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		st := PeerStatus{Address: addr.String(), ASN: p.GetConf().GetPeerAsn(), Name: p.GetConf().GetDescription()}
		s.mu.Lock()
		if ps := s.state[addr]; ps != nil {
			st.State, st.Since, st.DownSince = ps.state, ps.since, ps.downSince
			st.Synced = ps.state == "established"
			for _, f := range families {
				st.Synced = st.Synced && ps.eor[f]
			}
		}
		s.mu.Unlock()
		for _, af := range p.GetAfiSafis() {
			st.Received += af.GetState().GetReceived()
			st.Accepted += af.GetState().GetAccepted()
			st.Advertised += af.GetState().GetAdvertised()
		}
		out = append(out, st)
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, err
}

// Synced says the learned routes are complete: the peers are known (SetPeers ran) and
// every one is established and has sent End-of-RIB for every family, or the sync
// deadline after start has passed. Until then a restarted node must not delete kernel
// routes it cannot see yet.
func (s *Speaker) Synced() bool {
	if time.Since(s.started) > syncDeadline {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.peersSet {
		return false
	}
	for a := range s.peers {
		ps := s.state[a]
		if ps == nil || ps.state != "established" {
			return false
		}
		for _, f := range families {
			if !ps.eor[f] {
				return false
			}
		}
	}
	return true
}
