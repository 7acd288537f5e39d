package engine_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// BenchmarkEnginePass10kUnits1kMachines measures one engine pass at fleet's
// documented limit ×10 units and ×10 machines: 10,000 launched units (a mix of
// plain, metadata-constrained, conflicting and two global ones) on 1,000
// machines whose presence keys are written straight into a real (embedded)
// etcd. The timed loop is the steady-state pass (nothing to change); the
// first pass (placing everything) and a pass after losing one machine are
// reported as extra metrics, with the etcd requests each pass made. The
// timed pass plans from a registry.Live, as the leader does; a pass that
// reads the whole registry first is reported beside it.
func BenchmarkEnginePass10kUnits1kMachines(b *testing.B) {
	const nUnits, nMachines = 10000, 1000
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := etcdtest.New(b).Client()
	reg := registry.New(c, "/bench/")

	// Machines: one lease for all; metadata az=a|b|c, role=worker.
	lease, err := c.GrantLease(ctx, 60*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer lease.Close()
	var ops []store.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, _, err := c.Txn(ctx, nil, ops, nil); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	add := func(op store.Op) {
		ops = append(ops, op)
		if len(ops) == registry.MaxTxnOps {
			flush()
		}
	}
	for i := 0; i < nMachines; i++ {
		id := fmt.Sprintf("%032x", i+1)
		m := registry.Machine{ID: id, IP: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
			Metadata: map[string]string{"az": string(rune('a' + i%3)), "role": "worker"}}
		add(store.OpPut(reg.MachineKey(id), registry.Encode(m), lease.ID()))
	}
	bodies := map[string]string{
		"app":    "[Service]\nExecStart=/bin/sleep 1000\n",
		"zonal":  "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=az=b\n",
		"web":    "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nConflicts=web@*.service\n",
		"global": "[Service]\nType=oneshot\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=worker\n",
	}
	for _, body := range bodies {
		add(store.OpPut(reg.BodyKey(unit.Hash([]byte(body))), body, 0))
	}
	for i := 0; i < nUnits; i++ {
		kind := "app"
		switch {
		case i < 2:
			kind = "global"
		case i%100 == 0:
			kind = "web"
		case i%10 == 0:
			kind = "zonal"
		}
		name := fmt.Sprintf("%s@%d.service", kind, i)
		job := registry.Job{Hash: unit.Hash([]byte(bodies[kind])), Desired: registry.Launched}
		add(store.OpPut(reg.JobKey(name), registry.Encode(job), 0))
	}
	flush()

	e, err := engine.New(engine.Options{Registry: reg, ID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	l, err := c.GrantLease(ctx, 60*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	lead, err := c.Campaign(ctx, l, reg.ElectionPrefix(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	first, err := e.Pass(ctx, lead.Guard())
	if err != nil {
		b.Fatal(err)
	}
	if first.Unplaced != 0 {
		b.Fatalf("first pass left %d units unplaced", first.Unplaced)
	}

	// A full read, as tools calling Pass do.
	full, err := e.Pass(ctx, lead.Guard())
	if err != nil {
		b.Fatal(err)
	}
	// The leader's passes plan from the state its watch keeps.
	live, err := reg.Live(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var steady engine.PassStats
	for i := 0; i < b.N; i++ {
		if steady, err = e.PassOn(ctx, lead.Guard(), live.Snapshot()); err != nil {
			b.Fatal(err)
		}
		if !steady.Unchanged {
			b.Fatalf("steady pass wrote %d ops", steady.Ops)
		}
	}
	b.StopTimer()

	// Lose one machine (its presence key goes, as when its lease expires).
	if _, err := c.Delete(ctx, reg.MachineKey(fmt.Sprintf("%032x", 7))); err != nil {
		b.Fatal(err)
	}
	loss, err := e.Pass(ctx, lead.Guard())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(first.Duration.Microseconds())/1000, "first-pass-ms")
	b.ReportMetric(float64(first.Requests), "first-pass-requests")
	b.ReportMetric(float64(first.Plan.Microseconds())/1000, "first-pass-plan-ms")
	b.ReportMetric(float64(steady.Plan.Microseconds())/1000, "steady-pass-plan-ms")
	b.ReportMetric(float64(first.Ops), "first-pass-ops")
	b.ReportMetric(float64(steady.Requests), "steady-pass-requests")
	b.ReportMetric(float64(full.Duration.Microseconds())/1000, "full-read-pass-ms")
	b.ReportMetric(float64(loss.Duration.Microseconds())/1000, "loss-pass-ms")
	b.ReportMetric(float64(loss.Requests), "loss-pass-requests")
	b.ReportMetric(float64(loss.Moved), "loss-pass-moved")
}
