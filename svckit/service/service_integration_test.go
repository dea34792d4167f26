package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/health"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// Generous: consul, NSQ and other test packages share a small, busy machine.
const waitLong = 60 * time.Second

// testLogger logs into a buffer printed if the test failed.
func testLogger(t *testing.T) *slog.Logger { return testenv.Logger(t) }

// flagDefaults is the Config that config.Flags() gives with no arguments,
// ignoring the environment (each flag's EnvVars is cleared on a private
// copy), so that flags added to config.Flags() keep valid defaults here.
func flagDefaults(t *testing.T, name, version string) config.Config {
	t.Helper()
	flags := config.Flags()
	for _, f := range flags {
		v := reflect.ValueOf(f)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			t.Fatalf("flag %v is not a pointer to a struct", f.Names())
		}
		ev := v.Elem().FieldByName("EnvVars")
		if !ev.IsValid() || !ev.CanSet() {
			t.Fatalf("flag %v has no settable EnvVars", f.Names())
		}
		ev.Set(reflect.Zero(ev.Type()))
	}
	var cfg config.Config
	var cfgErr error
	app := &cli.App{
		Name: name, Flags: flags, Writer: io.Discard, ErrWriter: io.Discard,
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			cfg, cfgErr = config.FromCLI(c, name, version)
			return nil
		},
	}
	if err := app.Run([]string{name}); err != nil {
		t.Fatalf("parsing the default flags: %v", err)
	}
	if cfgErr != nil {
		t.Fatalf("the flags' defaults do not validate: %v", cfgErr)
	}
	return cfg
}

// testConfig is what the flags' defaults give, pointed at consulAddr, with
// an HTTP port picked by the kernel, a fast Consul check and a fast
// nsqlookupd poll.
func testConfig(t *testing.T, name, consulAddr string) config.Config {
	t.Helper()
	cfg := flagDefaults(t, name, "1.0.0-test")
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Consul = config.ConsulConfig{Addr: consulAddr, StartTimeout: waitLong}
	cfg.LogFormat, cfg.LogLevel = "text", "info"
	cfg.CheckInterval = time.Second
	cfg.DeregisterAfter = time.Minute
	cfg.ShutdownTimeout = 10 * time.Second
	cfg.NSQ.LookupdPollInterval = time.Second
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config does not validate: %v", err)
	}
	return cfg
}

// run starts s.Run in a goroutine; the returned channel gets its result.
func run(s *service.Service, ctx context.Context, loop func(context.Context) error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Run(ctx, loop) }()
	return ch
}

func waitRun(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(waitLong):
		t.Fatalf("Run did not return within %s of its context ending", waitLong)
		return nil
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := testenv.HTTPGet(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return code, body
}

func waitDeregistered(t *testing.T, consul *testenv.Consul, name, id string) {
	t.Helper()
	if _, _, err := consul.Client.Agent().Service(id, nil); err == nil {
		t.Errorf("agent still knows %s after Run returned", id)
	}
	testenv.WaitFor(t, waitLong, name+" gone from consul", func() bool {
		entries, _, err := consul.Client.Health().Service(name, "", false, nil)
		return err == nil && len(entries) == 0
	})
}

func TestServiceRunRegistersServesAndDeregisters(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	const name = "svctest"
	cfg := testConfig(t, name, consul.HTTPAddr)
	cfg.Tags = []string{"canary"} // --tag
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := service.New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if s.Port <= 0 || s.Advertise != "127.0.0.1" || s.Node != consul.NodeName {
		t.Fatalf("New: port %d advertise %q node %q (want node %q)", s.Port, s.Advertise, s.Node, consul.NodeName)
	}
	if want := config.DefaultInstanceID(name, s.Advertise, s.Port); s.Config.InstanceID != want {
		t.Fatalf("InstanceID = %q, want %q", s.Config.InstanceID, want)
	}
	s.AddTags("blue")
	s.SetMeta("zone", "z1")
	var events []string
	var evMu sync.Mutex
	event := func(e string) { evMu.Lock(); events = append(events, e); evMu.Unlock() }
	s.OnStop(func(context.Context) error { event("stop hook"); return nil })
	loopStarted := make(chan struct{})
	runErr := run(s, ctx, func(ctx context.Context) error {
		close(loopStarted)
		<-ctx.Done()
		event("loop returned")
		return ctx.Err()
	})
	select {
	case <-loopStarted:
	case <-time.After(waitLong):
		t.Fatal("service loop not started")
	}

	entries := testenv.WaitPassing(t, consul, name, 1)
	sv := entries[0].Service
	if sv.ID != s.Config.InstanceID || sv.Port != s.Port || sv.Address != "127.0.0.1" ||
		!slices.Contains(sv.Tags, "blue") || !slices.Contains(sv.Tags, "canary") || sv.Meta["version"] != "1.0.0-test" || sv.Meta["zone"] != "z1" {
		t.Errorf("consul entry = %+v", sv)
	}

	base := "http://127.0.0.1:" + strconv.Itoa(s.Port)
	if code, body := get(t, base+"/health"); code != http.StatusOK || strings.TrimSpace(body) != "OK" {
		t.Errorf("/health = %d %q", code, body)
	}
	var r health.Readiness
	testenv.WaitFor(t, waitLong, "/ready to answer 200", func() bool {
		code, body, err := testenv.HTTPGet(base + "/ready")
		if err != nil || code != http.StatusOK {
			return false
		}
		return json.Unmarshal([]byte(body), &r) == nil
	})
	if !r.Ready || !r.Checks["consul_registration"].OK || !r.Checks["discovery"].OK {
		t.Errorf("/ready = %+v", r)
	}
	code, metricsBody := get(t, base+"/metrics")
	if code != http.StatusOK || !strings.Contains(metricsBody, "svckit_build_info{") ||
		!strings.Contains(metricsBody, `service="svctest"`) || !strings.Contains(metricsBody, `version="1.0.0-test"`) {
		t.Errorf("/metrics = %d, svckit_build_info with service and version missing", code)
	}

	cancel()
	if err := waitRun(t, runErr); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	waitDeregistered(t, consul, name, s.Config.InstanceID)
	if _, _, err := testenv.HTTPGet(base + "/health"); err == nil {
		t.Error("HTTP server still answering after Run returned")
	}
	evMu.Lock()
	defer evMu.Unlock()
	if !slices.Equal(events, []string{"loop returned", "stop hook"}) {
		t.Errorf("shutdown events = %q, want the loop to return before the stop hook", events)
	}
}

// createTopic creates topic on nsqd. Workaround for the bug documented in
// svckit/pubsub's TestConsumerStartCreatesTopicAndChannel: a durable
// consumer cannot prepare its channel on an nsqd that does not have the
// topic yet.
func createTopic(t *testing.T, n *testenv.NSQD, topic string) {
	t.Helper()
	code, body, err := testenv.HTTPPost("http://"+n.HTTPAddr+"/topic/create?topic="+topic, "text/plain", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("nsqd /topic/create?topic=%s: %d %q %v", topic, code, body, err)
	}
}

type channelRow struct {
	found                      bool
	depth, inFlight, deferred  int64
	messages, requeues, tmouts uint64
	clients                    int
}

func channelState(n *testenv.NSQD, topic, channel string) channelRow {
	st, err := n.Stats()
	if err != nil {
		return channelRow{}
	}
	for _, tp := range st.Topics {
		if tp.TopicName != topic {
			continue
		}
		for _, c := range tp.Channels {
			if c.ChannelName == channel {
				return channelRow{found: true, depth: c.Depth, inFlight: int64(c.InFlightCount), deferred: int64(c.DeferredCount),
					messages: c.MessageCount, requeues: c.RequeueCount, tmouts: c.TimeoutCount, clients: c.ClientCount}
			}
		}
	}
	return channelRow{}
}

// Messages in flight when the service's context ends are finished before Run
// returns, none lost and none redelivered.
func TestServiceGracefulShutdownFinishesInFlight(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	const name, topic, channel, n, gate = "svcdrain", "svc-drain", "workers", 500, 50
	cfg := testConfig(t, name, stack.Consul.HTTPAddr)
	cfg.NSQ.MaxInFlight = 20
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := service.New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	createTopic(t, stack.NSQD, topic)

	var started, finished atomic.Int64
	half := make(chan struct{})
	cancelled := make(chan struct{})
	var handlerErr atomic.Value
	_, err = s.Consumer(pubsub.ConsumerOptions{Topic: topic, Channel: channel}, pubsub.HandlerFunc(func(hctx context.Context, m *pubsub.Message) error {
		k := started.Add(1)
		if k == gate+1 {
			// One handler is in flight and held: the shutdown starts
			// mid-way whatever the machine's load (cancelling at the
			// gate's own message left none in flight on a loaded one).
			close(half)
		}
		if k > gate {
			// In flight when the context ends; then slow work.
			<-cancelled
			select {
			case <-time.After(20 * time.Millisecond):
			case <-hctx.Done():
				handlerErr.Store(fmt.Errorf("handler context cancelled during a graceful shutdown: %w", hctx.Err()))
			}
		}
		finished.Add(1)
		return nil
	}))
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	runErr := run(s, ctx, nil)
	testenv.WaitFor(t, waitLong, "the service's consumer to connect", func() bool {
		return channelState(stack.NSQD, topic, channel).clients == 1
	})
	base := "http://127.0.0.1:" + strconv.Itoa(s.Port)
	testenv.WaitFor(t, waitLong, "/ready to answer 200 with the consumer and nsqd checks", func() bool {
		code, body, err := testenv.HTTPGet(base + "/ready")
		var r health.Readiness
		if err != nil || code != http.StatusOK || json.Unmarshal([]byte(body), &r) != nil {
			return false
		}
		return r.Checks["consumer "+topic+"/"+channel].OK && r.Checks["nsqd"].OK
	})

	prod, err := nsq.NewProducer(stack.NSQD.TCPAddr, nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	prod.SetLogger(nil, nsq.LogLevelError)
	defer prod.Stop()
	ids := envelope.NewIDSource()
	var bodies [][]byte
	for seq := uint64(1); seq <= n; seq++ {
		e := envelope.Envelope{ID: ids.Next(), Stream: "drain", Seq: seq, Payload: []byte("x")}
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, b)
	}
	if err := prod.MultiPublish(topic, bodies); err != nil {
		t.Fatal(err)
	}

	select {
	case <-half:
	case <-time.After(waitLong):
		t.Fatalf("only %d messages handled within %s", started.Load(), waitLong)
	}
	// Handlers past the gate hold their messages, so nsqd's in-flight
	// count fills the consumer's window and nsqd stops sending. Cancel
	// then: a message still on the wire when the consumer sends CLS is
	// left in flight at nsqd by go-nsq (its read loop stops at CLOSE_WAIT)
	// and redelivered after the message timeout, which is not what this
	// test is about (seen on a loaded machine).
	testenv.WaitFor(t, waitLong, "nsqd to have the consumer's whole window in flight", func() bool {
		return channelState(stack.NSQD, topic, channel).inFlight == int64(cfg.NSQ.MaxInFlight)
	})
	cancel()
	close(cancelled)
	if err := waitRun(t, runErr); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if v := handlerErr.Load(); v != nil {
		t.Error(v)
	}
	done := finished.Load()
	if st := started.Load(); st != done {
		t.Errorf("%d handler calls started, %d finished: Run returned with handlers running", st, done)
	}
	var row channelRow
	testenv.WaitFor(t, waitLong, "consumer to disconnect from nsqd", func() bool {
		row = channelState(stack.NSQD, topic, channel)
		return row.found && row.clients == 0
	})
	t.Logf("handled %d of %d before shutdown; nsqd channel %+v", done, n, row)
	if row.inFlight != 0 || row.deferred != 0 || row.requeues != 0 || row.tmouts != 0 {
		t.Errorf("nsqd after shutdown: %d in flight, %d deferred, %d requeued, %d timed out; want all 0 (in-flight messages finished)",
			row.inFlight, row.deferred, row.requeues, row.tmouts)
	}
	if done+row.depth != n {
		t.Errorf("handled %d + left in the channel %d = %d, want %d (lost or duplicated messages)", done, row.depth, done+row.depth, n)
	}
	if done <= gate || done >= n {
		t.Errorf("handled %d: want the shutdown to start mid-way (more than %d, fewer than %d)", done, gate, n)
	}
	waitDeregistered(t, stack.Consul, name, s.Config.InstanceID)
}

// clearEnv unsets the environment variables of the common flags so the
// machine's environment cannot change what Main sees.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, f := range config.Flags() {
		for _, e := range f.(interface{ GetEnvVars() []string }).GetEnvVars() {
			t.Setenv(e, "")
			if err := os.Unsetenv(e); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func mainSpec(t *testing.T, setupCalled *atomic.Bool) service.Spec {
	return service.Spec{
		Name: "svcmain", Usage: "test", Version: "0.0.1",
		Flags: []cli.Flag{&cli.StringFlag{Name: "own-flag", EnvVars: config.Env("own-flag")}},
		Setup: func(*cli.Context, *service.Service) (func(context.Context) error, error) {
			setupCalled.Store(true)
			return nil, errors.New("Setup must not be reached in this test")
		},
	}
}

func TestMainBadFlagExitsUsage(t *testing.T) {
	clearEnv(t)
	cases := []struct {
		args []string
		flag string
	}{
		{[]string{"--nsq-max-in-flight=abc"}, "nsq-max-in-flight"},
		{[]string{"--bogus"}, "bogus"},
		{[]string{"--deregister-after=30s"}, "deregister-after"},
		{[]string{"--check-interval=soon"}, "check-interval"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			var setup atomic.Bool
			code := service.Main(append([]string{"svcmain"}, c.args...), &stdout, &stderr, mainSpec(t, &setup))
			if code != service.ExitUsage {
				t.Errorf("exit code %d, want %d (stderr %q)", code, service.ExitUsage, stderr.String())
			}
			out := stderr.String()
			if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
				t.Errorf("stderr is not exactly one line: %q", out)
			}
			if !strings.Contains(out, c.flag) {
				t.Errorf("stderr does not name the flag %q: %q", c.flag, out)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout: %q", stdout.String())
			}
			if setup.Load() {
				t.Error("Setup was called")
			}
		})
	}
}

// A tracing environment svckit cannot follow is a usage error, found before
// the wait for Consul: one line naming the variable, exit 2.
func TestMainBadTracingEnvExitsUsage(t *testing.T) {
	clearEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	closed := testenv.Addr(testenv.FreePort(t)) // nothing listens: Consul is not asked
	var stdout, stderr bytes.Buffer
	var setup atomic.Bool
	code := service.Main([]string{"svcmain", "--consul-addr=" + closed, "--consul-start-timeout=1m",
		"--http-addr=127.0.0.1:0", "--data-dir=" + t.TempDir()}, &stdout, &stderr, mainSpec(t, &setup))
	out := stderr.String()
	if code != service.ExitUsage || strings.Count(out, "\n") != 1 || !strings.Contains(out, "OTEL_EXPORTER_OTLP_PROTOCOL") {
		t.Fatalf("exit code %d, stderr %q; want %d and one line naming OTEL_EXPORTER_OTLP_PROTOCOL", code, out, service.ExitUsage)
	}
	if setup.Load() {
		t.Error("Setup was called")
	}
}

func TestMainConsulUnreachableExits3(t *testing.T) {
	clearEnv(t)
	closed := testenv.Addr(testenv.FreePort(t)) // free a moment ago: nothing listens
	var stdout, stderr testenv.SyncBuffer
	var setup atomic.Bool
	start := time.Now()
	code := service.Main([]string{"svcmain",
		"--consul-addr=" + closed, "--consul-start-timeout=1s",
		"--http-addr=127.0.0.1:0", "--data-dir=" + t.TempDir(),
	}, &stdout, &stderr, mainSpec(t, &setup))
	took := time.Since(start)
	out := stderr.String()
	if code != service.ExitConsulUnreachable {
		t.Fatalf("exit code %d, want %d (stderr %q)", code, service.ExitConsulUnreachable, out)
	}
	if took > 30*time.Second {
		t.Errorf("Main took %s with --consul-start-timeout=1s", took)
	}
	if setup.Load() {
		t.Error("Setup was called without a Consul agent")
	}
	// Log lines (the wait for the agent) come first; the last line is the error.
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "svcmain: ") || !strings.Contains(last, service.ErrConsulUnreachable.Error()) {
		t.Errorf("last stderr line = %q, want \"svcmain: %v…\"", last, service.ErrConsulUnreachable)
	}
}

// TestServiceCloseReleases: a service that will not Run (its Setup failed)
// gives back the data directory's lock and its HTTP port on Close, so the
// same process can build it again; Close after Close, or after Run, does
// nothing.
func TestServiceCloseReleases(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	cfg := testConfig(t, "svcclose", consul.HTTPAddr)
	ctx := context.Background()
	s, err := service.New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	saved := false
	s.OnStop(func(context.Context) error { saved = true; return nil })
	if _, err := service.New(ctx, cfg, testLogger(t)); err == nil {
		t.Fatal("a second service on the same data directory was built while the first holds it")
	}
	port := s.Port
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !saved {
		t.Error("Close did not run the stop hooks")
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close again: %v", err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("the HTTP port %d is still taken after Close: %v", port, err)
	}
	l.Close()
	s2, err := service.New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New after Close (the data directory's lock): %v", err)
	}
	if err := s2.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
