package agent

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/internal/cniapi"
	"github.com/weftnet/weft/internal/ipam"
)

func newTestAgent(t *testing.T, cidrs ...string) *Agent {
	t.Helper()
	var ps []netip.Prefix
	for _, c := range cidrs {
		ps = append(ps, netip.MustParsePrefix(c))
	}
	a, err := New(Options{StateDir: t.TempDir(), RunDir: t.TempDir(), PodCIDRs: ps, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestNewRejectsBadPodCIDRs(t *testing.T) {
	for _, c := range []string{"10.0.0.5/24", "10.0.0.0/31"} {
		if _, err := New(Options{StateDir: t.TempDir(), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(c)}}); err == nil {
			t.Errorf("%s accepted", c)
		}
	}
	if _, err := New(Options{StateDir: t.TempDir()}); err == nil {
		t.Error("no pod CIDR accepted")
	}
}

func TestHandleLifecycle(t *testing.T) {
	a := newTestAgent(t, "10.5.0.0/24", "fd05::/64")
	ctx := context.Background()
	key := ipam.Key{Network: "n", ContainerID: "c", IfName: "eth0"}
	resp := a.Handle(ctx, cniapi.Request{Op: cniapi.OpAllocate, Key: key})
	if resp.Error != nil {
		t.Fatal(resp.Error)
	}
	ips := resp.Allocation.IPs
	if len(ips) != 2 || ips[0].Address.String() != "10.5.0.2/24" || ips[0].Gateway.String() != "10.5.0.1" || ips[1].Address.String() != "fd05::2/64" {
		t.Fatalf("allocation %+v", ips)
	}
	if again := a.Handle(ctx, cniapi.Request{Op: cniapi.OpAllocate, Key: key}); !again.Reused {
		t.Fatal("repeat allocate not marked reused")
	}
	if got := a.Handle(ctx, cniapi.Request{Op: cniapi.OpGet, Key: key}); got.Error != nil {
		t.Fatal(got.Error)
	}
	if r := a.Handle(ctx, cniapi.Request{Op: cniapi.OpRelease, Key: key}); r.Error != nil {
		t.Fatal(r.Error)
	}
	if got := a.Handle(ctx, cniapi.Request{Op: cniapi.OpGet, Key: key}); got.Error == nil || got.Error.Code != cniapi.CodeUnknownContainer {
		t.Fatalf("get after release: %+v", got.Error)
	}
	if r := a.Handle(ctx, cniapi.Request{Op: cniapi.OpAllocate, Key: ipam.Key{Network: "n"}}); r.Error == nil || r.Error.Code != cniapi.CodeInvalidConfig {
		t.Fatalf("incomplete key: %+v", r.Error)
	}
	if r := a.Handle(ctx, cniapi.Request{Op: "nope"}); r.Error == nil {
		t.Fatal("unknown op accepted")
	}
	if r := a.Handle(ctx, cniapi.Request{Op: cniapi.OpAllocate, Key: key, Static: []netip.Addr{netip.MustParseAddr("10.5.0.1")}}); r.Error == nil || r.Error.Code != cniapi.CodeNotInRange {
		t.Fatalf("gateway as static address: %+v", r.Error)
	}
}

func TestStatusReportsProblems(t *testing.T) {
	a := newTestAgent(t, "10.6.0.0/24")
	if !a.Status().Ready {
		t.Fatal("fresh agent not ready")
	}
	a.setProblem("nat", io.ErrUnexpectedEOF)
	if st := a.Status(); st.Ready || len(st.Problems) != 1 {
		t.Fatalf("status %+v", st)
	}
	a.setProblem("nat", nil)
	if !a.Status().Ready {
		t.Fatal("problem not cleared")
	}
}
