package render_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

// hostAnswer asks nginx at listen for host's page and returns the answer
// ("" when there is none).
func hostAnswer(listen, host string) string {
	req, _ := http.NewRequest("GET", "http://"+listen+"/", nil)
	req.Host = host
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Sprint(resp.StatusCode)
	}
	return string(b)
}

// TestNginxServerPerService: one nginx server block per announced service
// (a resource with per_key), under a real nginx: a service's block
// appears with its key, nginx -t checks each block before it goes in, a
// block nginx refuses never goes in, and a service that goes away takes its
// block along after one reload.
func TestNginxServerPerService(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("no nginx")
	}
	srv := etcdtest.New(t)
	c := srv.Client()
	alpha, beta := backend(t, "127.0.0.5", "alpha"), backend(t, "127.0.0.6", "beta")
	listen := freePort(t)
	work := t.TempDir()
	sites, check := filepath.Join(work, "sites"), filepath.Join(work, "check")
	for _, d := range []string{sites, check} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n"
	}
	nginxConf := func(name, include string) string {
		p := filepath.Join(work, name+".conf")
		os.WriteFile(p, []byte(fmt.Sprintf(`%spid %[2]s/%[3]s.pid;
error_log %[2]s/%[3]s.log;
events {}
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[4]s;
}
`, user, work, name, include)), 0o644)
		return p
	}
	main := nginxConf("nginx", filepath.Join(sites, "*.conf"))
	checkConf := nginxConf("check", filepath.Join(check, "site.conf"))
	reloads := filepath.Join(work, "reloads")

	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	os.WriteFile(filepath.Join(dir, "templates", "site.conf.tmpl"), []byte(`server {
    listen `+listen+`;
    server_name {{.name}}.test;
    location / { proxy_pass http://{{.value}}; }
}
`), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "sites.toml"), []byte(fmt.Sprintf(`[template]
src = "site.conf.tmpl"
keys = ["/services"]
dest_dir = %q
per_key = "/services"
dest_name = "{name}.conf"
check_cmd = "cp {{.src}} %s/site.conf && nginx -t -q -c %s"
reload_cmd = "echo r >> %s && nginx -s reload -c %s"
`, sites, check, checkConf, reloads, main)), 0o644)

	put(t, c, "/services/alpha", alpha)
	put(t, c, "/services/beta", beta)
	logs := &syncBuf{}
	runRender(t, dir, srv, logs)
	eventually(t, "both blocks", func() bool {
		return strings.Contains(read(filepath.Join(sites, "alpha.conf")), alpha) && strings.Contains(read(filepath.Join(sites, "beta.conf")), beta)
	})
	proc(t, "nginx", "-c", main, "-g", "daemon off;")
	eventually(t, "nginx serving both hosts", func() bool {
		return hostAnswer(listen, "alpha.test") == "alpha" && hostAnswer(listen, "beta.test") == "beta"
	})

	// A block nginx -t refuses (an address with a space) never goes in.
	put(t, c, "/services/gamma", "bad address:80")
	eventually(t, "nginx -t refusing gamma", func() bool {
		return strings.Contains(logs.String(), "output gamma.conf (key /services/gamma)")
	})
	if _, err := os.Stat(filepath.Join(sites, "gamma.conf")); err == nil {
		t.Fatal("a block nginx -t refused was installed")
	}
	before := read(reloads)
	c.Delete(t.Context(), "/services/gamma")

	// beta goes away: its block goes, nginx reloads, beta.test falls to
	// the default server (alpha's, the first one).
	c.Delete(t.Context(), "/services/beta")
	eventually(t, "beta.conf removed", func() bool {
		_, err := os.Stat(filepath.Join(sites, "beta.conf"))
		return os.IsNotExist(err)
	})
	eventually(t, "the reload", func() bool { return len(read(reloads)) > len(before) })
	eventually(t, "beta.test answered by the default server", func() bool { return hostAnswer(listen, "beta.test") == "alpha" })
	if got := hostAnswer(listen, "alpha.test"); got != "alpha" {
		t.Errorf("alpha.test = %q after beta went", got)
	}
}
