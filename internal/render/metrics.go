package render

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are render's Prometheus metrics on their own registry. A nil
// *Metrics records nothing. Safe for concurrent use.
type Metrics struct {
	reg         *prometheus.Registry
	renders     *prometheus.CounterVec
	failures    *prometheus.CounterVec
	reloads     *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
	watchLag    prometheus.Histogram
	connected   prometheus.Gauge
	keys        prometheus.Gauge
	ready       atomic.Bool
	up          atomic.Bool
}

// NewMetrics registers render's metrics (and the Go/process collectors) on a
// fresh registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "render_renders_total", Help: "Templates rendered, by resource and result (unchanged, changed).",
		}, []string{"resource", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "render_failures_total", Help: "Failed renders/checks, by resource.",
		}, []string{"resource"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "render_reloads_total", Help: "reload_cmd runs, by resource and result (ok, error).",
		}, []string{"resource", "result"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "render_last_success_timestamp_seconds", Help: "Unix time of the last successful render of each resource.",
		}, []string{"resource"}),
		watchLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "render_watch_lag_seconds",
			Help:    "Time from a watch event's arrival to its file being in place (includes any wait).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "render_etcd_connected", Help: "1 when the key source answers, else 0.",
		}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "render_keys", Help: "Keys read at the last full resync.",
		}),
	}
	m.reg.MustRegister(m.renders, m.failures, m.reloads, m.lastSuccess, m.watchLag, m.connected, m.keys,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics, /health (200 while running) and /ready (200 once
// every resource was rendered once and the source answers).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !m.ready.Load() || !m.up.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// Registry returns the registry (for tests and embedding).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) rendered(res string, changed bool, at time.Time) {
	if m == nil {
		return
	}
	result := "unchanged"
	if changed {
		result = "changed"
	}
	m.renders.WithLabelValues(res, result).Inc()
	m.lastSuccess.WithLabelValues(res).Set(float64(at.UnixNano()) / 1e9)
}

func (m *Metrics) failed(res string) {
	if m != nil {
		m.failures.WithLabelValues(res).Inc()
	}
}

func (m *Metrics) reloaded(res string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reloads.WithLabelValues(res, result).Inc()
}

func (m *Metrics) lag(d time.Duration) {
	if m != nil {
		m.watchLag.Observe(d.Seconds())
	}
}

func (m *Metrics) setConnected(up bool) {
	if m == nil {
		return
	}
	m.up.Store(up)
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

func (m *Metrics) setKeys(n int) {
	if m != nil {
		m.keys.Set(float64(n))
	}
}

func (m *Metrics) setReady() {
	if m != nil {
		m.ready.Store(true)
	}
}
