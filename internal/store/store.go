// Package store is the cluster datastore interface: keys with revisions, compare-and-swap
// transactions, watches from a revision, and TTL leases. etcd implements it for clusters
// (etcdstore) and bbolt for a single host (boltstore); storetest holds the conformance
// suite both pass.
package store

import (
	"context"
	"errors"
	"time"
)

var (
	// ErrNotFound means the key does not exist.
	ErrNotFound = errors.New("key not found")
	// ErrConflict means a transaction's condition did not hold.
	ErrConflict = errors.New("compare-and-swap conflict")
	// ErrCompacted means a watch asked for history the store no longer keeps.
	ErrCompacted = errors.New("revision compacted")
	// ErrLeaseNotFound means the lease expired or never existed.
	ErrLeaseNotFound = errors.New("lease not found")
)

// KV is a key with its value and the revision that last wrote it.
type KV struct {
	Key         string
	Value       []byte
	ModRevision int64
	Lease       int64 // 0: none
}

// Cond requires Key's ModRevision to equal ModRevision (0: the key must not exist).
type Cond struct {
	Key         string
	ModRevision int64
}

// Op is one write of a transaction.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
	Lease  int64 // attach the key to a lease: it goes when the lease expires
}

// EventType says what happened to a key.
type EventType int

const (
	Put EventType = iota
	Delete
)

// Event is one change seen by a watch.
type Event struct {
	Type EventType
	KV   KV // for Delete, Value is empty and ModRevision is the deleting revision
}

// Store is a cluster datastore.
type Store interface {
	Get(ctx context.Context, key string) (KV, error)
	// List returns the keys under prefix and the store's revision at the read.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Txn applies ops atomically if every cond holds, and returns the new revision;
	// otherwise it returns ErrConflict and writes nothing.
	Txn(ctx context.Context, conds []Cond, ops []Op) (int64, error)
	// Watch streams changes under prefix from revision from (0: from now) until ctx ends.
	// The channel closes when the watch ends; a watch that cannot continue sends nothing
	// more and closes.
	Watch(ctx context.Context, prefix string, from int64) (<-chan Event, error)
	Grant(ctx context.Context, ttl time.Duration) (int64, error)
	KeepAlive(ctx context.Context, lease int64) error // refresh the lease's TTL once
	Revoke(ctx context.Context, lease int64) error
	Close() error
}
