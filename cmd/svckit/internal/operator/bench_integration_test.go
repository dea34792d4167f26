package operator

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/testenv"
)

// TestBenchQuickWritesJSON checks that `svckit bench --quick` runs against
// the real programs and writes well-formed JSON with the documented keys and
// values that make sense: numbers where figures are, rates, times and sizes
// above zero, ratios in a plausible range, percentiles in order, figures
// that agree with the headline values they come from. Whether a figure is
// good enough is never asserted: figures belong to docs/benchmarks.md.
func TestBenchQuickWritesJSON(t *testing.T) {
	// -short alone skips it, also in CI; but CI does not pass -short
	// (.ci/run runs ./build.sh test, which adds only the arguments it is
	// given), so this runs there.
	if testing.Short() {
		t.Skip("bench --quick takes about a minute")
	}
	bin := testenv.BinDir(t)
	for _, b := range []string{"sensor", "worker", "app", "svckit", "hop"} {
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
	checkBenchJSON(t, m, true)
	if t.Failed() {
		t.Logf("bench JSON:\n%s", b)
	}
}

// benchSides are the ways of hopping messages the bench compares (its
// hop_rounds and the figures <side>_hop_…).
var benchSides = []string{"raw", "raw_sync", "svckit", "svckit_single"}

// importerSides are the two builds of the hop the bench compares (its
// importer_hop_rounds): bin/hop, built as an importer builds svckit, and
// `svckit bench hop`, this repository's build.
var importerSides = []string{"importer", "repo"}

// checkBenchJSON checks the values of a bench run's JSON (see
// bench.Results, cmd/svckit/internal/bench, for the keys and their units).
func checkBenchJSON(t *testing.T, m map[string]any, quick bool) {
	t.Helper()
	// num returns the number at key in obj (where: " figures", say, or ""
	// for the top level), failing the test (and returning ok false) if it
	// is absent, not a number or not finite.
	num := func(obj map[string]any, where, key string) (float64, bool) {
		t.Helper()
		v, has := obj[key]
		if !has {
			t.Errorf("bench JSON%s lacks %q", where, key)
			return 0, false
		}
		f, isNum := v.(float64)
		if !isNum || math.IsNaN(f) || math.IsInf(f, 0) {
			t.Errorf("bench JSON%s %q = %v (%T); want a finite number", where, key, v, v)
			return 0, false
		}
		return f, true
	}
	positive := func(obj map[string]any, where, key string) float64 {
		t.Helper()
		f, ok := num(obj, where, key)
		if ok && f <= 0 {
			t.Errorf("bench JSON%s %q = %v; want > 0", where, key, f)
		}
		return f
	}
	ratio := func(obj map[string]any, where, key string) float64 {
		t.Helper()
		f, ok := num(obj, where, key)
		if ok && (f <= 0 || f >= 10) {
			t.Errorf("bench JSON%s %q = %v; a ratio of two rates, want it in (0, 10)", where, key, f)
		}
		return f
	}
	ordered := func(what string, lo, hi float64) {
		t.Helper()
		if lo > hi {
			t.Errorf("bench JSON: %s (%v > %v)", what, lo, hi)
		}
	}

	// Headline values.
	if q, ok := m["quick"].(bool); !ok || q != quick {
		t.Errorf("bench JSON quick = %v (%T); want %v", m["quick"], m["quick"], quick)
	}
	hopRatio := ratio(m, "", "hop_ratio")
	importerRatio := ratio(m, "", "importer_hop_ratio")
	pipeline := positive(m, "", "pipeline_msgs_per_sec")
	if pr := ratio(m, "", "pipeline_ratio"); pr > 0 {
		figs, _ := m["figures"].(map[string]any)
		if raw, ok := figs["raw_hop_msgs_per_sec"].(float64); ok && math.Abs(pr-pipeline/raw) > 1e-6 {
			t.Errorf("bench JSON pipeline_ratio %v, want pipeline_msgs_per_sec / raw_hop_msgs_per_sec = %v", pr, pipeline/raw)
		}
	}
	p99 := positive(m, "", "p99_ms_at_1k")
	replayDirect := positive(m, "", "replay_msgs_per_sec")
	relayed := positive(m, "", "relay_replay_msgs_per_sec")
	relayRatio := ratio(m, "", "relay_ratio")
	discovery := positive(m, "", "discovery_ms")
	idleRSS := positive(m, "", "idle_rss_mb")

	// Figures: every entry a number, none negative; then by kind.
	figs, ok := m["figures"].(map[string]any)
	if !ok {
		t.Fatalf("bench JSON figures = %v (%T); want an object", m["figures"], m["figures"])
	}
	for _, k := range []string{"raw_hop_msgs_per_sec", "raw_sync_hop_msgs_per_sec", "svckit_hop_msgs_per_sec", "svckit_single_hop_msgs_per_sec", "hop_ratio_sync_mpub", "hop_ratio_single_publish", "raw_pub_msgs_per_sec", "raw_mpub_msgs_per_sec",
		"importer_hop_msgs_per_sec", "repo_hop_msgs_per_sec", "importer_hop_ratio_min", "importer_hop_ratio_max",
		"relay_ratio_min", "relay_ratio_max", "replay_msgs_per_sec_min", "relay_replay_msgs_per_sec_min"} {
		if _, ok := figs[k]; !ok {
			t.Errorf("bench JSON figures lack %q", k)
		}
	}
	keys := make([]string, 0, len(figs))
	for k := range figs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f, ok := num(figs, " figures", k)
		if !ok {
			continue
		}
		switch {
		case f < 0:
			t.Errorf("bench JSON figures %q = %v; no figure of the bench can be negative", k, f)
		case strings.HasPrefix(k, "hop_ratio"), strings.HasPrefix(k, "importer_hop_ratio"), strings.HasPrefix(k, "relay_ratio"):
			ratio(figs, " figures", k)
		case strings.HasSuffix(k, "_msgs_per_mpub"):
			if f < 1 {
				t.Errorf("bench JSON figures %q = %v; want at least 1 message per command", k, f)
			}
		case measured(k):
			positive(figs, " figures", k)
		}
		if (strings.HasPrefix(k, "latency_samples_") || k == "gap_messages" || strings.HasPrefix(k, "max_depth_")) && f != math.Trunc(f) {
			t.Errorf("bench JSON figures %q = %v; a count, want a whole number", k, f)
		}
	}

	// Figures that go together, and with the headline values.
	fig := func(k string) (float64, bool) {
		f, ok := figs[k].(float64)
		return f, ok
	}
	// A headline median lies within its figures' _min and _max.
	for _, h := range []struct {
		name   string
		median float64
	}{{"hop_ratio", hopRatio}, {"importer_hop_ratio", importerRatio}, {"relay_ratio", relayRatio},
		{"replay_msgs_per_sec", replayDirect}, {"relay_replay_msgs_per_sec", relayed}} {
		if lo, ok := fig(h.name + "_min"); ok {
			ordered(h.name+"_min > "+h.name, lo, h.median)
		}
		if hi, ok := fig(h.name + "_max"); ok {
			ordered(h.name+" > "+h.name+"_max", h.median, hi)
		}
	}
	for _, r := range []string{"hop_ratio_sync_mpub", "hop_ratio_single_publish"} {
		lo, ok1 := fig(r + "_min")
		med, ok2 := fig(r)
		if ok1 && ok2 {
			ordered(r+"_min > "+r, lo, med)
		}
	}
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, "p50_ms_at_")
		if !ok {
			continue
		}
		p50, _ := fig(k)
		if v, ok := fig("p99_ms_at_" + rest); ok {
			ordered("p50_ms_at_"+rest+" > p99_ms_at_"+rest, p50, v)
			if v2, ok := fig("p999_ms_at_" + rest); ok {
				ordered("p99_ms_at_"+rest+" > p999_ms_at_"+rest, v, v2)
			}
		}
	}
	if v, ok := fig("p99_ms_at_1k"); !ok || v != p99 {
		t.Errorf("bench JSON: p99_ms_at_1k is %v, its figure %v (present %v)", p99, v, ok)
	}
	if v, ok := fig("discovery_ms_max"); ok {
		ordered("discovery_ms (a median) > discovery_ms_max", discovery, v)
	}
	var idle []float64
	for _, s := range []string{"sensor", "worker", "app"} {
		if v, ok := fig("idle_rss_mb_" + s); ok {
			idle = append(idle, v)
		}
	}
	if len(idle) > 0 && slices.Max(idle) != idleRSS {
		t.Errorf("bench JSON: idle_rss_mb %v is not the largest of the idle_rss_mb_* figures %v", idleRSS, idle)
	}

	// hop_rounds and importer_hop_rounds: each round runs every side of
	// its comparison once, at a rate above zero.
	for _, rs := range []struct {
		key   string
		sides []string
	}{{"hop_rounds", benchSides}, {"importer_hop_rounds", importerSides}} {
		rounds, ok := m[rs.key].([]any)
		if !ok || len(rounds) == 0 {
			t.Errorf("bench JSON %s = %v; want the rounds of the hop", rs.key, m[rs.key])
		}
		for i, x := range rounds {
			round, _ := x.(map[string]any)
			order, _ := round["order"].([]any)
			var names []string
			for _, o := range order {
				s, _ := o.(string)
				names = append(names, s)
			}
			sorted := slices.Clone(names)
			sort.Strings(sorted)
			if want := slices.Sorted(slices.Values(rs.sides)); !slices.Equal(sorted, want) {
				t.Errorf("bench JSON %s[%d] order %v; want each of %v once", rs.key, i, order, rs.sides)
			}
			rates, ok := round["msgs_per_sec"].(map[string]any)
			if !ok {
				t.Errorf("bench JSON %s[%d] msgs_per_sec = %v; want an object", rs.key, i, round["msgs_per_sec"])
				continue
			}
			for _, s := range rs.sides {
				positive(rates, fmt.Sprintf(" %s[%d] msgs_per_sec", rs.key, i), s)
			}
		}
	}
	// importer_hop_ratio is the median of its rounds' ratios, and each
	// side's rate figure the median of its rounds' rates.
	if rounds, ok := m["importer_hop_rounds"].([]any); ok && len(rounds) > 0 {
		var ratios []float64
		rates := map[string][]float64{}
		for _, x := range rounds {
			r, _ := x.(map[string]any)
			ms, _ := r["msgs_per_sec"].(map[string]any)
			imp, _ := ms["importer"].(float64)
			repo, _ := ms["repo"].(float64)
			if imp > 0 && repo > 0 { // otherwise reported above
				ratios = append(ratios, imp/repo)
				rates["importer"], rates["repo"] = append(rates["importer"], imp), append(rates["repo"], repo)
			}
		}
		if len(ratios) < len(rounds) {
			// reported above
		} else if med := median(ratios); math.Abs(med-importerRatio) > 1e-9*med {
			t.Errorf("bench JSON: importer_hop_ratio %v is not the median %v of its rounds' ratios %v", importerRatio, med, ratios)
		}
		for side, v := range rates {
			if f, ok := fig(side + "_hop_msgs_per_sec"); ok && len(v) == len(rounds) && math.Abs(f-median(v)) > 1e-9*f {
				t.Errorf("bench JSON: %s_hop_msgs_per_sec %v is not the median %v of its rounds %v", side, f, median(v), v)
			}
		}
	}

	// machine: what ran it, as strings.
	mach, ok := m["machine"].(map[string]any)
	if !ok {
		t.Errorf("bench JSON machine = %v; want an object", m["machine"])
	}
	for _, k := range []string{"goos", "goarch", "cpus", "go"} {
		if s, _ := mach[k].(string); s == "" {
			t.Errorf("bench JSON machine %q = %v; want a non-empty string", k, mach[k])
		}
	}
}

// median is the bench's median: the mean of the middle two of an even count.
func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

// measured reports whether the figure k is a rate, a time, a size, a cost
// per message or a count of samples: a measurement of something that
// happened, so above zero. (The others, such as CPU percentages, queue
// depths and GC cycles, may be zero.)
func measured(k string) bool {
	switch {
	case strings.HasSuffix(k, "_msgs_per_sec"), // rates
		strings.HasSuffix(k, "_ms"), strings.Contains(k, "_ms_"), strings.HasSuffix(k, "_seconds"), // times
		strings.Contains(k, "rss_mb"), strings.HasSuffix(k, "_live_heap_mb"), strings.HasSuffix(k, "_alloc_bytes_per_msg"), // sizes
		strings.HasSuffix(k, "_cpu_us_per_msg_client"), strings.HasSuffix(k, "_cpu_us_per_msg_nsqd"), // CPU per message
		strings.HasPrefix(k, "latency_samples_"), k == "gap_messages": // counts
		return true
	}
	return false
}
