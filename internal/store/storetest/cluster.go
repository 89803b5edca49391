package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/store"
)

// ClusterOpener returns a store for one subtest; keys are namespaced by the subtest's name,
// so implementations may hand out one shared store.
type ClusterOpener func(t *testing.T) store.Store

// RunCluster runs the store.Store conformance suite.
func RunCluster(t *testing.T, open ClusterOpener) {
	ctx := context.Background()
	pfx := func(t *testing.T) string { return "/test/" + t.Name() + "/" }

	t.Run("CreateOnceThenCAS", func(t *testing.T) {
		s, k := open(t), pfx(t)+"a"
		if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get of a missing key: %v", err)
		}
		rev, err := s.Txn(ctx, []store.Cond{{Key: k}}, []store.Op{{Key: k, Value: []byte("1")}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Txn(ctx, []store.Cond{{Key: k}}, []store.Op{{Key: k, Value: []byte("2")}}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second create: %v", err)
		}
		got, err := s.Get(ctx, k)
		if err != nil || string(got.Value) != "1" || got.ModRevision != rev {
			t.Fatalf("Get: %+v %v (rev %d)", got, err, rev)
		}
		rev2, err := s.Txn(ctx, []store.Cond{{Key: k, ModRevision: rev}}, []store.Op{{Key: k, Value: []byte("3")}})
		if err != nil || rev2 <= rev {
			t.Fatalf("CAS update: %d %v", rev2, err)
		}
		if _, err := s.Txn(ctx, []store.Cond{{Key: k, ModRevision: rev}}, []store.Op{{Key: k, Value: []byte("4")}}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("stale CAS: %v", err)
		}
		if _, err := s.Txn(ctx, []store.Cond{{Key: k, ModRevision: rev2}}, []store.Op{{Key: k, Delete: true}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after delete: %v", err)
		}
	})

	t.Run("TxnIsAllOrNothing", func(t *testing.T) {
		s, p := open(t), pfx(t)
		if _, err := s.Txn(ctx, nil, []store.Op{{Key: p + "x", Value: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
		_, err := s.Txn(ctx, []store.Cond{{Key: p + "y"}, {Key: p + "x"}}, []store.Op{{Key: p + "y", Value: []byte("y")}, {Key: p + "z", Value: []byte("z")}})
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("got %v", err)
		}
		kvs, _, err := s.List(ctx, p)
		if err != nil || len(kvs) != 1 {
			t.Fatalf("a failed transaction wrote: %+v %v", kvs, err)
		}
	})

	t.Run("ListPrefixSorted", func(t *testing.T) {
		s, p := open(t), pfx(t)
		for _, k := range []string{"b", "a", "c"} {
			if _, err := s.Txn(ctx, nil, []store.Op{{Key: p + "dir/" + k, Value: []byte(k)}}); err != nil {
				t.Fatal(err)
			}
		}
		_, _ = s.Txn(ctx, nil, []store.Op{{Key: p + "other", Value: []byte("o")}})
		kvs, rev, err := s.List(ctx, p+"dir/")
		if err != nil || len(kvs) != 3 || rev == 0 {
			t.Fatalf("%+v %d %v", kvs, rev, err)
		}
		for i, want := range []string{"a", "b", "c"} {
			if kvs[i].Key != p+"dir/"+want {
				t.Fatalf("order: %+v", kvs)
			}
		}
	})

	t.Run("WatchFromRevision", func(t *testing.T) {
		s, p := open(t), pfx(t)
		rev, err := s.Txn(ctx, nil, []store.Op{{Key: p + "w1", Value: []byte("1")}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Txn(ctx, nil, []store.Op{{Key: p + "w2", Value: []byte("2")}}); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch, err := s.Watch(wctx, p, rev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Txn(ctx, nil, []store.Op{{Key: p + "w1", Delete: true}}); err != nil {
			t.Fatal(err)
		}
		var got []string
		for len(got) < 3 {
			select {
			case e, ok := <-ch:
				if !ok {
					t.Fatalf("watch closed after %v", got)
				}
				typ := "put"
				if e.Type == store.Delete {
					typ = "del"
				}
				got = append(got, typ+" "+e.KV.Key[len(p):])
			case <-time.After(5 * time.Second):
				t.Fatalf("watch gave only %v", got)
			}
		}
		if fmt.Sprint(got) != "[put w1 put w2 del w1]" {
			t.Fatalf("events %v", got)
		}
	})

	t.Run("LeasesExpireAndRefresh", func(t *testing.T) {
		s, p := open(t), pfx(t)
		short, err := s.Grant(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		kept, err := s.Grant(ctx, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Txn(ctx, nil, []store.Op{{Key: p + "short", Value: []byte("s"), Lease: short}, {Key: p + "kept", Value: []byte("k"), Lease: kept}}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(6 * time.Second)
		for {
			if err := s.KeepAlive(ctx, kept); err != nil {
				t.Fatalf("keepalive: %v", err)
			}
			_, errShort := s.Get(ctx, p+"short")
			if errors.Is(errShort, store.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("a lease that was not kept alive did not expire")
			}
			time.Sleep(200 * time.Millisecond)
		}
		if _, err := s.Get(ctx, p+"kept"); err != nil {
			t.Fatalf("a kept-alive key vanished: %v", err)
		}
		if err := s.KeepAlive(ctx, short); !errors.Is(err, store.ErrLeaseNotFound) {
			t.Fatalf("keepalive of an expired lease: %v", err)
		}
		if _, err := s.Txn(ctx, nil, []store.Op{{Key: p + "late", Value: []byte("l"), Lease: short}}); !errors.Is(err, store.ErrLeaseNotFound) {
			t.Fatalf("write with an expired lease: %v", err)
		}
		if err := s.Revoke(ctx, kept); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, p+"kept"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("revoke left the key: %v", err)
		}
	})
}
