package proxy

import (
	"crypto/tls"
	"errors"
	"strings"
)

// certStore maps TLS server names to certificates: exact names, "*.suffix" wildcards, and
// "" for clients that send no (or an unknown) name.
type certStore struct {
	byName map[string]*tls.Certificate
}

// SetCertificates swaps the certificates (server name → PEM pair). A pair that does not
// parse is left out and reported; new handshakes use the new set at once.
func (p *Proxy) SetCertificates(byName map[string][2]string) error {
	st := &certStore{byName: map[string]*tls.Certificate{}}
	var errs []error
	parsed := map[[2]string]*tls.Certificate{}
	for name, pair := range byName {
		c, ok := parsed[pair]
		if !ok {
			cert, err := tls.X509KeyPair([]byte(pair[0]), []byte(pair[1]))
			if err != nil {
				errs = append(errs, err)
				parsed[pair] = nil
				continue
			}
			c = &cert
			parsed[pair] = c
		}
		if c != nil {
			st.byName[name] = c
		}
	}
	p.certs.Store(st)
	return errors.Join(errs...)
}

// SetTicketKeys sets the keys of TLS session tickets (the first encrypts, all decrypt).
// weft-ingress's workers take their master's, so a client resumes its session on any
// worker; without keys the proxy keeps Go's own, made per process and rotated daily.
func (p *Proxy) SetTicketKeys(keys [][32]byte) {
	if len(keys) > 0 {
		p.tls.SetSessionTicketKeys(keys)
	}
}

func (p *Proxy) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			st := p.certs.Load()
			name := strings.ToLower(hello.ServerName)
			if c := st.byName[name]; c != nil {
				return c, nil
			}
			for i := strings.IndexByte(name, '.'); i >= 0; {
				if c := st.byName["*"+name[i:]]; c != nil {
					return c, nil
				}
				j := strings.IndexByte(name[i+1:], '.')
				if j < 0 {
					break
				}
				i += j + 1
			}
			if c := st.byName[""]; c != nil {
				return c, nil
			}
			return nil, errors.New("no certificate")
		},
	}
}
