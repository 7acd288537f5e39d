package fleetapi_test

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/fleetapi"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m, "scheduler") }

// fixture is a real etcd, a registry over it and the API served on loopback.
type fixture struct {
	t   *testing.T
	ctx context.Context
	etc *etcdtest.Server
	c   *store.Client
	reg *registry.Registry
	srv *fleetapi.Server
	url string
}

func newFixture(t *testing.T, opts ...etcdtest.Option) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	etc := etcdtest.New(t, opts...)
	c := etc.Client()
	reg := registry.New(c, "/f/")
	srv, err := fleetapi.New(fleetapi.Options{Registry: reg, RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return &fixture{t: t, ctx: ctx, etc: etc, c: c, reg: reg, srv: srv, url: hs.URL}
}

// answer is one HTTP exchange's result.
type answer struct {
	code int
	body string
}

func (f *fixture) do(method, path, contentType, body string) answer {
	f.t.Helper()
	req, err := http.NewRequestWithContext(f.ctx, method, f.url+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b)}
}

// errBody is fleet's error body for code and message.
func errBody(code int, msg string) string {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": code, "message": msg}})
	return string(b)
}

const jsonCT = "application/json"

// machine registers a machine presence as its agent would, under a lease.
func (f *fixture) machine(id, ip string, md map[string]string) *store.Lease {
	f.t.Helper()
	l, err := f.c.GrantLease(f.ctx, 5*time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { l.Close() })
	if _, err := l.Put(f.ctx, f.reg.MachineKey(id), registry.Encode(registry.Machine{ID: id, IP: ip, Metadata: md})); err != nil {
		f.t.Fatal(err)
	}
	return l
}

func TestUnitsPutRules(t *testing.T) {
	f := newFixture(t)
	v1 := `{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}`
	v2 := `{"desiredState":"loaded","options":[{"section":"Service","name":"ExecStart","value":"/bin/false"}]}`
	steps := []struct {
		name, method, path, ct, body string
		code                         int
		want                         string // exact body, "" for none
	}{
		{"empty list", "GET", "/fleet/v1/units", "", "", 200, `{}`},
		{"no content type", "PUT", "/fleet/v1/units/a.service", "", v1, 415, errBody(415, "expected 1 Content-Type, got 0")},
		{"wrong content type", "PUT", "/fleet/v1/units/a.service", "text/plain", v1, 415, errBody(415, "only acceptable Content-Type is application/json")},
		{"bad json", "PUT", "/fleet/v1/units/a.service", jsonCT, `{"options":`, 400, errBody(400, "unable to decode body: unexpected EOF")},
		{"name differs", "PUT", "/fleet/v1/units/a.service", jsonCT, `{"name":"b.service"}`, 400, errBody(400, `name in URL "a.service" differs from unit name in request body "b.service"`)},
		{"no dot", "PUT", "/fleet/v1/units/abc", jsonCT, v1, 400, errBody(400, `unit name must contain "."`)},
		{"bad type", "PUT", "/fleet/v1/units/a.foo", jsonCT, v1, 400, errBody(400, `invalid unit type: "foo"`)},
		{"bad char", "PUT", "/fleet/v1/units/a%20b.service", jsonCT, v1, 400, errBody(400, `invalid character ' ' in unit name`)},
		{"bad desired", "PUT", "/fleet/v1/units/a.service", jsonCT, `{"desiredState":"running"}`, 400, ""},
		{"new without options", "PUT", "/fleet/v1/units/a.service", jsonCT, `{"desiredState":"launched"}`, 409, errBody(409, "unit does not exist and options field empty")},
		{"bad fleet option", "PUT", "/fleet/v1/units/a.service", jsonCT, `{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"},{"section":"X-Fleet","name":"Bogus","value":"1"}]}`, 400, ""},
		{"machine and conflicts", "PUT", "/fleet/v1/units/a.service", jsonCT, xfleet(`"MachineID","value":"m1"},{"section":"X-Fleet","name":"Conflicts","value":"b*"`), 400, errBody(400, "MachineID cannot be used with Conflicts")},
		{"machine and peers", "PUT", "/fleet/v1/units/a.service", jsonCT, xfleet(`"MachineID","value":"m1"},{"section":"X-Fleet","name":"MachineOf","value":"b.service"`), 400, errBody(400, "MachineID cannot be used with Peers")},
		{"global and peers", "PUT", "/fleet/v1/units/a.service", jsonCT, xfleet(`"Global","value":"true"},{"section":"X-Fleet","name":"MachineOf","value":"b.service"`), 400, errBody(400, "Global cannot be used with Peers")},
		{"peer is a conflict", "PUT", "/fleet/v1/units/a.service", jsonCT, xfleet(`"MachineOf","value":"b.service"},{"section":"X-Fleet","name":"Conflicts","value":"b*"`), 400, errBody(400, `unresolvable requirements: peer "b.service" matches conflict "b*"`)},
		{"conflicts and replaces", "PUT", "/fleet/v1/units/a.service", jsonCT, xfleet(`"Replaces","value":"c.service"},{"section":"X-Fleet","name":"Conflicts","value":"b*"`), 400, errBody(400, "Conflicts cannot be used with Replaces")},
		{"create", "PUT", "/fleet/v1/units/a.service", jsonCT, v1, 201, ""},
		{"get created", "GET", "/fleet/v1/units/a.service", "", "", 200, `{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"inactive","currentState":"inactive"}`},
		{"same options no state", "PUT", "/fleet/v1/units/a.service", jsonCT, v1, 409, errBody(409, "must provide DesiredState to update existing unit")},
		{"no options no state", "PUT", "/fleet/v1/units/a.service", jsonCT, `{}`, 409, errBody(409, "must provide DesiredState to update existing unit")},
		{"set state", "PUT", "/fleet/v1/units/a.service", jsonCT, `{"desiredState":"loaded"}`, 204, ""},
		{"replace body", "PUT", "/fleet/v1/units/a.service", jsonCT, v2, 201, ""},
		{"get replaced", "GET", "/v1-alpha/units/a.service", "", "", 200, `{"name":"a.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/false"}],"desiredState":"loaded","currentState":"inactive"}`},
		{"template create", "PUT", "/fleet/v1/units/t@.service", jsonCT, v1, 201, ""},
		{"template launch", "PUT", "/fleet/v1/units/t@.service", jsonCT, `{"desiredState":"launched"}`, 400, errBody(400, `cannot activate template "t@.service"`)},
		{"list", "GET", "/fleet/v1/units", "", "", 200, ""},
		{"get unknown", "GET", "/fleet/v1/units/nope.service", "", "", 404, errBody(404, "unit does not exist")},
		{"delete", "DELETE", "/fleet/v1/units/a.service", "", "", 204, ""},
		{"delete again", "DELETE", "/fleet/v1/units/a.service", "", "", 404, errBody(404, "unit does not exist")},
		{"collection POST", "POST", "/fleet/v1/units", jsonCT, v1, 405, errBody(405, "only GET supported against this resource")},
		{"item PATCH", "PATCH", "/fleet/v1/units/a.service", jsonCT, v1, 405, errBody(405, "only GET, PUT and DELETE supported against this resource")},
		{"trailing slash", "GET", "/fleet/v1/units/", "", "", 404, errBody(404, "")},
		{"nested", "GET", "/fleet/v1/units/a/b", "", "", 404, errBody(404, "")},
		{"api root", "GET", "/fleet/v1", "", "", 405, errBody(405, "")},
		{"unknown path", "GET", "/fleet/v1/nope", "", "", 404, errBody(404, "")},
		{"discovery", "GET", "/fleet/v1/discovery", "", "", 200, ""},
		{"discovery POST", "POST", "/fleet/v1/discovery", "", "", 400, errBody(400, "only HTTP GET supported against this resource")},
		{"state POST", "POST", "/fleet/v1/state", "", "", 405, errBody(405, "only GET supported against this resource")},
		{"state unknown", "GET", "/fleet/v1/state/nope.service", "", "", 404, errBody(404, "unit state does not exist")},
		{"machines DELETE", "DELETE", "/fleet/v1/machines", "", "", 405, errBody(405, "only GET and PATCH supported against this resource")},
	}
	for _, s := range steps {
		got := f.do(s.method, s.path, s.ct, s.body)
		if got.code != s.code || (s.want != "" && got.body != s.want) {
			t.Errorf("%s: %s %s = %d %s, want %d %s", s.name, s.method, s.path, got.code, got.body, s.code, s.want)
		}
		if got.code >= 400 && !strings.Contains(got.body, fmt.Sprintf(`"code":%d`, s.code)) {
			t.Errorf("%s: error body %s is not fleet's", s.name, got.body)
		}
	}
	var page fleetapi.UnitPage
	if err := json.Unmarshal([]byte(f.do("GET", "/fleet/v1/units", "", "").body), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Units) != 1 || page.Units[0].Name != "t@.service" || page.NextPageToken != "" {
		t.Errorf("list after delete: %+v", page)
	}
	var disc map[string]any
	_ = json.Unmarshal([]byte(f.do("GET", "/v1-alpha/discovery", "", "").body), &disc)
	if disc["id"] != "fleet:v1" || disc["schemas"] == nil {
		t.Errorf("discovery: %v", disc)
	}
}

// xfleet is a unit body with ExecStart and the [X-Fleet] options given
// (a JSON fragment starting at the first option's name value).
func xfleet(frag string) string {
	return `{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"},{"section":"X-Fleet","name":` + frag + `}]}`
}

// TestStateAndHash checks currentState and the state list as fleet derives
// them, and that hashes are fleet's (SHA-1 of go-systemd's serialization).
func TestStateAndHash(t *testing.T) {
	f := newFixture(t)
	opts := `{"desiredState":"launched","options":[{"section":"Unit","name":"Description","value":"hi"},{"section":"Service","name":"ExecStart","value":"/bin/sleep 1"}]}`
	for _, n := range []string{"a.service", "b.service"} {
		if got := f.do("PUT", "/fleet/v1/units/"+n, jsonCT, opts); got.code != 201 {
			t.Fatalf("create %s: %v", n, got)
		}
	}
	// fleet serializes options as "[Section]\nName=Value\n", sections apart.
	sum := sha1.Sum([]byte("[Unit]\nDescription=hi\n\n[Service]\nExecStart=/bin/sleep 1\n"))
	fleetHash := hex.EncodeToString(sum[:])
	ja, err := f.reg.Job(f.ctx, "a.service")
	if err != nil {
		t.Fatal(err)
	}
	// Schedule a.service on m1 and have m1 and m2 report states, as the
	// engine and agents would.
	f.machine("m1", "10.0.0.1", nil)
	f.machine("m2", "10.0.0.2", nil)
	put := func(k string, v any) {
		if _, err := f.c.Put(f.ctx, k, registry.Encode(v), 0); err != nil {
			t.Fatal(err)
		}
	}
	put(f.reg.ScheduleKey("m1", "a.service"), registry.Assignment{Hash: ja.Hash, Desired: registry.Launched})
	u := getUnit(t, f, "a.service")
	if u.MachineID != "m1" || u.CurrentState != "inactive" {
		t.Errorf("scheduled, no report: %+v", u)
	}
	put(f.reg.StateKey("a.service", "m1"), registry.UnitState{Hash: ja.Hash, State: "loaded", Load: "loaded", Active: "inactive", Sub: "dead"})
	if u := getUnit(t, f, "a.service"); u.CurrentState != "loaded" {
		t.Errorf("reported loaded: %+v", u)
	}
	put(f.reg.StateKey("a.service", "m1"), registry.UnitState{Hash: ja.Hash, State: "launched", Load: "loaded", Active: "active", Sub: "running"})
	put(f.reg.StateKey("b.service", "m2"), registry.UnitState{Hash: ja.Hash, State: "launched", Load: "loaded", Active: "active", Sub: "running"})
	if u := getUnit(t, f, "a.service"); u.CurrentState != "launched" {
		t.Errorf("reported launched: %+v", u)
	}
	for _, c := range []struct {
		query string
		want  []string // name/machine
	}{
		{"", []string{"a.service/m1", "b.service/m2"}},
		{"?machineID=m2", []string{"b.service/m2"}},
		{"?unitName=a.service", []string{"a.service/m1"}},
		{"?unitName=a.service&machineID=m2", nil},
	} {
		var p fleetapi.UnitStatePage
		if got := f.do("GET", "/fleet/v1/state"+c.query, "", ""); got.code != 200 || json.Unmarshal([]byte(got.body), &p) != nil {
			t.Fatalf("state%s: %v", c.query, got)
		}
		var names []string
		for _, s := range p.States {
			names = append(names, s.Name+"/"+s.MachineID)
			if s.Hash != fleetHash {
				t.Errorf("state%s: hash %s, want fleet's %s", c.query, s.Hash, fleetHash)
			}
		}
		if strings.Join(names, " ") != strings.Join(c.want, " ") {
			t.Errorf("state%s: %v, want %v", c.query, names, c.want)
		}
	}
	got := f.do("GET", "/fleet/v1/state/a.service", "", "")
	want := `{"name":"a.service","hash":"` + fleetHash + `","machineID":"m1","systemdLoadState":"loaded","systemdActiveState":"active","systemdSubState":"running"}`
	if got.code != 200 || got.body != want {
		t.Errorf("state/a.service = %v, want %s", got, want)
	}
}

func getUnit(t *testing.T, f *fixture, name string) fleetapi.Unit {
	t.Helper()
	var u fleetapi.Unit
	got := f.do("GET", "/fleet/v1/units/"+name, "", "")
	if got.code != 200 || json.Unmarshal([]byte(got.body), &u) != nil {
		t.Fatalf("get %s: %v", name, got)
	}
	return u
}

// TestMachinesMetadata checks PATCH in both value shapes, its refusals,
// and that the metadata outlives the machine's presence.
func TestMachinesMetadata(t *testing.T) {
	f := newFixture(t)
	l := f.machine("m1", "10.0.0.1", map[string]string{"role": "web"})
	f.machine("m2", "10.0.0.2", nil)
	for _, c := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"not json", `[`, 400, ""},
		{"bad op", `[{"op":"move","path":"/m1/metadata/a","value":"x"}]`, 400, errBody(400, "invalid op: expect add, remove, or replace")},
		{"bad path", `[{"op":"add","path":"/m1/meta/a","value":"x"}]`, 400, errBody(400, "machine metadata path invalid")},
		{"bad key", `[{"op":"add","path":"/m1/metadata/a b","value":"x"}]`, 400, errBody(400, "machine metadata path invalid")},
		{"no value", `[{"op":"add","path":"/m1/metadata/a"}]`, 400, errBody(400, "invalid value: add and replace require a value")},
		{"empty object value", `[{"op":"replace","path":"/m1/metadata/a","value":{"value":""}}]`, 400, errBody(400, "invalid value: add and replace require a value")},
		{"bad value shape", `[{"op":"add","path":"/m1/metadata/a","value":3}]`, 400, ""},
		// One bad op: nothing applied.
		{"partly bad", `[{"op":"add","path":"/m1/metadata/zz","value":"1"},{"op":"add","path":"bad","value":"1"}]`, 400, ""},
		{"string shape", `[{"op":"add","path":"/m1/metadata/az","value":"eu-1"}]`, 204, ""},
		{"object shape", `[{"op":"add","path":"/m2/metadata/disk","value":{"value":"ssd"}},{"op":"replace","path":"/m1/metadata/role","value":{"value":"lb"}}]`, 204, ""},
	} {
		got := f.do("PATCH", "/fleet/v1/machines", jsonCT, c.body)
		if got.code != c.code || (c.want != "" && got.body != c.want) {
			t.Errorf("%s: %v, want %d %s", c.name, got, c.code, c.want)
		}
	}
	want := `{"machines":[{"id":"m1","primaryIP":"10.0.0.1","metadata":{"az":"eu-1","role":"lb"}},{"id":"m2","primaryIP":"10.0.0.2","metadata":{"disk":"ssd"}}]}`
	if got := f.do("GET", "/fleet/v1/machines", "", ""); got.code != 200 || got.body != want {
		t.Errorf("machines = %v\nwant %s", got, want)
	}
	// m1 leaves (lease gone) and comes back with only its own metadata.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := f.do("GET", "/fleet/v1/machines", "", ""); !strings.Contains(got.body, `"m2"`) || strings.Contains(got.body, `"m1"`) {
		t.Errorf("after m1 left: %v", got)
	}
	f.machine("m1", "10.0.0.1", map[string]string{"role": "web"})
	if got := f.do("GET", "/fleet/v1/machines", "", ""); got.body != want {
		t.Errorf("after m1 came back: %v\nwant %s", got, want)
	}
	// The engine's and list-machines' reads see it too.
	snap, err := f.reg.Snapshot(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Machines["m1"].Metadata["az"] != "eu-1" || snap.Machines["m1"].Metadata["role"] != "lb" {
		t.Errorf("snapshot metadata of m1: %v", snap.Machines["m1"].Metadata)
	}
	if got := f.do("PATCH", "/fleet/v1/machines", jsonCT, `[{"op":"remove","path":"/m1/metadata/az"},{"op":"remove","path":"/m1/metadata/role"}]`); got.code != 204 {
		t.Errorf("remove: %v", got)
	}
	ms, err := f.reg.Machines(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if md := ms["m1"].Metadata; len(md) != 1 || md["role"] != "web" {
		t.Errorf("after remove, m1 has its own metadata back: %v", md)
	}
}

// TestPaging lists more than a page of units, states and machines.
func TestPaging(t *testing.T) {
	f := newFixture(t)
	const n = 250
	body := []byte("[Service]\nExecStart=/bin/true\n")
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("u%03d.service", i)
		if _, err := f.reg.Submit(f.ctx, name, "h", body, registry.KeepExisting); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Put(f.ctx, f.reg.StateKey(name, "m1"), registry.Encode(registry.UnitState{Hash: "h", Load: "loaded"}), 0); err != nil {
			t.Fatal(err)
		}
	}
	var p fleetapi.UnitPage
	got := f.do("GET", "/fleet/v1/units", "", "")
	if err := json.Unmarshal([]byte(got.body), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Units) != 100 || p.Units[0].Name != "u000.service" || p.NextPageToken == "" {
		t.Fatalf("page 1: %d units, token %q", len(p.Units), p.NextPageToken)
	}
	var p2 fleetapi.UnitPage
	_ = json.Unmarshal([]byte(f.do("GET", "/fleet/v1/units?nextPageToken="+p.NextPageToken, "", "").body), &p2)
	if len(p2.Units) != 100 || p2.Units[0].Name != "u100.service" || p2.NextPageToken == "" {
		t.Fatalf("page 2: %d units from %v, token %q", len(p2.Units), p2.Units[0], p2.NextPageToken)
	}
	var p3 fleetapi.UnitPage
	_ = json.Unmarshal([]byte(f.do("GET", "/fleet/v1/units?nextPageToken="+p2.NextPageToken, "", "").body), &p3)
	if len(p3.Units) != 50 || p3.Units[49].Name != "u249.service" || p3.NextPageToken != "" {
		t.Fatalf("page 3: %d units, token %q", len(p3.Units), p3.NextPageToken)
	}
	cl, err := fleetapi.NewClient(f.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	us, err := cl.Units(f.ctx)
	if err != nil || len(us) != n {
		t.Fatalf("client units: %d, %v", len(us), err)
	}
	sts, err := cl.UnitStates(f.ctx, "m1", "")
	if err != nil || len(sts) != n {
		t.Fatalf("client states: %d, %v", len(sts), err)
	}
	for _, c := range []struct{ token, want string }{
		{"!!", ""},
		{"AgABAA==", errBody(400, "token limit must be 100")}, // limit 2, page 1
		{"ZAAAAA==", errBody(400, "token page must be greater than zero")},
	} {
		got := f.do("GET", "/fleet/v1/units?nextPageToken="+c.token, "", "")
		if got.code != 400 || (c.want != "" && got.body != c.want) {
			t.Errorf("token %s: %v, want 400 %s", c.token, got, c.want)
		}
	}
	if got := f.do("GET", "/fleet/v1/state?nextPageToken=a&nextPageToken=b", "", ""); got.body != errBody(400, "too many values for page token") {
		t.Errorf("two tokens: %v", got)
	}
}

// TestEtcdUnavailable: every request is answered 503 with fleet's message
// while etcd is down, and served again once it is back.
func TestEtcdUnavailable(t *testing.T) {
	f := newFixture(t)
	if got := f.do("PUT", "/fleet/v1/units/a.service", jsonCT, `{"options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}`); got.code != 201 {
		t.Fatal(got)
	}
	f.etc.Stop()
	want := errBody(503, fleetapi.UnavailableMessage)
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/fleet/v1/units", ""},
		{"GET", "/fleet/v1/units/a.service", ""},
		{"PUT", "/fleet/v1/units/a.service", `{"desiredState":"loaded"}`},
		{"DELETE", "/fleet/v1/units/a.service", ""},
		{"GET", "/fleet/v1/state", ""},
		{"GET", "/fleet/v1/state/a.service", ""},
		{"GET", "/fleet/v1/machines", ""},
		{"PATCH", "/fleet/v1/machines", `[{"op":"add","path":"/m1/metadata/a","value":"b"}]`},
	} {
		if got := f.do(r.method, r.path, jsonCT, r.body); got.code != 503 || got.body != want {
			t.Errorf("etcd down: %s %s = %v, want 503 %s", r.method, r.path, got, want)
		}
	}
	if got := f.do("GET", "/ready", "", ""); got.code != 503 {
		t.Errorf("/ready with etcd down: %v", got)
	}
	if got := f.do("GET", "/health", "", ""); got.code != 200 {
		t.Errorf("/health with etcd down: %v", got)
	}
	if got := f.do("GET", "/metrics", "", ""); got.code != 200 || !strings.Contains(got.body, "flotilla_registry_up 0") {
		t.Errorf("/metrics with etcd down: %d, registry_up 0 missing", got.code)
	}
	f.etc.Start()
	testmain.Eventually(t, 60*time.Second, 200*time.Millisecond, "API serves again", func() error {
		if got := f.do("GET", "/fleet/v1/units/a.service", "", ""); got.code != 200 {
			return errors.New(got.body)
		}
		return nil
	})
	if got := f.do("GET", "/ready", "", ""); got.code != 200 {
		t.Errorf("/ready with etcd back: %v", got)
	}
}
