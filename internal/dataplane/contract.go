// Package dataplane is weft's dataplane contract in one place: every kernel object weft
// owns and how its parts share packets. docs/architecture.md ("Dataplane contract") says
// the same in prose; tests check the code against it.
package dataplane

const (
	// RouteProtoPod marks the host routes of ptp pods.
	RouteProtoPod = 0x77
	// RouteProtoFabric marks routes to other nodes' pod blocks.
	RouteProtoFabric = 0x78
	// RouteProtoBGP marks routes learned over BGP (fabric bgp): other nodes' pod blocks,
	// with every equal-cost next hop.
	RouteProtoBGP = 0x79

	// BridgeName is the default node bridge; host veths are "weft" + 11 hex digits.
	BridgeName = "weft0"
	// VXLANName is the fabric's VXLAN device.
	VXLANName = "weft.vxlan"
	// ReapGroup is the link group of retired veths waiting to be deleted.
	ReapGroup = 0x77

	// TableNAT holds masquerade, the pod-to-pod notrack and published ports (inet).
	TableNAT = "weft-nat"
	// TableServices holds the service proxy (inet).
	TableServices = "weft-svc"
	// TablePolicy holds network policy enforcement (inet); absent while no policy
	// selects a pod of the node.
	TablePolicy = "weft-policy"
	// TableAntiSpoof keeps pods to their own addresses and MAC (bridge and inet tables
	// of this name); absent while the node has no pods.
	TableAntiSpoof = "weft-antispoof"

	// MarkMasq on a packet asks the service proxy's postrouting chain to masquerade it
	// (hairpin, NodePort traffic under externalTrafficPolicy Cluster).
	MarkMasq = 0x00400000
	// MarkTracked on a packet (set at raw priority - 1 for packets from or to a service
	// endpoint's port between two addresses of a pod network) keeps weft-nat's pod-to-pod notrack off it: it may be
	// the reply of a DNATed connection, which conntrack must translate back, and a
	// connection straight to an endpoint's port must be tracked both ways. Nor is it
	// masqueraded: a reply whose request conntrack did not see (one delivered before this
	// rule, or by another node's path) looks like a new connection, and masquerading it
	// would break the client's NAT.
	MarkTracked = 0x00800000

	// MarkMaglev on a packet to a node port says the node port balancer (tc, on the
	// underlay's ingress) chose its backend: index MaglevIndexMask of the port's node port
	// backends, which the nftables proxy's node port rules DNAT to.
	MarkMaglev      = 0x01000000
	MaglevIndexMask = 0x0000ffff

	// MarkPolicyAccepted on a packet says weft-policy's raw chain found it allowed
	// without connection state: a TCP packet between two pod addresses that the policies
	// would allow as a new connection in both its directions. It stays untracked, and the
	// policy's forward chain accepts it on the mark.
	MarkPolicyAccepted = 0x00100000

	// MarkPortDNAT on a packet says weft-nat DNATed it to a published port: if it came
	// from the pod network and goes back into it (hairpin), it is masqueraded.
	MarkPortDNAT = 0x00200000

	// PriorityServicesRaw runs before weft-nat's raw chain (priority raw, -300).
	PriorityServicesRaw = -301
	// PriorityPolicyRaw decides, before both, which of policed pods' traffic stays
	// tracked.
	PriorityPolicyRaw = -302
	// PriorityAntiSpoof drops spoofed frames before anything else of weft's sees them.
	PriorityAntiSpoof = -310
)
