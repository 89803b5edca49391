package cniapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// NodeContractFile is the node contract's name inside the run directory.
const NodeContractFile = "node.json"

// NodeContract is what weftd publishes once the node can take pods. weft-cni refuses ADD
// (CNI code 11) until it exists.
type NodeContract struct {
	NodeName string         `json:"nodeName"`
	PodCIDRs []netip.Prefix `json:"podCIDRs"`
	Gateways []netip.Addr   `json:"gateways"`
	MTU      int            `json:"mtu"`
	Fabric   string         `json:"fabric"`
	// Proxy is the service proxy running: nftables, ebpf (socket load balancing in front of
	// nftables) or none; empty outside cluster mode.
	Proxy  string `json:"proxy,omitempty"`
	Socket string `json:"socket"`
	// The cluster DNS this node answers on, and its domain: pods get them in the CNI
	// result (resolv.conf) unless the network config or the runtime says otherwise.
	DNSServers []netip.Addr `json:"dnsServers,omitempty"`
	DNSDomain  string       `json:"dnsDomain,omitempty"`
}

// ErrNoContract means weftd has not (yet) published the node contract.
var ErrNoContract = errors.New("node contract not published")

// ReadNodeContract reads RUN_DIR/node.json.
func ReadNodeContract(runDir string) (*NodeContract, error) {
	b, err := os.ReadFile(filepath.Join(runDir, NodeContractFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: is weftd running?", ErrNoContract, runDir)
	}
	if err != nil {
		return nil, err
	}
	var c NodeContract
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("corrupt node contract %s: %w", filepath.Join(runDir, NodeContractFile), err)
	}
	return &c, nil
}

// WriteNodeContract replaces RUN_DIR/node.json atomically.
func WriteNodeContract(runDir string, c NodeContract) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(runDir, "."+NodeContractFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(runDir, NodeContractFile))
}
