package operator

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/svckit/svckit/svckit/testenv"
)

// TestBenchQuickWritesJSON checks only that `svckit bench --quick` runs
// against the real programs and writes well-formed JSON with the documented
// keys. Figures are never asserted: they belong to docs/benchmarks.md.
func TestBenchQuickWritesJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("bench --quick takes about a minute")
	}
	bin := testenv.BinDir(t)
	for _, b := range []string{"sensor", "worker", "app"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("%s missing in %s: run ./build.sh first", b, bin)
		}
	}
	out := filepath.Join(t.TempDir(), "bench.json")
	code, stdout, stderr := runCLI(t, "bench", "--quick", "--bin", bin, "--json", out)
	if code != 0 {
		t.Fatalf("svckit bench --quick exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, b)
	}
	for _, k := range []string{"hop_ratio", "pipeline_msgs_per_sec", "p99_ms_at_1k", "replay_msgs_per_sec", "discovery_ms", "idle_rss_mb", "figures"} {
		if _, ok := m[k]; !ok {
			t.Errorf("bench JSON lacks %q", k)
		}
	}
	figs, _ := m["figures"].(map[string]any)
	for _, k := range []string{"raw_hop_msgs_per_sec", "raw_sync_hop_msgs_per_sec", "svckit_hop_msgs_per_sec", "svckit_single_hop_msgs_per_sec", "hop_ratio_sync_mpub", "hop_ratio_single_publish", "raw_pub_msgs_per_sec", "raw_mpub_msgs_per_sec"} {
		if _, ok := figs[k]; !ok {
			t.Errorf("bench JSON figures lack %q", k)
		}
	}
}
