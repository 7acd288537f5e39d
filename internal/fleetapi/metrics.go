package fleetapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// Metrics are the scheduler's Prometheus metrics, in a registry of their
// own (no process-wide state). Gauges of the cluster (units by state,
// unplaced units, machines) are read from etcd at each scrape; counters come
// from the engine's pass hook (ObservePass) and from Run's watches.
// Safe for concurrent use.
type Metrics struct {
	s   *Server
	reg *prometheus.Registry

	passes        prometheus.Counter
	passDuration  prometheus.Histogram
	leaderChanges prometheus.Counter
	restarts      *prometheus.CounterVec

	unitsDesc, desiredDesc, unplacedDesc, machinesDesc, upDesc, leaderDesc *prometheus.Desc
	failedDesc, inPlaceDesc                                                *prometheus.Desc

	mu     sync.Mutex
	leader string
}

func newMetrics(s *Server) *Metrics {
	m := &Metrics{s: s, reg: prometheus.NewRegistry()}
	m.passes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "flotilla_engine_passes_total", Help: "Reconcile passes run by the engine of this process while it led."})
	m.passDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "flotilla_engine_pass_duration_seconds", Help: "Duration of the engine's reconcile passes.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	m.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "flotilla_engine_leader_changes_total", Help: "Changes of the engine leader seen by this process."})
	m.restarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_unit_restarts_total", Help: "Restarts of units by their agent (Restart=), as the agents report them (seen by this process)."},
		[]string{"unit", "machine"})
	m.unitsDesc = prometheus.NewDesc("flotilla_units", "Units by current state (as fleet derives it; global units count once per machine reporting them).", []string{"state"}, nil)
	m.desiredDesc = prometheus.NewDesc("flotilla_units_desired", "Units by desired state.", []string{"state"}, nil)
	m.unplacedDesc = prometheus.NewDesc("flotilla_unit_unplaced", "1 for each loaded or launched unit the engine could not place, with the reason.", []string{"unit", "reason"}, nil)
	m.failedDesc = prometheus.NewDesc("flotilla_unit_failed",
		"1 for each machine where a unit's current body failed with its restart budget used ([X-Flotilla] RestartFailed=); move=\"true\": the machine is avoided (OnFailed=move).",
		[]string{"unit", "machine", "move"}, nil)
	m.inPlaceDesc = prometheus.NewDesc("flotilla_unit_failed_restarts",
		"Restarts in place of a failed unit by its agent within its RestartFailedWindow, as the agent reports them.", []string{"unit", "machine"}, nil)
	m.machinesDesc = prometheus.NewDesc("flotilla_machines", "Machines present (holding their presence lease).", nil, nil)
	m.upDesc = prometheus.NewDesc("flotilla_registry_up", "1 when the scheduler state could be read from etcd for this scrape.", nil, nil)
	m.leaderDesc = prometheus.NewDesc("flotilla_engine_leader", "1 for the machine that leads the engine, as last seen.", []string{"machine"}, nil)
	m.reg.MustRegister(m.passes, m.passDuration, m.leaderChanges, m.restarts, (*clusterCollector)(m),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObservePass records one engine pass; give it to engine.Options.OnPass.
func (m *Metrics) ObservePass(d time.Duration) {
	m.passes.Inc()
	m.passDuration.Observe(d.Seconds())
}

func (m *Metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// clusterCollector reads the cluster gauges at scrape time.
type clusterCollector Metrics

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.unitsDesc, c.desiredDesc, c.unplacedDesc, c.machinesDesc, c.upDesc, c.leaderDesc, c.failedDesc, c.inPlaceDesc} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	ctx, cancel := context.WithTimeout(context.Background(), m.s.o.RequestTimeout)
	defer cancel()
	v, err := m.s.readView(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(m.upDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(m.upDesc, prometheus.GaugeValue, 1)
	current := map[string]float64{"inactive": 0, "loaded": 0, "launched": 0}
	desired := map[string]float64{"inactive": 0, "loaded": 0, "launched": 0}
	for _, u := range v.units() {
		desired[u.DesiredState]++
		if u.CurrentState != "" {
			current[u.CurrentState]++
			continue
		}
		// Global: one per machine that reports it.
		for _, st := range v.snap.States[u.Name] {
			if st.State == string(registry.Launched) {
				current["launched"]++
			} else {
				current["loaded"]++
			}
		}
	}
	for s, n := range current {
		ch <- prometheus.MustNewConstMetric(m.unitsDesc, prometheus.GaugeValue, n, s)
	}
	for s, n := range desired {
		ch <- prometheus.MustNewConstMetric(m.desiredDesc, prometheus.GaugeValue, n, s)
	}
	for u, why := range v.snap.Unplaced {
		ch <- prometheus.MustNewConstMetric(m.unplacedDesc, prometheus.GaugeValue, 1, u, why)
	}
	for u, ms := range v.snap.Failed {
		for mach, f := range ms {
			if j, ok := v.snap.Jobs[u]; ok && j.Hash == f.Hash {
				ch <- prometheus.MustNewConstMetric(m.failedDesc, prometheus.GaugeValue, 1, u, mach, strconv.FormatBool(f.Move))
			}
		}
	}
	for u, ms := range v.snap.States {
		for mach, st := range ms {
			if st.Restarts > 0 {
				ch <- prometheus.MustNewConstMetric(m.inPlaceDesc, prometheus.GaugeValue, float64(st.Restarts), u, mach)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(m.machinesDesc, prometheus.GaugeValue, float64(len(v.snap.Machines)))
	m.mu.Lock()
	leader := m.leader
	m.mu.Unlock()
	if leader != "" {
		ch <- prometheus.MustNewConstMetric(m.leaderDesc, prometheus.GaugeValue, 1, leader)
	}
}

// run watches the engine election (leader changes) and the unit states
// (restarts) until ctx ends, re-watching after errors.
func (m *Metrics) run(ctx context.Context) error {
	for ctx.Err() == nil {
		err := m.watch(ctx)
		if ctx.Err() != nil {
			break
		}
		m.s.log.Warn("metrics watch ended, restarting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}

func (m *Metrics) watch(ctx context.Context) error {
	reg := m.s.reg
	c := reg.Client()
	states := reg.Prefix() + "states/"
	kvs, rev, err := c.GetPrefix(ctx, states)
	if err != nil {
		return err
	}
	sub := map[string]string{}
	for _, kv := range kvs {
		if st, err := reg.DecodeState(kv); err == nil {
			sub[kv.Key] = st.Sub
		}
	}
	m.checkLeader(ctx)
	ws := c.WatchPrefix(ctx, states, rev+1)
	defer ws.Close()
	we := c.WatchPrefix(ctx, reg.ElectionPrefix(), rev+1)
	defer we.Close()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b, ok := <-we.C:
			if !ok {
				return errors.New("election watch closed")
			}
			if b.Err != nil {
				return b.Err
			}
			if len(b.Events) > 0 {
				m.checkLeader(ctx)
			}
		case b, ok := <-ws.C:
			if !ok {
				return errors.New("state watch closed")
			}
			if b.Err != nil {
				return b.Err
			}
			for _, ev := range b.Events {
				if ev.Type == store.EventDelete {
					delete(sub, ev.KV.Key)
					continue
				}
				st, err := reg.DecodeState(ev.KV)
				if err != nil {
					continue
				}
				if st.Sub == "auto-restart" && sub[ev.KV.Key] != "auto-restart" {
					m.restarts.WithLabelValues(st.Unit, st.Machine).Inc()
				}
				sub[ev.KV.Key] = st.Sub
			}
		}
	}
}

func (m *Metrics) checkLeader(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, m.s.o.RequestTimeout)
	defer cancel()
	v, found, err := m.s.reg.Client().Leader(lctx, m.s.reg.ElectionPrefix())
	if err != nil {
		return
	}
	if !found {
		v = ""
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if v != "" && m.leader != "" && v != m.leader {
		m.leaderChanges.Inc()
	}
	if v != "" {
		m.leader = v
	}
}
