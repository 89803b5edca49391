package nftpolicy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Drop is one dropped packet as the log reported it.
type Drop struct {
	Time         time.Time
	Chain        string // "i-ID" (ingress) or "e-ID" (egress)
	Proto        string // TCP, UDP, SCTP, ICMP, ICMPv6 or a number
	Src, Dst     netip.Addr
	SPort, DPort uint16
}

// nfnetlink_log (linux/netfilter/nfnetlink_log.h): x/sys has the subsystem only.
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaCfgCmd  = 1
	nfulaCfgMode = 2

	nfulnlCfgCmdBind = 1
	nfulnlCopyPacket = 2

	nfulaPayload = 9
	nfulaPrefix  = 10
)

// ReadLog subscribes to nflog group LogGroup in the calling thread's network namespace and
// calls fn for every logged drop until ctx ends.
func ReadLog(ctx context.Context, fn func(Drop)) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("nflog: %w", err)
	}
	defer c.Close()
	config := func(attrs []netlink.Attribute) error {
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return err
		}
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig), Flags: netlink.Request | netlink.Acknowledge},
			Data:   append(nfgenmsg(unix.AF_UNSPEC, LogGroup), b...),
		})
		return err
	}
	if err := config([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}); err != nil {
		return fmt.Errorf("nflog: bind group %d: %w", LogGroup, err)
	}
	mode := binary.BigEndian.AppendUint32(nil, 80) // bytes of each packet: its headers
	if err := config([]netlink.Attribute{{Type: nfulaCfgMode, Data: append(mode, nfulnlCopyPacket, 0)}}); err != nil {
		return fmt.Errorf("nflog: copy mode: %w", err)
	}
	go func() { <-ctx.Done(); _ = c.Close() }()
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nflog: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
				continue
			}
			if d, ok := parseDrop(m.Data[4:]); ok {
				fn(d)
			}
		}
	}
}

func nfgenmsg(family byte, resID uint16) []byte {
	return []byte{family, 0 /* NFNETLINK_V0 */, byte(resID >> 8), byte(resID)}
}

// parseDrop reads a logged packet's prefix and its IP and transport headers.
func parseDrop(b []byte) (Drop, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return Drop{}, false
	}
	d := Drop{Time: time.Now()}
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			d.Chain = strings.TrimRight(string(ad.Bytes()), "\x00")
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	if len(payload) < 1 {
		return d, false
	}
	var proto byte
	var l4 []byte
	switch payload[0] >> 4 {
	case 4:
		if len(payload) < 20 {
			return d, false
		}
		ihl := int(payload[0]&0x0f) * 4
		d.Src, _ = netip.AddrFromSlice(payload[12:16])
		d.Dst, _ = netip.AddrFromSlice(payload[16:20])
		proto = payload[9]
		if len(payload) > ihl {
			l4 = payload[ihl:]
		}
	case 6:
		if len(payload) < 40 {
			return d, false
		}
		d.Src, _ = netip.AddrFromSlice(payload[8:24])
		d.Dst, _ = netip.AddrFromSlice(payload[24:40])
		proto = payload[6] // extension headers are not followed
		l4 = payload[40:]
	default:
		return d, false
	}
	switch proto {
	case unix.IPPROTO_TCP:
		d.Proto = "TCP"
	case unix.IPPROTO_UDP:
		d.Proto = "UDP"
	case unix.IPPROTO_SCTP:
		d.Proto = "SCTP"
	case unix.IPPROTO_ICMP:
		d.Proto = "ICMP"
	case unix.IPPROTO_ICMPV6:
		d.Proto = "ICMPv6"
	default:
		d.Proto = fmt.Sprint(proto)
	}
	if (proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_UDP || proto == unix.IPPROTO_SCTP) && len(l4) >= 4 {
		d.SPort, d.DPort = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	}
	return d, true
}
