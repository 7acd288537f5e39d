package render_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/resources"
)

// TestSharedReloadOnePerBurst: two resources that share a reload (the same
// reload_cmd, or one reload_group) and change in one burst cause one
// reload; resources with reloads of their own each reload.
func TestSharedReloadOnePerBurst(t *testing.T) {
	tests := map[string]struct {
		a, b      string // extra lines of a.toml and b.toml; %s is the reload log
		perBurst  int
		firstOnes int
	}{
		"same reload_cmd": {`reload_cmd = "echo r >> %s"`, `reload_cmd = "echo r >> %s"`, 1, 1},
		"reload_group": {"reload_cmd = \"echo a >> %s\"\nreload_group = \"lb\"",
			"reload_cmd = \"echo b >> %s\"\nreload_group = \"lb\"", 1, 1},
		"own reloads": {`reload_cmd = "echo a >> %s"`, `reload_cmd = "echo b >> %s"`, 2, 2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			log := filepath.Join(f.out, "reloads")
			da := f.resource("a", `"/sa"`, `{{range gets "/sa/*"}}{{.Value}} {{end}}`+"\n", fmt.Sprintf(tc.a, log))
			db := f.resource("b", `"/sb"`, `{{range gets "/sb/*"}}{{.Value}} {{end}}`+"\n", fmt.Sprintf(tc.b, log))
			f.put("/sa/k", "0")
			f.put("/sb/k", "0")
			cfg := f.config()
			cfg.Wait = resources.Wait{Min: 300 * time.Millisecond, Max: 5 * time.Second}
			f.run(cfg)
			f.eventually("first renders", func() bool { return read(da) == "0 \n" && read(db) == "0 \n" })
			f.eventually("first reloads", func() bool { return lines(log) >= tc.firstOnes })
			time.Sleep(1500 * time.Millisecond) // a reload too many would show
			if n := lines(log); n != tc.firstOnes {
				t.Fatalf("first render of both: %d reloads, want %d", n, tc.firstOnes)
			}
			for burst := 1; burst <= 2; burst++ {
				before := lines(log)
				for i := range 20 {
					f.put(fmt.Sprintf("/s%c/k", "ab"[i%2]), fmt.Sprintf("%d-%d", burst, i))
				}
				f.eventually("the burst rendered", func() bool {
					return strings.Contains(read(da), fmt.Sprintf("%d-18 ", burst)) && strings.Contains(read(db), fmt.Sprintf("%d-19 ", burst))
				})
				f.eventually("the reload", func() bool { return lines(log) > before })
				time.Sleep(1500 * time.Millisecond)
				if n := lines(log) - before; n != tc.perBurst {
					t.Errorf("burst %d over two resources: %d reloads, want %d", burst, n, tc.perBurst)
				}
			}
		})
	}
}

// TestOnetimeSharedReload: onetime runs a reload shared by two resources once.
func TestOnetimeSharedReload(t *testing.T) {
	f := newFixture(t)
	log := filepath.Join(f.out, "reloads")
	f.resource("a", `"/oa"`, `{{getv "/oa/k"}}`+"\n", fmt.Sprintf(`reload_cmd = "echo r >> %s"`, log))
	f.resource("b", `"/ob"`, `{{getv "/ob/k"}}`+"\n", fmt.Sprintf(`reload_cmd = "echo r >> %s"`, log))
	f.resource("c", `"/ob"`, `{{getv "/ob/k"}}`+"\n", fmt.Sprintf(`reload_cmd = "echo c >> %s"`, log))
	f.put("/oa/k", "1")
	f.put("/ob/k", "2")
	if err := render.Onetime(f.ctx, f.config()); err != nil {
		t.Fatal(err)
	}
	if got := read(log); got != "r\nc\n" {
		t.Errorf("reloads %q, want one shared (r) and one own (c)", got)
	}
}

// TestMaxAttemptsGivesUpUntilChange: a resource whose render keeps failing
// is tried MaxAttempts times, then waits for its next change, which brings
// a new budget of attempts.
func TestMaxAttemptsGivesUpUntilChange(t *testing.T) {
	f := newFixture(t)
	tries := filepath.Join(f.out, "tries")
	f.resource("m", `"/m"`, `{{getv "/m/v"}}`+"\n", fmt.Sprintf(`check_cmd = "echo x >> %s; false"`, tries))
	f.put("/m/v", "1")
	cfg := f.config()
	cfg.MaxAttempts = 2
	f.run(cfg)
	f.eventually("two attempts", func() bool { return lines(tries) >= 2 })
	time.Sleep(1500 * time.Millisecond) // backoff 50ms, 100ms, …: more attempts would show
	if n := lines(tries); n != 2 {
		t.Fatalf("%d attempts with MaxAttempts 2", n)
	}
	if !strings.Contains(f.logs.String(), "giving up until the next change") {
		t.Error("giving up was not logged")
	}
	f.put("/m/v", "2")
	f.eventually("two more attempts after the change", func() bool { return lines(tries) >= 4 })
	time.Sleep(1500 * time.Millisecond)
	if n := lines(tries); n != 4 {
		t.Fatalf("%d attempts after a change, want 4", n)
	}
}
