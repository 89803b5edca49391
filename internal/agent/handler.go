package agent

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/ipam"
)

// Handle serves one request from weft-cni or the CLI.
func (a *Agent) Handle(_ context.Context, req cniapi.Request) cniapi.Response {
	start := time.Now()
	resp := a.handle(req)
	result := "ok"
	if resp.Error != nil {
		result = "error"
		a.opts.Log.Warn("request failed", "op", req.Op, "key", req.Key.String(), "code", resp.Error.Code, "err", resp.Error.Msg)
	}
	a.metrics.observe(req.Op, result, time.Since(start))
	return resp
}

func (a *Agent) handle(req cniapi.Request) cniapi.Response {
	switch req.Op {
	case cniapi.OpAllocate:
		if req.Key.ContainerID == "" || req.Key.IfName == "" || req.Key.Network == "" {
			return fail(cniapi.CodeInvalidConfig, "allocate needs network, container ID and interface name")
		}
		sets := req.Sets
		if len(sets) == 0 {
			sets = a.NodeSets()
		}
		if len(req.Ports) > 0 {
			// Published ports are live when ADD returns, so the table is rendered now.
			a.portsMu.Lock()
			defer a.portsMu.Unlock()
			if e := a.portClash(req); e != nil {
				return cniapi.Response{Error: e}
			}
		}
		al, reused, err := a.alloc.Allocate(ipam.Request{Key: req.Key, Netns: req.Netns, Sets: sets, Static: req.Static, Pod: req.Pod, Ports: req.Ports})
		if err != nil {
			return cniapi.Response{Error: errCode(err)}
		}
		if len(al.Ports) > 0 {
			a.syncDataplane()
		}
		a.kickFastpath()
		return cniapi.Response{Allocation: &al, Reused: reused}
	case cniapi.OpRelease:
		if req.Reap {
			a.reaper.Trigger()
		}
		prev, _, err := a.alloc.Release(req.Key)
		if err != nil {
			return cniapi.Response{Error: errCode(err)}
		}
		if len(prev.Ports) > 0 {
			a.syncDataplane()
		}
		a.kickFastpath()
		return cniapi.Response{}
	case cniapi.OpReap:
		a.reaper.Trigger()
		return cniapi.Response{}
	case cniapi.OpGet:
		al, ok, err := a.alloc.Get(req.Key)
		if err != nil {
			return cniapi.Response{Error: errCode(err)}
		}
		if !ok {
			return fail(cniapi.CodeUnknownContainer, "no allocation for "+req.Key.String())
		}
		return cniapi.Response{Allocation: &al}
	case cniapi.OpList:
		all, err := a.alloc.List()
		if err != nil {
			return cniapi.Response{Error: errCode(err)}
		}
		return cniapi.Response{Allocations: all}
	case cniapi.OpGC:
		valid := map[ipam.Key]bool{}
		for _, k := range req.Valid {
			valid[k] = true
		}
		freed, err := a.alloc.GC(req.Key.Network, valid)
		if err != nil {
			return cniapi.Response{Error: errCode(err)}
		}
		if len(freed) > 0 {
			a.syncDataplane()
			a.kickFastpath()
			keys := make([]ipam.Key, len(freed))
			for i, f := range freed {
				keys[i] = f.Key
			}
			a.opts.Log.Info("gc released stale attachments", "network", req.Key.Network, "keys", joinKeys(keys))
		}
		return cniapi.Response{Allocations: freed}
	case cniapi.OpStatus:
		st := a.Status()
		_ = a.store.View(func(tx ipam.Tx) error {
			for _, set := range a.NodeSets() {
				used, free, err := ipam.Usage(tx, set[0])
				if err != nil {
					return err
				}
				st.Pools = append(st.Pools, cniapi.PoolUsage{CIDR: set[0].Subnet.String(), Allocated: used.String(), Free: free.String()})
			}
			return nil
		})
		return cniapi.Response{Status: &st}
	case cniapi.OpDrops:
		if a.drops == nil {
			return fail(cniapi.CodeInvalidConfig, "this node enforces neither network policy nor anti-spoofing")
		}
		drops := a.drops.recent(req.Since)
		if drops == nil {
			drops = []v1.PolicyDrop{}
		}
		return cniapi.Response{Drops: drops}
	case cniapi.OpBGP:
		c := a.opts.Cluster
		if c == nil || c.bgp == nil {
			return fail(cniapi.CodeInvalidConfig, "this node does not run fabric bgp")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := c.bgp.status(ctx)
		if err != nil {
			return fail(cniapi.CodeInternal, err.Error())
		}
		return cniapi.Response{BGP: st}
	}
	return fail(cniapi.CodeInvalidConfig, "unknown op "+req.Op)
}

// portClash refuses a host port another attachment already publishes.
func (a *Agent) portClash(req cniapi.Request) *cniapi.Error {
	all, err := a.alloc.List()
	if err != nil {
		return errCode(err)
	}
	for _, al := range all {
		if al.Key == req.Key {
			continue
		}
		for _, theirs := range al.Ports {
			for _, ours := range req.Ports {
				if ours.Clashes(theirs) {
					return &cniapi.Error{Code: cniapi.CodePortInUse, Msg: fmt.Sprintf("host port %s is already published by %s (%s)", ours, al.Key, theirs)}
				}
			}
		}
	}
	return nil
}

func fail(code uint, msg string) cniapi.Response {
	return cniapi.Response{Error: &cniapi.Error{Code: code, Msg: msg}}
}
