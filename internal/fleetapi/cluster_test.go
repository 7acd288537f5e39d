package fleetapi_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/fleetapi"
	"github.com/flotilla/flotilla/internal/testmain"
)

// member is one `scheduler serve` process of the test cluster.
type member struct {
	id   string
	cmd  *exec.Cmd
	log  *testmain.SyncBuffer
	http string // its --api http address
	sock string // its --api unix socket
}

func startMember(t *testing.T, etc *etcdtest.Server, id string) *member {
	t.Helper()
	dir := t.TempDir()
	m := &member{id: id, log: &testmain.SyncBuffer{}, http: "http://" + etcdtest.FreeAddr(t),
		sock: filepath.Join(dir, "fleet.sock")}
	m.cmd = exec.Command(testmain.Bin("scheduler"), "serve", "--endpoints", etc.Endpoint(),
		"--prefix", "/cluster/", "--data-dir", dir, "--machine-id", id, "--executor", "process",
		"--public-ip", "127.0.0.1", "--ttl", "3s", "--engine-period", "2s",
		"--api", "unix://"+m.sock, "--api", m.http, "--api-endpoint-prefix", "/clusterstate/")
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m.cmd.ProcessState == nil {
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
			_ = m.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("log of %s:\n%s", id, m.log.String())
		}
	})
	return m
}

func (m *member) kill(t *testing.T) {
	t.Helper()
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
}

// scrape reads one metric's value from a /metrics answer (-1 if absent).
func scrape(t *testing.T, base, metric string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == metric {
			v, _ := strconv.ParseFloat(val, 64)
			return v
		}
	}
	return -1
}

// TestClusterThroughAPI drives a 3-machine cluster (3 `scheduler serve`
// processes, process executor, real etcd) through the HTTP API only:
// metadata set by PATCH steers placement, submit, start, state, the
// machine running the unit dies and the unit moves, destroy; /metrics is
// scraped and checked along the way; a headless Chromium watches the
// dashboard see the move without a reload.
func TestClusterThroughAPI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	etc := etcdtest.New(t)
	ms := map[string]*member{}
	for _, id := range []string{"m1", "m2", "m3"} {
		ms[id] = startMember(t, etc, id)
	}
	// m1 never runs the unit (no ssd), so its API stays up throughout.
	api := ms["m1"]
	cl, err := fleetapi.NewClient("unix://"+api.sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	testmain.Eventually(t, 60*time.Second, 200*time.Millisecond, "3 machines listed", func() error {
		got, err := cl.Machines(ctx)
		if err != nil || len(got) != 3 {
			return fmt.Errorf("%d machines, %v", len(got), err)
		}
		return nil
	})
	if err := cl.PatchMetadata(ctx, []fleetapi.MetadataOp{
		{Op: "add", Path: "/m2/metadata/disk", Value: json.RawMessage(`"ssd"`)},
		{Op: "add", Path: "/m3/metadata/disk", Value: json.RawMessage(`{"value":"ssd"}`)},
	}); err != nil {
		t.Fatal(err)
	}
	unitOpts := []*fleetapi.UnitOption{
		{Section: "Unit", Name: "Description", Value: "hello through the API"},
		{Section: "Service", Name: "ExecStart", Value: "/bin/sleep 120"},
		{Section: "X-Fleet", Name: "MachineMetadata", Value: "disk=ssd"},
	}
	if code, err := cl.SetUnit(ctx, &fleetapi.Unit{Name: "hello.service", Options: unitOpts}); err != nil || code != 201 {
		t.Fatalf("submit: %d %v", code, err)
	}
	if code, err := cl.SetUnit(ctx, &fleetapi.Unit{Name: "hello.service", Options: unitOpts}); code != 409 {
		t.Fatalf("resubmit without state: %d %v, want 409", code, err)
	}
	if err := cl.SetDesiredState(ctx, "hello.service", "launched"); err != nil {
		t.Fatal(err)
	}
	// A unit no machine satisfies stays unplaced, with the reason in /metrics.
	if _, err := cl.SetUnit(ctx, &fleetapi.Unit{Name: "nowhere.service", DesiredState: "launched", Options: []*fleetapi.UnitOption{
		{Section: "Service", Name: "ExecStart", Value: "/bin/sleep 120"},
		{Section: "X-Fleet", Name: "MachineMetadata", Value: "disk=tape"}}}); err != nil {
		t.Fatal(err)
	}
	// A unit that keeps failing on m1, restarted by its agent (Restart=always,
	// no start limit: it never ends failed).
	if _, err := cl.SetUnit(ctx, &fleetapi.Unit{Name: "flappy.service", DesiredState: "launched", Options: []*fleetapi.UnitOption{
		{Section: "Unit", Name: "StartLimitIntervalSec", Value: "0"},
		{Section: "Service", Name: "ExecStart", Value: "/bin/sh -c 'sleep 0.5; exit 1'"},
		{Section: "Service", Name: "Restart", Value: "always"},
		{Section: "Service", Name: "RestartSec", Value: "1"},
		{Section: "X-Fleet", Name: "MachineID", Value: "m1"}}}); err != nil {
		t.Fatal(err)
	}
	first := waitRunning(t, ctx, cl, "")
	if first != "m2" && first != "m3" {
		t.Fatalf("hello.service runs on %s, which has no disk=ssd", first)
	}
	if u, err := cl.Unit(ctx, "hello.service"); err != nil || u.CurrentState != "launched" || u.MachineID != first {
		t.Fatalf("unit: %+v %v", u, err)
	}
	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "metrics of the running cluster", func() error {
		for metric, want := range map[string]float64{
			"flotilla_machines":                        3,
			`flotilla_units{state="launched"}`:         2, // hello, and flappy: its agent holds it launched between restarts
			`flotilla_units_desired{state="launched"}`: 3,
			"flotilla_registry_up":                     1,
		} {
			if got := scrape(t, api.http, metric); got != want {
				return fmt.Errorf("%s = %v, want %v", metric, got, want)
			}
		}
		resp, err := http.Get(api.http + "/metrics")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `flotilla_unit_unplaced{reason=`) || !strings.Contains(string(b), `unit="nowhere.service"} 1`) {
			return errors.New("no flotilla_unit_unplaced for nowhere.service")
		}
		return nil
	})
	// The engine leader's own /metrics counts its passes.
	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "engine passes counted by the leader", func() error {
		for _, m := range ms {
			if scrape(t, m.http, `flotilla_engine_leader{machine="`+m.id+`"}`) == 1 && scrape(t, m.http, "flotilla_engine_passes_total") > 0 {
				return nil
			}
		}
		return errors.New("no member both leads and counts passes")
	})

	// An endpoint announced under the dashboard's prefix (as announce writes it).
	if _, err := etc.Client().Put(ctx, "/clusterstate/web/hello.service", first+" 127.0.0.1:8080", 0); err != nil {
		t.Fatal(err)
	}
	br := startBrowser(t, ctx, api.http+"/")
	dashMachine := func() string {
		if br == nil { // no browser: the server-rendered view
			resp, err := http.Get(api.http + "/dashboard/view")
			if err != nil {
				return err.Error()
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			_, rest, _ := strings.Cut(string(b), `data-unit="hello.service" data-machine="`)
			m, _, _ := strings.Cut(rest, `"`)
			return m
		}
		return br.eval(t, `(function(){var r=document.querySelector('#units tr[data-unit="hello.service"]');return r?r.dataset.machine:"";})()`)
	}
	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "dashboard shows the unit's machine", func() error {
		if got := dashMachine(); got != first {
			return fmt.Errorf("dashboard shows hello.service on %q, want %q", got, first)
		}
		return nil
	})
	if br != nil {
		if got := br.eval(t, `document.querySelector('#endpoints tr[data-key="/clusterstate/web/hello.service"]').textContent`); !strings.Contains(got, "127.0.0.1:8080") {
			t.Errorf("dashboard endpoints row: %q", got)
		}
		br.eval(t, `window.__sameDocument = "yes"`)
	}

	// The machine running the unit dies; the unit moves to the other ssd machine.
	ms[first].kill(t)
	second := waitRunning(t, ctx, cl, first)
	if second == "m1" {
		t.Fatalf("hello.service moved to m1, which has no disk=ssd")
	}
	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "dashboard shows the move", func() error {
		if got := dashMachine(); got != second {
			return fmt.Errorf("dashboard shows hello.service on %q, want %q", got, second)
		}
		return nil
	})
	if br != nil && br.eval(t, `window.__sameDocument`) != "yes" {
		t.Error("the dashboard was reloaded to see the move; want a live update")
	}
	if p := os.Getenv("FLOTILLA_DASHBOARD_PNG"); p != "" && br != nil {
		if err := os.WriteFile(p, br.screenshot(t), 0o644); err != nil {
			t.Error(err)
		}
	}
	if got := scrape(t, api.http, "flotilla_machines"); got != 2 {
		t.Errorf("flotilla_machines after the loss = %v, want 2", got)
	}

	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "agent restarts counted", func() error {
		if got := scrape(t, api.http, `flotilla_unit_restarts_total{machine="m1",unit="flappy.service"}`); got < 2 {
			return fmt.Errorf("flappy.service restarts = %v, want >= 2", got)
		}
		return nil
	})

	// Destroy: the unit and its state go.
	if err := cl.DestroyUnit(ctx, "hello.service"); err != nil {
		t.Fatal(err)
	}
	if err := cl.DestroyUnit(ctx, "hello.service"); err == nil || err.(*fleetapi.StatusError).Code != 404 {
		t.Errorf("second destroy: %v, want 404", err)
	}
	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "destroyed unit's state gone", func() error {
		sts, err := cl.UnitStates(ctx, "", "hello.service")
		if err != nil || len(sts) != 0 {
			return fmt.Errorf("states %v, %v", sts, err)
		}
		return nil
	})
}

// waitRunning waits until hello.service runs on a machine other than not,
// per the state API, and returns that machine.
func waitRunning(t *testing.T, ctx context.Context, cl *fleetapi.Client, not string) string {
	t.Helper()
	var on string
	testmain.Eventually(t, 60*time.Second, 300*time.Millisecond, "hello.service running elsewhere than "+not, func() error {
		sts, err := cl.UnitStates(ctx, "", "hello.service")
		if err != nil {
			return err
		}
		for _, s := range sts {
			if s.MachineID != not && s.SystemdActiveState == "active" && s.SystemdSubState == "running" {
				u, err := cl.Unit(ctx, "hello.service")
				if err != nil || u.MachineID != s.MachineID {
					return fmt.Errorf("unit %+v, %v", u, err)
				}
				on = s.MachineID
				return nil
			}
		}
		return fmt.Errorf("states %v", sts)
	})
	return on
}

// browser is a headless Chromium driven over the DevTools protocol.
type browser struct {
	conn *websocket.Conn
	id   int
}

func startBrowser(t *testing.T, ctx context.Context, url string) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Log("chromium not installed (make deps installs Debian's chromium): the dashboard is checked without a browser")
		return nil
	}
	udd := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
		"--user-data-dir="+udd, "--window-size=1200,800", url)
	out := &testmain.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("chromium output:\n%s", out.String())
		}
	})
	var port string
	testmain.Eventually(t, 60*time.Second, 100*time.Millisecond, "chromium's DevTools port", func() error {
		b, err := os.ReadFile(filepath.Join(udd, "DevToolsActivePort"))
		if err != nil {
			return err
		}
		port, _, _ = strings.Cut(string(b), "\n")
		return nil
	})
	var wsURL string
	testmain.Eventually(t, 60*time.Second, 200*time.Millisecond, "the dashboard page target", func() error {
		resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var targets []struct{ Type, URL, WebSocketDebuggerURL string }
		if err := json.NewDecoder(resp.Body).Decode(&targets); err != nil {
			return err
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, url) {
				wsURL = tg.WebSocketDebuggerURL
				return nil
			}
		}
		return fmt.Errorf("targets %v", targets)
	})
	conn, _, err := websocket.DefaultDialer.DialContext(ctx, wsURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &browser{conn: conn}
}

func (b *browser) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	b.id++
	if err := b.conn.WriteJSON(map[string]any{"id": b.id, "method": method, "params": params}); err != nil {
		t.Fatal(err)
	}
	_ = b.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := b.conn.ReadJSON(&msg); err != nil {
			t.Fatalf("devtools %s: %v", method, err)
		}
		if msg.ID != b.id {
			continue // an event
		}
		if len(msg.Error) > 0 {
			t.Fatalf("devtools %s: %s", method, msg.Error)
		}
		return msg.Result
	}
}

// eval evaluates a JavaScript expression in the page, as a string.
func (b *browser) eval(t *testing.T, expr string) string {
	t.Helper()
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
	}
	if err := json.Unmarshal(b.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}), &r); err != nil {
		t.Fatal(err)
	}
	if r.Result.Value == nil {
		return ""
	}
	return fmt.Sprint(r.Result.Value)
}

func (b *browser) screenshot(t *testing.T) []byte {
	t.Helper()
	var r struct{ Data string }
	if err := json.Unmarshal(b.call(t, "Page.captureScreenshot", map[string]any{"format": "png"}), &r); err != nil {
		t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	return png
}
