package agent_test

import (
	"fmt"
	"sort"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/registry"
)

// The environment every unit of a machine gets, e.g. for
// ExecStartPost=/usr/bin/announce --addr ${PUBLIC_IP}:8080 /clusterstate/web/%n
func ExampleFacts() {
	env := agent.Facts(registry.Machine{ID: "fe64b5d8", IP: "10.0.0.2", Metadata: map[string]string{"role": "worker", "disk-type": "ssd"}})
	var keys []string
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%s=%s\n", k, env[k])
	}
	// Output:
	// FLOTILLA_MACHINE_ID=fe64b5d8
	// FLOTILLA_METADATA_DISK_TYPE=ssd
	// FLOTILLA_METADATA_ROLE=worker
	// FLOTILLA_PUBLIC_IP=10.0.0.2
	// PUBLIC_IP=10.0.0.2
}
