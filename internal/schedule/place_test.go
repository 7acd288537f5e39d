package schedule

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/unit"
)

// fl parses an [X-Fleet] section body for unit name.
func fl(t testing.TB, name, xfleet string) unit.Fleet {
	t.Helper()
	f, err := unit.Parse(name, []byte("[Service]\nExecStart=/bin/true\n[X-Fleet]\n"+xfleet))
	if err != nil {
		t.Fatal(err)
	}
	return f.Fleet
}

// mach builds a machine from "id k=v,k=v" and a capacity.
func mach(id, meta string, capacity int) Machine {
	m := Machine{ID: id, Capacity: capacity, Metadata: map[string]string{}}
	for _, kv := range strings.Split(meta, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m.Metadata[k] = v
		}
	}
	return m
}

type uspec struct {
	name, xfleet, current string
	avoid                 []string
}

func TestPlace(t *testing.T) {
	three := []Machine{mach("m1", "", 0), mach("m2", "", 0), mach("m3", "", 0)}
	seed := []Machine{mach("lb", "role=lb", 0), mach("w1", "role=worker", 0), mach("w2", "role=worker", 0)}
	tests := map[string]struct {
		units    []uspec
		machines []Machine
		targets  map[string]string
		global   map[string][]string
		unplaced map[string]string
	}{
		"least loaded, ties by id": {
			units:    []uspec{{name: "a.service"}, {name: "b.service"}, {name: "c.service"}, {name: "d.service"}},
			machines: three,
			targets:  map[string]string{"a.service": "m1", "b.service": "m2", "c.service": "m3", "d.service": "m1"},
		},
		"stability: unbalanced but valid stays": {
			units:    []uspec{{name: "a.service", current: "m2"}, {name: "b.service", current: "m2"}, {name: "c.service"}},
			machines: three,
			targets:  map[string]string{"a.service": "m2", "b.service": "m2", "c.service": "m1"},
		},
		"current machine gone": {
			units:    []uspec{{name: "a.service", current: "gone"}, {name: "b.service", current: "m1"}},
			machines: three,
			targets:  map[string]string{"a.service": "m2", "b.service": "m1"},
		},
		"current machine lost its metadata": {
			units:    []uspec{{name: "a.service", xfleet: "MachineMetadata=role=worker", current: "lb"}},
			machines: seed,
			targets:  map[string]string{"a.service": "w1"},
		},
		"avoid: leaves its current machine for the least loaded other": {
			units:    []uspec{{name: "a.service", current: "m1", avoid: []string{"m1", "gone"}}, {name: "b.service", current: "m2"}},
			machines: three,
			targets:  map[string]string{"a.service": "m3", "b.service": "m2"},
		},
		"avoid: every eligible machine": {
			units:    []uspec{{name: "a.service", xfleet: "MachineMetadata=role=worker", avoid: []string{"w1", "w2"}}, {name: "b.service", xfleet: "MachineMetadata=role=worker"}},
			machines: seed,
			targets:  map[string]string{"b.service": "w1"},
			unplaced: map[string]string{"a.service": "it failed on every machine it may run on (w1, w2), which it avoids for now (AvoidFailedFor)"},
		},
		"avoid: pinned machine": {
			units:    []uspec{{name: "a.service", xfleet: "MachineID=m2", avoid: []string{"m2"}}},
			machines: three,
			unplaced: map[string]string{"a.service": "it failed on machine m2, which it avoids for now (AvoidFailedFor)"},
		},
		"avoid: global unit skips the machine": {
			units:    []uspec{{name: "g.service", xfleet: "Global=true", avoid: []string{"m2"}}},
			machines: three,
			global:   map[string][]string{"g.service": {"m1", "m3"}},
		},
		"no machines": {
			units:    []uspec{{name: "a.service"}, {name: "g.service", xfleet: "Global=true"}},
			unplaced: map[string]string{"a.service": "no machines", "g.service": "no machines"},
		},
		"MachineID full, prefix, ambiguous, unknown": {
			units: []uspec{
				{name: "full.service", xfleet: "MachineID=abc123"},
				{name: "prefix.service", xfleet: "MachineID=abd"},
				{name: "ambiguous.service", xfleet: "MachineID=ab"},
				{name: "unknown.service", xfleet: "MachineID=zz"},
				{name: "exact-and-prefix.service", xfleet: "MachineID=abc"},
			},
			machines: []Machine{mach("abc", "", 0), mach("abc123", "", 0), mach("abd999", "", 0)},
			targets:  map[string]string{"full.service": "abc123", "prefix.service": "abd999", "exact-and-prefix.service": "abc"},
			unplaced: map[string]string{
				"ambiguous.service": "MachineID ab: the prefix matches 3 machines (abc, abc123, abd999)",
				"unknown.service":   "MachineID zz: no machine has that id (or an id starting with it)",
			},
		},
		"MachineID prefix that became ambiguous keeps a placed unit": {
			units: []uspec{
				{name: "placed.service", xfleet: "MachineID=abc", current: "abc1"},
				{name: "new.service", xfleet: "MachineID=abc"},
			},
			machines: []Machine{mach("abc1", "", 0), mach("abc2", "", 0)},
			targets:  map[string]string{"placed.service": "abc1"},
			unplaced: map[string]string{"new.service": "MachineID abc: the prefix matches 2 machines (abc1, abc2)"},
		},
		"MachineID moves a unit from elsewhere": {
			units:    []uspec{{name: "a.service", xfleet: "MachineID=m3", current: "m1"}},
			machines: three,
			targets:  map[string]string{"a.service": "m3"},
		},
		"MachineID with wrong metadata": {
			units:    []uspec{{name: "a.service", xfleet: "MachineID=lb\nMachineMetadata=role=worker"}},
			machines: seed,
			unplaced: map[string]string{"a.service": "machine lb does not match MachineMetadata role=worker"},
		},
		"metadata: equality, set, not-equal, AND, OR": {
			units: []uspec{
				{name: "eq.service", xfleet: "MachineMetadata=role=lb"},
				{name: "set.service", xfleet: "MachineMetadata=disk=ssd|nvme"},
				{name: "ne.service", xfleet: "MachineMetadata=role!=lb\nMachineMetadata=disk!=ssd"},
				{name: "and.service", xfleet: `MachineMetadata="region=eu" "disk=ssd"`},
				{name: "or.service", xfleet: "MachineMetadata=region=us\nMachineMetadata=region=asia"},
				{name: "none.service", xfleet: "MachineMetadata=role=worker"},
				{name: "none-and.service", xfleet: "MachineMetadata=region=us\nMachineMetadata=disk=ssd"},
				{name: "unset-ne.service", xfleet: "MachineMetadata=gpu!=yes\nMachineMetadata=region=us"},
			},
			machines: []Machine{mach("a", "role=lb,region=eu,disk=ssd", 0), mach("b", "region=eu,disk=nvme", 0), mach("c", "region=us,disk=hdd", 0)},
			targets: map[string]string{
				"eq.service": "a", "set.service": "b", "ne.service": "b", "and.service": "a",
				"or.service": "c", "unset-ne.service": "c",
			},
			unplaced: map[string]string{
				"none.service":     "no machine has role=worker",
				"none-and.service": "no machine matches all of MachineMetadata disk=ssd, region=us",
			},
		},
		"seed: nginx instances apart and off the lb": {
			units: []uspec{
				{name: "nginx@1.service", xfleet: "Conflicts=nginx@*.service\nMachineMetadata=role!=lb"},
				{name: "nginx@2.service", xfleet: "Conflicts=nginx@*.service\nMachineMetadata=role!=lb"},
				{name: "nginx@3.service", xfleet: "Conflicts=nginx@*.service\nMachineMetadata=role!=lb"},
			},
			machines: seed,
			targets:  map[string]string{"nginx@1.service": "w1", "nginx@2.service": "w2"},
			unplaced: map[string]string{"nginx@3.service": "conflicts with nginx@1.service, nginx@2.service on every machine matching role!=lb"},
		},
		"conflicts are symmetric": {
			units: []uspec{
				{name: "a.service", current: "m1"},
				{name: "b.service", xfleet: "Conflicts=a.service"},
				{name: "c.service", current: "m2"},
			},
			machines: three[:2],
			targets:  map[string]string{"a.service": "m1", "c.service": "m2", "b.service": "m2"},
		},
		"conflicts only on one side, declared by the placed unit": {
			units:    []uspec{{name: "a.service", xfleet: "Conflicts=b*", current: "m1"}, {name: "b.service"}},
			machines: three[:1],
			targets:  map[string]string{"a.service": "m1"},
			unplaced: map[string]string{"b.service": "conflicts with a.service on every machine"},
		},
		"a unit never conflicts with itself": {
			units:    []uspec{{name: "x@1.service", xfleet: "Conflicts=x@*"}},
			machines: three[:1],
			targets:  map[string]string{"x@1.service": "m1"},
		},
		"kept units that now conflict: first by name stays": {
			units: []uspec{
				{name: "a.service", xfleet: "Conflicts=b.service", current: "m1"},
				{name: "b.service", current: "m1"},
			},
			machines: three[:2],
			targets:  map[string]string{"a.service": "m1", "b.service": "m2"},
		},
		"replaces takes the machine of the replaced unit, which moves": {
			units: []uspec{
				{name: "new.service", xfleet: "Replaces=old.service"},
				{name: "old.service", current: "m1"},
				{name: "oldside.service", xfleet: "MachineOf=old.service", current: "m1"},
				{name: "z.service", current: "m2"},
			},
			machines: three[:2],
			targets:  map[string]string{"new.service": "m1", "old.service": "m2", "oldside.service": "m2", "z.service": "m2"},
		},
		"replaces, once done, is stable": {
			units: []uspec{
				{name: "new.service", xfleet: "Replaces=old.service", current: "m1"},
				{name: "old.service", current: "m2"},
			},
			machines: three[:2],
			targets:  map[string]string{"new.service": "m1", "old.service": "m2"},
		},
		"replaces where the replacement cannot run: nothing moves": {
			units: []uspec{
				{name: "new.service", xfleet: "Replaces=old*\nMachineMetadata=role=worker"},
				{name: "old.service", current: "lb"},
			},
			machines: seed,
			targets:  map[string]string{"new.service": "w1", "old.service": "lb"},
		},
		"replaced unit with nowhere else to go": {
			units: []uspec{
				{name: "new.service", xfleet: "Replaces=old.service"},
				{name: "old.service", current: "m1"},
			},
			machines: three[:1],
			targets:  map[string]string{"new.service": "m1"},
			unplaced: map[string]string{"old.service": "conflicts with new.service on every machine"},
		},
		"MachineOf follows its unit": {
			units: []uspec{
				{name: "app.service", current: "m2"},
				{name: "sidekick.service", xfleet: "MachineOf=app.service"},
				{name: "other.service"},
			},
			machines: three,
			targets:  map[string]string{"app.service": "m2", "sidekick.service": "m2", "other.service": "m1"},
		},
		"MachineOf moves with its unit": {
			units: []uspec{
				{name: "app.service", current: "gone"},
				{name: "sidekick.service", xfleet: "MachineOf=app.service", current: "gone"},
				{name: "z.service", current: "m1"},
			},
			machines: three[:2],
			targets:  map[string]string{"app.service": "m2", "sidekick.service": "m2", "z.service": "m1"},
		},
		"MachineOf follower off its peer's machine moves back": {
			units: []uspec{
				{name: "app.service", current: "m1"},
				{name: "sidekick.service", xfleet: "MachineOf=app.service", current: "m2"},
			},
			machines: three,
			targets:  map[string]string{"app.service": "m1", "sidekick.service": "m1"},
		},
		"MachineOf chain, written before its peers": {
			units: []uspec{
				{name: "a.service", xfleet: "MachineOf=b.service"},
				{name: "b.service", xfleet: "MachineOf=c.service"},
				{name: "c.service", current: "m3"},
			},
			machines: three,
			targets:  map[string]string{"a.service": "m3", "b.service": "m3", "c.service": "m3"},
		},
		"MachineOf impossible": {
			units: []uspec{
				{name: "missing.service", xfleet: "MachineOf=nope.service"},
				{name: "cyc1.service", xfleet: "MachineOf=cyc2.service"},
				{name: "cyc2.service", xfleet: "MachineOf=cyc1.service"},
				{name: "after-cycle.service", xfleet: "MachineOf=cyc1.service"},
				{name: "p1.service", current: "m1"},
				{name: "p2.service", current: "m2"},
				{name: "split.service", xfleet: "MachineOf=p1.service\nMachineOf=p2.service"},
				{name: "meta.service", xfleet: "MachineOf=p1.service\nMachineMetadata=role=db"},
				{name: "conf.service", xfleet: "MachineOf=p1.service\nConflicts=p1*"},
				{name: "g.service", xfleet: "Global=true"},
				{name: "of-global.service", xfleet: "MachineOf=g.service"},
				{name: "pin.service", xfleet: "MachineOf=p1.service\nMachineID=m2"},
			},
			machines: three[:2],
			targets:  map[string]string{"p1.service": "m1", "p2.service": "m2"},
			global:   map[string][]string{"g.service": {"m1", "m2"}},
			unplaced: map[string]string{
				"missing.service":     "MachineOf nope.service: no such unit is loaded",
				"cyc1.service":        "MachineOf cycle: cyc1.service → cyc2.service → cyc1.service",
				"cyc2.service":        "MachineOf cycle: cyc1.service → cyc2.service → cyc1.service",
				"after-cycle.service": "MachineOf cyc1.service: that unit is unplaced (MachineOf cycle: cyc1.service → cyc2.service → cyc1.service)",
				"split.service":       "MachineOf: p1.service is on m1 but p2.service is on m2",
				"meta.service":        "machine m1 does not match MachineMetadata role=db",
				"conf.service":        "conflicts with p1.service on machine m1",
				"of-global.service":   "MachineOf g.service: that unit is global",
				"pin.service":         "MachineOf p1.service is on m1, but MachineID pins it to m2",
			},
		},
		"global on every matching machine": {
			units: []uspec{
				{name: "prefetch.service", xfleet: "Global=true\nMachineMetadata=role=worker"},
				{name: "everywhere.service", xfleet: "Global=true"},
				{name: "nowhere.service", xfleet: "Global=true\nMachineMetadata=role=gpu"},
			},
			machines: seed,
			global: map[string][]string{
				"prefetch.service":   {"w1", "w2"},
				"everywhere.service": {"lb", "w1", "w2"},
			},
			unplaced: map[string]string{"nowhere.service": "no machine has role=gpu"},
		},
		"global yields to conflicting units, and to earlier globals": {
			units: []uspec{
				{name: "web.service", current: "w1"},
				{name: "g1.service", xfleet: "Global=true\nConflicts=web.service"},
				{name: "g2.service", xfleet: "Global=true\nConflicts=g1.service"},
				{name: "g3.service", xfleet: "Global=true\nConflicts=g*.service"},
			},
			machines: seed,
			targets:  map[string]string{"web.service": "w1"},
			global: map[string][]string{
				"g1.service": {"lb", "w2"},
				"g2.service": {"w1"},
			},
			unplaced: map[string]string{"g3.service": "conflicts with g1.service, g2.service on every machine"},
		},
		"capacity spreads and reports": {
			units: []uspec{
				{name: "a.service"}, {name: "b.service"}, {name: "c.service"}, {name: "d.service"},
				{name: "g.service", xfleet: "Global=true"},
			},
			machines: []Machine{mach("m1", "", 1), mach("m2", "", 2)},
			targets:  map[string]string{"a.service": "m1", "b.service": "m2", "c.service": "m2"},
			global:   map[string][]string{"g.service": {"m1", "m2"}},
			unplaced: map[string]string{"d.service": "every machine is at capacity"},
		},
		"capacity lowered: extra units move": {
			units: []uspec{
				{name: "a.service", current: "m1"}, {name: "b.service", current: "m1"}, {name: "c.service", current: "m1"},
			},
			machines: []Machine{mach("m1", "", 2), mach("m2", "", 0)},
			targets:  map[string]string{"a.service": "m1", "b.service": "m1", "c.service": "m2"},
		},
		"mixed reasons: full and conflicting": {
			units: []uspec{
				{name: "a.service", current: "m1"},
				{name: "x@1.service", current: "m2"},
				{name: "x@2.service", xfleet: "Conflicts=x@*"},
			},
			machines: []Machine{mach("m1", "", 1), mach("m2", "", 0)},
			targets:  map[string]string{"a.service": "m1", "x@1.service": "m2"},
			unplaced: map[string]string{"x@2.service": "no room on every machine: 1 at capacity, 1 with conflicting units (x@1.service)"},
		},
		"capacity with MachineID, MachineOf and metadata": {
			units: []uspec{
				{name: "a.service", current: "m1"},
				{name: "pinned.service", xfleet: "MachineID=m1"},
				{name: "side.service", xfleet: "MachineOf=a.service"},
				{name: "meta.service", xfleet: "MachineMetadata=disk=ssd"},
				{name: "meta2.service", xfleet: "MachineMetadata=disk=ssd"},
			},
			machines: []Machine{mach("m1", "disk=ssd", 1), mach("m2", "disk=hdd", 0), mach("m3", "disk=ssd", 1)},
			targets:  map[string]string{"a.service": "m1", "meta.service": "m3"},
			unplaced: map[string]string{
				"pinned.service": "machine m1 is full (capacity 1)",
				"side.service":   "machine m1 is full (capacity 1)",
				"meta2.service":  "every machine matching disk=ssd is at capacity",
			},
		},
		"conflicts and metadata together narrow the machines": {
			units: []uspec{
				{name: "db@1.service", xfleet: "Conflicts=db@*\nMachineMetadata=disk=ssd", current: "m3"},
				{name: "db@2.service", xfleet: "Conflicts=db@*\nMachineMetadata=disk=ssd"},
				{name: "db@3.service", xfleet: "Conflicts=db@*\nMachineMetadata=disk=ssd"},
			},
			machines: []Machine{mach("m1", "disk=ssd", 0), mach("m2", "disk=hdd", 0), mach("m3", "disk=ssd", 0)},
			targets:  map[string]string{"db@1.service": "m3", "db@2.service": "m1"},
			unplaced: map[string]string{"db@3.service": "conflicts with db@1.service, db@2.service on every machine matching disk=ssd"},
		},
		"global with metadata and conflicts": {
			units: []uspec{
				{name: "web@1.service", current: "w2"},
				{name: "agent.service", xfleet: "Global=true\nMachineMetadata=role=worker\nConflicts=web@*"},
			},
			machines: seed,
			targets:  map[string]string{"web@1.service": "w2"},
			global:   map[string][]string{"agent.service": {"w1"}},
		},
		"MachineOf follows a pinned unit": {
			units: []uspec{
				{name: "app.service", xfleet: "MachineID=m2"},
				{name: "log.service", xfleet: "MachineOf=app.service\nConflicts=other*"},
				{name: "other.service", xfleet: "MachineID=m3"},
			},
			machines: three,
			targets:  map[string]string{"app.service": "m2", "log.service": "m2", "other.service": "m3"},
		},
		"negative capacity drains a machine": {
			units: []uspec{
				{name: "a.service", current: "m1"},
				{name: "g.service", xfleet: "Global=true"},
				{name: "pin.service", xfleet: "MachineID=m1"},
			},
			machines: []Machine{mach("m1", "", -1), mach("m2", "", 0)},
			targets:  map[string]string{"a.service": "m2"},
			global:   map[string][]string{"g.service": {"m1", "m2"}},
			unplaced: map[string]string{"pin.service": "machine m1 takes no units (capacity -1)"},
		},
		"pinned units go before free ones": {
			units: []uspec{
				{name: "a.service"},
				{name: "z.service", xfleet: "MachineID=m1"},
			},
			machines: []Machine{mach("m1", "", 1), mach("m2", "", 1)},
			targets:  map[string]string{"a.service": "m2", "z.service": "m1"},
		},
		"duplicate machine ids: first wins": {
			units:    []uspec{{name: "a.service", xfleet: "MachineMetadata=role=x"}},
			machines: []Machine{mach("m1", "role=x", 0), mach("m1", "role=y", 0), mach("", "role=x", 0)},
			targets:  map[string]string{"a.service": "m1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var units []Unit
			for _, s := range tc.units {
				units = append(units, Unit{Name: s.name, Fleet: fl(t, s.name, s.xfleet), Current: s.current, Avoid: s.avoid})
			}
			got := Place(units, tc.machines)
			want := Result{Targets: nonNil(tc.targets), Global: nonNil(tc.global), Unplaced: nonNil(tc.unplaced)}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Place:\n got %s\nwant %s", show(got), show(want))
			}
			checkInvariants(t, units, tc.machines, got)
		})
	}
}

func nonNil[V any](m map[string]V) map[string]V {
	if m == nil {
		return map[string]V{}
	}
	return m
}

func show(r Result) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(r.Targets)) {
		fmt.Fprintf(&b, "\n  %s → %s", k, r.Targets[k])
	}
	for _, k := range slices.Sorted(maps.Keys(r.Global)) {
		fmt.Fprintf(&b, "\n  %s ⇒ %v", k, r.Global[k])
	}
	for _, k := range slices.Sorted(maps.Keys(r.Unplaced)) {
		fmt.Fprintf(&b, "\n  %s ✗ %s", k, r.Unplaced[k])
	}
	return b.String()
}

// checkInvariants verifies, independently of the implementation, that a
// Result honours every constraint.
func checkInvariants(t testing.TB, units []Unit, machines []Machine, r Result) {
	t.Helper()
	byID := map[string]Machine{}
	for _, m := range machines {
		if _, ok := byID[m.ID]; !ok && m.ID != "" {
			byID[m.ID] = m
		}
	}
	byName := map[string]Unit{}
	for _, u := range units {
		if _, ok := byName[u.Name]; !ok {
			byName[u.Name] = u
		}
	}
	seen := 0
	on := map[string][]string{} // machine → units (all)
	load := map[string]int{}
	for name, mid := range r.Targets {
		u := byName[name]
		if u.Fleet.Global {
			t.Errorf("global unit %s in Targets", name)
		}
		m, ok := byID[mid]
		if !ok {
			t.Fatalf("%s targeted at unknown machine %s", name, mid)
		}
		if !u.Fleet.MatchesMetadata(m.Metadata) {
			t.Errorf("%s on %s violates its metadata", name, mid)
		}
		if slices.Contains(u.Avoid, mid) {
			t.Errorf("%s on %s, which it avoids", name, mid)
		}
		if id := u.Fleet.MachineID; id != "" && mid != id && !strings.HasPrefix(mid, id) {
			t.Errorf("%s on %s violates MachineID=%s", name, mid, id)
		}
		for _, peer := range u.Fleet.MachineOf {
			if r.Targets[peer] != mid {
				t.Errorf("%s on %s but its MachineOf %s is on %q", name, mid, peer, r.Targets[peer])
			}
		}
		on[mid] = append(on[mid], name)
		load[mid]++
		seen++
	}
	for name, ms := range r.Global {
		u := byName[name]
		if !u.Fleet.Global {
			t.Errorf("non-global %s in Global", name)
		}
		if !slices.IsSorted(ms) {
			t.Errorf("Global[%s] not sorted: %v", name, ms)
		}
		for _, mid := range ms {
			if !u.Fleet.MatchesMetadata(byID[mid].Metadata) {
				t.Errorf("global %s on %s violates its metadata", name, mid)
			}
			if slices.Contains(u.Avoid, mid) {
				t.Errorf("global %s on %s, which it avoids", name, mid)
			}
			on[mid] = append(on[mid], name)
		}
		seen++
	}
	for name, reason := range r.Unplaced {
		if reason == "" {
			t.Errorf("%s unplaced without a reason", name)
		}
		seen++
	}
	if seen != len(byName) {
		t.Errorf("result covers %d units, want %d", seen, len(byName))
	}
	// An unplaced unit without MachineID/MachineOf fits on no machine of
	// the final placement: each fails its metadata, is full, or holds a
	// conflicting unit.
	for name := range r.Unplaced {
		u := byName[name]
		if u.Fleet.MachineID != "" || len(u.Fleet.MachineOf) > 0 {
			continue
		}
		for mid, m := range byID {
			if !u.Fleet.MatchesMetadata(m.Metadata) || slices.Contains(u.Avoid, mid) {
				continue
			}
			if !u.Fleet.Global && m.Capacity != 0 && load[mid] >= m.Capacity {
				continue
			}
			if m.Capacity < 0 && !u.Fleet.Global {
				continue
			}
			ok := false
			for _, other := range on[mid] {
				if conflictsRef(u, byName[other]) {
					ok = true
					break
				}
			}
			if !ok {
				t.Errorf("%s is unplaced (%s) but fits on %s", name, r.Unplaced[name], mid)
			}
		}
	}
	// A global unit is on every machine it fits on.
	for name, ms := range r.Global {
		u := byName[name]
		for mid, m := range byID {
			if slices.Contains(ms, mid) || !u.Fleet.MatchesMetadata(m.Metadata) || slices.Contains(u.Avoid, mid) {
				continue
			}
			if !slices.ContainsFunc(on[mid], func(o string) bool { return conflictsRef(u, byName[o]) }) {
				t.Errorf("global %s is not on %s, where it fits", name, mid)
			}
		}
	}
	for mid, names := range on {
		if c := byID[mid].Capacity; c > 0 && load[mid] > c {
			t.Errorf("machine %s has %d units, capacity %d", mid, load[mid], c)
		}
		for i, a := range names {
			for _, b := range names[i+1:] {
				ua, ub := byName[a], byName[b]
				if conflictsRef(ua, ub) {
					t.Errorf("%s and %s conflict but share %s", a, b, mid)
				}
			}
		}
	}
}

// conflictsRef is a reference implementation of the conflict rule.
func conflictsRef(a, b Unit) bool {
	if a.Name == b.Name {
		return false
	}
	match := func(globs []string, name string) bool {
		for _, g := range globs {
			if ok, _ := path.Match(g, name); ok {
				return true
			}
		}
		return false
	}
	return match(a.Fleet.Conflicts, b.Name) || match(a.Fleet.Replaces, b.Name) ||
		match(b.Fleet.Conflicts, a.Name) || match(b.Fleet.Replaces, a.Name)
}

// randomCluster builds a cluster with every kind of constraint.
func randomCluster(rng *rand.Rand, nUnits, nMachines int) ([]Unit, []Machine) {
	roles := []string{"worker", "lb", "db"}
	zones := []string{"a", "b", "c", "d"}
	var machines []Machine
	for i := range nMachines {
		m := Machine{ID: fmt.Sprintf("%08x", rng.Uint32()) + fmt.Sprint(i), Metadata: map[string]string{
			"role": roles[rng.IntN(len(roles))], "zone": zones[rng.IntN(len(zones))],
		}}
		if rng.IntN(10) == 0 {
			m.Capacity = 1 + rng.IntN(20)
		}
		machines = append(machines, m)
	}
	var units []Unit
	for i := range nUnits {
		u := Unit{Name: fmt.Sprintf("plain%d.service", i)}
		switch k := rng.IntN(20); {
		case k < 4: // templates instances that keep apart
			app := fmt.Sprintf("app%d", i%50)
			u.Name = fmt.Sprintf("%s@%d.service", app, i)
			u.Fleet.Conflicts = []string{app + "@*.service"}
		case k < 7:
			u.Fleet.Metadata = []unit.MetadataMatch{{Key: "role", Op: "=", Values: []string{"worker"}}}
			if k == 6 {
				u.Fleet.Metadata = append(u.Fleet.Metadata, unit.MetadataMatch{Key: "zone", Op: "!=", Values: []string{"a", "b"}})
			}
		case k < 9 && i > 0:
			u.Name = fmt.Sprintf("side%d.service", i)
			peer := units[rng.IntN(len(units))]
			if !peer.Fleet.Global {
				u.Fleet.MachineOf = []string{peer.Name}
			}
		case k == 9 && rng.IntN(20) == 0:
			u.Name = fmt.Sprintf("global%d.service", i)
			u.Fleet.Global = true
			u.Fleet.Metadata = []unit.MetadataMatch{{Key: "zone", Op: "=", Values: []string{zones[rng.IntN(len(zones))]}}}
		case k == 10:
			u.Fleet.MachineID = machines[rng.IntN(len(machines))].ID[:6]
		case k == 11 && i > 0:
			u.Name = fmt.Sprintf("replacer%d.service", i)
			u.Fleet.Replaces = []string{units[rng.IntN(len(units))].Name}
		}
		if rng.IntN(3) == 0 {
			u.Current = machines[rng.IntN(len(machines))].ID
		}
		units = append(units, u)
	}
	return units, machines
}

func TestPlaceDeterministicAndStable(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		units, machines := randomCluster(rng, 300, 20)
		first := Place(units, machines)
		checkInvariants(t, units, machines, first)
		for range 3 {
			u2, m2 := slices.Clone(units), slices.Clone(machines)
			rng.Shuffle(len(u2), func(i, j int) { u2[i], u2[j] = u2[j], u2[i] })
			rng.Shuffle(len(m2), func(i, j int) { m2[i], m2[j] = m2[j], m2[i] })
			if again := Place(u2, m2); !reflect.DeepEqual(first, again) {
				t.Fatalf("seed %d: shuffled input gives another result", seed)
			}
		}
		// Feeding the result back changes nothing: no churn.
		fed := slices.Clone(units)
		for i := range fed {
			fed[i].Current = first.Targets[fed[i].Name]
		}
		second := Place(fed, machines)
		if !reflect.DeepEqual(first.Targets, second.Targets) {
			moved := 0
			for k, v := range first.Targets {
				if second.Targets[k] != v {
					moved++
				}
			}
			t.Errorf("seed %d: re-placing its own result moved %d units", seed, moved)
		}
		// Losing a machine moves only the units that were on it (and
		// their MachineOf followers).
		lost := machines[0].ID
		rest := machines[1:]
		third := Place(fed, rest)
		checkInvariants(t, fed, rest, third)
		replaced := map[string]bool{}
		for _, u := range fed {
			for _, r := range u.Fleet.Replaces {
				replaced[r] = true
			}
		}
		for name, mid := range first.Targets {
			if mid != lost && third.Targets[name] != mid && len(byNameUnit(fed, name).Fleet.MachineOf) == 0 && !replaced[name] {
				t.Errorf("seed %d: %s moved from %s to %q though only %s left", seed, name, mid, third.Targets[name], lost)
			}
		}
	}
}

func byNameUnit(units []Unit, name string) Unit {
	for _, u := range units {
		if u.Name == name {
			return u
		}
	}
	return Unit{}
}

func TestPlaceDoesNotModifyInput(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	units, machines := randomCluster(rng, 200, 10)
	u2, m2 := slices.Clone(units), slices.Clone(machines)
	Place(units, machines)
	if !reflect.DeepEqual(units, u2) || !reflect.DeepEqual(machines, m2) {
		t.Fatal("Place modified its input")
	}
}

// FuzzPlace checks the invariants and determinism on random clusters.
func FuzzPlace(f *testing.F) {
	f.Add(uint64(1), uint8(50), uint8(5))
	f.Add(uint64(2), uint8(200), uint8(1))
	f.Add(uint64(3), uint8(0), uint8(3))
	f.Add(uint64(4), uint8(30), uint8(0))
	f.Fuzz(func(t *testing.T, seed uint64, nu, nm uint8) {
		rng := rand.New(rand.NewPCG(seed, seed>>7))
		units, machines := randomCluster(rng, int(nu), max(int(nm), 1))
		machines = machines[:int(nm)]
		for i := range units {
			if units[i].Current != "" && nm == 0 {
				units[i].Current = "gone"
			}
		}
		r := Place(units, machines)
		checkInvariants(t, units, machines, r)
		rng.Shuffle(len(units), func(i, j int) { units[i], units[j] = units[j], units[i] })
		if again := Place(units, machines); !reflect.DeepEqual(r, again) {
			t.Fatal("shuffled input gives another result")
		}
	})
}
