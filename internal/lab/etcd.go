package lab

import (
	"context"
	"fmt"
	"net/url"

	"go.etcd.io/etcd/server/v3/embed"
)

// RunEtcd runs an embedded single-member etcd serving clients on listen (HOST:PORT) until
// ctx ends. `weft lab etcd` runs it inside the lab's underlay namespace.
func RunEtcd(ctx context.Context, dataDir, listen string) error {
	cfg := embed.NewConfig()
	cfg.Name = "lab"
	cfg.Dir = dataDir
	cfg.LogLevel = "error"
	client, err := url.Parse("http://" + listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", listen, err)
	}
	peer, _ := url.Parse("http://127.0.0.1:2380")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return err
	}
}
