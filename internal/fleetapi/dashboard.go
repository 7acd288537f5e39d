package fleetapi

import (
	"context"
	"embed"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"time"
)

//go:embed web
var webFS embed.FS

// templates are parsed once per Server (New); the embedded files are part
// of the binary, so a parse error is a build defect caught by every test.
func parseTemplates() *template.Template {
	return template.Must(template.New("").Funcs(template.FuncMap{
		"join": strings.Join,
	}).ParseFS(webFS, "web/*.html"))
}

// dashMachine is a machine as the dashboard shows it.
type dashMachine struct {
	ID, IP   string
	Metadata []string
	Units    []string
}

// dashUnit is a unit as the dashboard shows it (global units: one row per
// machine reporting them).
type dashUnit struct {
	Name, Desired, Current, Machine, Active, Sub, Unplaced string
}

// dashEndpoint is one announced endpoint.
type dashEndpoint struct{ Key, Value string }

type dashData struct {
	Version   string
	Time      string
	Error     string
	Leader    string
	Machines  []dashMachine
	Units     []dashUnit
	Prefixes  []string
	Endpoints []dashEndpoint
}

func (s *Server) dashData(ctx context.Context) dashData {
	d := dashData{Version: s.o.Version, Time: time.Now().UTC().Format(time.RFC3339), Prefixes: s.o.EndpointPrefixes}
	v, err := s.readView(ctx)
	if err != nil {
		d.Error = UnavailableMessage + ": " + err.Error()
		return d
	}
	s.metrics.mu.Lock()
	d.Leader = s.metrics.leader
	s.metrics.mu.Unlock()
	onMachine := map[string][]string{}
	for _, u := range v.units() {
		row := dashUnit{Name: u.Name, Desired: u.DesiredState, Current: u.CurrentState, Machine: u.MachineID,
			Unplaced: v.snap.Unplaced[u.Name]}
		if u.CurrentState == "" { // global: a row per machine
			ms := make([]string, 0, len(v.snap.States[u.Name]))
			for m := range v.snap.States[u.Name] {
				ms = append(ms, m)
			}
			sort.Strings(ms)
			for _, m := range ms {
				st := v.snap.States[u.Name][m]
				r := row
				r.Machine, r.Current, r.Active, r.Sub = m, st.State, st.Active, st.Sub
				d.Units = append(d.Units, r)
				onMachine[m] = append(onMachine[m], u.Name)
			}
			if len(ms) == 0 {
				d.Units = append(d.Units, row)
			}
			continue
		}
		if st, ok := v.snap.States[u.Name][u.MachineID]; ok {
			row.Active, row.Sub = st.Active, st.Sub
		}
		if u.MachineID != "" {
			onMachine[u.MachineID] = append(onMachine[u.MachineID], u.Name)
		}
		d.Units = append(d.Units, row)
	}
	for id, m := range v.snap.Machines {
		dm := dashMachine{ID: id, IP: m.IP, Units: onMachine[id]}
		for k, val := range m.Metadata {
			dm.Metadata = append(dm.Metadata, k+"="+val)
		}
		sort.Strings(dm.Metadata)
		d.Machines = append(d.Machines, dm)
	}
	sort.Slice(d.Machines, func(i, j int) bool { return d.Machines[i].ID < d.Machines[j].ID })
	m, _, err := s.reg.Client().GetPrefixes(ctx, s.o.EndpointPrefixes)
	if err != nil {
		d.Error = "read endpoints: " + err.Error()
		return d
	}
	for _, p := range s.o.EndpointPrefixes {
		for _, kv := range m[p] {
			d.Endpoints = append(d.Endpoints, dashEndpoint{Key: kv.Key, Value: string(kv.Value)})
		}
	}
	return d
}

func (s *Server) renderDash(w http.ResponseWriter, r *http.Request, name string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		sendError(w, http.StatusMethodNotAllowed, nil)
		return
	}
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	d := s.dashData(ctx)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.tmpl.ExecuteTemplate(w, name, d); err != nil {
		s.log.Error("dashboard", "err", err)
	}
}

// dashboard serves the whole page, rendered on the server.
func (s *Server) dashboard(w http.ResponseWriter, r *http.Request) { s.renderDash(w, r, "page.html") }

// dashboardView serves the page's live part alone; the page's script polls
// it and swaps it in.
func (s *Server) dashboardView(w http.ResponseWriter, r *http.Request) {
	s.renderDash(w, r, "view.html")
}

func (s *Server) dashboardJS(w http.ResponseWriter, _ *http.Request) {
	b, err := webFS.ReadFile("web/dashboard.js")
	if err != nil {
		sendError(w, http.StatusInternalServerError, nil)
		return
	}
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	_, _ = w.Write(b)
}
