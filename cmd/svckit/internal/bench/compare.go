package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ComparisonRow is one system in the table of one hop against the whole
// pipeline and a peer: its throughput and latency at 1k msg/s, measured on
// the same terms (messages of payloadSize bytes; the pipeline's own
// readings for the pipeline), and whether what it acknowledged survives a
// power loss.
type ComparisonRow struct {
	System     string  `json:"system"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	// MsgsPerSecMin and MsgsPerSecMax are the range over the run's rounds
	// (the pipeline has one burst a run: both are its rate).
	MsgsPerSecMin float64 `json:"msgs_per_sec_min"`
	MsgsPerSecMax float64 `json:"msgs_per_sec_max"`
	P50MsAt1k     float64 `json:"p50_ms_at_1k"`
	P99MsAt1k     float64 `json:"p99_ms_at_1k"`
	// DurableAgainstPowerLoss: a message is on the disk (fsync) before
	// anyone is told it was published.
	DurableAgainstPowerLoss bool   `json:"durable_against_power_loss"`
	Durability              string `json:"durability"`
}

// LatencyTarget is one of issue 26's latency targets, judged in this run:
// the pipeline's p99 at Rate readings/s is at most the disk's own p99 for
// one durable append (DiskResult.LimitP99Ms) plus AllowanceMs.
type LatencyTarget struct {
	Rate          int     `json:"rate"`
	PipelineP99Ms float64 `json:"pipeline_p99_ms"`
	DiskP99Ms     float64 `json:"disk_p99_ms"`
	AllowanceMs   float64 `json:"allowance_ms"`
	BoundMs       float64 `json:"bound_ms"`
	Met           bool    `json:"met"`
}

// latencyTargets are issue 26's allowances over the disk's p99, by rate.
func latencyTargets() []LatencyTarget {
	return []LatencyTarget{{Rate: 1000, AllowanceMs: 1.5}, {Rate: 10000, AllowanceMs: 3}}
}

// The systems of the comparison, as the table names them.
const (
	sysDurableHop   = "svckit durable hop"
	sysPipeline     = "svckit pipeline"
	sysJSDefault    = "JetStream default sync"
	sysJSSyncAlways = "JetStream sync always"
)

// measureDisk measures the disk where the run's directories are (the
// owners' logs, nsqd's and nats-server's data): DiskResult.
func (r *runner) measureDisk(ctx context.Context) {
	dir := r.o.DataDir
	if dir == "" {
		dir = os.TempDir() // where the run's directories are made (localstack.Group)
	}
	r.step("the disk's own limit: %d appends of 120 bytes + fsync, and into a preallocated file + fdatasync, in %s", 2000, dir)
	d, err := MeasureDisk(ctx, DiskOptions{Dir: dir})
	if err != nil {
		r.fail("%v", err)
	}
	r.res.Disk = &d
	r.fig("disk_append_fsync_p50_ms", d.AppendFsync.P50Ms)
	r.fig("disk_append_fsync_p99_ms", d.AppendFsync.P99Ms)
	r.fig("disk_prealloc_fdatasync_p50_ms", d.PreallocFdatasync.P50Ms)
	r.fig("disk_prealloc_fdatasync_p99_ms", d.PreallocFdatasync.P99Ms)
	r.step("disk: append+fsync p50 %.3f p99 %.3f ms; preallocated+fdatasync p50 %.3f p99 %.3f ms",
		d.AppendFsync.P50Ms, d.AppendFsync.P99Ms, d.PreallocFdatasync.P50Ms, d.PreallocFdatasync.P99Ms)
}

// judgeTargets fills Results.LatencyTargets from the disk's figures and
// the pipeline's latencies of this run (those it measured).
func (r *runner) judgeTargets() {
	if r.res.Disk == nil {
		return
	}
	for _, t := range latencyTargets() {
		p99, ok := r.res.Figures["p99_ms_at_"+strconv.Itoa(t.Rate/1000)+"k"]
		if !ok {
			continue
		}
		t.PipelineP99Ms, t.DiskP99Ms = p99, r.res.Disk.LimitP99Ms
		t.BoundMs = t.DiskP99Ms + t.AllowanceMs
		t.Met = t.PipelineP99Ms <= t.BoundMs
		r.res.LatencyTargets = append(r.res.LatencyTargets, t)
	}
}

// compareSide is one system of the comparison that the bench drives
// itself: svckit's durable hop, or JetStream with one sync setting.
type compareSide struct {
	key, system string
	n           int // messages per throughput round
	durable     bool
	durability  string
	throughput  func(ctx context.Context, tag string) float64 // tag names the round's topic or stream
	latency     func(ctx context.Context, rate int, d time.Duration) *latencies
	rates       []float64
}

// comparison measures svckit's durable hop and, with --peer jetstream,
// JetStream with either sync setting: a warm-up round (not counted), then
// rounds of throughput in which the sides take turns going first (a drift
// in the machine's speed cancels within a round instead of landing on one
// side), then each side's latency at 1k/s. It puts the table's rows in
// Results.Comparison, the pipeline's among them if this run measured it.
func (r *runner) comparison(ctx context.Context) {
	// The pipeline's services left running are idle, but their timers and
	// collectors take CPU the sides would otherwise get.
	for _, p := range r.procs {
		if p.Running() {
			_ = p.Stop()
		}
	}
	n := pick(r.o.Quick, 50_000, 200_000)
	sides := []*compareSide{{
		key: "durable_hop", system: sysDurableHop, n: n, durable: true,
		durability: "yes: each record fsynced to the owner's log before it is published",
		throughput: func(ctx context.Context, tag string) float64 {
			return r.durableHopThroughput(ctx, tag, n)
		},
		latency: r.durableHopLatency,
	}}
	if r.o.Peer == PeerJetStream {
		r.step("starting nats-server twice with JetStream (file storage): the default sync interval, and sync_interval: always")
		def := r.startNATS(ctx, "nats-server-default", false)
		defer def.stop()
		always := r.startNATS(ctx, "nats-server-always", true)
		defer always.stop()
		for _, s := range []struct {
			srv              *natsServer
			key, system, why string
			durable          bool
			n                int
		}{
			{def, "jetstream_default", sysJSDefault, "no: its file store is flushed every 2 minutes by default (Jepsen, 2025, NATS 2.12.1: acknowledged writes lost after power failures)", false, n},
			// An fsync per write: about a tenth of the messages, for rounds of
			// a few seconds as the others'.
			{always, "jetstream_sync_always", sysJSSyncAlways, "yes: sync_interval: always, flushed before the publish is acknowledged", true, n / 10},
		} {
			sides = append(sides, &compareSide{key: s.key, system: s.system, n: s.n, durable: s.durable, durability: s.why,
				throughput: func(ctx context.Context, tag string) float64 {
					return r.jsThroughput(ctx, s.srv, s.key+"_"+tag, s.n)
				},
				latency: func(ctx context.Context, rate int, d time.Duration) *latencies {
					return r.jsLatency(ctx, s.srv, fmt.Sprintf("%s_lat_%d", s.key, rate), rate, d)
				}})
		}
	}
	names := make([]string, len(sides))
	for i, s := range sides {
		names[i] = fmt.Sprintf("%s (%d messages)", s.system, s.n)
	}
	r.step("one hop, warm-up round (not counted): %s", strings.Join(names, ", "))
	for _, s := range sides {
		s.throughput(ctx, "warmup")
	}
	rounds := pick(r.o.Quick, 1, 3)
	for i := range rounds {
		var line []string
		for k := range sides {
			s := sides[(i+k)%len(sides)]
			rate := s.throughput(ctx, strconv.Itoa(i))
			s.rates = append(s.rates, rate)
			line = append(line, fmt.Sprintf("%s %.0f", s.system, rate))
		}
		r.step("one hop, round %d/%d: %s msg/s", i+1, rounds, strings.Join(line, ", "))
	}
	secs := pick(r.o.Quick, 5, 15) // as the pipeline's latency rates
	var rows []ComparisonRow
	for _, s := range sides {
		r.step("one hop, %s: latency at 1000/s for %d s", s.system, secs)
		lat := s.latency(ctx, 1000, time.Duration(secs)*time.Second)
		samples := lat.samples()
		if len(samples) == 0 {
			r.fail("%s: no latency samples at 1000/s", s.system)
		}
		q := quantiles(samples, 0.5, 0.99, 0.999)
		row := ComparisonRow{System: s.system, MsgsPerSec: median(s.rates), MsgsPerSecMin: slices.Min(s.rates), MsgsPerSecMax: slices.Max(s.rates),
			P50MsAt1k: q[0], P99MsAt1k: q[1], DurableAgainstPowerLoss: s.durable, Durability: s.durability}
		rows = append(rows, row)
		r.fig(s.key+"_msgs_per_sec", row.MsgsPerSec)
		r.fig(s.key+"_p50_ms_at_1k", q[0])
		r.fig(s.key+"_p99_ms_at_1k", q[1])
		r.fig(s.key+"_p999_ms_at_1k", q[2])
		r.fig("latency_samples_"+s.key+"_1k", float64(len(samples)))
		r.step("one hop, %s: p50 %.2f, p99 %.2f ms at 1000/s", s.system, q[0], q[1])
	}
	// The pipeline, as the run measured it (two hops, the sensor's own
	// readings, a worker between).
	if p50, ok := r.res.Figures["p50_ms_at_1k"]; ok && r.res.PipelineMsgsPerSec > 0 {
		pipe := ComparisonRow{System: sysPipeline, MsgsPerSec: r.res.PipelineMsgsPerSec, MsgsPerSecMin: r.res.PipelineMsgsPerSec,
			MsgsPerSecMax: r.res.PipelineMsgsPerSec, P50MsAt1k: p50, P99MsAt1k: r.res.Figures["p99_ms_at_1k"],
			DurableAgainstPowerLoss: true, Durability: "yes: the sensor fsyncs each reading before it is published"}
		rows = slices.Insert(rows, 1, pipe)
	}
	r.res.Comparison = rows
}
