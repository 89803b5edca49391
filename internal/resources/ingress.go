package resources

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/weftnet/weft/api/v1"
	"github.com/weftnet/weft/internal/store"
)

// Ingress routes and the TLS certificates they name.
const (
	IngressesPrefix    = "/weft/ingresses/"    // + namespace/name
	CertificatesPrefix = "/weft/certificates/" // + namespace/name
	// IngressStatusPrefix holds what each node's weft-ingress serves: + node name.
	IngressStatusPrefix = "/weft/ingressstatus/"
)

// ListIngressStatus returns every node's published ingress status.
func (c Client) ListIngressStatus(ctx context.Context) ([]v1.IngressStatus, error) {
	return listAs[v1.IngressStatus](ctx, c.Store, IngressStatusPrefix)
}

// GetCertificate reads one certificate.
func (c Client) GetCertificate(ctx context.Context, namespace, name string) (v1.Certificate, error) {
	return getAs[v1.Certificate](ctx, c.Store, CertificatesPrefix+namespace+"/"+name)
}

// PutIngress creates or replaces an ingress.
func (c Client) PutIngress(ctx context.Context, in v1.Ingress) error {
	if err := in.Validate(); err != nil {
		return err
	}
	return c.put(ctx, IngressesPrefix+in.Key(), in)
}

// GetIngress reads one ingress.
func (c Client) GetIngress(ctx context.Context, namespace, name string) (v1.Ingress, error) {
	return getAs[v1.Ingress](ctx, c.Store, IngressesPrefix+namespace+"/"+name)
}

// ListIngresses returns every ingress.
func (c Client) ListIngresses(ctx context.Context) ([]v1.Ingress, error) {
	return listAs[v1.Ingress](ctx, c.Store, IngressesPrefix)
}

// DeleteIngress removes an ingress.
func (c Client) DeleteIngress(ctx context.Context, namespace, name string) error {
	return c.delete(ctx, IngressesPrefix+namespace+"/"+name)
}

// PutCertificate creates or replaces a certificate.
func (c Client) PutCertificate(ctx context.Context, cert v1.Certificate) error {
	if err := cert.Validate(); err != nil {
		return err
	}
	return c.put(ctx, CertificatesPrefix+cert.Key(), cert)
}

// ListCertificates returns every certificate.
func (c Client) ListCertificates(ctx context.Context) ([]v1.Certificate, error) {
	return listAs[v1.Certificate](ctx, c.Store, CertificatesPrefix)
}

// DeleteCertificate removes a certificate.
func (c Client) DeleteCertificate(ctx context.Context, namespace, name string) error {
	return c.delete(ctx, CertificatesPrefix+namespace+"/"+name)
}

func (c Client) put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = c.Store.Txn(ctx, nil, []store.Op{{Key: key, Value: b}})
	return err
}

func (c Client) delete(ctx context.Context, key string) error {
	if _, err := c.Store.Get(ctx, key); err != nil {
		return err
	}
	_, err := c.Store.Txn(ctx, nil, []store.Op{{Key: key, Delete: true}})
	return err
}

func getAs[T any](ctx context.Context, s store.Store, key string) (T, error) {
	var v T
	kv, err := s.Get(ctx, key)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(kv.Value, &v); err != nil {
		return v, fmt.Errorf("%s: %w", kv.Key, err)
	}
	return v, nil
}
