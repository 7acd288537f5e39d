package fleetapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"sort"
	"strings"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// view is what the API shows of the cluster, built from one registry
// snapshot and the bodies it refers to.
type view struct {
	snap   *registry.Snapshot
	bodies map[string][]byte
	// opts and fleetHash memoize per flotilla body hash.
	opts      map[string][]*UnitOption
	fleetHash map[string]string
	global    map[string]bool
}

func (s *Server) readView(ctx context.Context) (*view, error) {
	snap, err := s.reg.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	bodies, err := s.reg.Bodies(ctx)
	if err != nil {
		return nil, fmt.Errorf("read unit bodies: %w", err)
	}
	return &view{snap: snap, bodies: bodies, opts: map[string][]*UnitOption{},
		fleetHash: map[string]string{}, global: map[string]bool{}}, nil
}

func (v *view) options(name, hash string) []*UnitOption {
	if o, ok := v.opts[hash]; ok {
		return o
	}
	o := OptionsOf(name, v.bodies[hash])
	v.opts[hash] = o
	return o
}

func (v *view) hashOf(name, hash string) string {
	if h, ok := v.fleetHash[hash]; ok {
		return h
	}
	h := ""
	if _, ok := v.bodies[hash]; ok {
		h = FleetHash(v.options(name, hash))
	}
	v.fleetHash[hash] = h
	return h
}

func (v *view) isGlobal(name, hash string) bool {
	if g, ok := v.global[hash]; ok {
		return g
	}
	f, err := unit.Parse(name, v.bodies[hash])
	g := err == nil && f.Fleet.Global
	v.global[hash] = g
	return g
}

// unit shows job j as fleet does: its options, desired state, and for a
// non-global unit the target machine and the current state derived from
// what that machine reports (no target or no report: inactive; reported:
// loaded; reported launched: launched).
func (v *view) unit(j registry.Job) *Unit {
	u := &Unit{Name: j.Name, Options: v.options(j.Name, j.Hash), DesiredState: string(j.Desired)}
	if v.isGlobal(j.Name, j.Hash) {
		return u
	}
	u.CurrentState = string(registry.Inactive)
	targets := v.snap.Targets(j.Name)
	if len(targets) == 0 {
		return u
	}
	u.MachineID = targets[0]
	if st, ok := v.snap.States[j.Name][u.MachineID]; ok {
		u.CurrentState = string(registry.Loaded)
		if st.State == string(registry.Launched) {
			u.CurrentState = string(registry.Launched)
		}
	}
	return u
}

func (v *view) units() []*Unit {
	names := make([]string, 0, len(v.snap.Jobs))
	for n := range v.snap.Jobs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*Unit, len(names))
	for i, n := range names {
		out[i] = v.unit(v.snap.Jobs[n])
	}
	return out
}

// states lists every reported unit state, by unit then machine.
func (v *view) states(machineID, unitName string) []*UnitState {
	var out []*UnitState
	for name, byMachine := range v.snap.States {
		if unitName != "" && name != unitName {
			continue
		}
		for m, st := range byMachine {
			if machineID != "" && m != machineID {
				continue
			}
			out = append(out, &UnitState{Name: name, Hash: v.hashOf(name, st.Hash), MachineID: m,
				SystemdLoadState: st.Load, SystemdActiveState: st.Active, SystemdSubState: st.Sub})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].MachineID < out[j].MachineID
	})
	return out
}

// itemOf returns the item of an item path base/<item> (no further slash,
// no trailing slash).
func itemOf(base, p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, base+"/")
	if !ok || rest == "" || strings.Contains(rest, "/") {
		return "", false
	}
	return rest, true
}

func (s *Server) unitsResource(base string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == base {
			if r.Method != http.MethodGet {
				sendError(w, http.StatusMethodNotAllowed, errors.New("only GET supported against this resource"))
				return
			}
			s.listUnits(w, r)
			return
		}
		item, ok := itemOf(base, r.URL.Path)
		if !ok {
			sendError(w, http.StatusNotFound, nil)
			return
		}
		switch r.Method {
		case http.MethodGet:
			s.getUnit(w, r, item)
		case http.MethodPut:
			s.putUnit(w, r, item)
		case http.MethodDelete:
			s.deleteUnit(w, r, item)
		default:
			sendError(w, http.StatusMethodNotAllowed, errors.New("only GET, PUT and DELETE supported against this resource"))
		}
	}
}

func (s *Server) listUnits(w http.ResponseWriter, r *http.Request) {
	listPage(s, w, r, "list units", func(ctx context.Context) ([]*Unit, error) {
		v, err := s.readView(ctx)
		if err != nil {
			return nil, err
		}
		return v.units(), nil
	}, func(units []*Unit, next string) any { return UnitPage{Units: units, NextPageToken: next} })
}

// listPage answers a GET of one of fleet's paged collections: the page token
// checked, everything read (in its order) within the request's bound, and
// the token's page of it sent, built by wrap.
func listPage[T any](s *Server, w http.ResponseWriter, r *http.Request, op string,
	read func(context.Context) ([]T, error), wrap func(page []T, next string) any) {
	tok, err := readPageToken(r.URL, s.o.PageLimit)
	if err != nil {
		sendError(w, http.StatusBadRequest, err)
		return
	}
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	all, err := read(ctx)
	if err != nil {
		s.fail(w, ctx, op, err)
		return
	}
	start, stop, next := page(len(all), tok)
	send(w, http.StatusOK, wrap(all[start:stop], next))
}

// oneUnit reads the view and the job of name; nil job when not submitted.
func (s *Server) oneUnit(ctx context.Context, name string) (*view, *registry.Job, error) {
	v, err := s.readView(ctx)
	if err != nil {
		return nil, nil, err
	}
	j, ok := v.snap.Jobs[name]
	if !ok {
		return v, nil, nil
	}
	return v, &j, nil
}

func (s *Server) getUnit(w http.ResponseWriter, r *http.Request, name string) {
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	v, j, err := s.oneUnit(ctx, name)
	if err != nil {
		s.fail(w, ctx, "get unit "+name, err)
		return
	}
	if j == nil {
		sendError(w, http.StatusNotFound, errors.New("unit does not exist"))
		return
	}
	send(w, http.StatusOK, v.unit(*j))
}

func (s *Server) deleteUnit(w http.ResponseWriter, r *http.Request, name string) {
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	err := s.reg.Destroy(ctx, name)
	if errors.Is(err, registry.ErrNotFound) {
		sendError(w, http.StatusNotFound, errors.New("unit does not exist"))
		return
	}
	if err != nil {
		s.fail(w, ctx, "destroy unit "+name, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// checkContentType is fleet's rule: exactly one Content-Type, application/json.
func checkContentType(r *http.Request) error {
	vs := r.Header["Content-Type"]
	if len(vs) != 1 {
		return fmt.Errorf("expected 1 Content-Type, got %d", len(vs))
	}
	mt, _, _ := strings.Cut(vs[0], ";")
	if strings.TrimSpace(mt) != "application/json" {
		return errors.New("only acceptable Content-Type is application/json")
	}
	return nil
}

// putUnit follows fleet's rules: a new unit needs options (409 without)
// and is created (201); an existing unit given different options is
// replaced (201); otherwise the request sets the desired state (204), which
// it must then name (409 without), and a template cannot be activated (400).
func (s *Server) putUnit(w http.ResponseWriter, r *http.Request, item string) {
	if err := checkContentType(r); err != nil {
		sendError(w, http.StatusUnsupportedMediaType, err)
		return
	}
	var su Unit
	if err := json.NewDecoder(r.Body).Decode(&su); err != nil {
		sendError(w, http.StatusBadRequest, fmt.Errorf("unable to decode body: %v", err))
		return
	}
	if su.Name == "" {
		su.Name = item
	}
	if su.Name != item {
		sendError(w, http.StatusBadRequest, fmt.Errorf("name in URL %q differs from unit name in request body %q", item, su.Name))
		return
	}
	if err := ValidateName(su.Name); err != nil {
		sendError(w, http.StatusBadRequest, err)
		return
	}
	var desired registry.Desired
	if su.DesiredState != "" {
		d, err := registry.ParseDesired(su.DesiredState)
		if err != nil {
			sendError(w, http.StatusBadRequest, fmt.Errorf("invalid desiredState: %v", err))
			return
		}
		desired = d
	}
	for _, o := range su.Options {
		if o == nil {
			sendError(w, http.StatusBadRequest, errors.New("unable to decode body: null option"))
			return
		}
	}
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	v, j, err := s.oneUnit(ctx, su.Name)
	if err != nil {
		s.fail(w, ctx, "put unit "+su.Name, err)
		return
	}
	create := false
	switch {
	case j == nil && len(su.Options) == 0:
		sendError(w, http.StatusConflict, errors.New("unit does not exist and options field empty"))
		return
	case j == nil:
		create = true
	case len(su.Options) > 0:
		create = FleetHash(su.Options) != v.hashOf(j.Name, j.Hash)
	}
	n, _ := unit.ParseName(su.Name)
	if n.IsTemplate() && desired != "" && desired != registry.Inactive {
		sendError(w, http.StatusBadRequest, fmt.Errorf("cannot activate template %q", su.Name))
		return
	}
	if create {
		if err := ValidateOptions(su.Name, su.Options); err != nil {
			sendError(w, http.StatusBadRequest, err)
			return
		}
		body := Serialize(su.Options)
		if _, err := s.reg.PutUnit(ctx, su.Name, unit.Hash(body), body, desired); err != nil {
			s.fail(w, ctx, "create unit "+su.Name, err)
			return
		}
		w.WriteHeader(http.StatusCreated)
		return
	}
	if desired == "" {
		sendError(w, http.StatusConflict, errors.New("must provide DesiredState to update existing unit"))
		return
	}
	if err := s.reg.SetDesired(ctx, su.Name, desired); err != nil {
		if errors.Is(err, registry.ErrNotFound) {
			sendError(w, http.StatusNotFound, errors.New("unit does not exist"))
			return
		}
		s.fail(w, ctx, "set desired state of "+su.Name, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ValidateName checks a unit name by systemd's rules, as fleet's API does,
// with fleet's messages.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("unit name cannot be empty")
	}
	if len(name) > 256 {
		return fmt.Errorf("unit name exceeds maximum length (%d)", 256)
	}
	dot := strings.LastIndexByte(name, '.')
	if dot < 0 {
		return errors.New(`unit name must contain "."`)
	}
	if dot == len(name)-1 {
		return errors.New(`unit name cannot end in "."`)
	}
	typ := name[dot+1:]
	switch typ {
	case "automount", "busname", "device", "mount", "path", "scope", "service",
		"slice", "snapshot", "socket", "swap", "target", "timer":
	default:
		return fmt.Errorf("invalid unit type: %q", typ)
	}
	if strings.Contains(name, "@") {
		switch typ {
		case "path", "service", "socket", "target", "timer":
		default:
			return fmt.Errorf("invalid unit type for template: %q", typ)
		}
	}
	for _, c := range name[:dot] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.ContainsRune(`:-_.\@`, c)) {
			return fmt.Errorf("invalid character %q in unit name", c)
		}
	}
	if strings.HasPrefix(name, "@") {
		return errors.New(`unit name cannot start in "@"`)
	}
	// flotilla's own rules on top (the agent must be able to run it).
	if _, err := unit.ParseName(path.Base(name)); err != nil {
		return err
	}
	return nil
}

func (s *Server) stateResource(base string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == base {
			if r.Method != http.MethodGet {
				sendError(w, http.StatusMethodNotAllowed, errors.New("only GET supported against this resource"))
				return
			}
			s.listStates(w, r)
			return
		}
		item, ok := itemOf(base, r.URL.Path)
		if !ok {
			sendError(w, http.StatusNotFound, nil)
			return
		}
		if r.Method != http.MethodGet {
			sendError(w, http.StatusMethodNotAllowed, errors.New("only GET supported against this resource"))
			return
		}
		s.getState(w, r, item)
	}
}

func (s *Server) listStates(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	listPage(s, w, r, "list unit states", func(ctx context.Context) ([]*UnitState, error) {
		v, err := s.readView(ctx)
		if err != nil {
			return nil, err
		}
		return v.states(q.Get("machineID"), q.Get("unitName")), nil
	}, func(states []*UnitState, next string) any { return UnitStatePage{States: states, NextPageToken: next} })
}

// getState answers the unit's state on its target machine (for a global
// unit, or one reported elsewhere, the first machine by id).
func (s *Server) getState(w http.ResponseWriter, r *http.Request, name string) {
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	v, err := s.readView(ctx)
	if err != nil {
		s.fail(w, ctx, "get unit state "+name, err)
		return
	}
	all := v.states("", name)
	if len(all) == 0 {
		sendError(w, http.StatusNotFound, errors.New("unit state does not exist"))
		return
	}
	pick := all[0]
	if t := v.snap.Targets(name); len(t) > 0 {
		for _, st := range all {
			if st.MachineID == t[0] {
				pick = st
			}
		}
	}
	send(w, http.StatusOK, pick)
}
