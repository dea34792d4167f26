// Package faulttest is svckit's fault-injection suite: the reference
// pipeline (sensor → nsqd → two workers → nsqd → app) runs as real processes
// under steady load against a real Consul agent, nsqlookupd and nsqd
// (svckit/testenv), and each case injects one fault — SIGKILL or SIGTERM of a
// component, an outage held for a while, a network cut between two hosts
// made of Linux network namespaces. Every case ends the same way: the sensor
// is stopped, and the app must hold every reading of the stream exactly once,
// with the same state as the sensor's own fold (GET /snapshot).
//
// Nothing is mocked. Readiness and progress are polled with deadlines
// (testenv.WaitFor); the only timed waits are holds, where a fault is kept in
// place for a duration on purpose (they say so where they are).
//
// Each case logs a one-line "SUMMARY" with what it observed (published,
// replayed, duplicates skipped, time to exact); docs/reliability.md collects
// those figures. SVCKIT_SOAK=1 lengthens the holds that are short by default;
// FAULTTEST_LOG_DIR=dir keeps every service's log there.
package faulttest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// Load and deadlines. Deadlines are generous: the machine may have two
// cores, and other suites run their own stacks meanwhile.
const (
	rate        = 200 // readings per second
	stepTimeout = 90 * time.Second
	observer    = "faulttest-observer"
)

// exactTimeout bounds the wait for the app to be exact again after a fault;
// the soak mode's longer faults may need longer.
var exactTimeout = holdFor(2*time.Minute, 5*time.Minute)

// soak reports whether the long (opt-in) mode is on.
func soak() bool { return os.Getenv("SVCKIT_SOAK") == "1" }

// holdFor returns short by default and long with SVCKIT_SOAK=1.
func holdFor(short, long time.Duration) time.Duration {
	if soak() {
		return long
	}
	return short
}

// hold keeps a fault in place for d. This is a hold, not synchronisation:
// the point is that time passes with the fault in place (an outage "for a
// minute"); everything that waits for a state uses testenv.WaitFor.
func hold(d time.Duration) { <-time.After(d) }

// svc is one of our services (sensor, worker or app) run as a process.
type svc struct {
	r       *rig
	bin     string   // sensor, worker, app: also the Consul service name
	id      string   // --instance-id, the Consul service id
	dataDir string   // kept across restarts
	prefix  []string // command run in front of the binary (ip netns exec NS)
	extra   []string // flags after the common ones
	runs    int
	proc    *testenv.Process
	at      string // the address found last (usable while Consul is away)
}

// args is the service's command line after the program.
func (s *svc) args() []string {
	return append(pipetest.CommonArgs(s.r.consul, s.id, s.dataDir), s.extra...)
}

// start starts a new process of the service: same id and data dir, the
// service's flags plus more (later flags win), its own log file.
func (s *svc) start(more ...string) {
	t := s.r.t
	t.Helper()
	s.runs++
	name := s.id
	if s.runs > 1 {
		name = fmt.Sprintf("%s.%d", s.id, s.runs)
	}
	bin := testenv.Bin(t, s.bin)
	args := append(s.args(), more...)
	if len(s.prefix) > 0 {
		args = append(append(append([]string(nil), s.prefix[1:]...), bin), args...)
		bin = s.prefix[0]
	}
	s.proc = testenv.StartProcess(t, name, bin, args, nil)
	keepLog(t, s.proc)
}

// keepLog keeps p's log under $FAULTTEST_LOG_DIR (see pipetest.KeepLog).
func keepLog(t *testing.T, p *testenv.Process) { pipetest.KeepLog(t, p, "FAULTTEST_LOG_DIR") }

// addr waits until this instance is passing in Consul and answers /health.
func (s *svc) addr() string {
	s.r.t.Helper()
	if !s.proc.Running() {
		s.r.t.Fatalf("%s exited (code %d):\n%s", s.id, s.proc.ExitCode(), tail(s.proc.Log()))
	}
	s.at = pipetest.AddrOf(s.r.t, s.r.consul, s.bin, s.id)
	return s.at
}

// stop stops the service with SIGTERM and fails the test unless it exits 0.
func (s *svc) stop() {
	s.r.t.Helper()
	if err := s.proc.Stop(); err != nil {
		s.r.t.Fatalf("%s: graceful stop: %v (exit code %d)", s.id, err, s.proc.ExitCode())
	}
}

// restart starts the same process again (same flags, same data dir, same
// log) and waits until it is passing.
func (s *svc) restart() string {
	s.r.t.Helper()
	s.proc.Restart(s.r.t)
	return s.addr()
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}

// rig is one case's system: infrastructure, a sensor of one stream, two
// workers and an app.
type rig struct {
	t       *testing.T
	consul  *testenv.Consul
	lookupd *testenv.NSQLookupd
	nsqds   []*testenv.NSQD
	stream  string
	sensor  *svc
	workers []*svc
	middle  []*svc // more stages between the workers and the app
	app     *svc
	// want is the app's state after the results of every reading the
	// sensor folded (checkState); nil is the reference pipeline's.
	want  func(pipeline.Aggregate) pipeline.Totals
	dir   string
	began time.Time
}

// rigOptions varies the rig per case.
type rigOptions struct {
	nsqds      int      // nsqds started (all registered with the lookupd and Consul); default 1
	workerArgs []string // extra worker flags
	appArgs    []string // extra app flags
	sensorArgs []string // extra sensor flags
	// beforeStart runs for each nsqd before the services start (channels
	// that must see every message).
	beforeStart func(t *testing.T, n *testenv.NSQD)
	// middle adds stages between the workers and the app (declared with
	// r.newSvc; started after the workers) and may change r.want.
	middle func(r *rig)
	// sensorConsul, if set, returns the Consul address the sensor is given
	// (a proxy the case can cut).
	sensorConsul func(c *testenv.Consul) string
	// stateDir, if set, holds the sensor's and the app's data directories
	// (a filesystem that can lose power, say) instead of the case's temp dir.
	stateDir string
}

// newRig starts consul, nsqlookupd, the nsqds, the app, two workers and a
// sensor publishing rate readings per second, and waits until readings flow
// end to end.
func newRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	r := &rig{t: t, stream: "s-" + strings.ToLower(strings.TrimPrefix(t.Name(), "Test")), dir: t.TempDir(), began: time.Now()}
	st := testenv.StartStack(t)
	r.consul, r.lookupd, r.nsqds = st.Consul, st.Lookupd, []*testenv.NSQD{st.NSQD}
	for range max(o.nsqds, 1) - 1 {
		r.addNSQD()
	}
	for _, n := range r.nsqds {
		r.observe(n)
		if o.beforeStart != nil {
			o.beforeStart(t, n)
		}
	}
	r.app = r.newSvc("app", "app-1", append([]string{"--replay-gap-grace=1s", "--replay-tail-interval=1s", "--summary-interval=0"}, o.appArgs...)...)
	r.workers = []*svc{r.newSvc("worker", "worker-1", o.workerArgs...), r.newSvc("worker", "worker-2", o.workerArgs...)}
	r.sensor = r.newSvc("sensor", "sensor-1", append([]string{"--stream-id=" + r.stream, "--rate=" + strconv.Itoa(rate)}, o.sensorArgs...)...)
	if o.middle != nil {
		o.middle(r)
	}
	if o.sensorConsul != nil {
		r.sensor.extra = append(r.sensor.extra, "--consul-addr="+o.sensorConsul(r.consul))
	}
	if o.stateDir != "" {
		r.app.dataDir = filepath.Join(o.stateDir, r.app.id)
		r.sensor.dataDir = filepath.Join(o.stateDir, r.sensor.id)
	}
	r.startAll()
	return r
}

// newSvc declares a service (not started).
func (r *rig) newSvc(bin, id string, extra ...string) *svc {
	return &svc{r: r, bin: bin, id: id, dataDir: filepath.Join(r.dir, id), extra: extra}
}

// startAll starts app, workers and sensor, and waits for readings to reach
// the app.
func (r *rig) startAll() {
	r.t.Helper()
	r.app.start()
	for _, w := range append(r.workers, r.middle...) {
		w.start()
	}
	r.app.addr()
	for _, w := range append(r.workers, r.middle...) {
		w.addr()
	}
	r.sensor.start()
	r.sensor.addr()
	r.waitApplied(2 * rate) // two seconds of load went through
	r.t.Logf("rig up after %s: stream %s at %d readings/s", time.Since(r.began).Round(time.Millisecond), r.stream, rate)
}

// addNSQD starts one more nsqd registered with the lookupd and in Consul.
func (r *rig) addNSQD() *testenv.NSQD {
	r.t.Helper()
	n := testenv.StartNSQD(r.t, testenv.NSQDOptions{LookupdTCPAddrs: []string{r.lookupd.TCPAddr}})
	testenv.RegisterNSQD(r.t, r.consul, n)
	r.nsqds = append(r.nsqds, n)
	return n
}

// observe creates a durable channel nobody reads on topic results. Without
// any channel nsqd would keep the topic's messages for the first channel to
// appear, and an app coming back would get from NSQ what it missed; with
// one, the app's ephemeral channel really misses what is published while it
// is away, as in production where results have other consumers.
func (r *rig) observe(n *testenv.NSQD) {
	r.t.Helper()
	for _, p := range []string{"/topic/create?topic=" + pipeline.ResultsTopic, "/channel/create?topic=" + pipeline.ResultsTopic + "&channel=" + observer} {
		code, body, err := testenv.HTTPPost("http://"+n.HTTPAddr+p, "text/plain", nil)
		if err != nil || code != http.StatusOK {
			r.t.Fatalf("nsqd %s POST %s: %d %s %v", n.HTTPAddr, p, code, body, err)
		}
	}
}

// services lists the sensor, the workers and the app.
func (r *rig) services() []*svc {
	return append(append([]*svc{r.sensor, r.app}, r.workers...), r.middle...)
}

// appAddr is the app's address (waiting until it is passing).
func (r *rig) appAddr() string { r.t.Helper(); return r.app.addr() }

// appStream returns the app's entry for the stream, failing the test on error.
func (r *rig) appStream() pipetest.AppStream {
	r.t.Helper()
	var st pipetest.AppStream
	var err error
	testenv.WaitFor(r.t, stepTimeout, "the app's /streams", func() bool {
		addr := pipetest.PassingAddr(r.consul, "app", r.app.id)
		if addr == "" {
			return false
		}
		st, err = pipetest.AppStreamOf(addr, r.stream)
		return err == nil
	})
	return st
}

// lastSeq returns the sensor's last_seq, waiting until it answers (at the
// address in Consul, or the last one known).
func (r *rig) lastSeq() uint64 {
	r.t.Helper()
	var last uint64
	testenv.WaitFor(r.t, stepTimeout, "the sensor's /streams", func() bool {
		addr := pipetest.PassingAddr(r.consul, "sensor", r.sensor.id)
		if addr == "" {
			addr = r.sensor.at // Consul away or not told yet
		}
		s, err := pipetest.SensorStreamOf(addr, r.stream)
		last = s.LastSeq
		return err == nil
	})
	return last
}

// waitApplied waits until the app applied at least n readings.
func (r *rig) waitApplied(n uint64) pipetest.AppStream {
	r.t.Helper()
	var st pipetest.AppStream
	testenv.WaitFor(r.t, stepTimeout, fmt.Sprintf("the app to apply %d readings of %s", n, r.stream), func() bool {
		addr := pipetest.PassingAddr(r.consul, "app", r.app.id)
		if addr == "" {
			return false
		}
		var err error
		st, err = pipetest.AppStreamOf(addr, r.stream)
		return err == nil && st.Applied >= n
	})
	return st
}

// exactWatch measures, in the background, how long after the end of a fault
// the app holds, without a gap, everything the sensor had published by then.
type exactWatch struct {
	r      *rig
	since  time.Time
	target uint64
	done   chan struct{}
	took   time.Duration
	last   pipetest.AppStream
	ok     bool
}

// watchExact starts measuring the time to exactness from since (the end of
// the fault), towards the sensor's last_seq now. The app is polled at the
// address Consul gives, or the last one known while Consul has none.
func (r *rig) watchExact(since time.Time) *exactWatch {
	r.t.Helper()
	w := &exactWatch{r: r, since: since, target: r.lastSeq(), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.ok = testenv.Eventually(exactTimeout, func() bool {
			addr := pipetest.PassingAddr(r.consul, "app", r.app.id)
			if addr == "" {
				addr = r.app.at
			}
			st, err := pipetest.AppStreamOf(addr, r.stream)
			if err != nil {
				return false
			}
			w.last = st
			return len(st.Gaps) == 0 && st.LastContiguous >= w.target && st.Applied == st.LastContiguous
		})
		w.took = time.Since(since)
	}()
	return w
}

// wait returns the time to exactness, failing the test if the app did not
// get there within exactTimeout.
func (w *exactWatch) wait() time.Duration {
	w.r.t.Helper()
	<-w.done
	if !w.ok {
		w.r.t.Fatalf("the app did not catch up with seq %d of %s without gaps within %s: %v", w.target, w.r.stream, exactTimeout, w.last)
	}
	w.r.t.Logf("exact again up to seq %d %s after the fault ended (%v)", w.target, w.took.Round(10*time.Millisecond), w.last)
	return w.took
}

// result is what a case observed, for its summary line.
type result struct {
	published   uint64        // readings in the stream (the sensor's final last_seq)
	replayed    float64       // app: svckit_replay_received_messages_total (its last process)
	dupMetric   float64       // app: svckit_duplicates_skipped_total (its last process)
	duplicates  uint64        // app: /streams duplicates (all processes, kept in the checkpoint)
	timeToExact time.Duration // from the end of the fault to the app exact again
}

// finish ends the case: it stops the sensor (SIGTERM: it flushes what it
// accepted), starts it again on the same data dir publishing exactly one
// more reading (so that its /snapshot and /replay stay available), waits
// until the app holds 1..final exactly once, and checks the app's state
// against the sensor's fold. It logs and returns the summary.
func (r *rig) finish(res result, notes string) result {
	t := r.t
	t.Helper()
	r.sensor.stop()
	stopped := savedSnapshotSeq(t, r.sensor.dataDir, r.stream)
	// The quiet run: --rate 0 --count 1 publishes one reading and then only
	// serves /streams, /replay and /snapshot.
	r.sensor.start("--rate=0", "--count=1")
	sensorAddr := r.sensor.addr()
	final := stopped + 1
	testenv.WaitFor(t, stepTimeout, fmt.Sprintf("the restarted sensor to publish its one reading (%d)", final), func() bool {
		s, err := pipetest.SensorStreamOf(sensorAddr, r.stream)
		return err == nil && s.LastSeq == final
	})
	st := pipetest.WaitAppExact(t, r.consul, r.stream, final)
	appAddr := r.appAddr()
	r.checkState(appAddr, sensorAddr, final)
	res.published = final
	res.replayed = metric(t, appAddr, "svckit_replay_received_messages_total")
	res.dupMetric = metric(t, appAddr, "svckit_duplicates_skipped_total")
	// Read after the metrics, so that a late duplicate is in both.
	if again, err := pipetest.AppStreamOf(appAddr, r.stream); err == nil && again.Exact(final) {
		st = again
	}
	res.duplicates = st.Duplicates
	t.Logf("SUMMARY %s: published %d, recovered by replay %.0f, duplicates skipped %d (last app process: %.0f), time to exact %s, case %s; %s",
		strings.TrimPrefix(t.Name(), "Test"), res.published, res.replayed, res.duplicates, res.dupMetric,
		res.timeToExact.Round(10*time.Millisecond), time.Since(r.began).Round(time.Second), notes)
	return res
}

// savedSnapshotSeq returns the seq of the sensor's snapshot.json, written by
// a graceful stop: the stream's last sequence.
func savedSnapshotSeq(t *testing.T, dataDir, stream string) uint64 {
	t.Helper()
	seq, err := pipetest.SavedSnapshotSeq(dataDir, stream)
	if err != nil || seq == 0 {
		t.Fatalf("sensor snapshot of %s: seq %d, %v", stream, seq, err)
	}
	return seq
}

// checkState checks the app's state of stream against the sensor's fold
// over 1..n (pipetest.CheckStateWith; the workers run with factor 1).
func (r *rig) checkState(appAddr, sensorAddr string, n uint64) {
	r.t.Helper()
	want := r.want
	if want == nil {
		want = func(a pipeline.Aggregate) pipeline.Totals { return pipeline.TotalsOf(a, 1) }
	}
	pipetest.CheckStateWith(r.t, appAddr, sensorAddr, r.stream, n, want)
}

// metric reads one metric (summed over labels) from a service, trying again
// for a while if the service does not answer.
func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	var v float64
	var err error
	if !testenv.Eventually(stepTimeout, func() bool {
		v, err = pipetest.Metric(addr, name)
		return err == nil
	}) {
		t.Fatalf("metric %s at %s: %v", name, addr, err)
	}
	return v
}

// channelStats returns topic/channel's entry in nsqd's /stats (ok false if
// absent).
func channelStats(n *testenv.NSQD, topic, channel string) (ch chanStats, ok bool) {
	s, err := n.Stats()
	if err != nil {
		return ch, false
	}
	for _, tp := range s.Topics {
		if tp.TopicName != topic {
			continue
		}
		for _, c := range tp.Channels {
			if c.ChannelName == channel || (strings.HasSuffix(channel, "*") && strings.HasPrefix(c.ChannelName, strings.TrimSuffix(channel, "*"))) {
				return chanStats{Depth: c.Depth, BackendDepth: c.BackendDepth, InFlight: c.InFlightCount,
					Timeouts: c.TimeoutCount, Clients: c.ClientCount, Messages: c.MessageCount}, true
			}
		}
	}
	return ch, false
}

type chanStats struct {
	Depth, BackendDepth int64
	InFlight, Clients   int
	Timeouts, Messages  uint64
}

// topicMessages returns how many messages topic received on n (0 if n is
// down or lacks the topic).
func topicMessages(n *testenv.NSQD, topic string) uint64 {
	s, err := n.Stats()
	if err != nil {
		return 0
	}
	_, m, _ := s.TopicDepth(topic)
	return m
}
