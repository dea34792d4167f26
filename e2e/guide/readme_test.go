package guide_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestREADMEStageIsTheExample: the README's stage, in "Writing your own
// service", says every line of it is in examples/splitter/splitter.go
// (which TestGuide and examples/splitter's own test run). A line edited in
// one and not the other fails here.
func TestREADMEStageIsTheExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(root, "examples", "splitter", "splitter.go"))
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for l := range strings.Lines(string(src)) {
		have[strings.TrimSpace(l)] = true
	}
	_, section, ok := strings.Cut(string(readme), "\n## Writing your own service\n")
	if !ok {
		t.Fatal("README.md has no section \"## Writing your own service\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, block, ok := strings.Cut(section, "```go\n")
	if !ok {
		t.Fatal("README.md's \"Writing your own service\" has no Go block")
	}
	block, _, _ = strings.Cut(block, "```")
	n := 0
	for l := range strings.Lines(block) {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		n++
		if !have[l] {
			t.Errorf("README.md's stage has a line that examples/splitter/splitter.go does not: %q", l)
		}
	}
	if n < 10 {
		t.Errorf("README.md's stage has %d lines; want the stage's Setup and Transform", n)
	}
}
