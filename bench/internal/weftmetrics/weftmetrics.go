// Package weftmetrics reads a lab node's weftd metrics from inside the node's namespace.
package weftmetrics

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftnet/weft/internal/lab"
	"github.com/weftnet/weft/internal/probe"
)

// client dials into the namespace at netns.
func client(netns string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := probe.InNS(netns, func() (err error) { conn, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
		return conn, err
	}}}
}

// Get fetches a path of the metrics address of the weftd in the namespace at netns (a
// lab's weftd also serves /debug/pprof/ there).
func Get(netns, path string) ([]byte, error) {
	resp, err := client(netns).Get("http://" + lab.MetricsAddr + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// Read fetches and parses the metrics of the weftd in the namespace at netns.
func Read(netns string) (map[string]*dto.MetricFamily, error) {
	resp, err := client(netns).Get("http://" + lab.MetricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	return p.TextToMetricFamilies(resp.Body)
}

// Gauge is the value of a gauge without labels (NaN if absent).
func Gauge(m map[string]*dto.MetricFamily, name string) float64 {
	if f := m[name]; f != nil && len(f.Metric) > 0 {
		return f.Metric[0].GetGauge().GetValue()
	}
	return math.NaN()
}

// Histogram is a histogram without labels (empty if absent).
func Histogram(m map[string]*dto.MetricFamily, name string) *dto.Histogram {
	if f := m[name]; f != nil && len(f.Metric) > 0 {
		return f.Metric[0].GetHistogram()
	}
	return &dto.Histogram{}
}
