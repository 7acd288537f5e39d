package schedule

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkPlace places 10k units (plain, Conflicts, MachineMetadata,
// MachineOf, MachineID, Global) on 1k machines; fleet documents 1000 units
// on 100 machines as its limit. The goal is well under 1 s per call.
func BenchmarkPlace(b *testing.B) {
	for _, size := range []struct{ units, machines int }{{1000, 100}, {10000, 1000}} {
		for _, current := range []string{"fresh", "stable"} {
			b.Run(fmt.Sprintf("units=%d/machines=%d/%s", size.units, size.machines, current), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				units, machines := randomCluster(rng, size.units, size.machines)
				for i := range units {
					units[i].Current = ""
				}
				if current == "stable" {
					// Every unit already where the last pass put it: the
					// common steady-state engine pass.
					r := Place(units, machines)
					for i := range units {
						units[i].Current = r.Targets[units[i].Name]
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				var r Result
				for b.Loop() {
					r = Place(units, machines)
				}
				b.ReportMetric(float64(len(r.Targets)), "placed")
				b.ReportMetric(float64(len(r.Unplaced)), "unplaced")
			})
		}
	}
}

// BenchmarkPlaceMachineLoss re-places 10k units after one of 1k machines
// left: the pass that follows a machine failure.
func BenchmarkPlaceMachineLoss(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	units, machines := randomCluster(rng, 10000, 1000)
	r := Place(units, machines)
	for i := range units {
		units[i].Current = r.Targets[units[i].Name]
	}
	rest := machines[1:]
	b.ReportAllocs()
	for b.Loop() {
		Place(units, rest)
	}
}

// BenchmarkPlaceOverloaded is the worst case for the search: 10k instances
// of one template that all conflict with each other on 1k machines, so 9k
// stay unplaced, each after trying every machine.
func BenchmarkPlaceOverloaded(b *testing.B) {
	var machines []Machine
	for i := range 1000 {
		machines = append(machines, Machine{ID: fmt.Sprintf("m%04d", i)})
	}
	var units []Unit
	for i := range 10000 {
		u := Unit{Name: fmt.Sprintf("app@%d.service", i)}
		u.Fleet.Conflicts = []string{"app@*.service"}
		units = append(units, u)
	}
	b.ReportAllocs()
	var r Result
	for b.Loop() {
		r = Place(units, machines)
	}
	b.ReportMetric(float64(len(r.Unplaced)), "unplaced")
}
