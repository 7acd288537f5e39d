package fleetapi

import (
	"encoding/json"
	"errors"
	"net/http"
)

// discoveryDoc describes the API in Google's discovery format, as fleet's
// /discovery does: the entities and the methods the server implements.
func discoveryDoc() map[string]any {
	str := map[string]any{"type": "string"}
	obj := func(id string, props map[string]any) map[string]any {
		return map[string]any{"id": id, "type": "object", "properties": props}
	}
	arr := func(ref string) map[string]any {
		return map[string]any{"type": "array", "items": map[string]any{"$ref": ref}}
	}
	states := map[string]any{"type": "string", "enum": []string{"inactive", "loaded", "launched"}}
	token := map[string]any{"nextPageToken": map[string]any{"type": "string", "location": "query"}}
	name := map[string]any{"unitName": map[string]any{"type": "string", "location": "path", "required": true}}
	method := func(id, desc, verb, path string, params map[string]any, extra map[string]any) map[string]any {
		m := map[string]any{"id": id, "description": desc, "httpMethod": verb, "path": path, "parameters": params}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	ref := func(r string) map[string]any { return map[string]any{"$ref": r} }
	order := []string{"unitName"}
	return map[string]any{
		"kind": "discovery#restDescription", "discoveryVersion": "v1", "id": "fleet:v1",
		"name": "schema", "version": "v1", "title": "fleet API (served by flotilla)",
		"protocol": "rest", "baseUrl": "$ENDPOINT/fleet/v1/", "basePath": "/fleet/v1/",
		"rootUrl": "$ENDPOINT/", "servicePath": "fleet/v1/",
		"schemas": map[string]any{
			"Machine": obj("Machine", map[string]any{"id": str, "primaryIP": str,
				"metadata": map[string]any{"type": "object", "additionalProperties": str}}),
			"MachinePage": obj("MachinePage", map[string]any{"machines": arr("Machine"), "nextPageToken": str}),
			"UnitOption":  obj("UnitOption", map[string]any{"section": str, "name": str, "value": str}),
			"Unit": obj("Unit", map[string]any{"name": str, "options": arr("UnitOption"),
				"desiredState": states, "currentState": states, "machineID": str}),
			"UnitPage": obj("UnitPage", map[string]any{"units": arr("Unit"), "nextPageToken": str}),
			"UnitState": obj("UnitState", map[string]any{"name": str, "hash": str, "machineID": str,
				"systemdLoadState": str, "systemdActiveState": str, "systemdSubState": str}),
			"UnitStatePage": obj("UnitStatePage", map[string]any{"states": arr("UnitState"), "nextPageToken": str}),
		},
		"resources": map[string]any{
			"Machines": map[string]any{"methods": map[string]any{
				"List": method("fleet.Machine.List", "Retrieve a page of Machine objects.", "GET", "machines", token,
					map[string]any{"response": ref("MachinePage")}),
			}},
			"Units": map[string]any{"methods": map[string]any{
				"List": method("fleet.Unit.List", "Retrieve a page of Unit objects.", "GET", "units", token,
					map[string]any{"response": ref("UnitPage")}),
				"Get": method("fleet.Unit.Get", "Retrieve a single Unit object.", "GET", "units/{unitName}", name,
					map[string]any{"parameterOrder": order, "response": ref("Unit")}),
				"Delete": method("fleet.Unit.Delete", "Delete the referenced Unit object.", "DELETE", "units/{unitName}", name,
					map[string]any{"parameterOrder": order}),
				"Set": method("fleet.Unit.Set", "Create or update a Unit.", "PUT", "units/{unitName}", name,
					map[string]any{"parameterOrder": order, "request": ref("Unit")}),
			}},
			"UnitState": map[string]any{"methods": map[string]any{
				"List": method("fleet.UnitState.List", "Retrieve a page of UnitState objects.", "GET", "state",
					map[string]any{
						"nextPageToken": map[string]any{"type": "string", "location": "query"},
						"unitName":      map[string]any{"type": "string", "location": "query"},
						"machineID":     map[string]any{"type": "string", "location": "query"},
					}, map[string]any{"response": ref("UnitStatePage")}),
				"Get": method("fleet.UnitState.Get", "Retrieve the UnitState of one unit.", "GET", "state/{unitName}", name,
					map[string]any{"parameterOrder": order, "response": ref("UnitState")}),
			}},
		},
	}
}

func (s *Server) discovery(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// fleet answers 400 here, not 405.
		sendError(w, http.StatusBadRequest, errors.New("only HTTP GET supported against this resource"))
		return
	}
	b, _ := json.Marshal(discoveryDoc())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}
