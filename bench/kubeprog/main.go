// Command kubeprog measures Kubernetes mode's network programming latency in a running
// `weft lab up --kubernetes`: it creates N services with an EndpointSlice of E endpoints
// each through the API, waits until every node programs them all, then changes one
// endpoint of C services one after the other (each slice stamped with the change's time,
// as the EndpointSlice controller stamps it) and reads every node's
// weft_network_programming_duration_seconds: from the stamp to that node's proxy
// programmed with the change (kube-proxy's network_programming_duration_seconds).
// Endpoint addresses are never contacted. Run by bench/kubeprog.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/bench/internal/kubebench"
	"github.com/weftnet/weft/bench/internal/weftmetrics"
)

var (
	labName   = flag.String("lab", "", "the lab (weft lab up --kubernetes)")
	services  = flag.Int("services", 1000, "services to create")
	endpoints = flag.Int("endpoints", 10, "endpoints per service")
	changes   = flag.Int("changes", 50, "endpoint changes to measure")
	gap       = flag.Duration("gap", 200*time.Millisecond, "pause between changes")
)

const metric = "weft_network_programming_duration_seconds"

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kubeprog:", err)
		os.Exit(1)
	}
}

func run() error {
	l, client, err := kubebench.Open(*labName)
	if err != nil {
		return err
	}
	ctx := context.Background()
	start := time.Now()
	slices, err := kubebench.Create(ctx, client, kubebench.Spec{Prefix: "bench", Services: *services, Endpoints: *endpoints,
		Decorate: func(_ int, sl *discoveryv1.EndpointSlice) { sl.Annotations = stamp() }})
	if err != nil {
		return err
	}
	fmt.Printf("created %d services × %d endpoints through the API in %v\n", *services, *endpoints, time.Since(start).Round(time.Millisecond))
	for _, n := range l.State.Nodes {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
			m, err := weftmetrics.Read(n.Netns)
			if err == nil && weftmetrics.Gauge(m, "weft_proxy_service_ports") >= float64(*services) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not program %d services in 2 minutes (%v)", n.Name, *services, err)
			}
		}
	}
	fmt.Printf("every node programmed them %v after the first create\n", time.Since(start).Round(time.Millisecond))
	before := map[string]*dto.Histogram{}
	for _, n := range l.State.Nodes {
		m, err := weftmetrics.Read(n.Netns)
		if err != nil {
			return err
		}
		before[n.Name] = weftmetrics.Histogram(m, metric)
	}
	for c := range *changes {
		i := c * *services / *changes
		sl := slices[i]
		sl.Endpoints[0].Addresses[0] = fmt.Sprintf("10.199.%d.%d", c/250, 1+c%250)
		sl.Annotations = stamp()
		if slices[i], err = client.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			return err
		}
		time.Sleep(*gap)
	}
	time.Sleep(2 * time.Second)
	for _, n := range l.State.Nodes {
		m, err := weftmetrics.Read(n.Netns)
		if err != nil {
			return err
		}
		after := weftmetrics.Histogram(m, metric)
		count := after.GetSampleCount() - before[n.Name].GetSampleCount()
		sum := after.GetSampleSum() - before[n.Name].GetSampleSum()
		fmt.Printf("%s: %d changes programmed, mean %.1f ms, p50 ≤ %s, p99 ≤ %s, max bucket %s\n", n.Name, count, 1000*sum/float64(max(count, 1)),
			quantile(before[n.Name], after, 0.5), quantile(before[n.Name], after, 0.99), quantile(before[n.Name], after, 1))
	}
	return nil
}

func stamp() map[string]string {
	return map[string]string{corev1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)}
}

// quantile is the upper bound of the bucket holding quantile q of the observations made
// between before and after.
func quantile(before, after *dto.Histogram, q float64) string {
	total := after.GetSampleCount() - before.GetSampleCount()
	if total == 0 {
		return "-"
	}
	prev := map[float64]uint64{}
	for _, b := range before.GetBucket() {
		prev[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	buckets := after.GetBucket()
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].GetUpperBound() < buckets[j].GetUpperBound() })
	for _, b := range buckets {
		if float64(b.GetCumulativeCount()-prev[b.GetUpperBound()]) >= q*float64(total) {
			return (time.Duration(b.GetUpperBound() * float64(time.Second))).String()
		}
	}
	return "+Inf"
}
