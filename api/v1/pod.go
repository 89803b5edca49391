package v1

import (
	"net/netip"
	"time"
)

// PodIdentity is what a runtime tells weft about the pod behind an attachment:
// K8S_POD_NAME / K8S_POD_NAMESPACE / K8S_POD_UID in CNI_ARGS (podman passes the container
// name as K8S_POD_NAME), and labels from args.cni.labels or runtimeConfig.labels.
type PodIdentity struct {
	Name      string            `json:"name,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	UID       string            `json:"uid,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// IsZero reports whether nothing is known.
func (p PodIdentity) IsZero() bool {
	return p.Name == "" && p.Namespace == "" && p.UID == "" && len(p.Labels) == 0
}

// Attachment is one pod interface on a weft network, as `weft pod ls` shows it.
type Attachment struct {
	PodIdentity
	ContainerID string         `json:"containerID"`
	IfName      string         `json:"ifName"`
	Network     string         `json:"network"`
	IPs         []netip.Prefix `json:"ips"`
	Ports       []PortMapping  `json:"ports,omitempty"`
	Netns       string         `json:"netns,omitempty"`
	Created     time.Time      `json:"created"`
}
