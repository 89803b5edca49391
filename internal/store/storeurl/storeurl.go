// Package storeurl opens a cluster store from its URL: etcd://HOST:PORT[,HOST:PORT...] or
// bolt:///PATH.
package storeurl

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"github.com/weftnet/weft/internal/store"
	"github.com/weftnet/weft/internal/store/boltstore"
	"github.com/weftnet/weft/internal/store/etcdstore"
)

// TLSFiles name the client certificate, key and CA for etcd; all empty: plain HTTP.
type TLSFiles struct{ CA, Cert, Key string }

// Open opens the store u names.
func Open(u string, t TLSFiles) (store.Store, error) {
	switch {
	case strings.HasPrefix(u, "etcd://"), strings.HasPrefix(u, "etcds://"):
		scheme := "http://"
		if strings.HasPrefix(u, "etcds://") || t.CA != "" {
			scheme = "https://"
		}
		hosts := strings.Split(u[strings.Index(u, "://")+3:], ",")
		var eps []string
		for _, h := range hosts {
			if h = strings.TrimSpace(h); h != "" {
				eps = append(eps, scheme+h)
			}
		}
		if len(eps) == 0 {
			return nil, fmt.Errorf("store %q names no etcd endpoint", u)
		}
		cfg, err := tlsConfig(t)
		if err != nil {
			return nil, err
		}
		return etcdstore.New(etcdstore.Options{Endpoints: eps, TLS: cfg})
	case strings.HasPrefix(u, "bolt://"):
		path := strings.TrimPrefix(u, "bolt://")
		if path == "" {
			return nil, fmt.Errorf("store %q names no file", u)
		}
		return boltstore.OpenCluster(path)
	}
	return nil, fmt.Errorf("store %q: use etcd://HOST:PORT[,...] or bolt:///PATH", u)
}

func tlsConfig(t TLSFiles) (*tls.Config, error) {
	if t.CA == "" && t.Cert == "" && t.Key == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", t.CA)
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" || t.Key != "" {
		c, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}
