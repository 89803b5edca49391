// Package etcdstore implements store.Store on etcd's v3 client.
package etcdstore

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/internal/store"
)

// Store is an etcd-backed store.
type Store struct{ c *clientv3.Client }

var _ store.Store = (*Store)(nil)

// Options connect to etcd.
type Options struct {
	Endpoints   []string
	TLS         *tls.Config
	DialTimeout time.Duration
}

// New connects to etcd.
func New(o Options) (*Store, error) {
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: o.Endpoints, TLS: o.TLS, DialTimeout: o.DialTimeout})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", o.Endpoints, err)
	}
	return &Store{c: c}, nil
}

func (s *Store) Close() error { return s.c.Close() }

func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	r, err := s.c.Get(ctx, key)
	if err != nil {
		return store.KV{}, err
	}
	if len(r.Kvs) == 0 {
		return store.KV{}, store.ErrNotFound
	}
	k := r.Kvs[0]
	return store.KV{Key: string(k.Key), Value: k.Value, ModRevision: k.ModRevision, Lease: k.Lease}, nil
}

func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	r, err := s.c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	out := make([]store.KV, 0, len(r.Kvs))
	for _, k := range r.Kvs {
		out = append(out, store.KV{Key: string(k.Key), Value: k.Value, ModRevision: k.ModRevision, Lease: k.Lease})
	}
	return out, r.Header.Revision, nil
}

func (s *Store) Txn(ctx context.Context, conds []store.Cond, ops []store.Op) (int64, error) {
	cmps := make([]clientv3.Cmp, 0, len(conds))
	for _, c := range conds {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.ModRevision))
	}
	puts := make([]clientv3.Op, 0, len(ops))
	for _, o := range ops {
		switch {
		case o.Delete:
			puts = append(puts, clientv3.OpDelete(o.Key))
		case o.Lease != 0:
			puts = append(puts, clientv3.OpPut(o.Key, string(o.Value), clientv3.WithLease(clientv3.LeaseID(o.Lease))))
		default:
			puts = append(puts, clientv3.OpPut(o.Key, string(o.Value)))
		}
	}
	r, err := s.c.Txn(ctx).If(cmps...).Then(puts...).Commit()
	if err != nil {
		if err == rpctypes.ErrLeaseNotFound {
			return 0, store.ErrLeaseNotFound
		}
		return 0, err
	}
	if !r.Succeeded {
		return 0, store.ErrConflict
	}
	return r.Header.Revision, nil
}

func (s *Store) Watch(ctx context.Context, prefix string, from int64) (<-chan store.Event, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if from > 0 {
		opts = append(opts, clientv3.WithRev(from))
	}
	wc := s.c.Watch(clientv3.WithRequireLeader(ctx), prefix, opts...)
	out := make(chan store.Event, 64)
	go func() {
		defer close(out)
		for resp := range wc {
			if resp.Err() != nil {
				return
			}
			for _, e := range resp.Events {
				ev := store.Event{KV: store.KV{Key: string(e.Kv.Key), Value: e.Kv.Value, ModRevision: e.Kv.ModRevision, Lease: e.Kv.Lease}}
				if e.Type == clientv3.EventTypeDelete {
					ev.Type = store.Delete
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

func (s *Store) Grant(ctx context.Context, ttl time.Duration) (int64, error) {
	secs := int64(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	r, err := s.c.Grant(ctx, secs)
	if err != nil {
		return 0, err
	}
	return int64(r.ID), nil
}

func (s *Store) KeepAlive(ctx context.Context, lease int64) error {
	_, err := s.c.KeepAliveOnce(ctx, clientv3.LeaseID(lease))
	if err == rpctypes.ErrLeaseNotFound {
		return store.ErrLeaseNotFound
	}
	return err
}

func (s *Store) Revoke(ctx context.Context, lease int64) error {
	_, err := s.c.Revoke(ctx, clientv3.LeaseID(lease))
	if err == rpctypes.ErrLeaseNotFound {
		return store.ErrLeaseNotFound
	}
	return err
}
