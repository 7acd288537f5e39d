// Package docker runs the seed's docker form for real where a Docker engine
// is present: an image built locally (`FROM scratch` with the static backend
// of examples/units/docker/backend; there is no registry), saved to a file and
// removed, so that the global prefetch oneshot's `docker load` is what brings
// it to the workers, then examples/units/docker/nginx@.service instances
// (docker rm -f / docker run --rm --name %p-%i / docker stop) scheduled,
// announced and balanced through a real haproxy, with a machine lost on the
// way — the same scenario as integration/seed. It skips where there is no
// Docker engine.
package docker_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/integration/seed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

const image = "flotilla/backend:demo"

// run runs a command and fails t with its output when it fails.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestSeedDockerDeployment(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("docker: the scenario runs as root (as `make test` does in CI)")
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Skip("docker: no docker CLI on PATH; the docker form of the seed is not run here (make demo does not need Docker)")
	}
	if out, err := exec.Command(docker, "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("docker: no Docker engine reachable (docker info: %v: %s); the docker form of the seed is not run here", err, strings.TrimSpace(string(out)))
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t0 := time.Now()

	// The image, built locally from a static binary, saved to a file, and
	// removed from the engine: prefetch.service's docker load brings it back.
	ctxDir := filepath.Join(dir, "image")
	os.MkdirAll(ctxDir, 0o755)
	run(t, root, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-o", filepath.Join(ctxDir, "backend"), "./examples/units/docker/backend")
	df, err := os.ReadFile(filepath.Join(root, "examples/units/docker/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), df, 0o644)
	run(t, ctxDir, nil, docker, "build", "-q", "-t", image, ".")
	tar := filepath.Join(dir, "backend-image.tar")
	run(t, dir, nil, docker, "save", "-o", tar, image)
	run(t, dir, nil, docker, "rmi", image)
	t.Cleanup(func() {
		exec.Command(docker, "rm", "-f", "nginx-1", "nginx-2").Run()
		exec.Command(docker, "rmi", image).Run()
	})

	t.Logf("image built, saved to %s and removed from the engine: %s", tar, time.Since(t0).Round(time.Millisecond))
	seed.Run(t, seed.Options{
		UnitDir: "examples/units/docker",
		Replace: []string{
			"/var/lib/flotilla/backend-image.tar", tar,
			"/usr/bin/docker", docker,
		},
	})
	if out, err := exec.Command(docker, "image", "inspect", image).CombinedOutput(); err != nil {
		t.Errorf("the image is not in the engine after the run: prefetch.service did not load it: %v\n%s", err, out)
	}
}
