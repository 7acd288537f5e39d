package schedule

import (
	"cmp"
	"fmt"
	"math/bits"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// bitset is a set of machine indexes.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) has(i int) bool { return b[i>>6]&(1<<(uint(i)&63)) != 0 }
func (b bitset) set(i int)      { b[i>>6] |= 1 << (uint(i) & 63) }
func (b bitset) clear(i int)    { b[i>>6] &^= 1 << (uint(i) & 63) }

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// uinfo is the working state of one unit.
type uinfo struct {
	*Unit     // the caller's, never written
	global    bool
	holds     []int32 // ids of the patterns in its Conflicts and Replaces
	replaces  []int32 // ids of the patterns in its Replaces
	matchedBy []int32 // ids of the patterns that match its name
	elig      bitset  // machines satisfying its metadata, less those it avoids
	sig       string  // metadata signature (key of elig), with the avoided machines
	metaSig   string  // metadata signature alone
	avoided   []int   // machine indexes of Avoid that exist
	pinned    int     // machine index of MachineID; -1 none
	peers     []int   // unit indexes of MachineOf
	depth     int     // MachineOf depth: 0 for units that follow nobody
	class     int     // placement priority within a depth
	target    int     // machine index, -1 while unplaced
	reason    string  // why it is unplaced (set once final)
	machines  []int   // global units: their machines
}

// placer holds one Place computation.
type placer struct {
	ms     []Machine
	mIndex map[string]int
	us     []*uinfo
	uIndex map[string]int

	load      []int
	onMachine [][]int // unit indexes per machine (non-global and global)
	levels    []bitset
	levelN    []int
	room      bitset // machines below Capacity
	counts    map[uint64]int32
	patterns  []string
	matches   [][]int // pattern id → indexes of the units it matches
	followers [][]int // unit index → units with MachineOf it
	ordered   []*uinfo
	metaSets  map[string]bitset
}

const (
	kindMatch = 0 // units on the machine whose name matches the pattern
	kindHold  = 1 // units on the machine holding the pattern
)

func countKey(m int, p int32, kind uint64) uint64 {
	return uint64(m)<<33 | uint64(p)<<1 | kind
}

// Place computes where units run. See the package documentation for the
// rules. It does not modify its arguments.
func Place(units []Unit, machines []Machine) Result {
	p := newPlacer(units, machines)
	p.keep()
	p.replace()
	p.placeRest()
	p.placeGlobal()
	return p.result()
}

func newPlacer(units []Unit, machines []Machine) *placer {
	p := &placer{mIndex: make(map[string]int, len(machines)), counts: map[uint64]int32{}, metaSets: map[string]bitset{}}
	ms := slices.Clone(machines)
	slices.SortStableFunc(ms, func(a, b Machine) int { return strings.Compare(a.ID, b.ID) })
	for _, m := range ms {
		if _, dup := p.mIndex[m.ID]; dup || m.ID == "" {
			continue
		}
		p.mIndex[m.ID] = len(p.ms)
		p.ms = append(p.ms, m)
	}
	nm := len(p.ms)
	p.load = make([]int, nm)
	p.onMachine = make([][]int, nm)
	p.room = newBitset(nm)
	p.levels = []bitset{newBitset(nm)}
	p.levelN = []int{nm}
	for i, m := range p.ms {
		p.levels[0].set(i)
		if m.Capacity >= 0 { // a negative capacity takes nothing
			p.room.set(i)
		}
	}

	// Sort indexes, not the (large) structs; ties by input position so that
	// the first of duplicate names wins.
	idx := make([]int32, len(units))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if c := strings.Compare(units[a].Name, units[b].Name); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	p.uIndex = make(map[string]int, len(units))
	infos := make([]uinfo, 0, len(units))
	for _, i := range idx {
		u := &units[i]
		if _, dup := p.uIndex[u.Name]; dup {
			continue
		}
		p.uIndex[u.Name] = len(infos)
		infos = append(infos, uinfo{Unit: u, global: u.Fleet.Global, pinned: -1, target: -1})
	}
	p.us = make([]*uinfo, len(infos))
	for i := range infos {
		p.us[i] = &infos[i]
	}
	p.indexPatterns()
	p.followers = make([][]int, len(p.us))
	for i, u := range p.us {
		p.prepare(u)
		for _, j := range u.peers {
			p.followers[j] = append(p.followers[j], i)
		}
	}
	p.computeDepths()
	return p
}

// indexPatterns assigns ids to the distinct Conflicts/Replaces globs and
// finds, for each, the units whose names match it.
func (p *placer) indexPatterns() {
	ids := map[string]int32{}
	intern := func(g string) int32 {
		id, ok := ids[g]
		if !ok {
			id = int32(len(p.patterns))
			ids[g] = id
			p.patterns = append(p.patterns, g)
		}
		return id
	}
	for _, u := range p.us {
		for _, g := range u.Fleet.Conflicts {
			if id := intern(g); !slices.Contains(u.holds, id) {
				u.holds = append(u.holds, id)
			}
		}
		for _, g := range u.Fleet.Replaces {
			id := intern(g)
			if !slices.Contains(u.holds, id) {
				u.holds = append(u.holds, id)
			}
			if !slices.Contains(u.replaces, id) {
				u.replaces = append(u.replaces, id)
			}
		}
	}
	names := make([]string, len(p.us)) // sorted, as p.us is
	for i, u := range p.us {
		names[i] = u.Name
	}
	p.matches = make([][]int, len(p.patterns))
	for id, g := range p.patterns {
		meta := strings.IndexAny(g, `*?[\`)
		if meta < 0 {
			if i, ok := p.uIndex[g]; ok {
				p.us[i].matchedBy = append(p.us[i].matchedBy, int32(id))
				p.matches[id] = append(p.matches[id], i)
			}
			continue
		}
		prefix := g[:meta]
		start := sort.SearchStrings(names, prefix)
		for i := start; i < len(names) && strings.HasPrefix(names[i], prefix); i++ {
			if ok, _ := path.Match(g, names[i]); ok {
				p.us[i].matchedBy = append(p.us[i].matchedBy, int32(id))
				p.matches[id] = append(p.matches[id], i)
			}
		}
	}
}

// prepare resolves a unit's metadata, MachineID and MachineOf.
func (p *placer) prepare(u *uinfo) {
	f := u.Fleet
	var sig strings.Builder
	for _, m := range f.Metadata {
		sig.WriteString(m.Key)
		sig.WriteByte(0)
		sig.WriteString(m.Op)
		for _, v := range m.Values {
			sig.WriteByte(0)
			sig.WriteString(v)
		}
		sig.WriteByte(1)
	}
	u.metaSig = sig.String()
	set, ok := p.metaSets[u.metaSig]
	if !ok {
		set = newBitset(len(p.ms))
		for i, m := range p.ms {
			if f.MatchesMetadata(m.Metadata) {
				set.set(i)
			}
		}
		p.metaSets[u.metaSig] = set
	}
	u.elig = set
	p.avoid(u, &sig)
	u.sig = sig.String()
	if f.MachineID != "" {
		i, reason := p.resolveMachineID(f.MachineID)
		if cur, ok := p.mIndex[u.Current]; reason != "" && ok && strings.HasPrefix(u.Current, f.MachineID) {
			// A prefix that became ambiguous when a machine joined still
			// holds for the machine the unit is on: no churn.
			i, reason = cur, ""
		}
		if reason != "" {
			u.reason = reason
		}
		u.pinned = i
	}
	for _, name := range f.MachineOf {
		i, ok := p.uIndex[name]
		switch {
		case !ok:
			u.reason = fmt.Sprintf("MachineOf %s: no such unit is loaded", name)
		case p.us[i].global:
			u.reason = fmt.Sprintf("MachineOf %s: that unit is global", name)
		default:
			u.peers = append(u.peers, i)
		}
	}
	switch {
	case u.pinned >= 0:
		u.class = 0
	case len(f.Metadata) > 0 || len(u.holds) > 0 || len(u.matchedBy) > 0:
		u.class = 1
	default:
		u.class = 2
	}
}

// avoid takes the machines u avoids out of its eligible set, and adds them
// to its signature (sig).
func (p *placer) avoid(u *uinfo, sig *strings.Builder) {
	for _, id := range u.Avoid {
		i, ok := p.mIndex[id]
		if !ok || slices.Contains(u.avoided, i) {
			continue
		}
		if u.avoided == nil {
			u.elig = slices.Clone(u.elig)
		}
		u.avoided = append(u.avoided, i)
		u.elig.clear(i)
	}
	slices.Sort(u.avoided)
	for _, i := range u.avoided {
		sig.WriteByte(3)
		sig.WriteString(strconv.Itoa(i))
	}
}

// avoidedNames lists the machines u avoids.
func (p *placer) avoidedNames(u *uinfo) string {
	names := make([]string, len(u.avoided))
	for i, m := range u.avoided {
		names[i] = p.ms[m].ID
	}
	return listNames(names, 3)
}

// resolveMachineID finds the machine a MachineID names.
func (p *placer) resolveMachineID(id string) (int, string) {
	if i, ok := p.mIndex[id]; ok {
		return i, ""
	}
	i := sort.Search(len(p.ms), func(i int) bool { return p.ms[i].ID >= id })
	var found []string
	for j := i; j < len(p.ms) && strings.HasPrefix(p.ms[j].ID, id); j++ {
		found = append(found, p.ms[j].ID)
	}
	switch len(found) {
	case 0:
		return -1, fmt.Sprintf("MachineID %s: no machine has that id (or an id starting with it)", id)
	case 1:
		return i, ""
	default:
		return -1, fmt.Sprintf("MachineID %s: the prefix matches %d machines (%s)", id, len(found), listNames(found, 3))
	}
}

// computeDepths orders MachineOf followers after the units they follow
// and marks the units of a cycle.
func (p *placer) computeDepths() {
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(p.us))
	var stack []int
	var visit func(i int) bool
	visit = func(i int) bool {
		switch color[i] {
		case black:
			return true
		case grey:
			// a cycle: from i's position in the stack to the top
			k := slices.Index(stack, i)
			var names []string
			for _, j := range stack[k:] {
				names = append(names, p.us[j].Name)
			}
			names = append(names, p.us[i].Name)
			reason := "MachineOf cycle: " + strings.Join(names, " → ")
			for _, j := range stack[k:] {
				if p.us[j].reason == "" {
					p.us[j].reason = reason
				}
			}
			return false
		}
		color[i] = grey
		stack = append(stack, i)
		d := 0
		for _, j := range p.us[i].peers {
			visit(j)
			d = max(d, p.us[j].depth+1)
		}
		p.us[i].depth = d
		stack = stack[:len(stack)-1]
		color[i] = black
		return true
	}
	for i := range p.us {
		visit(i)
	}
}

// order returns the non-global units in placement order.
func (p *placer) order() []*uinfo {
	if p.ordered != nil {
		return p.ordered
	}
	out := make([]*uinfo, 0, len(p.us))
	for _, u := range p.us {
		if !u.global {
			out = append(out, u)
		}
	}
	slices.SortStableFunc(out, func(a, b *uinfo) int {
		if c := cmp.Compare(a.depth, b.depth); c != 0 {
			return c
		}
		return cmp.Compare(a.class, b.class)
	})
	p.ordered = out
	return out
}

// keep leaves units on their current machine where that is still valid.
func (p *placer) keep() {
	for _, u := range p.order() {
		if u.reason != "" || u.Current == "" {
			continue
		}
		m, ok := p.mIndex[u.Current]
		if !ok {
			continue
		}
		if why, pm := p.peerMachine(u); why != "" || len(u.peers) > 0 && pm != m {
			continue
		}
		if p.check(u, m) == "" {
			p.assign(u, m)
		}
	}
}

// replace gives a unit that is not placed yet the machine of a unit it
// Replaces (in name order), if it can run there once that unit and its
// MachineOf followers are gone; those then move like any unplaced unit.
func (p *placer) replace() {
	for _, u := range p.order() {
		if u.target >= 0 || u.reason != "" || len(u.replaces) == 0 || len(u.peers) > 0 {
			continue
		}
	patterns:
		for _, id := range u.replaces {
			for _, j := range p.matches[id] {
				b := p.us[j]
				if b == u || b.global || b.target < 0 {
					continue
				}
				m := b.target
				evicted := p.evict(j, nil)
				if p.check(u, m) == "" {
					p.assign(u, m)
					break patterns
				}
				for _, k := range evicted {
					p.assign(p.us[k], m)
				}
			}
		}
	}
}

// evict unassigns unit j and, after it, its MachineOf followers on the same
// machine, appending their indexes to out in the order they were assigned.
func (p *placer) evict(j int, out []int) []int {
	u := p.us[j]
	m := u.target
	p.unassign(u)
	out = append(out, j)
	for _, k := range p.followers[j] {
		if p.us[k].target == m {
			out = p.evict(k, out)
		}
	}
	return out
}

// unassign undoes assign.
func (p *placer) unassign(u *uinfo) {
	m := u.target
	u.target = -1
	i := p.uIndex[u.Name]
	on := p.onMachine[m]
	if k := slices.Index(on, i); k >= 0 {
		p.onMachine[m] = slices.Delete(on, k, k+1)
	}
	for _, id := range u.holds {
		p.counts[countKey(m, id, kindHold)]--
	}
	for _, id := range u.matchedBy {
		p.counts[countKey(m, id, kindMatch)]--
	}
	l := p.load[m]
	p.levels[l].clear(m)
	p.levelN[l]--
	l--
	p.load[m] = l
	p.levels[l].set(m)
	p.levelN[l]++
	if c := p.ms[m].Capacity; c == 0 || l < c {
		p.room.set(m)
	}
}

// placeRest places every unit keep left.
func (p *placer) placeRest() {
	failed := map[string]string{}
	for _, u := range p.order() {
		if u.target >= 0 || u.reason != "" {
			continue
		}
		if len(p.ms) == 0 {
			u.reason = "no machines"
			continue
		}
		if len(u.peers) > 0 {
			why, m := p.peerMachine(u)
			if why == "" {
				why = p.check(u, m)
			}
			if why != "" {
				u.reason = why
				continue
			}
			p.assign(u, m)
			continue
		}
		if u.pinned >= 0 {
			if why := p.check(u, u.pinned); why != "" {
				u.reason = why
				continue
			}
			p.assign(u, u.pinned)
			continue
		}
		// Placement only adds units from here on, so a unit with the same
		// constraints as one that found no machine finds none either.
		key := profile(u)
		if why, ok := failed[key]; ok {
			u.reason = why
			continue
		}
		if m := p.leastLoaded(u); m >= 0 {
			p.assign(u, m)
			continue
		}
		u.reason = p.explain(u)
		failed[key] = u.reason
	}
}

// profile identifies the constraints of a unit without MachineID or
// MachineOf: its metadata and the conflict patterns it holds and matches.
func profile(u *uinfo) string {
	var b strings.Builder
	b.WriteString(u.sig)
	for _, ids := range [][]int32{u.holds, u.matchedBy} {
		b.WriteByte(2)
		for _, id := range ids {
			b.WriteString(strconv.Itoa(int(id)))
			b.WriteByte(',')
		}
	}
	return b.String()
}

// peerMachine returns the machine every MachineOf peer of u is on, or why
// there is none.
func (p *placer) peerMachine(u *uinfo) (string, int) {
	m := -1
	for _, j := range u.peers {
		peer := p.us[j]
		if peer.target < 0 {
			if peer.reason != "" {
				return fmt.Sprintf("MachineOf %s: that unit is unplaced (%s)", peer.Name, peer.reason), -1
			}
			return fmt.Sprintf("MachineOf %s: that unit is not placed", peer.Name), -1
		}
		if m >= 0 && peer.target != m {
			return fmt.Sprintf("MachineOf: %s is on %s but %s is on %s",
				p.us[u.peers[0]].Name, p.ms[m].ID, peer.Name, p.ms[peer.target].ID), -1
		}
		m = peer.target
	}
	if len(u.peers) > 0 {
		if u.pinned >= 0 && u.pinned != m {
			return fmt.Sprintf("MachineOf %s is on %s, but MachineID pins it to %s",
				p.us[u.peers[0]].Name, p.ms[m].ID, p.ms[u.pinned].ID), -1
		}
	}
	return "", m
}

// check returns why u cannot run on machine m now, or "".
func (p *placer) check(u *uinfo, m int) string {
	mid := p.ms[m].ID
	if u.pinned >= 0 && u.pinned != m {
		return fmt.Sprintf("MachineID pins it to %s, not %s", p.ms[u.pinned].ID, mid)
	}
	if !u.elig.has(m) {
		if slices.Contains(u.avoided, m) {
			return fmt.Sprintf("it failed on machine %s, which it avoids for now (AvoidFailedFor)", mid)
		}
		return fmt.Sprintf("machine %s does not match MachineMetadata %s", mid, metaString(u))
	}
	if !u.global && !p.room.has(m) {
		if c := p.ms[m].Capacity; c < 0 {
			return fmt.Sprintf("machine %s takes no units (capacity %d)", mid, c)
		}
		return fmt.Sprintf("machine %s is full (capacity %d)", mid, p.ms[m].Capacity)
	}
	if p.conflicts(u, m) {
		return fmt.Sprintf("conflicts with %s on machine %s", listNames(p.conflicting(u, m), 3), mid)
	}
	return ""
}

// conflicts reports whether u conflicts with a unit on machine m.
func (p *placer) conflicts(u *uinfo, m int) bool {
	for _, id := range u.holds {
		if p.counts[countKey(m, id, kindMatch)] > 0 {
			return true
		}
	}
	for _, id := range u.matchedBy {
		if p.counts[countKey(m, id, kindHold)] > 0 {
			return true
		}
	}
	return false
}

// conflicting names the units on m that conflict with u (slow; for reasons).
func (p *placer) conflicting(u *uinfo, m int) []string {
	var out []string
	for _, j := range p.onMachine[m] {
		v := p.us[j]
		if u.Fleet.ConflictsWith(u.Name, v.Name, v.Fleet) {
			out = append(out, v.Name)
		}
	}
	return out
}

// leastLoaded returns the least-loaded machine u can run on, or -1.
func (p *placer) leastLoaded(u *uinfo) int {
	for l, lv := range p.levels {
		if p.levelN[l] == 0 {
			continue
		}
		for w := range lv {
			x := lv[w] & u.elig[w] & p.room[w]
			for x != 0 {
				m := w<<6 | bits.TrailingZeros64(x)
				x &= x - 1
				if !p.conflicts(u, m) {
					return m
				}
			}
		}
	}
	return -1
}

// assign records that non-global u runs on m.
func (p *placer) assign(u *uinfo, m int) {
	u.target = m
	p.register(u, m)
	l := p.load[m]
	p.levels[l].clear(m)
	p.levelN[l]--
	l++
	p.load[m] = l
	if l == len(p.levels) {
		p.levels = append(p.levels, newBitset(len(p.ms)))
		p.levelN = append(p.levelN, 0)
	}
	p.levels[l].set(m)
	p.levelN[l]++
	if c := p.ms[m].Capacity; c > 0 && l >= c {
		p.room.clear(m)
	}
}

// register adds u to machine m's conflict counts.
func (p *placer) register(u *uinfo, m int) {
	p.onMachine[m] = append(p.onMachine[m], p.uIndex[u.Name])
	for _, id := range u.holds {
		p.counts[countKey(m, id, kindHold)]++
	}
	for _, id := range u.matchedBy {
		p.counts[countKey(m, id, kindMatch)]++
	}
}

// placeGlobal puts each global unit on every machine it can run on.
func (p *placer) placeGlobal() {
	for _, u := range p.us {
		if !u.global || u.reason != "" {
			continue
		}
		for w, x := range u.elig {
			for x != 0 {
				m := w<<6 | bits.TrailingZeros64(x)
				x &= x - 1
				if !p.conflicts(u, m) {
					u.machines = append(u.machines, m)
				}
			}
		}
		for _, m := range u.machines {
			p.register(u, m)
		}
		if len(u.machines) == 0 {
			u.reason = p.explain(u)
		}
	}
}

// explain says why u fits on no machine.
func (p *placer) explain(u *uinfo) string {
	if len(p.ms) == 0 {
		return "no machines"
	}
	if u.elig.count() == 0 {
		if len(u.avoided) > 0 && p.metaSets[u.metaSig].count() > 0 {
			return fmt.Sprintf("it failed on every machine it may run on (%s), which it avoids for now (AvoidFailedFor)", p.avoidedNames(u))
		}
		return p.explainMetadata(u)
	}
	var full, conflict int
	var names []string // up to 4, to say "and others" past 3
	for m := range p.ms {
		if !u.elig.has(m) {
			continue
		}
		if !u.global && !p.room.has(m) {
			full++
			continue
		}
		if p.conflicts(u, m) {
			conflict++
			if len(names) > 3 {
				continue
			}
			for _, n := range p.conflicting(u, m) {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
		}
	}
	slices.Sort(names)
	where := "every machine"
	if len(u.Fleet.Metadata) > 0 {
		where = "every machine matching " + metaString(u)
	}
	switch {
	case full == 0:
		return fmt.Sprintf("conflicts with %s on %s", listNames(names, 3), where)
	case conflict == 0:
		return fmt.Sprintf("%s is at capacity", where)
	default:
		return fmt.Sprintf("no room on %s: %d at capacity, %d with conflicting units (%s)", where, full, conflict, listNames(names, 3))
	}
}

// explainMetadata says which metadata condition no machine satisfies.
func (p *placer) explainMetadata(u *uinfo) string {
	for _, c := range u.Fleet.Metadata {
		n := 0
		for _, m := range p.ms {
			if c.Matches(m.Metadata) {
				n++
			}
		}
		if n == 0 {
			return "no machine has " + c.String()
		}
	}
	return "no machine matches all of MachineMetadata " + metaString(u)
}

func metaString(u *uinfo) string {
	parts := make([]string, len(u.Fleet.Metadata))
	for i, c := range u.Fleet.Metadata {
		parts[i] = c.String()
	}
	return strings.Join(parts, ", ")
}

// listNames joins up to n names, and says "and others" if there are more.
func listNames(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:n], ", ") + " and others"
}

func (p *placer) result() Result {
	r := Result{Targets: map[string]string{}, Global: map[string][]string{}, Unplaced: map[string]string{}}
	for _, u := range p.us {
		switch {
		case u.global && len(u.machines) > 0:
			ids := make([]string, len(u.machines))
			for i, m := range u.machines {
				ids[i] = p.ms[m].ID
			}
			r.Global[u.Name] = ids
		case !u.global && u.target >= 0:
			r.Targets[u.Name] = p.ms[u.target].ID
		default:
			reason := u.reason
			if reason == "" {
				reason = "not placed"
			}
			r.Unplaced[u.Name] = reason
		}
	}
	return r
}
