package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/weftnet/weft/internal/store"
)

// Cluster is store.Store on one bbolt file, for a single host (`--store bolt://PATH`).
//
// Every transaction gets the next revision, persisted with the data. Leases live in the
// file with their expiry, so they survive a restart; a sweeper deletes expired leases and
// their keys. Watches are served from an in-memory history of the events since start (the
// last historyLimit): asking for older revisions gets store.ErrCompacted, and the caller
// re-lists, as it would with a compacted etcd.
type Cluster struct {
	db *bolt.DB

	mu       sync.Mutex
	rev      int64
	history  []store.Event
	watchers map[*watcher]struct{}
	done     chan struct{}
	wg       sync.WaitGroup
}

var _ store.Store = (*Cluster)(nil)

const historyLimit = 4096

var (
	bucketKV     = []byte("kv")
	bucketLeases = []byte("leases")
	bucketMeta   = []byte("meta")
	keyRev       = []byte("rev")
	keyLeaseSeq  = []byte("lease-seq")
)

type record struct {
	Value       []byte `json:"v"`
	ModRevision int64  `json:"r"`
	Lease       int64  `json:"l,omitempty"`
}

type leaseRecord struct {
	TTL    time.Duration `json:"ttl"`
	Expiry time.Time     `json:"expiry"`
}

type watcher struct {
	prefix string
	ch     chan store.Event
	closed bool
}

// OpenCluster opens (creating) the cluster store at path.
func OpenCluster(path string) (*Cluster, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("open cluster store %s: %w", path, err)
	}
	c := &Cluster{db: db, watchers: map[*watcher]struct{}{}, done: make(chan struct{})}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketLeases, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		c.rev = getInt(tx.Bucket(bucketMeta), keyRev)
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	c.wg.Add(1)
	go c.sweep()
	return c, nil
}

// Close stops the sweeper, ends every watch and closes the file.
func (c *Cluster) Close() error {
	close(c.done)
	c.wg.Wait()
	c.mu.Lock()
	for w := range c.watchers {
		c.dropLocked(w)
	}
	c.mu.Unlock()
	return c.db.Close()
}

func getInt(b *bolt.Bucket, k []byte) int64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func putInt(b *bolt.Bucket, k []byte, v int64) error {
	buf := make([]byte, 8)
	binary.BigEndian.PutUint64(buf, uint64(v))
	return b.Put(k, buf)
}

func leaseKey(id int64) []byte {
	buf := make([]byte, 8)
	binary.BigEndian.PutUint64(buf, uint64(id))
	return buf
}

func (c *Cluster) Get(_ context.Context, key string) (store.KV, error) {
	var out store.KV
	err := c.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketKV).Get([]byte(key))
		if v == nil {
			return store.ErrNotFound
		}
		var r record
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		out = store.KV{Key: key, Value: r.Value, ModRevision: r.ModRevision, Lease: r.Lease}
		return nil
	})
	return out, err
}

func (c *Cluster) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	var out []store.KV
	var rev int64
	err := c.db.View(func(tx *bolt.Tx) error {
		rev = getInt(tx.Bucket(bucketMeta), keyRev)
		cur := tx.Bucket(bucketKV).Cursor()
		p := []byte(prefix)
		for k, v := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = cur.Next() {
			var r record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, store.KV{Key: string(k), Value: r.Value, ModRevision: r.ModRevision, Lease: r.Lease})
		}
		return nil
	})
	return out, rev, err
}

func (c *Cluster) Txn(_ context.Context, conds []store.Cond, ops []store.Op) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var events []store.Event
	rev := c.rev + 1
	err := c.db.Update(func(tx *bolt.Tx) error {
		kvb, lb := tx.Bucket(bucketKV), tx.Bucket(bucketLeases)
		for _, cond := range conds {
			var have int64
			if v := kvb.Get([]byte(cond.Key)); v != nil {
				var r record
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
				have = r.ModRevision
			}
			if have != cond.ModRevision {
				return store.ErrConflict
			}
		}
		now := time.Now()
		for _, op := range ops {
			if op.Lease == 0 || op.Delete {
				continue
			}
			v := lb.Get(leaseKey(op.Lease))
			var l leaseRecord
			if v == nil || json.Unmarshal(v, &l) != nil || now.After(l.Expiry) {
				return store.ErrLeaseNotFound
			}
		}
		var err error
		events, err = applyOps(kvb, ops, rev)
		if err != nil {
			return err
		}
		return putInt(tx.Bucket(bucketMeta), keyRev, rev)
	})
	if err != nil {
		return 0, err
	}
	c.rev = rev
	c.publishLocked(events)
	return rev, nil
}

func applyOps(kvb *bolt.Bucket, ops []store.Op, rev int64) ([]store.Event, error) {
	var events []store.Event
	for _, op := range ops {
		k := []byte(op.Key)
		if op.Delete {
			if kvb.Get(k) == nil {
				continue
			}
			if err := kvb.Delete(k); err != nil {
				return nil, err
			}
			events = append(events, store.Event{Type: store.Delete, KV: store.KV{Key: op.Key, ModRevision: rev}})
			continue
		}
		b, err := json.Marshal(record{Value: op.Value, ModRevision: rev, Lease: op.Lease})
		if err != nil {
			return nil, err
		}
		if err := kvb.Put(k, b); err != nil {
			return nil, err
		}
		events = append(events, store.Event{Type: store.Put, KV: store.KV{Key: op.Key, Value: op.Value, ModRevision: rev, Lease: op.Lease}})
	}
	return events, nil
}

// publishLocked records events and hands them to matching watchers; a watcher too slow to
// keep up is closed (it re-lists and watches again, as after an etcd compaction).
func (c *Cluster) publishLocked(events []store.Event) {
	c.history = append(c.history, events...)
	if n := len(c.history) - historyLimit; n > 0 {
		c.history = append([]store.Event(nil), c.history[n:]...)
	}
	for w := range c.watchers {
		for _, e := range events {
			if !strings.HasPrefix(e.KV.Key, w.prefix) {
				continue
			}
			select {
			case w.ch <- e:
			default:
				c.dropLocked(w)
			}
			if w.closed {
				break
			}
		}
	}
}

func (c *Cluster) dropLocked(w *watcher) {
	if !w.closed {
		w.closed = true
		close(w.ch)
	}
	delete(c.watchers, w)
}

func (c *Cluster) Watch(ctx context.Context, prefix string, from int64) (<-chan store.Event, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	oldest := c.rev + 1
	if len(c.history) > 0 {
		oldest = c.history[0].KV.ModRevision
	}
	if from > 0 && from < oldest && from <= c.rev {
		return nil, fmt.Errorf("%w: watch from %d, oldest kept is %d", store.ErrCompacted, from, oldest)
	}
	var replay []store.Event
	if from > 0 {
		for _, e := range c.history {
			if e.KV.ModRevision >= from && strings.HasPrefix(e.KV.Key, prefix) {
				replay = append(replay, e)
			}
		}
	}
	w := &watcher{prefix: prefix, ch: make(chan store.Event, len(replay)+1024)}
	for _, e := range replay {
		w.ch <- e
	}
	c.watchers[w] = struct{}{}
	go func() {
		select {
		case <-ctx.Done():
		case <-c.done:
		}
		c.mu.Lock()
		c.dropLocked(w)
		c.mu.Unlock()
	}()
	return w.ch, nil
}

func (c *Cluster) Grant(_ context.Context, ttl time.Duration) (int64, error) {
	if ttl < time.Second {
		ttl = time.Second
	}
	var id int64
	err := c.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		id = getInt(meta, keyLeaseSeq) + 1
		if err := putInt(meta, keyLeaseSeq, id); err != nil {
			return err
		}
		b, _ := json.Marshal(leaseRecord{TTL: ttl, Expiry: time.Now().Add(ttl)})
		return tx.Bucket(bucketLeases).Put(leaseKey(id), b)
	})
	return id, err
}

func (c *Cluster) KeepAlive(_ context.Context, lease int64) error {
	return c.db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bucketLeases)
		v := lb.Get(leaseKey(lease))
		var l leaseRecord
		if v == nil || json.Unmarshal(v, &l) != nil || time.Now().After(l.Expiry) {
			return store.ErrLeaseNotFound
		}
		l.Expiry = time.Now().Add(l.TTL)
		b, _ := json.Marshal(l)
		return lb.Put(leaseKey(lease), b)
	})
}

func (c *Cluster) Revoke(_ context.Context, lease int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	found, err := c.dropLeasesLocked(func(id int64, _ leaseRecord) bool { return id == lease })
	if err == nil && !found {
		return store.ErrLeaseNotFound
	}
	return err
}

// dropLeasesLocked deletes the leases that match, and their keys, in one revision.
func (c *Cluster) dropLeasesLocked(match func(int64, leaseRecord) bool) (bool, error) {
	var events []store.Event
	rev := c.rev + 1
	found := false
	err := c.db.Update(func(tx *bolt.Tx) error {
		lb, kvb := tx.Bucket(bucketLeases), tx.Bucket(bucketKV)
		dead := map[int64]bool{}
		err := lb.ForEach(func(k, v []byte) error {
			var l leaseRecord
			id := int64(binary.BigEndian.Uint64(k))
			if json.Unmarshal(v, &l) != nil || match(id, l) {
				dead[id] = true
			}
			return nil
		})
		if err != nil || len(dead) == 0 {
			return err
		}
		found = true
		for id := range dead {
			if err := lb.Delete(leaseKey(id)); err != nil {
				return err
			}
		}
		var ops []store.Op
		err = kvb.ForEach(func(k, v []byte) error {
			var r record
			if json.Unmarshal(v, &r) == nil && dead[r.Lease] {
				ops = append(ops, store.Op{Key: string(k), Delete: true})
			}
			return nil
		})
		if err != nil || len(ops) == 0 {
			return err
		}
		if events, err = applyOps(kvb, ops, rev); err != nil {
			return err
		}
		return putInt(tx.Bucket(bucketMeta), keyRev, rev)
	})
	if err != nil {
		return false, err
	}
	if len(events) > 0 {
		c.rev = rev
		c.publishLocked(events)
	}
	return found, nil
}

// sweep expires leases.
func (c *Cluster) sweep() {
	defer c.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			c.mu.Lock()
			_, _ = c.dropLeasesLocked(func(_ int64, l leaseRecord) bool { return now.After(l.Expiry) })
			c.mu.Unlock()
		}
	}
}
