package console

// What the live console costs (issue 25: "with 100 streams and 20
// instances, the console uses under 5% of one core and the page stays
// responsive"), measured against the real programs: a Consul agent (-dev),
// nsqlookupd and nsqd (testenv), 20 service instances registered in Consul
// with the tags the console reads, and the console's own collector and
// HTTP side, as setup builds them.
//
//	./build.sh   # once: bin/ holds consul, nsqd, nsqlookupd
//	SVCKIT_BIN=$PWD/bin go test -run '^$' -bench 'BenchmarkConsoleCost/history=5m$' -benchtime 1x \
//	    -cpuprofile /tmp/console.cpu -o /tmp/console.test ./cmd/svckit/internal/console
//	go tool pprof -tagignore bench=harness -top /tmp/console.test /tmp/console.cpu
//
// (about 40 s after the programs start). SVCKIT_CONSOLE_COST_DUMP=<dir> writes each window's last
// state there, as the page receives it.
//
// The instances are not svckit services but fakes that serve what the
// console reads from such services: a signed GET /streams (replay.RequireSecret,
// the real replay.Status and replay.StreamStatus JSON, proven to the
// console's replay client) and GET /health for Consul's check. 4 stream
// owners (services owner-a and owner-b, 2 instances each) own 25 streams each
// and publish them to one topic each (events-0..3); 16 tracking consumers
// (services tracker-a..d, 4 instances each) track all 100 streams, each
// consuming all 4 topics in nsqd on a channel of its own, as NSQ consumers
// with svckit's user agent. Owners publish 10 messages a second to each topic.
//
// The fakes run in a separate process (this test binary again, running
// TestConsoleCostFakes), together with one viewer of the page's event stream
// (GET /api/events, read and thrown away, as an open page would): the
// benchmark's own process holds only the console (collector, HTTP server,
// the event stream's writes), so its rusage is the console's cost, with no
// baseline to subtract, and a -cpuprofile of it shows only the console once
// what the benchmark itself does there (decoding the state to check it,
// timing an encoding and a GET /api/state after each window) is left out:
// that is labeled bench=harness.
// Consul's, nsqd's and the fakes' CPU are read from /proc and reported too.
//
// The collection is the collector's own collect, called every Interval as
// Run calls it (so that each can be timed and the lag histories can be
// touched between two without a race). A console that has run for 5 minutes
// holds HistoryWindow of lag history for every tracking consumer of every
// stream (GET /api/lag-history, not in the per-second state: with it, one
// point a second, the state was 15 MB and the console used 13-16% of a
// core); rather than wait 5 minutes, history=5m fills each consumer's
// history from the same functions the fakes answer with, then measures.
//
// One iteration is a whole window of costWindow collections (b.N is 1 with
// the default -benchtime; more iterations make longer windows).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/cdp"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// The layout measured.
const (
	costStreams        = 100
	costOwners         = 4 // costStreams/costOwners streams each
	costTrackers       = 16
	costWindow         = 30 // collections per measured window
	costWarmup         = 2  // collections before a window
	costPublishPerSec  = 10 // messages a second to each owner's topic
	costFakesEnv       = "SVCKIT_CONSOLE_COST_FAKES"
	costDumpEnv        = "SVCKIT_CONSOLE_COST_DUMP" // a directory: the last state of each window is written there
	costFakesLifetime  = 10 * time.Minute           // the fakes' process stops by itself then
	costHelperTestName = "TestConsoleCostFakes"
)

// costLayout names the instances, their services, streams and topics.
type costOwner struct {
	ID, Service, Topic string
	Streams            []int // stream indexes
}

type costTracker struct{ ID, Service string }

func costStreamID(k int) string { return fmt.Sprintf("s%03d", k) }

func costOwnersLayout() []costOwner {
	per := costStreams / costOwners
	out := make([]costOwner, costOwners)
	for i := range out {
		out[i] = costOwner{ID: fmt.Sprintf("owner-%d", i), Service: "owner-" + string(rune('a'+i/2)), Topic: fmt.Sprintf("events-%d", i)}
		for k := i * per; k < (i+1)*per; k++ {
			out[i].Streams = append(out[i].Streams, k)
		}
	}
	return out
}

func costTrackersLayout() []costTracker {
	out := make([]costTracker, costTrackers)
	for j := range out {
		out[j] = costTracker{ID: fmt.Sprintf("tracker-%02d", j), Service: "tracker-" + string(rune('a'+j/4))}
	}
	return out
}

// The numbers the fakes answer with, functions of time alone (both
// processes compute them: the benchmark fills the lag histories with them).

func costRate(k int) float64 { return float64(5 + k%20) } // sequences a second

func costOwnerLast(k int, epoch, t time.Time) uint64 {
	return 1_000_000 + uint64(k)*1000 + uint64(t.Sub(epoch).Seconds()*costRate(k))
}

// costLag is tracker j's lag in stream k at t: messages and seconds.
func costLag(j, k int, t time.Time) (uint64, float64) {
	lag := uint64((j*7 + k*3 + int(t.Unix()/5)) % 40)
	if lag == 0 {
		return 0, 0
	}
	ns := int64(float64(lag)/costRate(k)*1e9) + int64(j*131_071+k*8_191)%1_000_000
	return lag, float64(ns) / 1e9
}

func costOwnerStatus(k int, epoch, t time.Time) replay.Status {
	last := costOwnerLast(k, epoch, t)
	return replay.Status{Stream: costStreamID(k), LastSeq: last, RetainedFirst: last - min(last-1, 100_000), RetainedLast: last}
}

func costTrackerStatus(j, k int, epoch, t time.Time) replay.StreamStatus {
	last := costOwnerLast(k, epoch, t)
	lag, secs := costLag(j, k, t)
	s := replay.StreamStatus{Stream: costStreamID(k), LastContiguous: last - lag, Applied: last - lag - 40, Duplicates: uint64(j + k),
		Gaps: [][2]uint64{}, OwnerLast: last, DeadLettered: [][2]uint64{}, LagMessages: lag, LagSeconds: secs}
	if (j+k)%37 == 0 && lag > 4 {
		// A few consumers recovering a gap, as some would be.
		s.Gaps = [][2]uint64{{last - lag + 2, last - lag + 4}}
		s.Replay = &replay.ReplayProgress{Requested: 3, Received: 1}
	}
	return s
}

// costFakesConfig is what the benchmark hands the fakes' process.
type costFakesConfig struct {
	Secret   string `json:"secret"`
	EpochMS  int64  `json:"epoch_ms"`
	NSQDTCP  string `json:"nsqd_tcp"`
	AddrFile string `json:"addr_file"`
}

// costFakesAddrs is what the fakes' process answers, in AddrFile.
type costFakesAddrs struct {
	Control  string   `json:"control"`
	Owners   []string `json:"owners"`
	Trackers []string `json:"trackers"`
}

// costViewerReport is the event stream's viewer so far.
type costViewerReport struct {
	Events   int     `json:"events"`
	Bytes    int64   `json:"bytes"`
	Arrivals []int64 `json:"arrivals"` // unix ms of every state event
	Err      string  `json:"err,omitempty"`
}

// TestConsoleCostFakes is the fakes' process of BenchmarkConsoleCost; it
// is skipped otherwise.
func TestConsoleCostFakes(t *testing.T) {
	raw := os.Getenv(costFakesEnv)
	if raw == "" {
		t.Skip("the fakes' process of BenchmarkConsoleCost (started by it)")
	}
	var cfg costFakesConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	epoch := time.UnixMilli(cfg.EpochMS)
	ctx, cancel := context.WithTimeout(context.Background(), costFakesLifetime)
	defer cancel()
	serve := func(h http.Handler) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		go func() { <-ctx.Done(); _ = srv.Close() }()
		return ln.Addr().String()
	}
	health := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	var addrs costFakesAddrs
	for _, o := range costOwnersLayout() {
		mux := http.NewServeMux()
		mux.Handle("GET /health", health)
		mux.Handle("GET /streams", replay.RequireSecret(cfg.Secret, o.Service, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			now := time.Now()
			out := make([]replay.Status, 0, len(o.Streams))
			for _, k := range o.Streams {
				out = append(out, costOwnerStatus(k, epoch, now))
			}
			writeJSON(w, out)
		})))
		addrs.Owners = append(addrs.Owners, serve(mux))
	}
	for j, tr := range costTrackersLayout() {
		mux := http.NewServeMux()
		mux.Handle("GET /health", health)
		mux.Handle("GET /streams", replay.RequireSecret(cfg.Secret, tr.Service, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			now := time.Now()
			out := make([]replay.StreamStatus, 0, costStreams)
			for k := range costStreams {
				out = append(out, costTrackerStatus(j, k, epoch, now))
			}
			writeJSON(w, out)
		})))
		addrs.Trackers = append(addrs.Trackers, serve(mux))
	}

	// NSQ: every tracker consumes every owner's topic on a channel of its
	// own (with svckit's user agent, which the console reads), and the
	// owners publish to their topics.
	for _, tr := range costTrackersLayout() {
		for _, o := range costOwnersLayout() {
			nc := nsq.NewConfig()
			nc.UserAgent = "svckit-" + tr.Service + "/bench"
			c, err := nsq.NewConsumer(o.Topic, tr.ID, nc)
			if err != nil {
				t.Fatal(err)
			}
			c.SetLogger(nil, nsq.LogLevelError)
			c.AddHandler(nsq.HandlerFunc(func(*nsq.Message) error { return nil }))
			if err := c.ConnectToNSQD(cfg.NSQDTCP); err != nil {
				t.Fatal(err)
			}
			defer c.Stop()
		}
	}
	prod, err := nsq.NewProducer(cfg.NSQDTCP, nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	prod.SetLogger(nil, nsq.LogLevelError)
	defer prod.Stop()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		body := make([][]byte, costPublishPerSec)
		for i := range body {
			body[i] = []byte(`{"bench":"console cost"}`)
		}
		for {
			for _, o := range costOwnersLayout() {
				_ = prod.MultiPublish(o.Topic, body)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()

	// The page's stand-in: reads the console's event stream, counting the
	// state events and bytes, from POST /view?url= on.
	var mu sync.Mutex
	var report costViewerReport
	control := http.NewServeMux()
	control.HandleFunc("POST /view", func(w http.ResponseWriter, r *http.Request) {
		u := r.URL.Query().Get("url")
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				mu.Lock()
				report.Err = err.Error()
				mu.Unlock()
				return
			}
			defer resp.Body.Close()
			br := bufio.NewReaderSize(resp.Body, 1<<20)
			lineStart := true
			for {
				line, err := br.ReadSlice('\n')
				mu.Lock()
				report.Bytes += int64(len(line))
				if lineStart && bytes.HasPrefix(line, []byte("event: state")) {
					report.Events++
					report.Arrivals = append(report.Arrivals, time.Now().UnixMilli())
				}
				if err != nil && err != bufio.ErrBufferFull {
					report.Err = err.Error()
					mu.Unlock()
					return
				}
				mu.Unlock()
				lineStart = err == nil
			}
		}()
		w.WriteHeader(http.StatusNoContent)
	})
	control.HandleFunc("GET /viewer", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		writeJSON(w, report)
	})
	addrs.Control = serve(control)

	b, _ := json.Marshal(addrs)
	tmp := cfg.AddrFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, cfg.AddrFile); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done() // killed by the benchmark long before, normally
}

// costNoDeadLetters is the dead-letter access of the measured console: no
// instance advertises a local store and no topic has dead letters, so the
// collector never calls it (package operator's, the real one, imports this
// package).
type costNoDeadLetters struct{}

func (costNoDeadLetters) ListNSQD(context.Context, string, int, time.Duration) ([]DeadLetter, error) {
	return nil, nil
}
func (costNoDeadLetters) ListLocal(context.Context, discovery.Instance, string) ([]DeadLetter, error) {
	return nil, nil
}
func (costNoDeadLetters) Requeue(context.Context, string, string) (RequeueResult, error) {
	return RequeueResult{}, fmt.Errorf("not in the benchmark")
}

// cpuTime is a process's user+system CPU time: this one's (pid 0, rusage)
// or a child's (/proc/<pid>/stat, in clock ticks of 10 ms).
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond
}

func BenchmarkConsoleCost(b *testing.B) {
	st := testenv.StartStack(b)
	secretBytes := make([]byte, 32)
	_, _ = rand.Read(secretBytes)
	secret := hex.EncodeToString(secretBytes)
	epoch := time.Now().Add(-time.Hour).Truncate(time.Millisecond)

	// The fakes' process.
	addrFile := filepath.Join(b.TempDir(), "fakes.json")
	cfg, _ := json.Marshal(costFakesConfig{Secret: secret, EpochMS: epoch.UnixMilli(), NSQDTCP: st.NSQD.TCPAddr, AddrFile: addrFile})
	fakes := testenv.StartProcess(b, "console-cost-fakes", os.Args[0],
		[]string{"-test.run=^" + costHelperTestName + "$", "-test.count=1", "-test.timeout=" + (costFakesLifetime + time.Minute).String()},
		[]string{costFakesEnv + "=" + string(cfg)})
	var addrs costFakesAddrs
	testenv.WaitFor(b, 60*time.Second, "the fakes' addresses in "+addrFile, func() bool {
		raw, err := os.ReadFile(addrFile)
		return err == nil && json.Unmarshal(raw, &addrs) == nil && addrs.Control != ""
	})

	// The 20 instances in Consul, with the tags the console reads.
	register := func(id, svc, addr string, tags []string) {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		testenv.Register(b, st.Consul, &api.AgentServiceRegistration{ID: id, Name: svc, Address: host, Port: p, Tags: tags,
			Meta: map[string]string{"version": "bench"},
			Check: &api.AgentServiceCheck{CheckID: id + ":health", Name: svc + " /health", HTTP: "http://" + addr + "/health",
				Interval: "10s", Timeout: "2s", Status: api.HealthPassing}})
	}
	var topics []string
	for i, o := range costOwnersLayout() {
		tags := []string{replay.PublishesTag(o.Topic)}
		for _, k := range o.Streams {
			tags = append(tags, replay.OwnerTag(costStreamID(k)))
		}
		register(o.ID, o.Service, addrs.Owners[i], tags)
		topics = append(topics, o.Topic)
	}
	for j, tr := range costTrackersLayout() {
		tags := []string{replay.TrackerTag}
		for _, tp := range topics {
			tags = append(tags, replay.ConsumesTag(tp))
		}
		register(tr.ID, tr.Service, addrs.Trackers[j], tags)
	}

	// The console, as setup builds it (less the service around it: its
	// /health, /metrics and Consul registration are every service's).
	consul, err := api.NewClient(&api.Config{Address: st.Consul.HTTPAddr, Scheme: "http"})
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	col := newCollector(collectorOptions{Consul: consul, Secret: secret, DeadLetters: costNoDeadLetters{}, ForgetAfter: time.Hour,
		Instance: "console-bench", Version: "bench", Log: log})
	srv := newServer(col, costNoDeadLetters{}, "", true, log) // --open-read, as on the laptop
	mux := http.NewServeMux()
	srv.register(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		srv.close()
		_ = hs.Close()
		col.bg.Wait()
		col.http.CloseIdleConnections()
	}()

	// What the benchmark does besides running the console is labeled
	// bench=harness in the CPU profile: go tool pprof -tagignore
	// bench=harness shows the console alone.
	harness := func(f func()) {
		pprof.Do(context.Background(), pprof.Labels("bench", "harness"), func(context.Context) { f() })
	}

	// collect is one of Run's collections, on Run's schedule.
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	first := true
	collect := func() time.Duration {
		if !first {
			<-tick.C
		}
		first = false
		t0 := time.Now()
		col.collect(ctx)
		return time.Since(t0)
	}
	state := func() (s *State, raw []byte) {
		harness(func() {
			raw, _ = col.latest()
			var st State
			if raw != nil && json.Unmarshal(raw, &st) == nil {
				s = &st
			}
		})
		return s, raw
	}

	// Until the console sees everything: 100 streams with their owner up
	// and 16 consumers up, the topics with their 16 channels and consumers.
	deadline := time.Now().Add(90 * time.Second)
	for why := "no state yet"; why != ""; {
		if time.Now().After(deadline) {
			b.Fatalf("the console did not see the whole pipeline in 90s: %s", why)
		}
		collect()
		why = costReady(state())
	}
	if code, body, err := testenv.HTTPPost("http://"+addrs.Control+"/view?url="+url.QueryEscape(base+"/api/events"), "text/plain", nil); err != nil || code != http.StatusNoContent {
		b.Fatalf("starting the viewer: %d %s %v", code, body, err)
	}
	viewer := func() costViewerReport {
		var r costViewerReport
		var code int
		var body string
		var err error
		harness(func() { code, body, err = testenv.HTTPGet("http://" + addrs.Control + "/viewer") })
		if err != nil || code != http.StatusOK || json.Unmarshal([]byte(body), &r) != nil {
			b.Fatalf("the viewer's report: %d %v", code, err)
		}
		if r.Err != "" {
			b.Fatalf("the viewer: %s", r.Err)
		}
		return r
	}
	testenv.WaitFor(b, 10*time.Second, "the viewer's first state event", func() bool { return viewer().Events > 0 })

	trackerIndex := map[string]int{}
	for j, tr := range costTrackersLayout() {
		trackerIndex[tr.ID] = j
	}
	fillHistory := func() {
		now := time.Now()
		for k, m := range col.consumers {
			j, ok := trackerIndex[k.instance]
			kk, err := strconv.Atoi(strings.TrimPrefix(k.stream, "s"))
			if !ok || err != nil {
				b.Fatalf("unknown consumer %+v", k)
			}
			var h lagHistory
			for i := int(HistoryWindow/Interval) - 1; i >= 1; i-- {
				at := now.Add(-time.Duration(i) * Interval)
				lag, secs := costLag(j, kk, at)
				h.add(at, uint64(lag), secs)
			}
			m.history = h
		}
	}

	window := func(b *testing.B, before func()) {
		for range costWarmup {
			if before != nil {
				before()
			}
			collect()
		}
		pids := map[string]int{"consul": st.Consul.Proc.Pid(), "nsqd": st.NSQD.Proc.Pid(), "fakes": fakes.Pid()}
		others := map[string]time.Duration{}
		for n, pid := range pids {
			others[n] = cpuTime(pid)
		}
		v0 := viewer()
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		cpu0, wall0 := cpuTime(0), time.Now()
		var took []time.Duration
		b.ResetTimer()
		for range b.N {
			for range costWindow {
				if before != nil {
					before()
				}
				took = append(took, collect())
			}
		}
		b.StopTimer()
		cpu, wall := cpuTime(0)-cpu0, time.Since(wall0)
		runtime.ReadMemStats(&ms1)
		v1 := viewer()
		for n, pid := range pids {
			others[n] = cpuTime(pid) - others[n]
		}

		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		pct := func(p float64) float64 {
			i := int(p*float64(len(took))+0.999999) - 1
			return float64(took[max(0, min(i, len(took)-1))].Microseconds()) / 1000
		}
		s, raw := state()
		if why := costReady(s, raw); why != "" {
			b.Fatalf("the state after the window: %s", why)
		}
		// The history a page gets when it connects (GET
		// /api/lag-history), made at most once per HistoryBucket.
		history := col.lagHistory()
		// Encoding one state (publish's json.Marshal of the same data),
		// and serving it: GET /api/state, read whole, over loopback.
		const reps = 5
		var enc, serve []time.Duration
		harness(func() {
			for range reps {
				t0 := time.Now()
				if _, err := json.Marshal(s); err != nil {
					b.Fatal(err)
				}
				enc = append(enc, time.Since(t0))
				t0 = time.Now()
				code, body, err := testenv.HTTPGet(base + "/api/state")
				serve = append(serve, time.Since(t0))
				if err != nil || code != http.StatusOK || len(body) == 0 {
					b.Fatalf("GET /api/state: %d %v", code, err)
				}
			}
		})
		median := func(d []time.Duration) float64 {
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			return float64(d[len(d)/2].Microseconds()) / 1000
		}
		if dir := os.Getenv(costDumpEnv); dir != "" {
			// The state as the page gets it, to look at (or to time a
			// page's JSON.parse on).
			name := filepath.Join(dir, "state-"+strings.NewReplacer("/", "_", "=", "-").Replace(b.Name())+".json")
			if err := os.WriteFile(name, raw, 0o644); err != nil {
				b.Fatal(err)
			}
			b.Logf("the state: %s", name)
		}

		secs := wall.Seconds()
		b.ReportMetric(100*cpu.Seconds()/secs, "core_%")
		b.ReportMetric(float64(len(raw)), "state_bytes")
		b.ReportMetric(float64(len(history)), "lag_history_bytes")
		b.ReportMetric(pct(0.50), "collect_ms_p50")
		b.ReportMetric(pct(0.99), "collect_ms_p99")
		b.ReportMetric(median(enc), "encode_ms")
		b.ReportMetric(median(serve), "serve_state_ms")
		b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/secs/1e6, "alloc_MB/s")
		b.ReportMetric(float64(ms1.NumGC-ms0.NumGC)/secs, "gc/s")
		b.ReportMetric(float64(ms1.HeapInuse)/1e6, "heap_MB")
		b.ReportMetric(float64(v1.Bytes-v0.Bytes)/secs/1e6, "sse_MB/s")
		gap := int64(0)
		for i := v0.Events; i < v1.Events; i++ {
			if i > 0 {
				gap = max(gap, v1.Arrivals[i]-v1.Arrivals[i-1])
			}
		}
		b.ReportMetric(float64(gap), "sse_gap_ms_max")
		b.ReportMetric(float64(v1.Events-v0.Events)/float64(len(took)), "sse_events/collection")
		for n, d := range others {
			b.ReportMetric(100*d.Seconds()/secs, n+"_core_%")
		}
		b.Logf("%d collections in %.1fs: console %.2fs CPU (%.1f%% of a core); state %d bytes, lag history %d bytes; "+
			"collect p50 %.0fms p99 %.0fms; encode %.0fms; GET /api/state %.0fms; viewer got %d events, %.1f MB",
			len(took), secs, cpu.Seconds(), 100*cpu.Seconds()/secs, len(raw), len(history), pct(0.5), pct(0.99),
			median(enc), median(serve), v1.Events-v0.Events, float64(v1.Bytes-v0.Bytes)/1e6)
	}

	b.Run("history=5m", func(b *testing.B) {
		harness(fillHistory)
		window(b, nil)
	})

	// The page, in headless Chromium, drawing every state of the same
	// console: how long drawing one takes (what it reports in
	// #generated[data-render-ms]), and how busy its main thread is (the
	// long tasks, over 50 ms, that Chromium reports). Its CPU is
	// Chromium's, not in the console's core_% above.
	b.Run("page", func(b *testing.B) {
		chrome := cdp.Start(b, cdp.Bin(b), nil)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		pg, err := chrome.Open(ctx, base+"/")
		if err != nil {
			b.Fatal(err)
		}
		if err := pg.Eval(ctx, `(() => { window.costLong = []; new PerformanceObserver(l => { for (const e of l.getEntries()) window.costLong.push(e.duration); }).observe({ type: 'longtask', buffered: true }); })()`, nil); err != nil {
			b.Fatal(err)
		}
		type look struct {
			Streams  int     `json:"streams"`
			Rows     int     `json:"rows"`
			RenderMS float64 `json:"render_ms"`
			Gen      string  `json:"gen"`
			Long     []float64
		}
		read := func() look {
			var l look
			if err := pg.Eval(ctx, `(() => { const g = document.getElementById('generated');
				const l = { streams: document.querySelectorAll('article.stream').length, rows: document.querySelectorAll('tr.consumer').length,
					render_ms: Number(g.dataset.renderMs || 0), gen: g.dataset.generatedAt || '', Long: window.costLong };
				window.costLong = []; return l; })()`, &l); err != nil {
				b.Fatal(err)
			}
			return l
		}
		// Until the page draws every stream and every consumer's row.
		for l := read(); l.Streams < 100 || l.Rows < 1600; l = read() {
			if ctx.Err() != nil {
				b.Fatalf("the page drew %d streams, %d rows", l.Streams, l.Rows)
			}
			collect()
		}
		read() // the first drawing's long tasks are not the steady state's
		var renders, long []float64
		wall0 := time.Now()
		b.ResetTimer()
		for range b.N {
			for range costWindow {
				collect()
				l := read()
				renders = append(renders, l.RenderMS)
				long = append(long, l.Long...)
			}
		}
		b.StopTimer()
		wall := time.Since(wall0)
		sort.Float64s(renders)
		busy, longest := 0.0, 0.0
		for _, d := range long {
			busy += d
			longest = max(longest, d)
		}
		b.ReportMetric(renders[len(renders)/2], "render_ms_p50")
		b.ReportMetric(renders[len(renders)-1], "render_ms_max")
		b.ReportMetric(100*busy/float64(wall.Milliseconds()), "longtask_busy_%")
		b.ReportMetric(longest, "longtask_ms_max")
		b.Logf("the page, 100 streams and 1600 consumer rows, %d states: drawing one took %.0f ms at the median, %.0f ms at most; long tasks (over 50 ms) %d, %.1f%% of the time, the longest %.0f ms",
			len(renders), renders[len(renders)/2], renders[len(renders)-1], len(long), 100*busy/float64(wall.Milliseconds()), longest)
	})
}

// costReady says what the state lacks of the whole pipeline ("" = nothing).
func costReady(s *State, raw []byte) string {
	if s == nil {
		return fmt.Sprintf("no state (%d bytes)", len(raw))
	}
	if !s.Consul.OK || s.NSQDDown {
		return fmt.Sprintf("consul %+v, nsqd down %v", s.Consul, s.NSQDDown)
	}
	instances := 0
	for _, svc := range s.Services {
		if strings.HasPrefix(svc.Name, "owner-") || strings.HasPrefix(svc.Name, "tracker-") {
			for _, in := range svc.Instances {
				if in.Health != api.HealthPassing {
					return "instance " + in.ID + " is " + in.Health
				}
				instances++
			}
		}
	}
	if instances != costOwners+costTrackers {
		return fmt.Sprintf("%d instances in Consul", instances)
	}
	if len(s.Streams) != costStreams {
		return fmt.Sprintf("%d streams", len(s.Streams))
	}
	for _, sm := range s.Streams {
		if sm.Owner == nil || !sm.Owner.Up || len(sm.Consumers) != costTrackers {
			return fmt.Sprintf("stream %s: owner %+v, %d consumers", sm.Stream, sm.Owner, len(sm.Consumers))
		}
		for _, c := range sm.Consumers {
			if !c.Up {
				return fmt.Sprintf("stream %s: consumer %s down: %s", sm.Stream, c.Consumer, c.Error)
			}
		}
	}
	for _, o := range costOwnersLayout() {
		var tp *Topic
		for i := range s.Topics {
			if s.Topics[i].Name == o.Topic {
				tp = &s.Topics[i]
			}
		}
		if tp == nil || len(tp.Channels) != costTrackers {
			return fmt.Sprintf("topic %s: %+v", o.Topic, tp)
		}
		for _, ch := range tp.Channels {
			if len(ch.Consumers) == 0 {
				return fmt.Sprintf("topic %s channel %s: no consumer", o.Topic, ch.Name)
			}
		}
	}
	return ""
}
