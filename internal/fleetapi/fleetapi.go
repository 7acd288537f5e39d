// Package fleetapi is the scheduler's HTTP face: fleet's API v1 (units,
// state, machines, discovery under /fleet/v1/ and /v1-alpha/, with fleet's
// status codes, error body and page tokens) so the real fleetctl and tools
// built on fleet's client work against flotilla; Prometheus /metrics;
// /health and /ready; and a read-only dashboard at /.
//
// It reads and writes the scheduler's state only through internal/registry.
package fleetapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// DefaultPageLimit is fleet's page size: a list answers at most this many
// items and a nextPageToken for the rest.
const DefaultPageLimit = 100

// UnavailableMessage is fleet's error message while etcd cannot be reached.
const UnavailableMessage = "fleet server unable to communicate with etcd"

// Options configure a Server.
type Options struct {
	// Registry is the scheduler state. Required.
	Registry *registry.Registry
	// Logger receives request errors; nil discards them.
	Logger *slog.Logger
	// PageLimit is the page size of lists; default DefaultPageLimit.
	PageLimit int
	// RequestTimeout bounds the etcd work of one request; past it the
	// request is answered 503. Default 2s: fleetctl gives up after its
	// --request-timeout (3s by default), and must see the 503 first.
	RequestTimeout time.Duration
	// EndpointPrefixes are the etcd prefixes of announced endpoints the
	// dashboard shows; default ["/clusterstate/"].
	EndpointPrefixes []string
	// Version is shown in the Server header and the dashboard.
	Version string
}

// Server serves the API, metrics and dashboard. Create it with New; it is
// safe for concurrent use.
type Server struct {
	o       Options
	reg     *registry.Registry
	log     *slog.Logger
	metrics *Metrics
	mux     *http.ServeMux
	tmpl    *template.Template
}

// New returns a Server over o.Registry.
func New(o Options) (*Server, error) {
	if o.Registry == nil {
		return nil, errors.New("fleetapi: Registry is required")
	}
	if o.PageLimit == 0 {
		o.PageLimit = DefaultPageLimit
	}
	if o.PageLimit < 1 || o.PageLimit > 65535 {
		return nil, fmt.Errorf("fleetapi: page limit %d: want 1..65535", o.PageLimit)
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 2 * time.Second
	}
	if len(o.EndpointPrefixes) == 0 {
		o.EndpointPrefixes = []string{"/clusterstate/"}
	}
	for _, p := range o.EndpointPrefixes {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("fleetapi: endpoint prefix %q: must start with /", p)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, reg: o.Registry, log: o.Logger, tmpl: parseTemplates()}
	s.metrics = newMetrics(s)
	s.mux = http.NewServeMux()
	for _, p := range []string{"/fleet/v1", "/v1-alpha"} {
		s.mux.HandleFunc(p+"/discovery", s.discovery)
		s.mux.HandleFunc(p+"/machines", s.machines)
		s.mux.HandleFunc(p+"/state", s.stateResource(p+"/state"))
		s.mux.HandleFunc(p+"/state/", s.stateResource(p+"/state"))
		s.mux.HandleFunc(p+"/units", s.unitsResource(p+"/units"))
		s.mux.HandleFunc(p+"/units/", s.unitsResource(p+"/units"))
		s.mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) { sendError(w, http.StatusMethodNotAllowed, nil) })
	}
	s.mux.Handle("/metrics", s.metrics.handler())
	s.mux.HandleFunc("/health", s.health)
	s.mux.HandleFunc("/ready", s.ready)
	s.mux.HandleFunc("/dashboard/view", s.dashboardView)
	s.mux.HandleFunc("/dashboard.js", s.dashboardJS)
	s.mux.HandleFunc("/", s.root)
	return s, nil
}

// Metrics returns the server's metrics, for the engine's pass hook.
func (s *Server) Metrics() *Metrics { return s.metrics }

// ServeHTTP serves every path of the server.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.o.Version != "" {
		w.Header().Set("Server", "flotilla/"+s.o.Version)
	}
	s.mux.ServeHTTP(w, r)
}

// Run keeps the metrics that come from watching the cluster (leadership
// changes, unit restarts) until ctx ends. It blocks.
func (s *Server) Run(ctx context.Context) error { return s.metrics.run(ctx) }

func (s *Server) root(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		sendError(w, http.StatusNotFound, nil)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		sendError(w, http.StatusMethodNotAllowed, nil)
		return
	}
	s.dashboard(w, r)
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// ready answers 200 when etcd answers a read within a second.
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if _, _, _, err := s.reg.Client().Get(ctx, s.reg.JobKey("")); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ready")
}

// requestCtx bounds a request's etcd work.
func (s *Server) requestCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.o.RequestTimeout)
}

// fail answers a registry error: 503 with fleet's message when etcd is
// unreachable or too slow, else 500 (fleet sends no message with a 500).
func (s *Server) fail(w http.ResponseWriter, ctx context.Context, op string, err error) {
	if store.IsUnavailable(err) || ctx.Err() != nil {
		s.log.Warn("fleet API: etcd unavailable", "op", op, "err", err)
		sendError(w, http.StatusServiceUnavailable, errors.New(UnavailableMessage))
		return
	}
	s.log.Error("fleet API", "op", op, "err", err)
	sendError(w, http.StatusInternalServerError, nil)
}

// ErrorBody is fleet's error answer: {"error":{"code":…,"message":…}}.
type ErrorBody struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func sendError(w http.ResponseWriter, code int, err error) {
	var b ErrorBody
	b.Error.Code = code
	if err != nil {
		b.Error.Message = err.Error()
	}
	send(w, code, b)
}

func send(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
