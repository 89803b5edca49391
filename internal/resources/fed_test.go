package resources

import (
	"testing"

	v1 "github.com/weftnet/weft/api/v1"
)

func TestFedCache(t *testing.T) {
	c, f := NewFedCache()
	var heard []Kind
	c.OnChange(func(k Kind) { heard = append(heard, k) })
	Put(f, "default/web", v1.Service{Name: "web", Namespace: "default"})
	Put(f, "default/a", v1.Pod{Name: "a", Namespace: "default"})
	if c.Synced() || len(heard) != 0 {
		t.Fatalf("before the first list is in: synced %v, handlers called %v", c.Synced(), heard)
	}
	f.Synced()
	if !c.Synced() || len(heard) != len(allKinds) {
		t.Fatalf("after Synced: synced %v, heard %v", c.Synced(), heard)
	}
	heard = nil
	Put(f, "default/web", v1.Service{Name: "web", Namespace: "default", Type: "NodePort"})
	f.Delete(KindPod, "default/a")
	if len(heard) != 2 || heard[0] != KindService || heard[1] != KindPod {
		t.Errorf("heard %v", heard)
	}
	if s := c.Services(); len(s) != 1 || s[0].Type != "NodePort" || len(c.Pods()) != 0 {
		t.Errorf("services %+v, pods %+v", s, c.Pods())
	}
}
