package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The production binaries link no test code: not the testing package (which
// also registers its -test.* flags in every program that links it), and not
// the test helpers that start programs for tests. `svckit bench` starts its
// consul, nsqd and nsqlookupd through internal/localstack, which returns
// errors instead of taking a testing.TB.
func TestBinariesLinkNoTestCode(t *testing.T) {
	goBin, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	const mod = "github.com/svckit/svckit"
	forbidden := map[string]bool{
		"testing":                  true,
		mod + "/svckit/testenv":    true,
		mod + "/internal/pipetest": true,
	}
	for _, pkg := range []string{mod + "/cmd/svckit", mod + "/sensor", mod + "/worker", mod + "/app", mod + "/internal/localstack"} {
		cmd := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as ./build.sh builds them
		out, err := cmd.Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s listed only %q", pkg, deps)
		}
		for _, d := range deps {
			if forbidden[d] {
				t.Errorf("%s links %s", pkg, d)
			}
		}
	}
}
