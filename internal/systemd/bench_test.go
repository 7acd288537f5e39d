package systemd_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/systemd"
	"github.com/flotilla/flotilla/internal/systemdtest"
)

func benchExecutor(b *testing.B) (*systemd.Executor, context.Context) {
	m := systemdtest.New(b)
	ctx := context.Background()
	e, err := systemd.New(ctx, systemd.Options{User: true, BusAddress: m.BusAddress, UnitDir: m.UnitDir, WaitStart: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e, ctx
}

// BenchmarkStartStop: Start of a changed body (write + daemon-reload + start
// job, waited for), then Stop (stop job), of one unit.
func BenchmarkStartStop(b *testing.B) {
	e, ctx := benchExecutor(b)
	i := 0
	for b.Loop() {
		i++
		spec := executor.Spec{Name: "bench.service", Body: fmt.Appendf(nil, "[Service]\nExecStart=/bin/sleep %d\n", 1000+i)}
		if err := e.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
		if err := e.Stop(ctx, "bench.service"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStartNew: first start of a unit systemd has never seen (install
// without daemon-reload, start job of a oneshot, waited for).
func BenchmarkStartNew(b *testing.B) {
	e, ctx := benchExecutor(b)
	i := 0
	for b.Loop() {
		i++
		spec := executor.Spec{Name: fmt.Sprintf("new%d.service", i), Body: []byte("[Service]\nType=oneshot\nExecStart=/bin/true\n")}
		if err := e.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStartRunning: Start of a unit already running the same body (the
// agent's steady state): no file written, no reload, no job.
func BenchmarkStartRunning(b *testing.B) {
	e, ctx := benchExecutor(b)
	spec := executor.Spec{Name: "idle.service", Body: []byte("[Service]\nExecStart=/bin/sleep 1000\n")}
	if err := e.Start(ctx, spec); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := e.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStates100: States with 100 owned running units.
func BenchmarkStates100(b *testing.B) {
	e, ctx := benchExecutor(b)
	for i := range 100 {
		spec := executor.Spec{Name: fmt.Sprintf("w@%d.service", i), Body: []byte("[Service]\nExecStart=/bin/sleep 1000\n")}
		if err := e.Start(ctx, spec); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		st, err := e.States(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(st) != 100 {
			b.Fatalf("%d states", len(st))
		}
	}
}
