package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
)

// AgentFile is weftd's optional configuration file (--config). Flags given on the command
// line override it.
type AgentFile struct {
	NodeName     string         `json:"nodeName,omitempty"`
	StateDir     string         `json:"stateDir,omitempty"`
	RunDir       string         `json:"runDir,omitempty"`
	PodCIDRs     []netip.Prefix `json:"podCIDRs,omitempty"`
	MTU          int            `json:"mtu,omitempty"`
	MetricsAddr  string         `json:"metricsAddr,omitempty"`
	Masquerade   *bool          `json:"masquerade,omitempty"`
	Fastpath     *bool          `json:"fastpath,omitempty"`
	AntiSpoofing *bool          `json:"antiSpoofing,omitempty"`
	LogLevel     string         `json:"logLevel,omitempty"`
}

// ParseAgentFile decodes a weftd configuration file strictly: an unknown key is an error
// naming it.
func ParseAgentFile(data []byte) (*AgentFile, error) {
	var f AgentFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("weftd config: %v", err)
	}
	if f.MTU != 0 && (f.MTU < 576 || f.MTU > 65535) {
		return nil, fmt.Errorf("weftd config: mtu %d is outside 576..65535", f.MTU)
	}
	return &f, nil
}
