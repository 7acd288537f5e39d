package resources_test

import (
	"fmt"
	"os"

	"github.com/flotilla/flotilla/resources"
)

// A confd resource file: the global prefix joins the resource's, and the
// template sees keys without them.
func ExampleParse() {
	r, err := resources.Parse("/etc/confd/conf.d/haproxy.toml", []byte(`
[template]
src = "haproxy.cfg.tmpl"
dest = "/etc/haproxy/haproxy.cfg"
prefix = "/clusterstate"
keys = [ "/demo" ]
check_cmd = "haproxy -c -f {{.src}}"
reload_cmd = "systemctl reload haproxy.service"
wait = "50ms:500ms"
`), resources.LoadOptions{Prefix: "/prod"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Src)
	fmt.Println(r.Keys)
	fmt.Println(r.Match("/prod/clusterstate/demo/nginx@1.service"), r.Match("/prod/clusterstate/demo2/x"))
	fmt.Println(r.Relative("/prod/clusterstate/demo/nginx@1.service"))
	fmt.Println(r.Wait)
	// Output:
	// /etc/confd/templates/haproxy.cfg.tmpl
	// [/prod/clusterstate/demo]
	// true false
	// /demo/nginx@1.service
	// 50ms:500ms
}

func ExampleUnifiedDiff() {
	os.Stdout.Write(resources.UnifiedDiff("haproxy.cfg", "haproxy.cfg",
		[]byte("listen appname\n    server host1 10.0.0.1:8080 check\n"),
		[]byte("listen appname\n    server host1 10.0.0.1:8080 check\n    server host2 10.0.0.2:8080 check\n")))
	// Output:
	// --- haproxy.cfg
	// +++ haproxy.cfg
	// @@ -1,2 +1,3 @@
	//  listen appname
	//      server host1 10.0.0.1:8080 check
	// +    server host2 10.0.0.2:8080 check
}
