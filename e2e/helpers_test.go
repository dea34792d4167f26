// Package e2e runs the reference pipeline (sensor → nsqd → workers → nsqd →
// app) end to end on the real programs: consul, nsqlookupd and nsqd started by
// svckit/testenv, and bin/sensor, bin/worker, bin/app and bin/svckit as built
// by ./build.sh. Nothing is mocked.
package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/testenv"
)

// Deadlines. Generous: the machine is small and other test packages run
// their own stacks meanwhile.
const (
	startTimeout = 90 * time.Second  // a service registered, passing and answering
	exactTimeout = 120 * time.Second // the app applied everything
	stepTimeout  = 60 * time.Second  // anything else
)

// env is one test's infrastructure: consul, nsqlookupd and nsqd.
type env struct {
	t      *testing.T
	st     *testenv.Stack
	dir    string
	starts map[string]int // starts per instance id
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

// start starts bin/<name> with the common flags and extra ones. The data dir
// is <env dir>/<id> unless extra sets --data-dir.
func (e *env) start(name, id string, extra ...string) *svc {
	e.t.Helper()
	s := &svc{e: e, name: name, id: id, dataDir: filepath.Join(e.dir, id)}
	args := []string{
		"--consul-addr", e.st.Consul.HTTPAddr,
		"--http-addr", "127.0.0.1:0",
		"--data-dir", s.dataDir,
		"--instance-id", id,
		"--check-interval", "1s",
		"--nsq-lookupd-poll-interval", "1s",
	}
	args = append(args, extra...)
	// A new process of the same instance (same data dir) gets its own log.
	e.starts[id]++
	pname := id
	if k := e.starts[id]; k > 1 {
		pname = fmt.Sprintf("%s.%d", id, k)
	}
	s.proc = testenv.StartProcess(e.t, pname, testenv.Bin(e.t, name), args, e.st.Env())
	keepLog(e.t, s.proc)
	return s
}

// keepLog copies the process's log to $E2E_LOG_DIR/<test>/ at the end of the
// test, when that variable is set (for debugging: t.TempDir is removed).
func keepLog(t *testing.T, p *testenv.Process) {
	dir := os.Getenv("E2E_LOG_DIR")
	if dir == "" {
		return
	}
	t.Cleanup(func() {
		d := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
		if err := os.MkdirAll(d, 0o755); err == nil {
			_ = os.WriteFile(filepath.Join(d, p.Name()+".log"), []byte(p.Log()), 0o644)
		}
	})
}

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
// notAddr (a previous run's) is not taken.
func (s *svc) Addr(notAddr ...string) string {
	s.e.t.Helper()
	var got string
	testenv.WaitFor(s.e.t, startTimeout, fmt.Sprintf("%s (%s) passing in consul", s.id, s.name), func() bool {
		if !s.proc.Running() {
			return true // reported below
		}
		entries, err := testenv.Passing(s.e.st.Consul, s.name)
		if err != nil {
			return false
		}
		for _, en := range entries {
			if en.Service.ID != s.id {
				continue
			}
			a := fmt.Sprintf("%s:%d", en.Service.Address, en.Service.Port)
			for _, n := range notAddr {
				if a == n {
					return false
				}
			}
			if code, _, err := testenv.HTTPGet("http://" + a + "/health"); err == nil && code == http.StatusOK {
				got = a
				return true
			}
		}
		return false
	})
	if !s.proc.Running() {
		s.e.t.Fatalf("%s exited (code %d) before it was passing in consul", s.id, s.proc.ExitCode())
	}
	s.addr = got
	return got
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

// getJSON GETs http://addr/path and decodes the JSON answer into v.
func getJSON(addr, path string, v any) error {
	code, body, err := testenv.HTTPGet("http://" + addr + path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s%s: %d %s", addr, path, code, strings.TrimSpace(body))
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		return fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	return nil
}

// ownerStatus is an entry of the sensor's GET /streams.
type ownerStatus struct {
	Stream        string `json:"stream"`
	LastSeq       uint64 `json:"last_seq"`
	RetainedFirst uint64 `json:"retained_first"`
	RetainedLast  uint64 `json:"retained_last"`
}

// appStatus is an entry of the app's GET /streams.
type appStatus struct {
	Stream         string      `json:"stream"`
	LastContiguous uint64      `json:"last_contiguous"`
	Applied        uint64      `json:"applied"`
	Duplicates     uint64      `json:"duplicates"`
	Gaps           [][2]uint64 `json:"gaps"`
}

func (a appStatus) String() string {
	return fmt.Sprintf("last_contiguous %d, applied %d, duplicates %d, gaps %v", a.LastContiguous, a.Applied, a.Duplicates, a.Gaps)
}

// sensorStatus returns the sensor's entry for stream.
func sensorStatus(addr, stream string) (ownerStatus, error) {
	var all []ownerStatus
	if err := getJSON(addr, "/streams", &all); err != nil {
		return ownerStatus{}, err
	}
	for _, s := range all {
		if s.Stream == stream {
			return s, nil
		}
	}
	return ownerStatus{}, fmt.Errorf("sensor %s does not list stream %s: %+v", addr, stream, all)
}

// appStreamStatus returns the app's entry for stream (zero if it has none yet).
func appStreamStatus(addr, stream string) (appStatus, error) {
	var all []appStatus
	if err := getJSON(addr, "/streams", &all); err != nil {
		return appStatus{}, err
	}
	for _, s := range all {
		if s.Stream == stream {
			return s, nil
		}
	}
	return appStatus{Stream: stream}, nil
}

// waitSensorLast waits until the sensor's last_seq of stream is at least n
// and returns its status.
func waitSensorLast(t *testing.T, addr, stream string, n uint64) ownerStatus {
	t.Helper()
	var st ownerStatus
	var err error
	testenv.WaitFor(t, stepTimeout, fmt.Sprintf("sensor %s: last_seq of %s >= %d", addr, stream, n), func() bool {
		st, err = sensorStatus(addr, stream)
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
	testenv.WaitFor(t, exactTimeout, fmt.Sprintf("sensor %s: last_seq of %s to reach %d or stop moving", addr, stream, want), func() bool {
		st, err := sensorStatus(addr, stream)
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
func waitApplied(t *testing.T, addr, stream string, n uint64) appStatus {
	t.Helper()
	var st appStatus
	var err error
	if !testenv.Eventually(stepTimeout, func() bool {
		st, err = appStreamStatus(addr, stream)
		return err == nil && st.Applied >= n
	}) {
		t.Fatalf("app %s: applied of %s did not reach %d: %v (err %v)", addr, stream, n, st, err)
	}
	return st
}

// waitExact waits until the app has applied exactly 1..n of stream (no gaps)
// and returns its status.
func waitExact(t *testing.T, addr, stream string, n uint64) appStatus {
	t.Helper()
	var st appStatus
	var err error
	if !testenv.Eventually(exactTimeout, func() bool {
		st, err = appStreamStatus(addr, stream)
		return err == nil && st.LastContiguous == n && st.Applied == n && len(st.Gaps) == 0
	}) {
		t.Fatalf("app %s: stream %s not exact at %d after %s: %v (err %v)", addr, stream, n, exactTimeout, st, err)
	}
	return st
}

// snapshot is the sensor's GET /snapshot answer.
type snapshot struct {
	Stream string             `json:"stream"`
	Seq    uint64             `json:"seq"`
	State  pipeline.Aggregate `json:"state"`
}

// appState returns the app's state of stream.
func appState(addr, stream string) (pipeline.Aggregate, error) {
	var all map[string]pipeline.Aggregate
	if err := getJSON(addr, "/state", &all); err != nil {
		return pipeline.Aggregate{}, err
	}
	return all[stream], nil
}

// checkState checks that the app's state of stream equals the sensor's fold
// over 1..n, and that the fold covers exactly n readings.
func checkState(t *testing.T, appAddr, sensorAddr, stream string, n uint64) {
	t.Helper()
	var snap snapshot
	if err := getJSON(sensorAddr, "/snapshot?stream="+stream, &snap); err != nil {
		t.Fatalf("sensor snapshot: %v", err)
	}
	if snap.Seq != n || snap.State.Count != n || snap.State.Seq != n {
		t.Fatalf("sensor snapshot of %s covers seq %d (state %+v), want %d readings", stream, snap.Seq, snap.State, n)
	}
	got, err := appState(appAddr, stream)
	if err != nil {
		t.Fatalf("app state: %v", err)
	}
	if got != snap.State {
		t.Fatalf("app state of %s differs from the sensor's fold:\n app    %+v\n sensor %+v", stream, got, snap.State)
	}
}

// finish waits until the sensor published n readings of stream and the app
// applied each of them exactly once, with the sensor's fold as state.
func finish(t *testing.T, appAddr, sensorAddr, stream string, n uint64) appStatus {
	t.Helper()
	waitSensorLast(t, sensorAddr, stream, n)
	st := waitExact(t, appAddr, stream, n)
	checkState(t, appAddr, sensorAddr, stream, n)
	return st
}

// metric returns the sum of every sample of the metric name (all label
// values) in the Prometheus text served at addr/metrics; 0 if absent.
func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	code, body, err := testenv.HTTPGet("http://" + addr + "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s/metrics: %d %v", addr, code, err)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
	}
	return sum
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
	testenv.WaitFor(e.t, startTimeout, fmt.Sprintf("%d client(s) on %s/%s", n, topic, channel), func() bool {
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

// checkpointApplied returns how many sequences of stream the app's checkpoint
// file records as applied.
func checkpointApplied(t *testing.T, appDataDir, stream string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(appDataDir, "checkpoint.json"))
	if err != nil {
		t.Fatalf("app checkpoint: %v", err)
	}
	var cp struct {
		Streams map[string]struct {
			Applied [][2]uint64 `json:"applied"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatalf("app checkpoint: %v", err)
	}
	var n uint64
	for _, iv := range cp.Streams[stream].Applied {
		n += iv[1] - iv[0] + 1
	}
	return n
}

// savedSnapshotSeq returns the seq of the sensor's saved snapshot.json (0 if
// none yet).
func savedSnapshotSeq(sensorDataDir, stream string) uint64 {
	b, err := os.ReadFile(filepath.Join(sensorDataDir, "streams", stream, "snapshot.json"))
	if err != nil {
		return 0
	}
	var s struct {
		Seq uint64 `json:"seq"`
	}
	if json.Unmarshal(b, &s) != nil {
		return 0
	}
	return s.Seq
}

// logSince returns the part of the process's log written since offset.
func logSince(p *testenv.Process, offset int) string {
	l := p.Log()
	if offset > len(l) {
		return ""
	}
	return l[offset:]
}
