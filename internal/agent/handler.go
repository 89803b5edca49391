package agent

import (
	"context"
	"time"

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
		al, reused, err := a.alloc.Allocate(ipam.Request{Key: req.Key, Netns: req.Netns, Sets: sets, Static: req.Static, Meta: req.Meta})
		if err != nil {
			return cniapi.Response{Error: errCode(err)}
		}
		a.kickFastpath()
		return cniapi.Response{Allocation: &al, Reused: reused}
	case cniapi.OpRelease:
		if req.Reap {
			a.reaper.Trigger()
		}
		if _, _, err := a.alloc.Release(req.Key); err != nil {
			return cniapi.Response{Error: errCode(err)}
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
			keys := make([]ipam.Key, len(freed))
			for i, f := range freed {
				keys[i] = f.Key
			}
			a.opts.Log.Info("gc released stale attachments", "network", req.Key.Network, "keys", joinKeys(keys))
		}
		return cniapi.Response{Allocations: freed}
	case cniapi.OpStatus:
		st := a.Status()
		return cniapi.Response{Status: &st}
	}
	return fail(cniapi.CodeInvalidConfig, "unknown op "+req.Op)
}

func fail(code uint, msg string) cniapi.Response {
	return cniapi.Response{Error: &cniapi.Error{Code: code, Msg: msg}}
}
