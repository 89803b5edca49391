package agent

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	v1 "github.com/weftnet/weft/api/v1"

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

func TestNetworkProgrammingObservedOncePerChange(t *testing.T) {
	p := &serviceProxy{programming: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"})}
	t0 := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	svc := func(name string, changed time.Time) v1.Service {
		return v1.Service{Name: name, Namespace: "default", ChangedAt: changed}
	}
	count := func() uint64 {
		m := &dto.Metric{}
		if err := p.programming.Write(m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	p.observeProgramming([]v1.Service{svc("a", t0), svc("b", time.Time{})}, t0.Add(time.Hour))
	if count() != 0 {
		t.Fatal("the first sync after a start was measured")
	}
	p.observeProgramming([]v1.Service{svc("a", t0), svc("b", time.Time{})}, t0.Add(time.Hour))
	if count() != 0 {
		t.Fatal("an unchanged service was measured again")
	}
	p.observeProgramming([]v1.Service{svc("a", t0.Add(time.Minute)), svc("c", t0.Add(2*time.Minute))}, t0.Add(2*time.Minute+50*time.Millisecond))
	m := &dto.Metric{}
	_ = p.programming.Write(m)
	if h := m.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() < 60 || h.GetSampleSum() > 61 {
		t.Errorf("two changes (a new one of a, a new service c): count %d, sum %.3f s", h.GetSampleCount(), h.GetSampleSum())
	}
}
