package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/localstack"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// Options configures a run.
type Options struct {
	Quick bool // about a minute instead of several
	// Only limits the run to one part, for profiling: "hop" (the ceiling,
	// the hop ratio and the importer's hop ratio), "importer" (only the
	// importer's hop ratio) or "pipeline" (the pipeline's throughput burst,
	// with per-process CPU and queue depths, then the latency rates) or
	// "replay" (the burst, then replay direct and through a relay) or
	// "durable" (svckit's durable hop, beside the peer if there is one).
	// "" runs everything. The disk is measured in every run.
	Only string
	// BinDir is where consul, nsqd, nsqlookupd, sensor, worker, app, svckit
	// and hop are (and nats-server, for Peer "jetstream").
	BinDir string
	Log    io.Writer // progress lines (nil = discard)
	// Peer is another system measured beside svckit's durable hop, on the
	// same terms: "jetstream" (nats-server with JetStream, its default
	// sync interval and sync_interval: always), or "" for none. With a
	// peer, or with Only "durable", the run measures svckit's durable hop
	// (Results.Comparison); a full run does too.
	Peer string
	// DataDir is where the run makes its directories (the owners' logs,
	// nsqd's and nats-server's data) and where the disk is measured;
	// "" = os.TempDir().
	DataDir string
	// ProfileDir, if set, receives a CPU profile of every process of the
	// pipeline (sensor, both workers, app, nsqd) taken during its
	// throughput burst: <name>.pprof, for go tool pprof.
	ProfileDir string
}

// Results are the headline figures (the JSON keys) and every raw
// figure behind them.
type Results struct {
	Quick              bool    `json:"quick"`
	HopRatio           float64 `json:"hop_ratio"`
	PipelineMsgsPerSec float64 `json:"pipeline_msgs_per_sec"`
	// PipelineRatio is the pipeline's readings a second end to end over
	// the raw go-nsq hop's messages a second, both from the same run:
	// every reading crosses nsqd twice, so 0.5 is where nsqd alone would
	// stop the pipeline (issue 26's target). 0 unless both ran.
	PipelineRatio    float64 `json:"pipeline_ratio"`
	P99MsAt1k        float64 `json:"p99_ms_at_1k"`
	ReplayMsgsPerSec float64 `json:"replay_msgs_per_sec"`
	// RelayReplayMsgsPerSec is replay through one relay stage (a worker
	// asking the sensor and transforming every frame), RelayRatio its
	// ratio to replay directly from the owner, in alternating rounds.
	RelayReplayMsgsPerSec float64            `json:"relay_replay_msgs_per_sec"`
	RelayRatio            float64            `json:"relay_ratio"`
	DiscoveryMs           float64            `json:"discovery_ms"`
	IdleRSSMB             float64            `json:"idle_rss_mb"`
	Figures               map[string]float64 `json:"figures"`
	// HopRounds are the hop's rounds as measured, in order: which side
	// ran when and at what rate, the figures behind hop_ratio's median.
	HopRounds []HopRound `json:"hop_rounds,omitempty"`
	// ImporterHopRatio is one hop through svckit built as a program that
	// imports svckit is built (bin/hop: examples/, a module of its own
	// requiring svckit through a replace to this checkout) over the same
	// hop built by this repository (`svckit bench hop`, bin/svckit): both
	// run Hop as programs, in alternating rounds. Below 1, importers get
	// a slower svckit than the repository's own binaries.
	ImporterHopRatio float64 `json:"importer_hop_ratio"`
	// ImporterHopRounds are its rounds, sides "importer" and "repo".
	ImporterHopRounds []HopRound `json:"importer_hop_rounds,omitempty"`
	// Disk is the disk's own latency for one durable append, measured in
	// this run where its directories are (DataDir).
	Disk *DiskResult `json:"disk,omitempty"`
	// LatencyTargets judge the pipeline's p99 at 1k/s and 10k/s, when this
	// run measured them, against Disk (issue 26's targets).
	LatencyTargets []LatencyTarget `json:"latency_targets,omitempty"`
	// Comparison is one hop through svckit (an owner's fsynced log to one
	// tracking consumer), the pipeline and the peer, side by side.
	Comparison []ComparisonRow   `json:"comparison,omitempty"`
	Machine    map[string]string `json:"machine"`
}

// HopRound is one round of the hop: the sides in the order they ran and
// each one's messages per second.
type HopRound struct {
	Order      []string           `json:"order"`
	MsgsPerSec map[string]float64 `json:"msgs_per_sec"`
}

type runner struct {
	o     Options
	env   *runEnv
	st    *localstack.Stack
	disco *discovery.Discovery
	res   *Results
	bins  string
	mu    sync.Mutex // guards res.Figures against the usage sampler
	procs []*localstack.Process
}

// Run performs every measurement and returns the results.
func Run(ctx context.Context, o Options) (*Results, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	switch o.Only {
	case "", "hop", "importer", "pipeline", "replay", "durable":
	default:
		return nil, fmt.Errorf("--only %q: want hop, importer, pipeline, replay or durable", o.Only)
	}
	switch o.Peer {
	case "", PeerJetStream:
	default:
		return nil, fmt.Errorf("--peer %q: want %s", o.Peer, PeerJetStream)
	}
	abs, err := filepath.Abs(o.BinDir)
	if err != nil {
		return nil, err
	}
	for _, b := range []string{"consul", "nsqd", "nsqlookupd", "sensor", "worker", "app", "svckit"} {
		if _, err := os.Stat(filepath.Join(abs, b)); err != nil {
			return nil, fmt.Errorf("--bin %s: %s is missing (run ./build.sh)", abs, b)
		}
	}
	if o.Only == "" || o.Only == "hop" || o.Only == "importer" {
		if _, err := os.Stat(filepath.Join(abs, "hop")); err != nil {
			return nil, fmt.Errorf("--bin %s: hop is missing: the importer's hop (importer_hop_ratio) runs it; ./build.sh builds it from examples/hop, a module of its own", abs)
		}
	}
	if o.Peer == PeerJetStream {
		if _, err := os.Stat(filepath.Join(abs, "nats-server")); err != nil {
			return nil, fmt.Errorf("--peer jetstream: %s is missing (run ./build.sh)", filepath.Join(abs, "nats-server"))
		}
	}
	if o.DataDir != "" {
		if fi, err := os.Stat(o.DataDir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--data-dir %s: not a directory", o.DataDir)
		}
	}
	if o.ProfileDir != "" {
		// Made here, not at the first profile: a missing directory made
		// every profile of the run fail, after the run.
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("--profile-dir: %w", err)
		}
	}
	os.Setenv("SVCKIT_BIN", abs)
	r := &runner{o: o, env: newRunEnv(abs, o.DataDir), bins: abs, res: &Results{Quick: o.Quick, Figures: map[string]float64{}, Machine: machine()}}
	defer r.env.close()
	err = r.env.run(func() {
		r.step("starting consul, nsqlookupd, nsqd on free loopback ports")
		// nsqd keeps 100k messages per topic and channel in memory, as the
		// datacenters' nsqd does: with nsqd's default (10k) a burst spills
		// to its disk queue, which fsyncs every 2500 messages, and the bench
		// would measure the disk. Not more: every topic and channel holds a
		// buffer of that many pointers, which nsqd's collector scans on
		// every cycle whatever it holds. With 1M (8 MB a buffer) p99 at
		// 1k/s was 5.7-6.9 ms against 3.4-3.9 ms in alternating runs, and
		// the pipeline 66-85k readings/s against 90-102k, although with
		// 100k the burst's deepest queue (about 120k) spills a little.
		st, err := r.env.StartStack(localstack.NSQDOptions{MemQueueSize: memQueueSize})
		r.env.check(err)
		r.st = st
		r.disco = discovery.New(r.st.Consul.Client, discovery.Options{})
		r.env.Cleanup(r.disco.Stop)
		if o.Only == "" || o.Only == "hop" {
			r.ceilingAndHop(ctx)
		}
		if o.Only == "" || o.Only == "hop" || o.Only == "importer" {
			r.importerHop(ctx)
		}
		if o.Only == "" {
			r.discovery(ctx)
		}
		if o.Only == "" || o.Only == "pipeline" || o.Only == "replay" {
			r.pipeline(ctx)
		}
		if r.res.Disk == nil { // the pipeline's latencies were not measured: here, then
			r.measureDisk(ctx)
		}
		if o.Only == "" || o.Only == "durable" || o.Peer != "" {
			r.comparison(ctx)
		}
		if raw := r.res.Figures["raw_hop_msgs_per_sec"]; raw > 0 && r.res.PipelineMsgsPerSec > 0 {
			r.res.PipelineRatio = r.res.PipelineMsgsPerSec / raw
		}
		r.judgeTargets()
	})
	if err != nil {
		r.logTails()
		return nil, err
	}
	return r.res, nil
}

// logTails writes the end of every program's log to the progress output:
// a failed run says what it saw, and the logs go with its directories.
func (r *runner) logTails() {
	procs := r.procs
	if r.st != nil {
		procs = append([]*localstack.Process{r.st.NSQD.Proc}, procs...)
	}
	for _, p := range procs {
		if p == nil {
			continue
		}
		log := strings.TrimSpace(p.Log())
		if lines := strings.Split(log, "\n"); len(lines) > 20 {
			log = strings.Join(lines[len(lines)-20:], "\n")
		}
		if log != "" {
			fmt.Fprintf(r.o.Log, "bench: --- the end of %s's log ---\n%s\n", p.Name(), log)
		}
	}
}

func (r *runner) step(f string, a ...any) {
	fmt.Fprintf(r.o.Log, "bench: "+f+"\n", a...)
}

func (r *runner) fig(k string, v float64) {
	r.mu.Lock()
	r.res.Figures[k] = v
	r.mu.Unlock()
}

func (r *runner) fail(f string, a ...any) { r.env.Fatalf(f, a...) }

func pick(quick bool, q, full int) int {
	if quick {
		return q
	}
	return full
}

// ---- 1 & 2: the nsqd ceiling and one hop through svckit, alternately ----

func (r *runner) ceilingAndHop(ctx context.Context) {
	addr := r.st.NSQD.TCPAddr
	body := make([]byte, payloadSize)
	nPub := pick(r.o.Quick, 20_000, 100_000)
	r.step("raw go-nsq PUB ×%d", nPub)
	r.fig("raw_pub_msgs_per_sec", r.rawPublish(addr, "ceiling-pub", body, nPub, 1))
	nMPub := pick(r.o.Quick, 200_000, 1_000_000)
	r.step("raw go-nsq MPUB×100 ×%d, %d per topic", nMPub, memQueueSize)
	// A topic without a channel keeps every message, and past the memory
	// queue nsqd writes to disk: the ceiling goes to a new topic every
	// memQueueSize messages, each deleted when full (the time of the
	// deletes is not counted).
	var mpubSecs float64
	for k := 0; k*memQueueSize < nMPub; k++ {
		topic := fmt.Sprintf("ceiling-mpub-%d", k)
		m := min(memQueueSize, nMPub-k*memQueueSize)
		mpubSecs += float64(m) / r.rawPublish(addr, topic, body, m, 100)
		r.env.check(r.st.NSQD.DeleteTopic(topic))
	}
	r.fig("raw_mpub_msgs_per_sec", float64(nMPub)/mpubSecs)
	// The same for the PUB topic: a live heap that nsqd's garbage
	// collector would scan for the rest of the run, stealing CPU from the
	// measurements that follow. (It made p99 at 1k/s 9-14 ms instead of 4.)
	r.env.check(r.st.NSQD.DeleteTopic("ceiling-pub"))

	// Each round runs the four sides back to back, rotating which goes
	// first; a ratio is the median of the rounds' ratios, so a drift in the
	// machine's speed during the run (two shared cores) cancels within each
	// round instead of landing on one side.
	//
	// The raw baseline keeps up to 4 MPUBs awaiting nsqd, as the svckit
	// Batcher does: hop_ratio compares svckit with go-nsq at its best.
	// raw_sync publishes one MPUB at a time (go-nsq's MultiPublish, one
	// round trip per batch), which is how a plain go-nsq program usually
	// publishes: hop_ratio_sync_mpub.
	//
	// The svckit side is handed its messages as the raw sides are, 100 at
	// a time (Batcher.PublishEnvelopesAsync, one hand-over per group):
	// hop_ratio. svckit_single publishes each envelope on its own
	// (PublishEnvelopeAsync, as a worker publishes each result), which
	// adds a hand-over to the batcher goroutine per message:
	// hop_ratio_single_publish.
	//
	// Rounds come in a multiple of four, so each side runs in each
	// position equally often, and after one warm-up round that is not
	// counted: the first side to run after the ceiling ran while nsqd was
	// still collecting the 1.1M messages of the deleted ceiling topics
	// (raw at 120-180k msg/s there against 200-260k in the rounds after),
	// which put every run's highest ratio, in svckit's favour, in round 1.
	rounds, n := pick(r.o.Quick, 4, 8), pick(r.o.Quick, 100_000, 300_000)
	sides := []*hopSide{
		{name: "raw", hop: func(ctx context.Context, topic string) (float64, float64) { return r.rawHop(ctx, topic, n, 4) }},
		{name: "raw_sync", hop: func(ctx context.Context, topic string) (float64, float64) { return r.rawHop(ctx, topic, n, 1) }},
		{name: "svckit", hop: func(ctx context.Context, topic string) (float64, float64) {
			return r.svckitHop(ctx, topic, n, hopGroup)
		}},
		{name: "svckit_single", hop: func(ctx context.Context, topic string) (float64, float64) { return r.svckitHop(ctx, topic, n, 1) }},
	}
	raw, rawSync, svc, svcSingle := sides[0], sides[1], sides[2], sides[3]
	cpu := func() (float64, float64) { return cpuSeconds(os.Getpid()), cpuSeconds(r.st.NSQD.Proc.Pid()) }
	perMsg := func(s float64) float64 { return s / float64(n) * 1e6 }
	var ratios, syncRatios, singleRatios []float64
	names := make([]string, len(sides))
	for k, side := range sides {
		names[k] = side.name
	}
	r.step("hop warm-up round (not counted): %s, %d messages each", strings.Join(names, ", "), n)
	for _, side := range sides {
		topic := "hop-warmup-" + side.name
		side.hop(ctx, topic)
		r.env.check(r.st.NSQD.DeleteTopic(topic))
	}
	for i := 0; i < rounds; i++ {
		order := make([]string, len(sides))
		for k := range sides {
			side := sides[(i+k)%len(sides)]
			order[k] = side.name
			topic := fmt.Sprintf("hop-%s-%d", side.name, i)
			// Under a pprof label: a --cpuprofile splits with
			// -tagfocus='hop=^raw$' (a regexp: hop=raw also matches
			// raw_sync), 'hop=^raw_sync$' or 'hop=^svckit$'.
			b0, n0 := cpu()
			g0 := readGC()
			live := sampleLiveHeap()
			var rate, perCmd float64
			pprof.Do(ctx, pprof.Labels("hop", side.name), func(ctx context.Context) { rate, perCmd = side.hop(ctx, topic) })
			b1, n1 := cpu()
			gc := readGC().since(g0, n)
			gc.liveHeapMB = live()
			side.rate, side.client, side.nsqd = append(side.rate, rate), append(side.client, perMsg(b1-b0)), append(side.nsqd, perMsg(n1-n0))
			side.gc = append(side.gc, gc)
			side.perCmd = append(side.perCmd, perCmd)
			// Drained, but a topic and its channel each keep a memory
			// queue buffer of --mem-queue-size pointers for the GC to scan.
			r.env.check(r.st.NSQD.DeleteTopic(topic))
		}
		round := HopRound{Order: order, MsgsPerSec: map[string]float64{}}
		for _, side := range sides {
			round.MsgsPerSec[side.name] = side.rate[i]
		}
		r.res.HopRounds = append(r.res.HopRounds, round)
		r.step("hop round %d/%d: %s, %d messages each: %s %.0f, %s %.0f, %s %.0f, %s %.0f msg/s", i+1, rounds, strings.Join(order, ", "), n,
			raw.name, raw.rate[i], rawSync.name, rawSync.rate[i], svc.name, svc.rate[i], svcSingle.name, svcSingle.rate[i])
		ratios = append(ratios, svc.rate[i]/raw.rate[i])
		syncRatios = append(syncRatios, svc.rate[i]/rawSync.rate[i])
		singleRatios = append(singleRatios, svcSingle.rate[i]/raw.rate[i])
	}
	r.res.HopRatio = median(ratios)
	r.fig("hop_ratio_min", slices.Min(ratios))
	r.fig("hop_ratio_max", slices.Max(ratios))
	r.fig("hop_ratio_sync_mpub", median(syncRatios))
	r.fig("hop_ratio_sync_mpub_min", slices.Min(syncRatios))
	r.fig("hop_ratio_single_publish", median(singleRatios))
	r.fig("hop_ratio_single_publish_min", slices.Min(singleRatios))
	for _, side := range sides {
		r.fig(side.name+"_hop_msgs_per_sec", median(side.rate))
		// CPU time per message hopped, of this process (publisher and
		// consumer) and of nsqd: tells a per-message cost from a stall.
		r.fig(side.name+"_hop_cpu_us_per_msg_client", median(side.client))
		r.fig(side.name+"_hop_cpu_us_per_msg_nsqd", median(side.nsqd))
		// The Go runtime's view of this process during the side's rounds.
		r.fig(side.name+"_hop_alloc_bytes_per_msg", median(field(side.gc, func(g gcDelta) float64 { return g.allocBytesPerMsg })))
		r.fig(side.name+"_hop_gc_cycles", median(field(side.gc, func(g gcDelta) float64 { return g.cycles })))
		r.fig(side.name+"_hop_gc_cpu_us_per_msg", median(field(side.gc, func(g gcDelta) float64 { return g.cpuUsPerMsg })))
		r.fig(side.name+"_hop_live_heap_mb", median(field(side.gc, func(g gcDelta) float64 { return g.liveHeapMB })))
		// Messages per MPUB: fewer, larger commands cost nsqd less per message.
		r.fig(side.name+"_hop_msgs_per_mpub", median(side.perCmd))
	}
}

// ---- 2b: the hop as an importer builds it ----

// importerHop runs Hop as two programs, in alternating rounds: bin/hop,
// built from examples/ (a module of its own that requires svckit through a
// replace to this checkout, as an importer's module would require it), and
// `svckit bench hop`, the same code built by this repository. Both are
// fresh processes started the same way, so the ratio of their rates is the
// build's doing: which go-nsq an importer gets, and which versions of
// everything else.
func (r *runner) importerHop(ctx context.Context) {
	rounds, n := pick(r.o.Quick, 4, 8), pick(r.o.Quick, 100_000, 300_000)
	type side struct {
		name, bin string
		pre       []string
		rate, cmd []float64
	}
	importer := &side{name: "importer", bin: filepath.Join(r.bins, "hop")}
	repo := &side{name: "repo", bin: filepath.Join(r.bins, "svckit"), pre: []string{"bench", "hop"}}
	run := func(s *side, topic string) (float64, float64) {
		res := r.procHop(ctx, s.name, s.bin, s.pre, topic, n)
		r.env.check(r.st.NSQD.DeleteTopic(topic))
		return res.MsgsPerSec, res.MsgsPerMPUB
	}
	// A warm-up round, not counted: the first program after the in-process
	// sides ran while nsqd collected their deleted topics.
	r.step("importer hop warm-up round (not counted): bin/hop, svckit bench hop, %d messages each", n)
	run(importer, "hop-importer-warmup")
	run(repo, "hop-repo-warmup")
	var ratios []float64
	for i := range rounds {
		order := []*side{importer, repo}
		if i%2 == 1 {
			order[0], order[1] = repo, importer
		}
		round := HopRound{MsgsPerSec: map[string]float64{}}
		for _, s := range order {
			rate, cmd := run(s, fmt.Sprintf("hop-%s-%d", s.name, i))
			s.rate, s.cmd = append(s.rate, rate), append(s.cmd, cmd)
			round.Order = append(round.Order, s.name)
			round.MsgsPerSec[s.name] = rate
		}
		r.res.ImporterHopRounds = append(r.res.ImporterHopRounds, round)
		ratios = append(ratios, importer.rate[i]/repo.rate[i])
		r.step("importer hop round %d/%d: %s, %s, %d messages each: importer %.0f, repo %.0f msg/s (%.3f)", i+1, rounds,
			round.Order[0], round.Order[1], n, importer.rate[i], repo.rate[i], ratios[i])
	}
	r.res.ImporterHopRatio = median(ratios)
	r.fig("importer_hop_ratio_min", slices.Min(ratios))
	r.fig("importer_hop_ratio_max", slices.Max(ratios))
	for _, s := range []*side{importer, repo} {
		r.fig(s.name+"_hop_msgs_per_sec", median(s.rate))
		r.fig(s.name+"_hop_msgs_per_mpub", median(s.cmd))
	}
}

// procHop runs one hop as a program (bin/hop, or bin/svckit with pre =
// bench hop) against the run's Consul and returns what it measured.
func (r *runner) procHop(ctx context.Context, name, bin string, pre []string, topic string, n int) HopResult {
	out := filepath.Join(r.env.TempDir(), "hop.json")
	args := append(slices.Clone(pre), "--consul-addr="+r.st.Consul.HTTPAddr, "--http-addr=127.0.0.1:0",
		"--data-dir="+r.env.TempDir(), "--instance-id=bench-hop-"+name, "--log-level=warn",
		"--topic="+topic, "--count="+strconv.Itoa(n), "--group="+strconv.Itoa(hopGroup), "--json="+out)
	p := r.env.StartProcess("hop-"+name, bin, args)
	select {
	case <-p.Exited():
	case <-ctx.Done():
		p.Kill()
		r.fail("interrupted")
	case <-time.After(6 * time.Minute):
		p.Kill()
		r.fail("%s (%s) did not finish a hop of %d messages in 6 minutes:\n%s", name, bin, n, tail(p.Log(), 20))
	}
	if code := p.ExitCode(); code != 0 {
		r.fail("%s (%s) exited %d:\n%s", name, bin, code, tail(p.Log(), 20))
	}
	var res HopResult
	b, err := os.ReadFile(out)
	if err == nil {
		err = json.Unmarshal(b, &res)
	}
	if err != nil || res.Messages != n || res.MsgsPerSec <= 0 {
		r.fail("%s (%s): no result for %d messages in %s (%v): %s\n%s", name, bin, n, out, err, b, tail(p.Log(), 20))
	}
	return res
}

// tail is the last n lines of a log.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// hopSide is one way of hopping messages and what its rounds measured.
type hopSide struct {
	name string
	// hop moves the messages and returns their rate and the mean number of
	// messages per MPUB.
	hop                        func(ctx context.Context, topic string) (float64, float64)
	rate, client, nsqd, perCmd []float64
	gc                         []gcDelta
}

// gcDelta is what the Go runtime did in this process during one hop.
type gcDelta struct{ allocBytesPerMsg, cycles, cpuUsPerMsg, liveHeapMB float64 }

// sampleLiveHeap samples the heap that the last collection found live,
// every 10 ms, until the returned func is called; that returns the median
// in MB. The headroom between it and the heap goal (4 MB at least) is
// what each collection cycle buys.
func sampleLiveHeap() func() float64 {
	stop, done := make(chan struct{}), make(chan []float64)
	go func() {
		var v []float64
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			select {
			case <-stop:
				done <- v
				return
			case <-t.C:
				metrics.Read(s)
				v = append(v, float64(s[0].Value.Uint64())/1e6)
			}
		}
	}()
	return func() float64 {
		close(stop)
		v := <-done
		if len(v) == 0 {
			return 0
		}
		return median(v)
	}
}

type gcSample struct{ allocBytes, cycles, cpuSeconds float64 }

func readGC() gcSample {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}, {Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	num := func(v metrics.Value) float64 {
		switch v.Kind() {
		case metrics.KindUint64:
			return float64(v.Uint64())
		case metrics.KindFloat64:
			return v.Float64()
		}
		return 0
	}
	return gcSample{num(s[0].Value), num(s[1].Value), num(s[2].Value)}
}

func (g gcSample) since(g0 gcSample, n int) gcDelta {
	return gcDelta{allocBytesPerMsg: (g.allocBytes - g0.allocBytes) / float64(n), cycles: g.cycles - g0.cycles,
		cpuUsPerMsg: (g.cpuSeconds - g0.cpuSeconds) / float64(n) * 1e6}
}

func field[T any](v []T, f func(T) float64) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		out[i] = f(v[i])
	}
	return out
}

func (r *runner) rawPublish(addr, topic string, body []byte, n, batch int) float64 {
	p, err := nsq.NewProducer(addr, nsq.NewConfig())
	if err != nil {
		r.fail("raw producer: %v", err)
	}
	p.SetLogger(nil, nsq.LogLevelError)
	defer p.Stop()
	bodies := make([][]byte, batch)
	for i := range bodies {
		bodies[i] = body
	}
	start := time.Now()
	for sent := 0; sent < n; sent += batch {
		if batch == 1 {
			err = p.Publish(topic, body)
		} else {
			err = p.MultiPublish(topic, bodies)
		}
		if err != nil {
			r.fail("raw publish: %v", err)
		}
	}
	return float64(n) / time.Since(start).Seconds()
}

// rawHop: MPUB×100, up to inFlight awaiting nsqd, into a topic consumed by
// one go-nsq consumer (4 handlers).
func (r *runner) rawHop(ctx context.Context, topic string, n, inFlight int) (float64, float64) {
	var got atomic.Int64
	done := make(chan struct{})
	c, err := nsq.NewConsumer(topic, "bench", hopConfig())
	if err != nil {
		r.fail("raw consumer: %v", err)
	}
	c.SetLogger(nil, nsq.LogLevelError)
	c.AddConcurrentHandlers(nsq.HandlerFunc(func(m *nsq.Message) error {
		if got.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}), 4)
	if err := c.ConnectToNSQD(r.st.NSQD.TCPAddr); err != nil {
		r.fail("raw consumer connect: %v", err)
	}
	defer func() { c.Stop(); <-c.StopChan }()
	p, err := nsq.NewProducer(r.st.NSQD.TCPAddr, nsq.NewConfig())
	if err != nil {
		r.fail("raw producer: %v", err)
	}
	p.SetLogger(nil, nsq.LogLevelError)
	defer p.Stop()
	body := make([]byte, payloadSize)
	bodies := make([][]byte, hopGroup)
	for i := range bodies {
		bodies[i] = body
	}
	// go-nsq pipelines async publishes on its connection; with one slot
	// this is MultiPublish, one round trip per batch.
	slots := make(chan struct{}, inFlight)
	answers := make(chan *nsq.ProducerTransaction, inFlight)
	failed := make(chan error, 1)
	go func() {
		for t := range answers {
			if t.Error != nil {
				select {
				case failed <- t.Error:
				default:
				}
			}
			<-slots
		}
	}()
	start := time.Now()
	for sent := 0; sent < n; sent += len(bodies) {
		slots <- struct{}{}
		if err := p.MultiPublishAsync(topic, bodies, answers); err != nil {
			r.fail("raw publish: %v", err)
		}
	}
	for range inFlight { // every answer in
		slots <- struct{}{}
	}
	close(answers)
	select {
	case err := <-failed:
		r.fail("raw publish: %v", err)
	default:
	}
	select {
	case <-done:
	case <-ctx.Done():
		r.fail("interrupted")
	case <-time.After(5 * time.Minute):
		r.fail("raw hop did not finish")
	}
	return float64(n) / time.Since(start).Seconds(), float64(len(bodies))
}

// memQueueSize is the bench's nsqd --mem-queue-size, the datacenters'.
const memQueueSize = 100_000

// svckitHop: the same load with envelopes carrying stream and sequence,
// through svckit, in this process: Hop.
func (r *runner) svckitHop(ctx context.Context, topic string, n, group int) (float64, float64) {
	res, err := Hop(ctx, HopOptions{Lookupds: r.disco.Watch("nsqlookupd"), NSQDs: r.disco.Watch("nsqd"), Topic: topic, Messages: n, Group: group})
	if err != nil {
		r.fail("%v", err)
	}
	return res.MsgsPerSec, res.MsgsPerMPUB
}

// ---- 5: discovery ----

func (r *runner) discovery(ctx context.Context) {
	n := pick(r.o.Quick, 5, 20)
	r.step("discovery: %d register / critical / deregister cycles", n)
	w := r.disco.Watch("bench-disco")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.WaitReady(wctx); err != nil {
		r.fail("%v", err)
	}
	agent := r.st.Consul.Client.Agent()
	var reg, crit, dereg []float64
	has := func(id string) func([]discovery.Instance) bool {
		return func(set []discovery.Instance) bool {
			return slices.ContainsFunc(set, func(i discovery.Instance) bool { return i.ID == id })
		}
	}
	not := func(f func([]discovery.Instance) bool) func([]discovery.Instance) bool {
		return func(s []discovery.Instance) bool { return !f(s) }
	}
	timeTo := func(what string, act func() error, cond func([]discovery.Instance) bool) float64 {
		start := time.Now()
		if err := act(); err != nil {
			r.fail("%s: %v", what, err)
		}
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := w.WaitFor(c, cond); err != nil {
			r.fail("%s: %v", what, err)
		}
		return float64(time.Since(start).Microseconds()) / 1000
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("bench-disco-%d", i)
		reg = append(reg, timeTo("register", func() error {
			return agent.ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "bench-disco", Address: "127.0.0.1", Port: 1000 + i,
				Check: &api.AgentServiceCheck{CheckID: id + ":ttl", TTL: "1m", Status: api.HealthPassing}})
		}, has(id)))
		crit = append(crit, timeTo("check critical", func() error {
			return agent.UpdateTTL(id+":ttl", "bench", api.HealthCritical)
		}, not(has(id))))
		agent.UpdateTTL(id+":ttl", "bench", api.HealthPassing)
		if _, err := w.WaitFor(ctx, has(id)); err != nil {
			r.fail("%v", err)
		}
		dereg = append(dereg, timeTo("deregister", func() error { return agent.ServiceDeregister(id) }, not(has(id))))
	}
	all := append(append(append([]float64{}, reg...), crit...), dereg...)
	r.fig("discovery_register_ms_p50", median(reg))
	r.fig("discovery_critical_ms_p50", median(crit))
	r.fig("discovery_deregister_ms_p50", median(dereg))
	r.fig("discovery_ms_max", slices.Max(all))
	r.res.DiscoveryMs = median(all)
}

// ---- 3, 4, 6: the reference pipeline, replay, footprint ----

func (r *runner) service(name, bin string, args ...string) *localstack.Process {
	base := []string{"--consul-addr=" + r.st.Consul.HTTPAddr, "--http-addr=127.0.0.1:0", "--data-dir=" + r.env.TempDir(),
		"--check-interval=1s", "--nsq-lookupd-poll-interval=1s", "--log-level=warn"}
	if r.o.ProfileDir != "" {
		base = append(base, "--pprof")
	}
	p := r.env.StartProcess(name, filepath.Join(r.bins, bin), append(base, args...))
	r.procs = append(r.procs, p)
	return p
}

func (r *runner) passing(service string) []*api.ServiceEntry {
	e, _, err := r.st.Consul.Client.Health().Service(service, "", true, nil)
	if err != nil {
		return nil
	}
	return e
}

func (r *runner) waitPassing(service string, n int) []*api.ServiceEntry {
	var e []*api.ServiceEntry
	r.env.WaitFor(60*time.Second, fmt.Sprintf("%d passing %s", n, service), func() bool {
		e = r.passing(service)
		return len(e) >= n
	})
	return e
}

func addrOf(e *api.ServiceEntry) string {
	return e.Service.Address + ":" + strconv.Itoa(e.Service.Port)
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

type appStream struct {
	Stream         string `json:"stream"`
	LastContiguous uint64 `json:"last_contiguous"`
	Applied        uint64 `json:"applied"`
}

func appStatus(addr, stream string) appStream {
	var ss []appStream
	_ = getJSON("http://"+addr+"/streams", &ss)
	for _, s := range ss {
		if s.Stream == stream {
			return s
		}
	}
	return appStream{}
}

func (r *runner) pipeline(ctx context.Context) {
	r.step("pipeline: app, two workers, sensor as processes")
	app := r.service("app", "app", "--instance-id=bench-app", "--summary-interval=0", "--replay-tail-interval=1s")
	w1 := r.service("worker1", "worker", "--instance-id="+relayWorkerID)
	w2 := r.service("worker2", "worker", "--instance-id=bench-worker-2")
	appAddr := addrOf(r.waitPassing("app", 1)[0])
	r.waitPassing("worker", 2)
	// An idle sensor: one reading every 100 s.
	idleSensor := r.service("sensor-idle", "sensor", "--instance-id=bench-sensor-idle", "--stream-id=bench-idle", "--rate=0.01")
	r.waitPassing("sensor", 1)
	time.Sleep(2 * time.Second) // a measurement window: idle RSS after start-up settles
	idle := map[string]float64{"sensor": rssMB(idleSensor.Pid()), "worker": rssMB(w1.Pid()), "app": rssMB(app.Pid())}
	for k, v := range idle {
		r.fig("idle_rss_mb_"+k, v)
	}
	r.res.IdleRSSMB = max(idle["sensor"], idle["worker"], idle["app"])
	idleSensor.Stop()

	// Throughput: a burst of N readings as fast as the sensor publishes.
	n := pick(r.o.Quick, 100_000, 500_000)
	r.step("pipeline throughput: %d readings", n)
	sensorDir := r.env.TempDir()
	sensorArgs := []string{"--instance-id=bench-sensor", "--stream-id=bench-tp", "--data-dir=" + sensorDir}
	sensor := r.service("sensor", "sensor", append(sensorArgs, "--rate=0", "--count="+strconv.Itoa(n))...)
	var t0 time.Time
	var a0 uint64
	var use *usage
	profiled := func() {}
	r.env.WaitFor(10*time.Minute, "the app to apply every reading", func() bool {
		s := appStatus(appAddr, "bench-tp")
		if t0.IsZero() && s.Applied > 0 {
			t0, a0 = time.Now(), s.Applied
			use = r.startUsage(map[string]int{"sensor": sensor.Pid(), "worker1": w1.Pid(), "worker2": w2.Pid(), "app": app.Pid(), "nsqd": r.st.NSQD.Proc.Pid()})
			if r.o.ProfileDir != "" {
				profiled = r.profilePipeline(appAddr)
			}
		}
		return s.Applied == uint64(n) && s.LastContiguous == uint64(n)
	})
	r.res.PipelineMsgsPerSec = float64(uint64(n)-a0) / time.Since(t0).Seconds()
	use.stop()
	profiled()
	if r.o.Only == "replay" {
		r.replayRounds(ctx, n, sensor, w1)
		sensor.Stop()
		return
	}
	if r.o.Only == "" {
		r.replayAndGap(ctx, app, sensor, w1, sensorArgs, n)
	}
	sensor.Stop()

	// The gap's readings reached the app by replay, but NSQ still holds them
	// for the workers: latency measured before they drain would be queueing.
	r.step("waiting for the workers to drain the readings backlog")
	r.env.WaitFor(10*time.Minute, "the readings backlog to drain", func() bool {
		st, err := r.st.NSQD.Stats()
		if err != nil {
			return false
		}
		for _, t := range st.Topics {
			for _, c := range t.Channels {
				if c.Depth+int64(c.InFlightCount+c.DeferredCount) > 0 {
					return false
				}
			}
		}
		return true
	})

	// The disk's own limit, just before the latencies judged against it.
	r.measureDisk(ctx)

	// Latency at fixed rates, seen by a consumer of results like the app.
	secs := pick(r.o.Quick, 5, 15)
	for _, rate := range []int{1000, 10000} {
		r.step("end-to-end latency at %d/s for %d s", rate, secs)
		stream := fmt.Sprintf("bench-lat-%d", rate)
		k := strconv.Itoa(rate/1000) + "k"
		lat := r.latency(stream, k, func() *localstack.Process {
			return r.service("sensor-"+stream, "sensor", "--instance-id=bench-"+stream, "--stream-id="+stream, "--rate="+strconv.Itoa(rate))
		}, time.Duration(secs)*time.Second, func(p *localstack.Process) {
			if rate == 10000 {
				r.fig("loaded_rss_mb_sensor", rssMB(p.Pid()))
				r.fig("loaded_rss_mb_worker", rssMB(w1.Pid()))
				r.fig("loaded_rss_mb_app", rssMB(app.Pid()))
			}
		})
		r.fig("p50_ms_at_"+k, lat[0])
		r.fig("p99_ms_at_"+k, lat[1])
		r.fig("p999_ms_at_"+k, lat[2])
		if rate == 1000 {
			r.res.P99MsAt1k = lat[1]
		}
	}

	// Discovery: SIGKILL of a worker to its leaving the passing set.
	r.step("worker SIGKILL → out of the passing set")
	ww := r.disco.Watch("worker")
	start := time.Now()
	w2.Kill()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := ww.WaitFor(wctx, func(s []discovery.Instance) bool {
		return !slices.ContainsFunc(s, func(i discovery.Instance) bool { return i.ID == "bench-worker-2" })
	}); err != nil {
		r.fail("%v", err)
	}
	r.fig("worker_kill_to_critical_ms", float64(time.Since(start).Milliseconds()))
}

// replayAndGap measures replay throughput from the burst's sensor log, then
// the time for the app to close a gap left while it was stopped.
func (r *runner) replayAndGap(ctx context.Context, app, sensor, worker *localstack.Process, sensorArgs []string, n int) {
	r.replayRounds(ctx, n, sensor, worker)

	// Gap close: the app away while the sensor publishes G more.
	g := pick(r.o.Quick, 20_000, 100_000)
	r.step("time to close a %d-message gap", g)
	if err := app.Stop(); err != nil {
		r.fail("stopping app: %v", err)
	}
	sensor.Stop()
	sensor = r.service("sensor2", "sensor", append(sensorArgs, "--rate=0", "--count="+strconv.Itoa(g))...)
	total := uint64(n + g)
	r.env.WaitFor(5*time.Minute, "the sensor to publish the gap", func() bool {
		var st []replay.Status
		_ = getJSON("http://"+addrOf(r.waitPassing("sensor", 1)[0])+"/streams", &st)
		return len(st) == 1 && st[0].LastSeq == total
	})
	start := time.Now()
	r.env.check(app.Restart())
	r.env.WaitFor(5*time.Minute, "the app to close the gap", func() bool {
		e := r.passing("app")
		return len(e) == 1 && appStatus(addrOf(e[0]), "bench-tp").LastContiguous == total
	})
	r.fig("gap_messages", float64(g))
	r.fig("gap_close_seconds", time.Since(start).Seconds())
	sensor.Stop()

}

// relayWorkerID is the worker whose relay replayRounds measures (w1).
const relayWorkerID = "bench-worker-1"

// replayRounds measures replay of the burst's n readings into a tracker,
// directly from the sensor's retained log and relayed through a worker
// (the worker asks the sensor for the range, runs every frame through its
// transform and streams the results back), in alternating rounds after a
// warm-up of each. replay_msgs_per_sec and relay_replay_msgs_per_sec are
// the sides' medians, relay_ratio the median of the rounds' ratios. Each
// side of a round replays the range reps times, so that a round lasts long
// enough (a direct replay of 500k took 80 ms) for its rate and for CPU
// times counted in 10 ms ticks.
func (r *runner) replayRounds(ctx context.Context, n int, sensor, worker *localstack.Process) {
	sensorAddr := addrOf(r.waitPassing("sensor", 1)[0])
	var workerAddr string
	for _, e := range r.waitPassing("worker", 2) {
		if e.Service.ID == relayWorkerID {
			workerAddr = addrOf(e)
		}
	}
	if workerAddr == "" {
		r.fail("replay: %s is not among the passing workers", relayWorkerID)
	}
	// CPU per message of each process on the way: where a relay's time
	// goes.
	self := os.Getpid()
	type cpu struct{ sensor, worker, bench float64 }
	reps := pick(r.o.Quick, 2, 5)
	once := func(addr string) (float64, cpu) {
		c0 := cpu{cpuSeconds(sensor.Pid()), cpuSeconds(worker.Pid()), cpuSeconds(self)}
		start := time.Now()
		for range reps {
			tr, _ := replay.NewTracker(nopApplier{}, replay.TrackerOptions{})
			got, err := replay.Client{}.Replay(ctx, addr, replay.Request{Stream: "bench-tp", From: 1, To: uint64(n)}, func(env envelope.Envelope, _ int) error {
				_, err := tr.Deliver(context.Background(), env)
				return err
			})
			if err != nil || got != uint64(n) {
				r.fail("replay from %s: %d of %d: %v", addr, got, n, err)
			}
		}
		total := float64(n * reps)
		rate := total / time.Since(start).Seconds()
		us := func(a, b float64) float64 { return (b - a) * 1e6 / total }
		return rate, cpu{us(c0.sensor, cpuSeconds(sensor.Pid())), us(c0.worker, cpuSeconds(worker.Pid())), us(c0.bench, cpuSeconds(self))}
	}
	rounds := pick(r.o.Quick, 3, 12)
	r.step("replay throughput: %d messages %d times per side and round, directly from the sensor and through %s's relay, a warm-up and %d rounds", n, reps, relayWorkerID, rounds)
	once(sensorAddr)
	once(workerAddr)
	var direct, relayed, ratios []float64
	var dcpu, rcpu []cpu
	for i := range rounds {
		var d, rl float64
		var dc, rc cpu
		if i%2 == 0 {
			d, dc = once(sensorAddr)
			rl, rc = once(workerAddr)
		} else {
			rl, rc = once(workerAddr)
			d, dc = once(sensorAddr)
		}
		direct, relayed, ratios = append(direct, d), append(relayed, rl), append(ratios, rl/d)
		dcpu, rcpu = append(dcpu, dc), append(rcpu, rc)
		r.step("replay round %d/%d: direct %.0f, relayed %.0f msg/s (%.3f); CPU µs per message: direct sensor %.2f bench %.2f, relayed sensor %.2f worker %.2f bench %.2f",
			i+1, rounds, d, rl, rl/d, dc.sensor, dc.bench, rc.sensor, rc.worker, rc.bench)
	}
	r.res.ReplayMsgsPerSec = median(direct)
	r.res.RelayReplayMsgsPerSec = median(relayed)
	r.res.RelayRatio = median(ratios)
	r.fig("replay_msgs_per_sec_min", slices.Min(direct))
	r.fig("relay_replay_msgs_per_sec_min", slices.Min(relayed))
	r.fig("relay_ratio_min", slices.Min(ratios))
	r.fig("relay_ratio_max", slices.Max(ratios))
	r.fig("replay_cpu_us_per_msg_sensor", median(field(dcpu, func(c cpu) float64 { return c.sensor })))
	r.fig("replay_cpu_us_per_msg_bench", median(field(dcpu, func(c cpu) float64 { return c.bench })))
	r.fig("relay_cpu_us_per_msg_sensor", median(field(rcpu, func(c cpu) float64 { return c.sensor })))
	r.fig("relay_cpu_us_per_msg_worker", median(field(rcpu, func(c cpu) float64 { return c.worker })))
	r.fig("relay_cpu_us_per_msg_bench", median(field(rcpu, func(c cpu) float64 { return c.bench })))
}

// latency runs a sensor for d and returns p50, p99 and p99.9 in ms of the
// time from a reading's creation to its result reaching a consumer of
// "results" (the first second is warm-up and not counted); key names its
// split figures (1k: p99_ms_to_results_at_1k).
func (r *runner) latency(stream, key string, start func() *localstack.Process, d time.Duration, during func(*localstack.Process)) [3]float64 {
	var mu sync.Mutex
	// End to end, and its two parts: from the reading's creation to nsqd
	// taking the worker's result on "results" (nsqd stamps a message when
	// it is published), and from there to this consumer. Same clock.
	var samples, toResults, lastHop []float64
	// Unix nanoseconds from which results count; read by the handlers.
	var warm atomic.Int64
	warm.Store(math.MaxInt64)
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 2500
	// As a svckit consumer asks by default (--nsq-output-buffer-*): below
	// 1ms, nsqd's own --output-buffer-timeout.
	cfg.OutputBufferSize = 16384
	cfg.OutputBufferTimeout = 100 * time.Microsecond
	// A consumer connected to nsqd directly reconnects after this interval
	// (go-nsq's default is 60 s, longer than a measurement).
	cfg.LookupdPollInterval = time.Second
	// A channel of its own per stream: nsqd deletes an ephemeral channel a
	// moment after its last consumer leaves, and a consumer subscribing to
	// the same name within that moment can join the dying channel and get
	// nothing (nsqd 1.3.0; seen in 3 of 23 full runs with one shared name).
	c, err := nsq.NewConsumer("results", "bench-latency-"+stream+"#ephemeral", cfg)
	if err != nil {
		r.fail("latency consumer: %v", err)
	}
	c.SetLogger(nil, nsq.LogLevelError)
	var received atomic.Int64
	c.AddConcurrentHandlers(nsq.HandlerFunc(func(m *nsq.Message) error {
		received.Add(1)
		now := time.Now()
		env, err := envelope.Decode(m.Body)
		if err != nil || env.Stream != stream || now.UnixNano() < warm.Load() {
			return nil
		}
		published := time.Unix(0, m.Timestamp)
		mu.Lock()
		samples = append(samples, float64(now.Sub(env.Created).Microseconds())/1000)
		toResults = append(toResults, float64(published.Sub(env.Created).Microseconds())/1000)
		lastHop = append(lastHop, float64(now.Sub(published).Microseconds())/1000)
		mu.Unlock()
		return nil
	}), 2)
	if err := c.ConnectToNSQD(r.st.NSQD.TCPAddr); err != nil {
		r.fail("latency consumer: %v", err)
	}
	defer func() { c.Stop(); <-c.StopChan }()
	p := start()
	r.waitPassing("sensor", 1)
	from := time.Now().Add(time.Second)
	warm.Store(from.UnixNano())
	end := from.Add(d)
	mid := from.Add(d / 2)
	measured := false
	for time.Now().Before(end) {
		if !measured && time.Now().After(mid) {
			during(p)
			measured = true
		}
		time.Sleep(100 * time.Millisecond) // the measurement window, not synchronisation
	}
	p.Stop()
	mu.Lock()
	defer mu.Unlock()
	if len(samples) == 0 {
		r.fail("no latency samples for %s (the consumer of results received %d messages)", stream, received.Load())
	}
	q := quantiles(samples, 0.5, 0.99, 0.999)
	r.fig("latency_samples_"+stream, float64(len(samples)))
	a, b := quantiles(toResults, 0.5, 0.99), quantiles(lastHop, 0.5, 0.99)
	r.fig("p50_ms_to_results_at_"+key, a[0])
	r.fig("p99_ms_to_results_at_"+key, a[1])
	r.fig("p50_ms_results_to_consumer_at_"+key, b[0])
	r.fig("p99_ms_results_to_consumer_at_"+key, b[1])
	return [3]float64{q[0], q[1], q[2]}
}

// usage samples, during a burst, each process's CPU time and the largest
// depth of every channel in nsqd: where a pipeline is bounded shows there (a
// saturated process, or a queue growing in front of a stage).
type usage struct {
	r     *runner
	pids  map[string]int
	start map[string]float64
	t0    time.Time
	quit  chan struct{}
	done  chan struct{}
}

func (r *runner) startUsage(pids map[string]int) *usage {
	u := &usage{r: r, pids: pids, start: map[string]float64{}, t0: time.Now(), quit: make(chan struct{}), done: make(chan struct{})}
	for k, pid := range pids {
		u.start[k] = cpuSeconds(pid)
	}
	go func() {
		defer close(u.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-u.quit:
				return
			case <-t.C:
			}
			st, err := r.st.NSQD.Stats()
			if err != nil {
				continue
			}
			for _, tp := range st.Topics {
				for _, c := range tp.Channels {
					k := "max_depth_" + tp.TopicName + "/" + strings.TrimSuffix(c.ChannelName, "#ephemeral")
					d := float64(c.Depth + int64(c.InFlightCount))
					r.mu.Lock()
					if d > r.res.Figures[k] {
						r.res.Figures[k] = d
					}
					r.mu.Unlock()
				}
			}
		}
	}()
	return u
}

func (u *usage) stop() {
	if u == nil {
		return
	}
	close(u.quit)
	<-u.done
	secs := time.Since(u.t0).Seconds()
	for k, pid := range u.pids {
		u.r.fig("cpu_pct_"+k, 100*(cpuSeconds(pid)-u.start[k])/secs)
	}
}

// cpuSeconds is a process's user+system CPU time from /proc/<pid>/stat.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) start after ") ".
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

func rssMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return 0
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 0 { // the upper middle alone would bias an even count upward
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func machine() map[string]string {
	m := map[string]string{"goos": runtime.GOOS, "goarch": runtime.GOARCH, "cpus": strconv.Itoa(runtime.NumCPU()), "go": runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m["mem"] = strings.TrimSpace(strings.TrimPrefix(strings.Split(string(b), "\n")[0], "MemTotal:"))
	}
	return m
}

// profileSeconds is how long each process is profiled in the burst: the
// full run's burst lasts about 5 s on two cores, the quick run's 1–2 s.
const profileSeconds = 3

// profilePipeline starts taking a CPU profile of every process of the
// pipeline at once (the services serve /debug/pprof with --pprof, nsqd
// always) into ProfileDir; the returned func waits for them.
func (r *runner) profilePipeline(appAddr string) (wait func()) {
	targets := map[string]string{"app": appAddr, "nsqd": r.st.NSQD.HTTPAddr}
	// Registered, passing or not yet: the burst's sensor has just started.
	for _, svc := range []string{"worker", "sensor"} {
		es, _, _ := r.st.Consul.Client.Health().Service(svc, "", false, nil)
		for _, e := range es {
			targets[e.Service.ID] = addrOf(e)
		}
	}
	var wg sync.WaitGroup
	for name, addr := range targets {
		wg.Go(func() {
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, profileSeconds)
			path := filepath.Join(r.o.ProfileDir, name+".pprof")
			if err := fetchTo(url, path); err != nil {
				r.step("profile of %s: %v", name, err)
				return
			}
			r.step("profile of %s: %s", name, path)
		})
	}
	return wg.Wait
}

// fetchTo writes the body of a GET of url to path.
func fetchTo(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	return os.WriteFile(path, b, 0o644)
}
