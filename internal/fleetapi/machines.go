package fleetapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
)

// metadataPath is the JSON-patch path of one machine metadata key.
var metadataPath = regexp.MustCompile(`^/([^/]+)/metadata/([A-Za-z0-9_.-]+)$`)

// MetadataOp is one operation of a PATCH on /machines. Value is accepted in
// both shapes fleet's clients send: the documented string ("value": "v") and
// the object fleet's server decodes ("value": {"value": "v"}).
type MetadataOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

func (op MetadataOp) value() (string, error) {
	if len(op.Value) == 0 || string(op.Value) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(op.Value, &s); err == nil {
		return s, nil
	}
	var o struct {
		Value *string `json:"value"`
	}
	if err := json.Unmarshal(op.Value, &o); err != nil || o.Value == nil {
		return "", fmt.Errorf("invalid value: want a string or {\"value\": string}")
	}
	return *o.Value, nil
}

func (s *Server) machines(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		s.listMachines(w, r)
	case http.MethodPatch:
		s.patchMachines(w, r)
	default:
		sendError(w, http.StatusMethodNotAllowed, errors.New("only GET and PATCH supported against this resource"))
	}
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	listPage(s, w, r, "list machines", func(ctx context.Context) ([]*Machine, error) {
		ms, err := s.reg.Machines(ctx)
		if err != nil {
			return nil, err
		}
		all := make([]*Machine, 0, len(ms))
		for _, m := range ms {
			md := make(map[string]string, len(m.Metadata))
			for k, v := range m.Metadata {
				md[k] = v
			}
			all = append(all, &Machine{ID: m.ID, PrimaryIP: m.IP, Metadata: md})
		}
		sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
		return all, nil
	}, func(ms []*Machine, next string) any { return MachinePage{Machines: ms, NextPageToken: next} })
}

// patchMachines applies add/replace/remove of metadata keys, all checked
// before any is applied, as fleet does. Keys set here persist while the
// machine is away.
func (s *Server) patchMachines(w http.ResponseWriter, r *http.Request) {
	var ops []MetadataOp
	if err := json.NewDecoder(r.Body).Decode(&ops); err != nil {
		sendError(w, http.StatusBadRequest, err)
		return
	}
	type change struct {
		machine, key, value string
		remove              bool
	}
	changes := make([]change, 0, len(ops))
	for _, op := range ops {
		if op.Op != "add" && op.Op != "remove" && op.Op != "replace" {
			sendError(w, http.StatusBadRequest, errors.New("invalid op: expect add, remove, or replace"))
			return
		}
		m := metadataPath.FindStringSubmatch(op.Path)
		if m == nil {
			sendError(w, http.StatusBadRequest, errors.New("machine metadata path invalid"))
			return
		}
		v, err := op.value()
		if err != nil {
			sendError(w, http.StatusBadRequest, err)
			return
		}
		if op.Op != "remove" && v == "" {
			sendError(w, http.StatusBadRequest, errors.New("invalid value: add and replace require a value"))
			return
		}
		changes = append(changes, change{machine: m[1], key: m[2], value: v, remove: op.Op == "remove"})
	}
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	for _, c := range changes {
		var err error
		if c.remove {
			_, err = s.reg.DeleteMetadata(ctx, c.machine, c.key)
		} else {
			err = s.reg.SetMetadata(ctx, c.machine, c.key, c.value)
		}
		if err != nil {
			s.fail(w, ctx, "patch machine metadata", err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}
