package unit_test

import (
	"fmt"

	"github.com/flotilla/flotilla/internal/unit"
)

func ExampleParse() {
	body := []byte(`[Unit]
Description=nginx %i

[Service]
ExecStart=/usr/bin/docker run --name nginx-%i nginx
ExecStartPost=/usr/local/bin/announce --detach --addr ${PUBLIC_IP}:8080 /clusterstate/www/%n

[X-Fleet]
Conflicts=%p@*.service
MachineMetadata=role!=lb
`)
	tmpl, err := unit.Parse("nginx@.service", body)
	if err != nil {
		fmt.Println(err)
		return
	}
	inst, _ := tmpl.Instantiate("1")
	fmt.Println(inst.Name, inst.Hash()[:7], inst.Fleet.Conflicts, inst.Fleet.Metadata)

	post := inst.Service.ExecStartPost[0]
	_, argv, _ := post.Command(unit.Specifiers{Name: inst.Name}, []string{"PUBLIC_IP=10.0.0.7"})
	fmt.Printf("%q\n", argv)

	_, err = unit.Parse("nginx@.service", []byte("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineRole=lb\n"))
	fmt.Println(err)
	// Output:
	// nginx@1.service b9ae262 [nginx@*.service] [role!=lb]
	// ["/usr/local/bin/announce" "--detach" "--addr" "10.0.0.7:8080" "/clusterstate/www/nginx@1.service"]
	// unit nginx@.service line 4: unknown [X-Fleet] key "MachineRole" (known: MachineID, MachineOf, MachineMetadata, Conflicts, Global, Replaces)
}

func ExampleExpandEnv() {
	env := []string{"OPTS=-v --color", "GREETING=hello world"}
	fmt.Printf("%q\n", unit.ExpandEnv([]string{"/bin/prog", "$OPTS", "${GREETING}", "--x=${GREETING}", "$$5"}, env))
	// Output: ["/bin/prog" "-v" "--color" "hello world" "--x=hello world" "$5"]
}
