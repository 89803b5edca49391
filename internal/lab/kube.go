package lab

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/internal/probe"
)

// A lab with Kubernetes (`weft lab up --kubernetes`) runs kube-apiserver and
// kube-controller-manager (its EndpointSlice and node IPAM controllers) in the underlay
// namespace, over the lab's etcd; every weftd reads its pod blocks, its peers, services,
// EndpointSlices, pods and policies from it (--kubeconfig, no store), and the lab creates a Pod object for each pod it attaches, with the
// status a kubelet would set, so the real controller derives the endpoints.

const kubeAPIPort = 6443

// kubeBinary finds a Kubernetes command: in $WEFT_KUBE_DIR, else on PATH. The test
// command builds them from tools/kube.
func kubeBinary(name string) (string, error) {
	if dir := os.Getenv("WEFT_KUBE_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in $WEFT_KUBE_DIR or on PATH (build it: cd tools/kube && go build -o DIR k8s.io/kubernetes/cmd/%s)", name, name)
}

func (l *Lab) kubeDir() string { return filepath.Join(l.dir(), "kube") }

// Kubeconfig is the lab's admin kubeconfig for the host: its server is a loopback port
// relayed into the underlay (no route into the lab is needed).
func (l *Lab) Kubeconfig() string {
	if !l.State.Kubernetes {
		return ""
	}
	return filepath.Join(l.kubeDir(), "kubeconfig")
}

// upKube starts the control plane and writes the kubeconfig.
func (l *Lab) upKube() error {
	apiserver, err := kubeBinary("kube-apiserver")
	if err != nil {
		return err
	}
	kcm, err := kubeBinary("kube-controller-manager")
	if err != nil {
		return err
	}
	dir := l.kubeDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	keyFile := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	l.State.KubeToken = rand.Text()
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(l.State.KubeToken+",admin,admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	ip := underlayAddr(254)
	if err := l.startUnderlayProc("kube-apiserver", apiserver,
		"--etcd-servers=http://"+netip.AddrPortFrom(ip, etcdPort).String(), "--etcd-prefix=/kubernetes",
		"--bind-address="+ip.String(), "--advertise-address="+ip.String(), fmt.Sprintf("--secure-port=%d", kubeAPIPort),
		"--cert-dir="+filepath.Join(dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+keyFile, "--service-account-signing-key-file="+keyFile,
		"--token-auth-file="+filepath.Join(dir, "tokens.csv"), "--authorization-mode=RBAC",
		"--service-cluster-ip-range="+ServiceCIDRs, "--allow-privileged=true",
		"--disable-admission-plugins=ServiceAccount", "--enable-priority-and-fairness=false",
	); err != nil {
		return err
	}
	if err := l.save(); err != nil {
		return err
	}
	client, err := l.KubeClient()
	if err != nil {
		return err
	}
	var lastErr error
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, lastErr = client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		cancel()
		if lastErr == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not serving after 60 s (%v); see %s", lastErr, filepath.Join(dir, "kube-apiserver.log"))
		}
	}
	// The nodes' kubeconfig names the server on the underlay; the host's, a loopback port
	// that `weft lab forward` relays into the underlay.
	if err := l.writeKubeconfig(l.UnderlayKubeconfig(), netip.AddrPortFrom(ip, kubeAPIPort).String()); err != nil {
		return err
	}
	portFile := filepath.Join(dir, "forward.port")
	if err := l.startProc("forward", "", filepath.Join(l.opts.BinDir, "weft"), "lab", "forward",
		"--netns", l.State.Underlay, "--to", netip.AddrPortFrom(ip, kubeAPIPort).String(), "--port-file", portFile); err != nil {
		return err
	}
	var port []byte
	for deadline := time.Now().Add(10 * time.Second); len(port) == 0; time.Sleep(20 * time.Millisecond) {
		if port, _ = os.ReadFile(portFile); len(port) == 0 && time.Now().After(deadline) {
			return errors.New("the lab's API forward did not start")
		}
	}
	if err := l.writeKubeconfig(l.Kubeconfig(), "127.0.0.1:"+string(port)); err != nil {
		return err
	}
	// The EndpointSlice controllers and node IPAM (each node's spec.podCIDRs, which its
	// weftd uses), as a cluster runs them.
	return l.startUnderlayProc("kube-controller-manager", kcm,
		"--kubeconfig="+l.UnderlayKubeconfig(), "--controllers=endpointslice,endpointslicemirroring,nodeipam", "--leader-elect=false",
		"--allocate-node-cidrs", "--cluster-cidr="+ClusterCIDRs, "--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64",
		"--service-cluster-ip-range="+ServiceCIDRs,
		"--secure-port=0", "--use-service-account-credentials=false")
}

// UnderlayKubeconfig is what the lab's own processes (weftds, the controller manager) use:
// the server on the underlay.
func (l *Lab) UnderlayKubeconfig() string { return filepath.Join(l.kubeDir(), "kubeconfig-underlay") }

func (l *Lab) writeKubeconfig(path, server string) error {
	cfg := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {server: %q, insecure-skip-tls-verify: true}\n"+
		"users:\n- name: admin\n  user: {token: %q}\ncontexts:\n- name: lab\n  context: {cluster: lab, user: admin}\ncurrent-context: lab\n",
		"https://"+server, l.State.KubeToken)
	return os.WriteFile(path, []byte(cfg), 0o600)
}

// startUnderlayProc runs program in the underlay namespace as a process of the lab's.
func (l *Lab) startUnderlayProc(name, program string, args ...string) error {
	return l.startProc(name, l.State.Underlay, program, args...)
}

// startProc runs program (in netns, or in the caller's namespace if netns is empty) as a
// process of the lab's, logging to the kube folder.
func (l *Lab) startProc(name, netns, program string, args ...string) error {
	logf, err := os.Create(filepath.Join(l.kubeDir(), name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(program, args...)
	if netns != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + netns, "--", program}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }()
	l.State.KubeProcs = append(l.State.KubeProcs, Proc{PID: cmd.Process.Pid, Program: filepath.Base(program)})
	return l.save()
}

// KubeClient is an admin client of the lab's API server, dialing into the underlay.
func (l *Lab) KubeClient() (kubernetes.Interface, error) {
	if !l.State.Kubernetes {
		return nil, errors.New("this lab has no Kubernetes (weft lab up --kubernetes)")
	}
	underlay := l.State.Underlay
	cfg := &rest.Config{
		Host:            "https://" + netip.AddrPortFrom(underlayAddr(254), kubeAPIPort).String(),
		BearerToken:     l.State.KubeToken,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}, // the lab's self-signed server
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := probe.InNS(underlay, func() (err error) {
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	return kubernetes.NewForConfig(cfg)
}

// registerNode creates n's Node object as a kubelet registers it: addressed on the
// underlay and ready (the EndpointSlice controller skips pods on unknown nodes).
func (l *Lab) registerNode(n *Node) error {
	client, err := l.KubeClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("node object %s: %w", n.Name, err)
	}
	// The status as a patch: the controller manager writes the node's spec.podCIDRs
	// meanwhile.
	now := metav1.Now()
	status, _ := json.Marshal(map[string]any{"status": corev1.NodeStatus{
		Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.Underlay.String()}, {Type: corev1.NodeHostName, Address: n.Name}},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: now, LastTransitionTime: now}},
	}})
	if _, err := client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, status, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("node status %s: %w", n.Name, err)
	}
	return nil
}

// publishPod creates p's Pod object and sets its status as a kubelet would: scheduled to
// its node, running, ready, with its addresses.
func (l *Lab) publishPod(p *Pod, labels map[string]string, serve int) error {
	client, err := l.KubeClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// As a user would have made it first (the lab plays the user and the kubelet).
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: p.namespace()}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", p.namespace(), err)
	}
	c := corev1.Container{Name: "main", Image: "lab"}
	if serve > 0 {
		c.Ports = []corev1.ContainerPort{{Name: "serve", ContainerPort: int32(serve), Protocol: corev1.ProtocolTCP}}
	}
	obj, err := client.CoreV1().Pods(p.namespace()).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: p.Node, Containers: []corev1.Container{c}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("pod object %s: %w", p.Name, err)
	}
	now := metav1.Now()
	obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	for _, ip := range p.IPs {
		obj.Status.PodIPs = append(obj.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if len(p.IPs) > 0 {
		obj.Status.PodIP = p.IPs[0].String()
	}
	if _, err := client.CoreV1().Pods(p.namespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod status %s: %w", p.Name, err)
	}
	return nil
}

// unpublishPod deletes p's Pod object at once (the pod is already gone).
func (l *Lab) unpublishPod(p *Pod) error {
	client, err := l.KubeClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = client.CoreV1().Pods(p.namespace()).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
