// Package boltstore is weftd's node store on bbolt: one file under the state directory
// holding the node's address allocations.
//
// Layout: bucket "allocations" maps "network\x00containerID\x00ifName" to the JSON record;
// bucket "owners" maps each 4- or 16-byte address to the record key that holds it; bucket
// "cursors" maps a subnet to the last address handed out there. A record and its owner
// entries always change in the same bbolt transaction.
package boltstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/weftnet/weft/internal/ipam"
)

var (
	bucketAllocs  = []byte("allocations")
	bucketOwners  = []byte("owners")
	bucketCursors = []byte("cursors")
)

// Store is the bbolt-backed node store.
type Store struct{ db *bolt.DB }

var _ ipam.Store = (*Store)(nil)

// Open opens (creating if needed) the store file at path.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("open node store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketAllocs, bucketOwners, bucketCursors} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise node store: %w", err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) Update(fn func(ipam.Tx) error) error {
	return s.db.Update(func(t *bolt.Tx) error { return fn(wrap(t)) })
}

func (s *Store) View(fn func(ipam.Tx) error) error {
	return s.db.View(func(t *bolt.Tx) error { return fn(wrap(t)) })
}

type tx struct {
	allocs, owners, cursors *bolt.Bucket
}

func wrap(t *bolt.Tx) *tx {
	return &tx{t.Bucket(bucketAllocs), t.Bucket(bucketOwners), t.Bucket(bucketCursors)}
}

func keyBytes(k ipam.Key) []byte {
	return []byte(k.Network + "\x00" + k.ContainerID + "\x00" + k.IfName)
}

func parseKey(b []byte) (ipam.Key, error) {
	parts := strings.Split(string(b), "\x00")
	if len(parts) != 3 {
		return ipam.Key{}, fmt.Errorf("corrupt allocation key %q", b)
	}
	return ipam.Key{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}, nil
}

func (t *tx) Get(k ipam.Key) (ipam.Allocation, bool, error) {
	v := t.allocs.Get(keyBytes(k))
	if v == nil {
		return ipam.Allocation{}, false, nil
	}
	var a ipam.Allocation
	if err := json.Unmarshal(v, &a); err != nil {
		return a, false, fmt.Errorf("decode allocation %s: %w", k, err)
	}
	return a, true, nil
}

func (t *tx) Put(a ipam.Allocation) error {
	if err := t.Delete(a.Key); err != nil {
		return err
	}
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	kb := keyBytes(a.Key)
	if err := t.allocs.Put(kb, v); err != nil {
		return err
	}
	for _, ip := range a.IPs {
		if err := t.owners.Put(ip.Address.Addr().AsSlice(), kb); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) Delete(k ipam.Key) error {
	a, ok, err := t.Get(k)
	if err != nil && !ok {
		// A record we cannot decode is still removed, with whatever owners point at it.
		return errors.Join(err, t.deleteRaw(k))
	}
	if !ok {
		return nil
	}
	kb := keyBytes(k)
	for _, ip := range a.IPs {
		ipb := ip.Address.Addr().AsSlice()
		if string(t.owners.Get(ipb)) == string(kb) {
			if err := t.owners.Delete(ipb); err != nil {
				return err
			}
		}
	}
	return t.allocs.Delete(kb)
}

func (t *tx) deleteRaw(k ipam.Key) error {
	kb := keyBytes(k)
	c := t.owners.Cursor()
	for ipb, owner := c.First(); ipb != nil; ipb, owner = c.Next() {
		if string(owner) == string(kb) {
			if err := c.Delete(); err != nil {
				return err
			}
		}
	}
	return t.allocs.Delete(kb)
}

func (t *tx) Owner(ip netip.Addr) (ipam.Key, bool, error) {
	v := t.owners.Get(ip.Unmap().AsSlice())
	if v == nil {
		return ipam.Key{}, false, nil
	}
	k, err := parseKey(v)
	return k, err == nil, err
}

func (t *tx) List() ([]ipam.Allocation, error) {
	var out []ipam.Allocation
	err := t.allocs.ForEach(func(k, v []byte) error {
		var a ipam.Allocation
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("decode allocation %q: %w", k, err)
		}
		out = append(out, a)
		return nil
	})
	return out, err
}

func (t *tx) Cursor(p netip.Prefix) (netip.Addr, error) {
	v := t.cursors.Get([]byte(p.String()))
	if v == nil {
		return netip.Addr{}, nil
	}
	a, ok := netip.AddrFromSlice(v)
	if !ok {
		return netip.Addr{}, nil
	}
	return a, nil
}

func (t *tx) SetCursor(p netip.Prefix, a netip.Addr) error {
	return t.cursors.Put([]byte(p.String()), a.AsSlice())
}
