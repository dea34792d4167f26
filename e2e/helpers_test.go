// Package e2e runs the reference pipeline (sensor → nsqd → workers → nsqd →
// app) end to end on the real programs: consul, nsqlookupd and nsqd started by
// svckit/testenv, and bin/sensor, bin/worker, bin/app and bin/svckit as built
// by ./build.sh. Nothing is mocked.
package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/testenv"
)

// stepTimeout bounds every wait that is not a service starting
// (pipetest.PassingTimeout) or the app becoming exact (pipetest.ExactTimeout).
// Generous: the machine is small and other test packages run their own stacks
// meanwhile.
const stepTimeout = 60 * time.Second

// env is one test's infrastructure: consul, nsqlookupd and nsqd.
type env struct {
	t      *testing.T
	st     *testenv.Stack
	dir    string
	starts map[string]int // starts per instance id
	// extraEnv is added to the environment of the services started next.
	extraEnv []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{t: t, st: testenv.StartStack(t), dir: t.TempDir(), starts: map[string]int{}}
}

// svc is one running svckit service (sensor, worker or app).
type svc struct {
	e       *env
	name    string // consul service name
	id      string // --instance-id = consul service id
	dataDir string
	proc    *testenv.Process
	addr    string // last address found in consul
}

// start starts bin/<name> with pipetest.CommonArgs and extra ones. The data
// dir is <env dir>/<id> unless extra sets --data-dir, not the fresh one
// pipetest.StartService would make: a new process of the same instance must
// find what the last one left there.
func (e *env) start(name, id string, extra ...string) *svc {
	e.t.Helper()
	s := &svc{e: e, name: name, id: id, dataDir: filepath.Join(e.dir, id)}
	args := append(pipetest.CommonArgs(e.st.Consul, id, s.dataDir), extra...)
	// A new process of the same instance (same data dir) gets its own log.
	e.starts[id]++
	pname := id
	if k := e.starts[id]; k > 1 {
		pname = fmt.Sprintf("%s.%d", id, k)
	}
	s.proc = testenv.StartProcess(e.t, pname, testenv.Bin(e.t, name), args, append(e.st.Env(), e.extraEnv...))
	keepLog(e.t, s.proc)
	return s
}

// keepLog keeps p's log under $E2E_LOG_DIR (see pipetest.KeepLog).
func keepLog(t *testing.T, p *testenv.Process) { pipetest.KeepLog(t, p, "E2E_LOG_DIR") }

// sensor starts a sensor of stream.
func (e *env) sensor(id, stream string, extra ...string) *svc {
	e.t.Helper()
	return e.start("sensor", id, append([]string{"--stream-id", stream}, extra...)...)
}

// worker starts a worker.
func (e *env) worker(id string, extra ...string) *svc {
	e.t.Helper()
	return e.start("worker", id, extra...)
}

// app starts an app with short replay timings (the defaults would only make
// the tests slower).
func (e *env) app(id string, extra ...string) *svc {
	e.t.Helper()
	return e.start("app", id, append([]string{
		"--replay-gap-grace", "1s", "--replay-tail-interval", "1s", "--summary-interval", "0",
	}, extra...)...)
}

// Addr waits until the instance is passing in consul and answers /health on
// the address registered there, and returns that address. An address in
// notAddr (a previous run's) is not taken. The test fails at once if the
// process exits first.
func (s *svc) Addr(notAddr ...string) string {
	s.e.t.Helper()
	s.addr = pipetest.AddrOfProcess(s.e.t, s.e.st.Consul, s.proc, s.name, s.id, notAddr...)
	return s.addr
}

// Restart starts the stopped service again (same flags, same data dir) and
// waits for its new address.
func (s *svc) Restart() string {
	s.e.t.Helper()
	old := s.addr
	s.proc.Restart(s.e.t)
	return s.Addr(old)
}

// Stop stops the service with SIGTERM and fails the test unless it exits 0.
func (s *svc) Stop() {
	s.e.t.Helper()
	if err := s.proc.Stop(); err != nil {
		s.e.t.Fatalf("%s: graceful stop: %v (exit code %d)", s.id, err, s.proc.ExitCode())
	}
}

// waitSensorLast waits until the sensor's last_seq of stream is at least n
// and returns its status.
func waitSensorLast(t *testing.T, addr, stream string, n uint64) pipetest.SensorStream {
	t.Helper()
	var st pipetest.SensorStream
	var err error
	testenv.WaitFor(t, stepTimeout, fmt.Sprintf("sensor %s: last_seq of %s >= %d", addr, stream, n), func() bool {
		st, err = pipetest.SensorStreamOf(addr, stream)
		return err == nil && st.LastSeq >= n
	})
	return st
}

// sensorFinal waits until the sensor, started with --count, has published
// its last reading of stream, and returns that last sequence: want, or, if
// last_seq stops short of want and stays put for 3s, where it stopped (the
// sensor's pacing counts readings it skipped after a stall towards --count:
// see TestSensorCountAfterStall).
func sensorFinal(t *testing.T, addr, stream string, want uint64) uint64 {
	t.Helper()
	var last uint64
	var since time.Time
	testenv.WaitFor(t, pipetest.ExactTimeout, fmt.Sprintf("sensor %s: last_seq of %s to reach %d or stop moving", addr, stream, want), func() bool {
		st, err := pipetest.SensorStreamOf(addr, stream)
		if err != nil {
			return false
		}
		if st.LastSeq >= want {
			last = st.LastSeq
			return true
		}
		if st.LastSeq != last || since.IsZero() {
			last, since = st.LastSeq, time.Now()
			return false
		}
		return time.Since(since) >= 3*time.Second
	})
	if last != want {
		t.Logf("sensor %s published up to %d, not %d: it skipped readings after a stall (see TestSensorCountAfterStall)", addr, last, want)
	}
	return last
}

// waitApplied waits until the app applied at least n sequences of stream.
func waitApplied(t *testing.T, addr, stream string, n uint64) pipetest.AppStream {
	t.Helper()
	var st pipetest.AppStream
	var err error
	if !testenv.Eventually(stepTimeout, func() bool {
		st, err = pipetest.AppStreamOf(addr, stream)
		return err == nil && st.Applied >= n
	}) {
		t.Fatalf("app %s: applied of %s did not reach %d: %v (err %v)", addr, stream, n, st, err)
	}
	return st
}

// appState returns the app's state of stream.
func appState(addr, stream string) (pipeline.Totals, error) { return pipetest.AppTotals(addr, stream) }

// checkState checks the app's state of stream against the sensor's fold
// over 1..n (pipetest.CheckState; the workers run with factor 1).
func checkState(t *testing.T, appAddr, sensorAddr, stream string, n uint64) {
	t.Helper()
	pipetest.CheckState(t, appAddr, sensorAddr, stream, n, 1)
}

// finish waits until the sensor published n readings of stream and the app
// applied each of them exactly once, with the sensor's fold as state.
func finish(t *testing.T, appAddr, sensorAddr, stream string, n uint64) pipetest.AppStream {
	t.Helper()
	waitSensorLast(t, sensorAddr, stream, n)
	st := pipetest.WaitAppExactAt(t, appAddr, stream, n)
	checkState(t, appAddr, sensorAddr, stream, n)
	return st
}

// channelStats describes a channel in nsqd's /stats.
type channelStats struct {
	Name         string
	Depth        int64
	MessageCount uint64
	Clients      int
}

// nsqChannels returns the channels of topic on the stack's nsqd.
func (e *env) nsqChannels(topic string) ([]channelStats, error) {
	st, err := e.st.NSQD.Stats()
	if err != nil {
		return nil, err
	}
	var out []channelStats
	for _, tp := range st.Topics {
		if tp.TopicName != topic {
			continue
		}
		for _, c := range tp.Channels {
			out = append(out, channelStats{Name: c.ChannelName, Depth: c.Depth, MessageCount: c.MessageCount, Clients: c.ClientCount})
		}
	}
	return out, nil
}

// waitClients waits until channel (of topic) has exactly n clients; a channel
// name ending in "*" matches by prefix.
func (e *env) waitClients(topic, channel string, n int) {
	e.t.Helper()
	testenv.WaitFor(e.t, pipetest.PassingTimeout, fmt.Sprintf("%d client(s) on %s/%s", n, topic, channel), func() bool {
		cs, err := e.nsqChannels(topic)
		if err != nil {
			return false
		}
		got := 0
		for _, c := range cs {
			if c.Name == channel || (strings.HasSuffix(channel, "*") && strings.HasPrefix(c.Name, strings.TrimSuffix(channel, "*"))) {
				got += c.Clients
			}
		}
		return got == n
	})
}

// topicMessages returns nsqd's message_count of topic (messages put into it).
func (e *env) topicMessages(topic string) uint64 {
	e.t.Helper()
	st, err := e.st.NSQD.Stats()
	if err != nil {
		e.t.Fatalf("nsqd stats: %v", err)
	}
	_, n, _ := st.TopicDepth(topic)
	return n
}

// nsqPost POSTs to the stack's nsqd HTTP API.
func (e *env) nsqPost(path string) {
	e.t.Helper()
	code, body, err := testenv.HTTPPost("http://"+e.st.NSQD.HTTPAddr+path, "text/plain", nil)
	if err != nil || code != http.StatusOK {
		e.t.Fatalf("nsqd POST %s: %d %s %v", path, code, body, err)
	}
}

// createTopic creates topic on nsqd (so nsqlookupd knows it at once).
func (e *env) createTopic(topic string) {
	e.t.Helper()
	e.nsqPost("/topic/create?topic=" + topic)
}

// observeResults creates a durable channel nobody consumes on topic results.
// Without any channel, nsqd keeps a topic's messages until the first channel
// appears, so an app that reconnects would get everything it missed from NSQ;
// with this one, an ephemeral app channel really misses what is published
// while its app is away, as in production where other consumers exist.
func (e *env) observeResults() {
	e.t.Helper()
	e.createTopic(pipeline.ResultsTopic)
	e.nsqPost("/channel/create?topic=" + pipeline.ResultsTopic + "&channel=e2e-observer")
}

// runCLI runs bin/svckit with args and waits for it to exit; it returns the
// exit code and the program's output.
func (e *env) runCLI(t *testing.T, name string, args ...string) (int, string) {
	t.Helper()
	p := testenv.StartProcess(t, name, testenv.Bin(t, "svckit"), args, e.st.Env())
	select {
	case <-p.Exited():
	case <-time.After(stepTimeout):
		p.Kill()
		t.Fatalf("svckit %v did not exit within %s:\n%s", args, stepTimeout, p.Log())
	}
	return p.ExitCode(), p.Log()
}

// segment is one retained-log segment file of a stream on disk.
type segment struct {
	path    string
	size    int64
	lastSeq uint64
	lastOff int64 // offset of the last complete record
}

// lastSegment scans the newest segment file of the sensor's stream with the
// documented record format and returns where its last record starts.
func lastSegment(t *testing.T, sensorDataDir, stream string) segment {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(sensorDataDir, "streams", stream, "log", "*.log"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no segment files for %s under %s (%v)", stream, sensorDataDir, err)
	}
	sort.Strings(files) // names are the zero-padded first seq
	path := files[len(files)-1]
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := segment{path: path, size: int64(len(b)), lastOff: -1}
	for off := 0; off < len(b); {
		r, n, err := retainlog.DecodeRecord(b[off:])
		if err != nil {
			// The kill itself tore the tail (rare: one write(2) per record).
			t.Logf("%s: torn record at offset %d already: %v", path, off, err)
			s.size = int64(off)
			break
		}
		s.lastSeq, s.lastOff = r.Seq, int64(off)
		off += n
	}
	if s.lastOff < 0 {
		t.Fatalf("%s holds no record", path)
	}
	return s
}

// appendBytes appends b to the file at path.
func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// logSince returns the part of the process's log written since offset.
func logSince(p *testenv.Process, offset int) string {
	l := p.Log()
	if offset > len(l) {
		return ""
	}
	return l[offset:]
}
