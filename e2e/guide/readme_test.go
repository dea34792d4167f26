package guide_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestREADMERolesAreTheExamples: the README's three roles and its middleware, in "Writing your
// own service", say every line of them is in their example (which TestGuide
// and the examples' own tests run): the producer's in
// examples/producer/producer.go, the stage's in examples/splitter, the
// tracking consumer's in examples/tracker. A line edited in one and not the
// other fails here ("// …" marks what is left out).
func TestREADMERolesAreTheExamples(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Writing your own service\n")
	if !ok {
		t.Fatal("README.md has no section \"## Writing your own service\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	roles := []struct {
		name, file string
		min        int
	}{
		{"producer", "examples/producer/producer.go", 4},
		{"stage", "examples/splitter/splitter.go", 10},
		{"tracking consumer", "examples/tracker/tracker.go", 8},
		{"middleware", "examples/splitter/middleware.go", 12},
	}
	rest := section
	for _, r := range roles {
		src, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(r.file)))
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for l := range strings.Lines(string(src)) {
			have[strings.TrimSpace(l)] = true
		}
		var block string
		if _, rest, ok = strings.Cut(rest, "```go\n"); !ok {
			t.Fatalf("README.md's \"Writing your own service\" has no Go block for the %s", r.name)
		}
		block, rest, _ = strings.Cut(rest, "```")
		n := 0
		for l := range strings.Lines(block) {
			l = strings.TrimSpace(l)
			if l == "" || l == "// …" {
				continue
			}
			n++
			if !have[l] {
				t.Errorf("README.md's %s has a line that %s does not: %q", r.name, r.file, l)
			}
		}
		if n < r.min {
			t.Errorf("README.md's %s has %d lines; want at least %d", r.name, n, r.min)
		}
	}
}
