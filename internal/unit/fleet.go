package unit

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
)

// Fleet is a unit's [X-Fleet] section, specifiers (%n %N %p %i %%)
// expanded for the unit's name. The zero Fleet places a unit anywhere.
type Fleet struct {
	// MachineID pins the unit to the machine whose id is, or uniquely
	// starts with, this value.
	MachineID string
	// MachineOf names units the unit must share a machine with (it
	// follows them when they move).
	MachineOf []string
	// Metadata must all hold on the machine (AND across entries).
	Metadata []MetadataMatch
	// Conflicts are path.Match globs of unit names that must not share a
	// machine with this unit (checked both ways; a unit never conflicts
	// with itself).
	Conflicts []string
	// Global runs the unit on every machine that satisfies Metadata and
	// Conflicts.
	Global bool
	// Replaces names units this unit must not share a machine with; the
	// scheduler treats them like Conflicts.
	Replaces []string
}

// MetadataMatch is one machine-metadata condition. With Op "=" the machine's
// value for Key must be one of Values (a machine without Key fails); with Op
// "!=" it must be none of them (a machine without Key passes).
//
// Syntax, in MachineMetadata= (also X-ConditionMachineMetadata=):
//
//	role=worker              role is worker
//	role=web|api             role is web or api (ours)
//	role!=lb                 role is not lb, or unset (ours)
//	"region=eu" "disk=ssd"   several conditions on one line (as fleet)
//
// Conditions on different keys must all hold; several "=" conditions on
// the same key (on one or more lines) are merged, so any of their values
// matches, as in fleet. Parse normalizes Metadata to one entry per (Key,
// Op), sorted by key then op, values sorted and unique.
type MetadataMatch struct {
	Key    string
	Op     string
	Values []string
}

// Matches reports whether metadata satisfies m.
func (m MetadataMatch) Matches(metadata map[string]string) bool {
	v, ok := metadata[m.Key]
	switch m.Op {
	case "!=":
		return !ok || !slices.Contains(m.Values, v)
	default:
		return ok && slices.Contains(m.Values, v)
	}
}

// String returns m in MachineMetadata syntax ("role=web|api").
func (m MetadataMatch) String() string {
	return m.Key + m.Op + strings.Join(m.Values, "|")
}

// MatchesMetadata reports whether metadata satisfies every condition of f.
func (f Fleet) MatchesMetadata(metadata map[string]string) bool {
	for _, m := range f.Metadata {
		if !m.Matches(metadata) {
			return false
		}
	}
	return true
}

// ConflictsWith reports whether a unit named self with these X-Fleet
// settings may not share a machine with the unit named other, whose
// settings are o: either side's Conflicts (or Replaces) matches the other's
// name. A unit never conflicts with itself.
func (f Fleet) ConflictsWith(self, other string, o Fleet) bool {
	if self == other {
		return false
	}
	return matchAny(f.Conflicts, other) || matchAny(f.Replaces, other) ||
		matchAny(o.Conflicts, self) || matchAny(o.Replaces, self)
}

func matchAny(globs []string, name string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// fleetKey maps every accepted [X-Fleet] key, current and the deprecated
// names fleet still read, to its current name.
func fleetKey(k string) (string, bool) {
	switch k {
	case "MachineID", "X-ConditionMachineID", "X-ConditionMachineBootID":
		return "MachineID", true
	case "MachineOf", "X-ConditionMachineOf":
		return "MachineOf", true
	case "MachineMetadata", "X-ConditionMachineMetadata":
		return "MachineMetadata", true
	case "Conflicts", "X-Conflicts":
		return "Conflicts", true
	case "Global", "Replaces":
		return k, true
	}
	return "", false
}

// parseFleet reads the [X-Fleet] options of unit n. A template is
// validated as its instance "1" would be (so that %i-derived values are
// checked at submit time); its own Fleet has %i expanded to "" as fleet
// does, keeping only the items that are still valid.
func parseFleet(n Name, opts []Option) (Fleet, error) {
	if !n.IsTemplate() {
		return parseFleetFor(n, opts, false)
	}
	f, err := parseFleetFor(n, opts, true)
	if err != nil {
		return Fleet{}, err
	}
	inst, err := n.Instantiate("1")
	if err != nil {
		return Fleet{}, err
	}
	if _, err := parseFleetFor(inst, opts, false); err != nil {
		var ue *Error
		if errors.As(err, &ue) {
			return Fleet{}, &Error{Unit: n.Full, Line: ue.Line, Err: fmt.Errorf("as instance %s: %w", inst.Full, ue.Err)}
		}
		return Fleet{}, err
	}
	return f, nil
}

func parseFleetFor(n Name, opts []Option, lenient bool) (Fleet, error) {
	p := &fleetParser{n: n, sp: FleetSpecifiers(n), lenient: lenient, meta: map[metaKey][]string{}}
	for _, o := range opts {
		if o.Section != "X-Fleet" {
			continue
		}
		if err := p.option(o); err != nil {
			return Fleet{}, err
		}
	}
	return p.finish()
}

type metaKey struct{ key, op string }

// fleetParser gathers [X-Fleet] options into a Fleet, with the line of the
// keys that finish checks against Global.
type fleetParser struct {
	n       Name
	sp      Specifiers
	lenient bool
	f       Fleet
	meta    map[metaKey][]string

	idLine, globalLine, ofLine, repLine int
}

func (p *fleetParser) fail(line int, format string, a ...any) error {
	return &Error{Unit: p.n.Full, Line: line, Err: fmt.Errorf(format, a...)}
}

// option takes in one [X-Fleet] option.
func (p *fleetParser) option(o Option) error {
	key, ok := fleetKey(o.Name)
	if !ok {
		return p.fail(o.Line, "unknown [X-Fleet] key %q (known: MachineID, MachineOf, MachineMetadata, Conflicts, Global, Replaces)", o.Name)
	}
	if bad := checkFleetSpecifiers(o.Value); bad != "" {
		return p.fail(o.Line, "%s=%s: unknown specifier %q (X-Fleet supports %%n %%N %%p %%i %%%%)", o.Name, o.Value, bad)
	}
	if key == "Global" {
		b, err := ParseBool(o.Value)
		if err != nil {
			return p.fail(o.Line, "%s=%s: %v", o.Name, o.Value, err)
		}
		p.f.Global, p.globalLine = b, o.Line
		return nil
	}
	if o.Value == "" {
		p.reset(key)
		return nil
	}
	vals, err := fleetValues(o.Value)
	if err != nil {
		return p.fail(o.Line, "%s=%s: %v", o.Name, o.Value, err)
	}
	for i := range vals {
		vals[i] = expandFleet(vals[i], p.sp)
	}
	if p.lenient {
		vals = slices.DeleteFunc(vals, func(v string) bool { return !validFleetItem(key, v, p.n) })
	}
	return p.add(o, key, vals)
}

// reset empties key, as an empty assignment does in systemd.
func (p *fleetParser) reset(key string) {
	switch key {
	case "MachineID":
		p.f.MachineID, p.idLine = "", 0
	case "MachineOf":
		p.f.MachineOf, p.ofLine = nil, 0
	case "Conflicts":
		p.f.Conflicts = nil
	case "Replaces":
		p.f.Replaces, p.repLine = nil, 0
	case "MachineMetadata":
		clear(p.meta)
	}
}

// add adds the values of option o (of key) to the Fleet.
func (p *fleetParser) add(o Option, key string, vals []string) error {
	f := &p.f
	switch key {
	case "MachineID":
		for _, v := range vals {
			if f.MachineID != "" && f.MachineID != v {
				return p.fail(o.Line, "%s=%s: a second machine id (line %d gave %q)", o.Name, v, p.idLine, f.MachineID)
			}
			f.MachineID, p.idLine = v, o.Line
		}
	case "MachineOf":
		for _, v := range vals {
			if _, err := ParseName(v); err != nil {
				return p.fail(o.Line, "%s=%s: %v", o.Name, v, err)
			}
			if v == p.n.Full {
				return p.fail(o.Line, "%s=%s: a unit cannot be MachineOf itself", o.Name, v)
			}
			if !slices.Contains(f.MachineOf, v) {
				f.MachineOf = append(f.MachineOf, v)
			}
		}
		p.ofLine = o.Line
	case "Conflicts", "Replaces":
		for _, v := range vals {
			if _, err := path.Match(v, ""); err != nil {
				return p.fail(o.Line, "%s=%s: bad glob: %v", o.Name, v, err)
			}
			if strings.ContainsAny(v, "/") {
				return p.fail(o.Line, "%s=%s: a unit name has no \"/\"", o.Name, v)
			}
		}
		if key == "Conflicts" {
			f.Conflicts = appendUnique(f.Conflicts, vals...)
		} else {
			f.Replaces = appendUnique(f.Replaces, vals...)
			p.repLine = o.Line
		}
	case "MachineMetadata":
		for _, v := range vals {
			k, op, set, err := parseMetadataMatch(v)
			if err != nil {
				return p.fail(o.Line, "%s=%s: %v", o.Name, v, err)
			}
			mk := metaKey{k, op}
			p.meta[mk] = append(p.meta[mk], set...)
		}
	}
	return nil
}

// finish returns the Fleet, its metadata sorted, after the checks against
// Global=true.
func (p *fleetParser) finish() (Fleet, error) {
	f := p.f
	for mk, vs := range p.meta {
		slices.Sort(vs)
		f.Metadata = append(f.Metadata, MetadataMatch{Key: mk.key, Op: mk.op, Values: slices.Compact(vs)})
	}
	slices.SortFunc(f.Metadata, func(a, b MetadataMatch) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		return strings.Compare(a.Op, b.Op)
	})
	if f.Global {
		var err error
		switch {
		case f.MachineID != "":
			err = p.fail(p.idLine, "MachineID cannot be used with Global=true (line %d): a global unit runs on every matching machine", p.globalLine)
		case len(f.MachineOf) > 0:
			err = p.fail(p.ofLine, "MachineOf cannot be used with Global=true (line %d): a global unit runs on every matching machine", p.globalLine)
		case len(f.Replaces) > 0:
			err = p.fail(p.repLine, "Replaces cannot be used with Global=true (line %d)", p.globalLine)
		}
		if err != nil {
			return Fleet{}, err
		}
	}
	return f, nil
}

func validFleetItem(key, v string, n Name) bool {
	if v == "" {
		return false
	}
	switch key {
	case "MachineOf":
		_, err := ParseName(v)
		return err == nil && v != n.Full
	case "MachineMetadata":
		_, _, _, err := parseMetadataMatch(v)
		return err == nil
	}
	return true
}

// checkFleetSpecifiers returns the first specifier in s that X-Fleet does
// not expand, or "".
func checkFleetSpecifiers(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			continue
		}
		if i+1 == len(s) {
			return "%"
		}
		switch s[i+1] {
		case 'n', 'N', 'p', 'i', '%':
			i++
			continue
		}
		return s[i : i+2]
	}
	return ""
}

// expandFleet expands the specifiers fleet supports in X-Fleet values.
func expandFleet(s string, sp Specifiers) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+1 < len(s) {
			switch s[i+1] {
			case 'n', 'N', 'p', 'i', '%':
				v, _ := specifier(s[i+1], sp)
				b.WriteString(v)
				i++
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// fleetValues splits an X-Fleet value into its items: whitespace-separated
// words, each optionally in double quotes (fleet's `"a=b" "c=d"`).
func fleetValues(v string) ([]string, error) {
	var (
		out []string
		cur strings.Builder
		in  bool // inside quotes
		has bool // cur holds a word (possibly empty, if quoted)
	)
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"':
			in = !in
			has = true
		case !in && (c == ' ' || c == '\t'):
			if has {
				out = append(out, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteByte(c)
			has = true
		}
	}
	if in {
		return nil, fmt.Errorf("unbalanced double quote")
	}
	if has {
		out = append(out, cur.String())
	}
	for _, w := range out {
		if w == "" {
			return nil, fmt.Errorf("empty value")
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty value")
	}
	return out, nil
}

// parseMetadataMatch parses "k=v", "k!=v", "k=v1|v2".
func parseMetadataMatch(s string) (key, op string, values []string, err error) {
	i := strings.IndexByte(s, '=')
	if i < 0 {
		return "", "", nil, fmt.Errorf("want key=value, key!=value or key=v1|v2")
	}
	key, op = s[:i], "="
	if strings.HasSuffix(key, "!") {
		key, op = key[:len(key)-1], "!="
	}
	if key == "" {
		return "", "", nil, fmt.Errorf("empty metadata key")
	}
	if strings.ContainsAny(key, "!|=,") {
		return "", "", nil, fmt.Errorf("metadata key %q has one of the characters !|=,", key)
	}
	for _, v := range strings.Split(s[i+1:], "|") {
		if v == "" {
			return "", "", nil, fmt.Errorf("empty metadata value for key %q", key)
		}
		values = append(values, v)
	}
	return key, op, values, nil
}

func appendUnique(dst []string, vs ...string) []string {
	for _, v := range vs {
		if !slices.Contains(dst, v) {
			dst = append(dst, v)
		}
	}
	return dst
}

// ParseBool parses a systemd boolean: 1 yes y true t on / 0 no n false f
// off (any case).
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "yes", "y", "true", "t", "on":
		return true, nil
	case "0", "no", "n", "false", "f", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (want yes/no, true/false, on/off, 1/0)", s)
}
