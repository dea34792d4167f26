// Package pipetest starts svckit's own services (bin/sensor, bin/worker,
// bin/app) as real processes against a testenv Consul agent and reads their
// HTTP endpoints. It is the shared helper of the process-level test suites
// (e2e, faulttest, securitytest); like svckit/testenv it is a normal package
// that takes testing.TB, for tests only.
//
// Everything that waits polls with a deadline (testenv.WaitFor); nothing
// sleeps.
package pipetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/svckit/svckit/svckit/replay"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// Deadlines: generous, because the machine may be small and other suites run
// their own stacks meanwhile.
const (
	// PassingTimeout bounds AddrOf and AddrOfProcess: a started service
	// registered, passing and answering /health.
	PassingTimeout = 90 * time.Second
	// ExactTimeout bounds WaitAppExact and WaitAppExactAt.
	ExactTimeout = 120 * time.Second
)

// CommonArgs returns the flags StartService gives every service: Consul's
// address, an HTTP port chosen by the kernel on loopback, the data dir,
// quick health checks and lookupd polls, and name as the instance id (so
// the instance is easy to find in Consul). Flags given later on the same
// command line win, so callers may override any of them.
func CommonArgs(consul *testenv.Consul, name, dataDir string) []string {
	return []string{
		"--consul-addr=" + consul.HTTPAddr,
		"--http-addr=127.0.0.1:0",
		"--data-dir=" + dataDir,
		"--check-interval=1s",
		"--nsq-lookupd-poll-interval=1s",
		"--instance-id=" + name,
	}
}

// StartService starts bin/<bin> (sensor, worker, app) as the instance name,
// with CommonArgs (a new t.TempDir() as data dir), then args, and the test's
// environment plus env. The process is killed in t.Cleanup; its log is
// printed if the test failed.
func StartService(t testing.TB, consul *testenv.Consul, name, bin string, env []string, args ...string) *testenv.Process {
	t.Helper()
	return testenv.StartProcess(t, name, testenv.Bin(t, bin), append(CommonArgs(consul, name, t.TempDir()), args...), env)
}

// AddrOf waits until an instance of service (the one with Consul service id
// instanceID, or any if instanceID is "") is passing in Consul and answers
// GET /health at the address registered there, and returns that address
// (host:port). Checking /health skips an entry a killed process left behind.
func AddrOf(t testing.TB, consul *testenv.Consul, service, instanceID string) string {
	t.Helper()
	var got string
	testenv.WaitFor(t, PassingTimeout, instanceName(service, instanceID)+" passing in consul", func() bool {
		got = PassingAddr(consul, service, instanceID)
		return got != ""
	})
	return got
}

// AddrOfProcess is AddrOf for the instance that p runs. It stops waiting, and
// fails the test, as soon as p has exited: a service that crashed at start
// would otherwise cost the whole PassingTimeout and then report only a
// timeout. It does not take an address in notAddrs, so a test restarting a
// service can pass the previous run's address and get the new run's.
func AddrOfProcess(t testing.TB, consul *testenv.Consul, p *testenv.Process, service, instanceID string, notAddrs ...string) string {
	t.Helper()
	var got string
	testenv.WaitFor(t, PassingTimeout, instanceName(service, instanceID)+" passing in consul", func() bool {
		if !p.Running() {
			return true // reported below, with the exit code
		}
		got = PassingAddr(consul, service, instanceID, notAddrs...)
		return got != ""
	})
	if !p.Running() {
		t.Fatalf("pipetest: %s exited (code %d) before it was passing in consul", instanceName(service, instanceID), p.ExitCode())
	}
	return got
}

// instanceName names an instance in messages: "id (service)", or the
// service alone when any instance will do.
func instanceName(service, instanceID string) string {
	if instanceID == "" {
		return service
	}
	return fmt.Sprintf("%s (%s)", instanceID, service)
}

// PassingAddr is AddrOf without waiting: the address of a passing instance
// that answers /health and is not one of notAddrs, or "".
func PassingAddr(consul *testenv.Consul, service, instanceID string, notAddrs ...string) string {
	entries, err := testenv.Passing(consul, service)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if instanceID != "" && e.Service.ID != instanceID {
			continue
		}
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		a := net.JoinHostPort(addr, strconv.Itoa(e.Service.Port))
		if slices.Contains(notAddrs, a) {
			continue
		}
		if code, _, err := testenv.HTTPGet("http://" + a + "/health"); err == nil && code == http.StatusOK {
			return a
		}
	}
	return ""
}

// GetJSON GETs http://addr<path> and decodes the JSON answer into v. A status
// other than 200 is an error, except 503 for /ready (which answers 503 with
// the same JSON while not ready).
func GetJSON(addr, path string, v any) error {
	code, body, err := testenv.HTTPGet("http://" + addr + path)
	if err != nil {
		return err
	}
	if code != http.StatusOK && !(code == http.StatusServiceUnavailable && strings.HasPrefix(path, "/ready")) {
		return fmt.Errorf("GET %s%s: HTTP %d: %s", addr, path, code, strings.TrimSpace(body))
	}
	if err := json.Unmarshal([]byte(body), v); err != nil {
		return fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	return nil
}

// SensorStream is an entry of an owner's (the sensor's) GET /streams.
type SensorStream struct {
	Stream        string `json:"stream"`
	LastSeq       uint64 `json:"last_seq"`
	RetainedFirst uint64 `json:"retained_first"`
	RetainedLast  uint64 `json:"retained_last"`
}

// AppStream is an entry of a tracking consumer's (the app's) GET /streams.
type AppStream struct {
	Stream         string      `json:"stream"`
	LastContiguous uint64      `json:"last_contiguous"`
	Applied        uint64      `json:"applied"`
	Duplicates     uint64      `json:"duplicates"`
	Gaps           [][2]uint64 `json:"gaps"`
}

// Exact reports whether the app applied exactly 1..n.
func (a AppStream) Exact(n uint64) bool {
	return a.Applied == n && a.LastContiguous == n && len(a.Gaps) == 0
}

func (a AppStream) String() string {
	return fmt.Sprintf("last_contiguous %d, applied %d, duplicates %d, gaps %v", a.LastContiguous, a.Applied, a.Duplicates, a.Gaps)
}

// SensorStreams returns the sensor's GET /streams.
func SensorStreams(addr string) ([]SensorStream, error) {
	var ss []SensorStream
	return ss, GetJSON(addr, "/streams", &ss)
}

// AppStreams returns the app's GET /streams.
func AppStreams(addr string) ([]AppStream, error) {
	var ss []AppStream
	return ss, GetJSON(addr, "/streams", &ss)
}

// AppStreamOf returns the app's entry for stream; a stream the app has not
// seen yet is a zero entry, not an error.
func AppStreamOf(addr, stream string) (AppStream, error) {
	ss, err := AppStreams(addr)
	if err != nil {
		return AppStream{}, err
	}
	for _, s := range ss {
		if s.Stream == stream {
			return s, nil
		}
	}
	return AppStream{Stream: stream}, nil
}

// SensorStreamOf returns the sensor's entry for stream.
func SensorStreamOf(addr, stream string) (SensorStream, error) {
	ss, err := SensorStreams(addr)
	if err != nil {
		return SensorStream{}, err
	}
	listed := make([]string, 0, len(ss))
	for _, s := range ss {
		if s.Stream == stream {
			return s, nil
		}
		listed = append(listed, s.Stream)
	}
	// What it does list tells a wrong stream id from a sensor not started yet.
	return SensorStream{}, fmt.Errorf("sensor %s does not list stream %q (it lists %q)", addr, stream, listed)
}

// SensorLastSeq returns the sensor's last_seq of stream, failing the test if
// the sensor does not answer or does not own the stream.
func SensorLastSeq(t testing.TB, addr, stream string) uint64 {
	t.Helper()
	s, err := SensorStreamOf(addr, stream)
	if err != nil {
		t.Fatalf("pipetest: %v", err)
	}
	return s.LastSeq
}

// Readiness is a service's GET /ready: overall and per check (e.g.
// "consul_registration", "discovery", "nsqd", "consumer results/…").
type Readiness struct {
	Ready  bool `json:"ready"`
	Checks map[string]struct {
		OK     bool   `json:"ok"`
		Error  string `json:"error,omitempty"`
		Detail string `json:"detail,omitempty"`
	} `json:"checks"`
}

// CheckOK reports whether the named check is present and ok.
func (r Readiness) CheckOK(name string) bool {
	c, ok := r.Checks[name]
	return ok && c.OK
}

// Ready returns the service's GET /ready (200 or 503).
func Ready(addr string) (Readiness, error) {
	var r Readiness
	return r, GetJSON(addr, "/ready", &r)
}

// WaitAppExact waits (up to ExactTimeout) until the app passing in Consul
// has applied every sequence 1..n of stream exactly once (applied ==
// last_contiguous == n, no gaps), and returns its entry.
func WaitAppExact(t testing.TB, consul *testenv.Consul, stream string, n uint64) AppStream {
	t.Helper()
	return WaitAppExactSigned(t, consul, stream, n, "")
}

// WaitAppExactSigned is WaitAppExact for an app run with a replay secret:
// its /streams asked with requests signed with secret ("" for none), as
// svckit's clients sign them.
func WaitAppExactSigned(t testing.TB, consul *testenv.Consul, stream string, n uint64, secret string) AppStream {
	t.Helper()
	return waitExactSigned(t, "the app", stream, n, secret, func() (string, error) {
		if addr := PassingAddr(consul, "app", ""); addr != "" {
			return addr, nil
		}
		return "", errors.New("no passing app in consul")
	})
}

// WaitAppExactAt is WaitAppExact for the app at addr: for a test that runs
// more than one app (each must be exact on its own, and Consul would give
// any of them) or already holds the app's address.
func WaitAppExactAt(t testing.TB, addr, stream string, n uint64) AppStream {
	t.Helper()
	return waitExact(t, "the app at "+addr, stream, n, func() (string, error) { return addr, nil })
}

// waitExact polls the app that appAddr finds (again on every poll, so an app
// that moved is followed) until it is exact at n of stream, failing the test
// after ExactTimeout with what the app said last.
func waitExact(t testing.TB, app, stream string, n uint64, appAddr func() (string, error)) AppStream {
	t.Helper()
	return waitExactSigned(t, app, stream, n, "", appAddr)
}

func waitExactSigned(t testing.TB, app, stream string, n uint64, secret string, appAddr func() (string, error)) AppStream {
	t.Helper()
	var st AppStream
	var err error
	ok := testenv.Eventually(ExactTimeout, func() bool {
		var addr string
		if addr, err = appAddr(); err != nil {
			return false
		}
		if secret == "" {
			st, err = AppStreamOf(addr, stream)
		} else {
			st, err = signedAppStreamOf(addr, stream, secret)
		}
		return err == nil && st.Exact(n)
	})
	if !ok {
		t.Fatalf("pipetest: %s did not apply 1..%d of %s exactly once within %s: %v (last error: %v)", app, n, stream, ExactTimeout, st, err)
	}
	return st
}

// Metric returns the sum of every sample of the metric name (all label
// values) in the Prometheus text served at addr/metrics; 0 if absent.
func Metric(addr, name string) (float64, error) {
	var sum float64
	err := metricSamples(addr, name, func(_ string, v float64) { sum += v })
	return sum, err
}

// StreamMetric returns the sample of the metric name labelled
// stream="<stream>" at addr/metrics, and whether there is one.
func StreamMetric(addr, name, stream string) (v float64, found bool, err error) {
	want := `stream="` + stream + `"`
	err = metricSamples(addr, name, func(labels string, x float64) {
		if slices.Contains(strings.Split(labels, ","), want) {
			v, found = x, true
		}
	})
	return v, found, err
}

// metricSamples calls fn with the labels (without braces) and the value of
// every sample of the metric name at addr/metrics.
func metricSamples(addr, name string, fn func(labels string, v float64)) error {
	code, body, err := testenv.HTTPGet("http://" + addr + "/metrics")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s/metrics: HTTP %d", addr, code)
	}
	for _, line := range strings.Split(body, "\n") {
		// A sample line starts with the name, then labels or the value;
		// comments ("# HELP name …") and longer names sharing the prefix
		// do not pass this test.
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		var labels string
		if rest[0] == '{' {
			labels, _, _ = strings.Cut(rest[1:], "}")
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return fmt.Errorf("metrics line %q: %w", line, err)
		}
		fn(labels, v)
	}
	return nil
}

// ReadMetric is Metric for a service that must answer now: it fails the test
// at once, without trying again, if the metrics cannot be read.
func ReadMetric(t testing.TB, addr, name string) float64 {
	t.Helper()
	v, err := Metric(addr, name)
	if err != nil {
		t.Fatalf("pipetest: reading metric %s of %s: %v", name, addr, err)
	}
	return v
}

// CheckpointApplied returns how many sequences of stream the app's checkpoint
// file (<data dir>/checkpoint.json) records as applied, failing the test if
// the file cannot be read.
func CheckpointApplied(t testing.TB, appDataDir, stream string) uint64 {
	t.Helper()
	var n uint64
	for _, iv := range CheckpointIntervals(t, appDataDir, stream) {
		n += iv[1] - iv[0] + 1
	}
	return n
}

// CheckpointIntervals returns the [first, last] ranges of stream the app's
// checkpoint file records as applied, failing the test if it cannot be read.
func CheckpointIntervals(t testing.TB, appDataDir, stream string) [][2]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(appDataDir, "checkpoint.json"))
	if err != nil {
		t.Fatalf("pipetest: app checkpoint: %v", err)
	}
	var cp struct {
		Streams map[string]struct {
			Applied [][2]uint64 `json:"applied"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		t.Fatalf("pipetest: app checkpoint: %v", err)
	}
	return cp.Streams[stream].Applied
}

// SavedSnapshotSeq returns the seq of the sensor's saved snapshot of stream
// (<data dir>/streams/<stream>/snapshot.json); an error if there is none yet
// or it does not parse.
func SavedSnapshotSeq(sensorDataDir, stream string) (uint64, error) {
	path := filepath.Join(sensorDataDir, "streams", stream, "snapshot.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var s struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return s.Seq, nil
}

// KeepLog copies p's log, when the test ends, to <$envVar>/<test name>/<process
// name>.log if the environment variable envVar names a directory (each suite
// has its own: E2E_LOG_DIR, FAULTTEST_LOG_DIR); testenv keeps logs only in the
// test's temporary directory, which is removed.
func KeepLog(t testing.TB, p *testenv.Process, envVar string) {
	dir := os.Getenv(envVar)
	if dir == "" {
		return
	}
	t.Cleanup(func() {
		d := filepath.Join(dir, t.Name())
		if err := os.MkdirAll(d, 0o755); err == nil {
			_ = os.WriteFile(filepath.Join(d, p.Name()+".log"), []byte(p.Log()), 0o644)
		}
	})
}

// Stopped reports whether every thread of process pid is stopped (state T
// in /proc): kill(2) with SIGSTOP returns before they all are, and a
// request sent at once may still be answered.
func Stopped(pid int) bool {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		return false
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		// "pid (comm) S ...": the state follows the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// SensorSnapshot is a sensor's GET /snapshot answer: its fold over 1..Seq.
type SensorSnapshot struct {
	Stream string             `json:"stream"`
	Seq    uint64             `json:"seq"`
	State  pipeline.Aggregate `json:"state"`
}

// AppTotals returns the app's state of stream (GET /state).
func AppTotals(addr, stream string) (pipeline.Totals, error) {
	var all map[string]pipeline.Totals
	if err := GetJSON(addr, "/state", &all); err != nil {
		return pipeline.Totals{}, err
	}
	return all[stream], nil
}

// CheckState checks that the sensor's fold covers exactly readings 1..n and
// that the app's state of stream is what the workers' results of exactly
// those readings add up to: count and Σ value as in the fold, and Σ result
// = factor × Σ value². A reading lost, applied twice, or a sequence number
// used for two readings shows here.
func CheckState(t testing.TB, appAddr, sensorAddr, stream string, n uint64, factor int64) {
	t.Helper()
	CheckStateWith(t, appAddr, sensorAddr, stream, n, func(a pipeline.Aggregate) pipeline.Totals { return pipeline.TotalsOf(a, factor) })
}

// CheckStateWith is CheckState for any pipeline between the sensor and the
// app: want is the app's state after all of it handled readings with fold a.
func CheckStateWith(t testing.TB, appAddr, sensorAddr, stream string, n uint64, want func(a pipeline.Aggregate) pipeline.Totals) {
	t.Helper()
	var snap SensorSnapshot
	if err := GetJSON(sensorAddr, "/snapshot?stream="+stream, &snap); err != nil {
		t.Fatalf("sensor snapshot: %v", err)
	}
	if snap.Seq != n || snap.State.Count != n || snap.State.Seq != n {
		t.Fatalf("sensor snapshot of %s covers seq %d (state %+v), want %d readings", stream, snap.Seq, snap.State, n)
	}
	got, err := AppTotals(appAddr, stream)
	if err != nil {
		t.Fatalf("app state: %v", err)
	}
	w := want(snap.State)
	if w.Last == 0 && w.LastSeq == 0 {
		// Downstream of a split the last value depends on which part came
		// last: a want that leaves it zero does not compare it.
		got.Last, got.LastSeq = 0, 0
	}
	if got != w {
		t.Fatalf("app state of %s differs from what the pipeline makes of the sensor's readings:\n app  %+v\n want %+v", stream, got, w)
	}
}

// signedAppStreamOf is AppStreamOf asked with a request signed with secret
// (replay.Client signs it and checks the app's proof).
func signedAppStreamOf(addr, stream, secret string) (AppStream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := replay.Client{Secret: secret, Audience: "app"}.Get(ctx, addr, "/streams", nil)
	if err != nil {
		return AppStream{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return AppStream{}, fmt.Errorf("GET %s/streams: HTTP %d", addr, resp.StatusCode)
	}
	var ss []AppStream
	if err := json.NewDecoder(resp.Body).Decode(&ss); err != nil {
		return AppStream{}, fmt.Errorf("GET %s/streams: %w", addr, err)
	}
	for _, s := range ss {
		if s.Stream == stream {
			return s, nil
		}
	}
	return AppStream{Stream: stream}, nil
}
