package operator

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/testenv"
)

// TestBenchPeerJetStream runs `svckit bench --quick --peer jetstream
// --only pipeline` against real consul, nsqd and nats-server (bin/, from
// ./build.sh): the pipeline's burst and latency rates, the disk, svckit's
// durable hop and JetStream with either sync setting, with its directories
// in a data directory of the test's. It checks that the text and the JSON
// carry the table's four rows, the disk's figures and the targets judged
// against them, consistently; and that nothing is left behind: no
// directory in the data directory, no nats-server running on it. Whether a
// figure is good enough is never asserted: figures belong to
// docs/benchmarks.md.
func TestBenchPeerJetStream(t *testing.T) {
	if testing.Short() {
		t.Skip("bench --quick --peer jetstream takes about two minutes")
	}
	bin := testenv.BinDir(t)
	for _, b := range []string{"consul", "nsqd", "nsqlookupd", "sensor", "worker", "app", "nats-server"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("%s missing in %s: run ./build.sh first", b, bin)
		}
	}
	data := t.TempDir()
	out := filepath.Join(t.TempDir(), "bench.json")
	code, stdout, stderr := runCLI(t, "bench", "--quick", "--peer", "jetstream", "--only", "pipeline",
		"--bin", bin, "--data-dir", data, "--json", out)
	if code != 0 {
		t.Fatalf("svckit bench --quick --peer jetstream exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Disk *struct {
			Dir               string             `json:"dir"`
			Samples           int                `json:"samples"`
			AppendFsync       map[string]float64 `json:"append_fsync"`
			PreallocFdatasync map[string]float64 `json:"prealloc_fdatasync"`
			LimitP99Ms        float64            `json:"limit_p99_ms"`
		} `json:"disk"`
		LatencyTargets []struct {
			Rate          int     `json:"rate"`
			PipelineP99Ms float64 `json:"pipeline_p99_ms"`
			DiskP99Ms     float64 `json:"disk_p99_ms"`
			AllowanceMs   float64 `json:"allowance_ms"`
			BoundMs       float64 `json:"bound_ms"`
			Met           bool    `json:"met"`
		} `json:"latency_targets"`
		Comparison []struct {
			System        string  `json:"system"`
			MsgsPerSec    float64 `json:"msgs_per_sec"`
			MsgsPerSecMin float64 `json:"msgs_per_sec_min"`
			MsgsPerSecMax float64 `json:"msgs_per_sec_max"`
			P50MsAt1k     float64 `json:"p50_ms_at_1k"`
			P99MsAt1k     float64 `json:"p99_ms_at_1k"`
			Durable       bool    `json:"durable_against_power_loss"`
		} `json:"comparison"`
		Figures map[string]float64 `json:"figures"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, b)
	}
	defer func() {
		if t.Failed() {
			t.Logf("bench JSON:\n%s\nstdout:\n%s", b, stdout)
		}
	}()

	// The disk, in the data directory.
	if d := res.Disk; d == nil {
		t.Error("bench JSON has no disk")
	} else {
		if d.Dir != data || d.Samples != 2000 {
			t.Errorf("disk measured in %q with %d samples; want %q (--data-dir), 2000", d.Dir, d.Samples, data)
		}
		for name, p := range map[string]map[string]float64{"append_fsync": d.AppendFsync, "prealloc_fdatasync": d.PreallocFdatasync} {
			if !(p["p50_ms"] > 0 && p["p50_ms"] <= p["p99_ms"] && p["p99_ms"] <= p["max_ms"]) {
				t.Errorf("disk %s = %v; want 0 < p50 <= p99 <= max", name, p)
			}
		}
		if d.LimitP99Ms != math.Min(d.AppendFsync["p99_ms"], d.PreallocFdatasync["p99_ms"]) {
			t.Errorf("disk limit_p99_ms %v is not the lower p99 of the two ways", d.LimitP99Ms)
		}
		// The targets, judged against it in the same run.
		want := map[int]float64{1000: 1.5, 10000: 3}
		for _, lt := range res.LatencyTargets {
			allowance, ok := want[lt.Rate]
			delete(want, lt.Rate)
			fig := res.Figures["p99_ms_at_"+map[int]string{1000: "1k", 10000: "10k"}[lt.Rate]]
			switch {
			case !ok:
				t.Errorf("latency target at %d/s: not one of the issue's", lt.Rate)
			case lt.AllowanceMs != allowance, lt.DiskP99Ms != d.LimitP99Ms, math.Abs(lt.BoundMs-(lt.DiskP99Ms+lt.AllowanceMs)) > 1e-9,
				lt.PipelineP99Ms != fig, lt.Met != (lt.PipelineP99Ms <= lt.BoundMs):
				t.Errorf("latency target at %d/s = %+v; want the disk's p99 %v + %v ms against the pipeline's p99 %v, met when within", lt.Rate, lt, d.LimitP99Ms, allowance, fig)
			}
		}
		if len(want) > 0 {
			t.Errorf("latency targets lack the rates %v", want)
		}
	}

	// The table: four rows, in order, each measured.
	systems := []string{"svckit durable hop", "svckit pipeline", "JetStream default sync", "JetStream sync always"}
	durable := []bool{true, true, false, true}
	if len(res.Comparison) != len(systems) {
		t.Fatalf("comparison has %d rows; want %v", len(res.Comparison), systems)
	}
	for i, row := range res.Comparison {
		if row.System != systems[i] || row.Durable != durable[i] {
			t.Errorf("comparison row %d = %q (durable %v); want %q (durable %v)", i, row.System, row.Durable, systems[i], durable[i])
		}
		if !(row.MsgsPerSec > 0 && row.MsgsPerSecMin <= row.MsgsPerSec && row.MsgsPerSec <= row.MsgsPerSecMax) {
			t.Errorf("%s: throughput %v (range %v-%v); want above zero, within its range", row.System, row.MsgsPerSec, row.MsgsPerSecMin, row.MsgsPerSecMax)
		}
		if !(row.P50MsAt1k > 0 && row.P50MsAt1k <= row.P99MsAt1k) {
			t.Errorf("%s: p50 %v, p99 %v at 1k/s; want 0 < p50 <= p99", row.System, row.P50MsAt1k, row.P99MsAt1k)
		}
		if !strings.Contains(stdout, row.System) {
			t.Errorf("the text output lacks the row %q", row.System)
		}
	}
	for _, s := range []string{"met", "preallocated, zero-filled + fdatasync", "Jepsen"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("the text output lacks %q", s)
		}
	}

	// Nothing left: the run's directories removed, nats-server stopped.
	if left, _ := os.ReadDir(data); len(left) != 0 {
		t.Errorf("the bench left %d entries in its --data-dir %s", len(left), data)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if cmd, err := os.ReadFile(p); err == nil && bytes.Contains(cmd, []byte("nats-server")) && bytes.Contains(cmd, []byte(data)) {
			t.Errorf("a nats-server of the run is still running: %s %q", p, cmd)
		}
	}
}

// TestBenchPeerRefusesWithoutNATSServer: --peer jetstream without
// bin/nats-server is refused at once, in one line that says how to get it.
func TestBenchPeerRefusesWithoutNATSServer(t *testing.T) {
	bin := t.TempDir()
	for _, b := range []string{"consul", "nsqd", "nsqlookupd", "sensor", "worker", "app", "svckit"} {
		if err := os.WriteFile(filepath.Join(bin, b), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := runCLI(t, "bench", "--peer", "jetstream", "--only", "durable", "--bin", bin)
	if code == 0 {
		t.Fatalf("bench --peer jetstream without nats-server succeeded\nstdout:\n%s", stdout)
	}
	msg := strings.TrimSpace(stderr)
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "nats-server is missing") || !strings.Contains(msg, "run ./build.sh") {
		t.Errorf("refusal = %q; want one line saying nats-server is missing and to run ./build.sh", stderr)
	}
	if code, _, stderr := runCLI(t, "bench", "--peer", "kafka", "--bin", bin); code == 0 || !strings.Contains(stderr, "--peer") {
		t.Errorf("bench --peer kafka: exit %d, %q; want a refusal naming --peer", code, stderr)
	}
}
