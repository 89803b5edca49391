// Package weftmetrics reads a lab node's weftd metrics from inside the node's namespace.
package weftmetrics

import (
	"context"
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

// Read fetches and parses the metrics of the weftd in the namespace at netns.
func Read(netns string) (map[string]*dto.MetricFamily, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := probe.InNS(netns, func() (err error) { conn, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
		return conn, err
	}}}
	resp, err := c.Get("http://" + lab.MetricsAddr + "/metrics")
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
