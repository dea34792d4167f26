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
		"testing":                       true,
		mod + "/svckit/testenv":         true,
		mod + "/internal/pipetest":      true,
		mod + "/internal/crashfuse":     true,
		mod + "/svckit/durable/crashfs": true,
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

// The library's layers, as docs/architecture.md states them: no library
// package imports the service wiring (service is on top: mains, the
// reference services and the CLI's bench use it), and none imports test
// support. A package that did would drag its dependants' weight into
// every importer of the lower one. The CLI's own packages (operator,
// infra, bench) are not the library's: they live in cmd/svckit/internal,
// which importers cannot import.
func TestLibraryLayers(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	const mod = "github.com/svckit/svckit"
	out, err := exec.Command(goBin, "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", mod+"/svckit/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	never := []string{mod + "/svckit/service", mod + "/svckit/testenv", mod + "/internal/crashfuse", mod + "/internal/pipetest"}
	// What each lower package may import from svckit (all else is above it).
	below := map[string][]string{
		"envelope": {}, "durable": {}, "config": {}, "logging": {}, "metrics": {}, "health": {},
		"retainlog":    {"durable"},
		"deadletter":   {"durable", "logging", "metrics"},
		"ownership":    {"logging"},
		"tracing":      {"envelope"},
		"tracing/otlp": {"logging", "tracing"},
		"pubsub":       {"deadletter", "discovery", "envelope", "logging", "metrics", "tracing"},
		"replay":       {"discovery", "durable", "envelope", "logging", "metrics", "retainlog", "tracing"},
		"stage":        {"envelope", "logging", "pubsub", "replay", "tracing"},
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 15 {
		t.Fatalf("go list %s/svckit/... listed only:\n%s", mod, out)
	}
	for _, line := range lines {
		f := strings.Fields(line)
		pkg := f[0]
		name := strings.TrimPrefix(pkg, mod+"/svckit/")
		if top, _, _ := strings.Cut(name, "/"); top == "operator" || top == "infra" || top == "bench" {
			t.Errorf("%s is the CLI's (cmd/svckit/internal/%s), not the library's", pkg, top)
		}
		allowed, layered := below[name]
		for _, imp := range f[1:] {
			for _, n := range never {
				if imp == n && pkg != n {
					t.Errorf("%s imports %s", pkg, imp)
				}
			}
			if layered && strings.HasPrefix(imp, mod+"/svckit/") {
				ok := false
				for _, a := range allowed {
					ok = ok || imp == mod+"/svckit/"+a
				}
				if !ok {
					t.Errorf("%s imports %s, above it", pkg, imp)
				}
			}
		}
	}
}
