package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svckit/svckit/cmd/svckit/internal/console"
	"github.com/svckit/svckit/cmd/svckit/internal/operator"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/stage"
	"github.com/svckit/svckit/svckit/testenv"
	"github.com/urfave/cli/v2"
)

// The console against the real programs: a Consul agent, nsqlookupd and
// nsqd (testenv), a stream's owner and a tracking consumer built with the
// library and run in-process, a plain consumer that dead-letters what it
// cannot decode, and the console itself as `svckit console` runs it
// (operator.ConsoleSpec: the operator's dead-letter code). Everything the
// test asserts it reads from the console's GET /api/state, its event
// stream or its page.
func TestConsoleShowsPipelineLagAndDeadLetters(t *testing.T) {
	st := testenv.StartStack(t)
	common := func(more ...string) []string {
		return append([]string{"--consul-addr=" + st.Consul.HTTPAddr, "--data-dir=" + t.TempDir(), "--check-interval=1s",
			"--nsq-lookupd-poll-interval=1s", "--shutdown-timeout=5s"}, more...)
	}
	const stream, ticks, orders = "console-s1", "ticks", "orders"
	// A second stream, quiet: 10 messages, then only what the test
	// publishes; a stage consumes it.
	const quietStream, quiet, quietOut, quietFirst = "console-s2", "quiet", "quiet-out", 10

	// The owner publishes 20 messages a second to ticks.
	owner := start(t, "owner", nil, common(), func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
		o, err := s.OpenStream(c.Context, service.StreamOptions{Stream: stream, Topic: ticks, Owner: replay.OwnerOptions{
			Log: retainlog.DefaultOptions(""), ContentType: "text/plain"}})
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for i := 1; ; i++ {
				if _, err := o.Publish(ctx, []byte(strconv.Itoa(i)), ""); err != nil && ctx.Err() == nil {
					return err
				}
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
				}
			}
		}, nil
	})
	defer owner.stop(t)

	// The quiet stream's owner: a service of its own (the console reads a
	// stream's topic from its owner's publishes= tag, one per service).
	var quietOwner *replay.Owner // set by the setup, before start returns
	quietSvc := start(t, "quietowner", nil, common(), func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
		var err error
		quietOwner, err = s.OpenStream(c.Context, service.StreamOptions{Stream: quietStream, Topic: quiet, Owner: replay.OwnerOptions{
			Log: retainlog.DefaultOptions(""), ContentType: "text/plain"}})
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			for i := 1; i <= quietFirst; i++ {
				if _, err := quietOwner.Publish(ctx, []byte(strconv.Itoa(i)), ""); err != nil {
					return err
				}
			}
			<-ctx.Done() // the loop's return would stop the service
			return nil
		}, nil
	})
	defer quietSvc.stop(t)

	// A tracking consumer of ticks (service.Track: tags replay-tracker and
	// consumes=ticks, GET /streams).
	tracker := start(t, "tracker", nil, common(), func(_ *cli.Context, s *service.Service) (func(context.Context) error, error) {
		_, err := s.Track(&counts{}, service.TrackOptions{Topic: ticks, Channel: "tracker", Upstream: "owner"})
		return nil, err
	})
	trackerStopped := false
	defer func() {
		if !trackerStopped {
			tracker.stop(t)
		}
	}()

	// A stage of the quiet stream (service.Stage: tags replay-relay and
	// consumes=quiet, GET /stage), asking the owner for its last
	// sequences every 500 ms.
	stageSvc := start(t, "stage", nil, common(), func(_ *cli.Context, s *service.Service) (func(context.Context) error, error) {
		_, err := s.Stage(service.StageOptions{InTopic: quiet, Channel: "stage", OutTopic: quietOut, Upstream: "quietowner",
			TailInterval: 500 * time.Millisecond,
			Transform: func(_ context.Context, in envelope.Envelope) ([]stage.Output, error) {
				return []stage.Output{{ContentType: in.ContentType, Payload: in.Payload}}, nil
			}})
		return nil, err
	})
	stageStopped := false
	defer func() {
		if !stageStopped {
			stageSvc.stop(t)
		}
	}()

	// A plain consumer of orders: what is not an envelope becomes a dead
	// letter in orders.dead at once.
	sink := start(t, "sink", nil, common("--tag=consumes="+orders), func(_ *cli.Context, s *service.Service) (func(context.Context) error, error) {
		_, err := s.Consumer(pubsub.ConsumerOptions{Topic: orders, Channel: "sink"},
			pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }))
		return nil, err
	})
	sinkStopped := false
	defer func() {
		if !sinkStopped {
			sink.stop(t)
		}
	}()

	// The console, with an operator token.
	tokenFile := filepath.Join(t.TempDir(), "operator.token")
	const token = "console-test-operator-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := operator.ConsoleSpec("test")
	con := start(t, spec.Name, spec.Flags, common("--operator-token-file="+tokenFile, "--open-read"), spec.Setup)
	defer con.stop(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", con.s.Port)
	testenv.WaitPassing(t, st.Consul, console.ServiceName, 1)

	// The pipeline, the stream and the consumer's position.
	ownerID, trackerID := owner.s.Config.InstanceID, tracker.s.Config.InstanceID
	var s console.State
	waitState(t, base, 90*time.Second, "the services, topic ticks with its tracker channel, stream "+stream+" and the tracker's position", &s, func(s *console.State) string {
		for _, name := range []string{"owner", "tracker", "sink", "console", "nsqd", "nsqlookupd"} {
			svc := findService(s, name)
			if svc == nil || svc.Health != "passing" {
				return "service " + name + " not passing"
			}
		}
		if !slicesHas(findService(s, "tracker").Consumes, ticks) || !slicesHas(findService(s, "owner").Publishes, ticks) {
			return "tags: owner publishes=ticks, tracker consumes=ticks"
		}
		tp := findTopic(s, ticks)
		if tp == nil || tp.InNSQD == 0 || tp.MessageCount == 0 || tp.Rate <= 0 || tp.Stale {
			return fmt.Sprintf("topic ticks: %+v", tp)
		}
		var ch *console.Channel
		for i := range tp.Channels {
			if strings.HasPrefix(tp.Channels[i].Name, "tracker-") {
				ch = &tp.Channels[i]
			}
		}
		if ch == nil || !ch.Ephemeral || !slicesHas(ch.Consumers, "tracker") || ch.Rate <= 0 || ch.Clients == 0 {
			return fmt.Sprintf("the tracker's channel of ticks: %+v", tp.Channels)
		}
		sm := findStream(s, stream)
		if sm == nil || sm.Owner == nil || sm.Owner.Instance != ownerID || !sm.Owner.Up || sm.LastSeq == 0 || sm.PublishRate <= 0 ||
			sm.RetainedFirst != 1 || sm.RetainedLast == 0 || sm.Topic != ticks {
			return fmt.Sprintf("stream: %+v", sm)
		}
		c := findConsumer(sm, trackerID)
		if c == nil || !c.Up || c.LastContiguous == 0 || c.Service != "tracker" || c.LagEstimated {
			return fmt.Sprintf("consumer: %+v", c)
		}
		return ""
	})
	t.Logf("stream %s: last seq %d, %.1f/s; tracker at %d, lag %d", stream, findStream(&s, stream).LastSeq, findStream(&s, stream).PublishRate,
		findConsumer(findStream(&s, stream), trackerID).LastContiguous, findConsumer(findStream(&s, stream), trackerID).LagMessages)
	if s.NSQDDown || !s.Consul.OK || len(s.NSQDs) != 1 || !s.NSQDs[0].Up || s.Version != console.StateVersion {
		t.Errorf("state: nsqd_down %v, consul %+v, nsqds %+v, version %d", s.NSQDDown, s.Consul, s.NSQDs, s.Version)
	}
	if c := findConsumer(findStream(&s, stream), trackerID); c.Kind != "tracker" || c.Position != c.LastContiguous {
		t.Errorf("the tracker's row: kind %q, position %d, last_contiguous %d", c.Kind, c.Position, c.LastContiguous)
	}
	// The lag history a page starts from: not in the state, but at GET
	// /api/lag-history, the tracker's there with its points.
	// It is made once per 10 s bucket: within two of them.
	testenv.WaitFor(t, 2*console.HistoryBucket+5*time.Second, "the tracker's points in GET /api/lag-history", func() bool {
		return len(lagHistoryOf(t, base, "tracker", trackerID, stream)) > 0
	})

	// The stage's row in the quiet stream: one per stage service, caught
	// up (lag 0) with what the owner published.
	stageID := stageSvc.s.Config.InstanceID
	var caught console.StreamConsumer
	waitState(t, base, 60*time.Second, "the stage's row in "+quietStream+", caught up", &s, func(s *console.State) string {
		sm := findStream(s, quietStream)
		if sm == nil || sm.LastSeq != quietFirst || sm.Topic != quiet {
			return fmt.Sprintf("stream %s: %+v", quietStream, sm)
		}
		c := findStage(sm, "stage")
		if c == nil || !c.Up || c.Service != "stage" || c.Position != quietFirst || c.LastContiguous != quietFirst ||
			c.OwnerLast != quietFirst || c.LagMessages != 0 || c.LagSeconds != 0 || c.LagEstimated ||
			len(c.Instances) != 1 || c.Instances[0] != stageID || c.Error != "" || c.LastError != "" {
			return fmt.Sprintf("stage row: %+v", c)
		}
		if findStage(findStream(s, stream), "stage") != nil {
			return "a stage row in " + stream + ", which the stage does not consume"
		}
		caught = *c
		return ""
	})
	t.Logf("stage caught up: %+v", caught)

	// The stage stops while the owner publishes: its row is marked down,
	// keeps its position, and its lag rises with the owner's last.
	stageSvc.stop(t)
	stageStopped = true
	for i := 1; i <= 5; i++ {
		if _, err := quietOwner.Publish(context.Background(), []byte("more-"+strconv.Itoa(i)), ""); err != nil {
			t.Fatalf("publishing to %s: %v", quietStream, err)
		}
	}
	waitState(t, base, 60*time.Second, "the stopped stage marked down, 5 behind", &s, func(s *console.State) string {
		c := findStage(findStream(s, quietStream), "stage")
		if c == nil || c.Up || !c.LagEstimated || c.DownSince == nil || c.Error == "" || c.Position != quietFirst ||
			c.LagMessages != 5 || c.LagSeconds <= 0 {
			return fmt.Sprintf("stage row: %+v", c)
		}
		return ""
	})
	t.Logf("stopped stage: %q, lag %d", findStage(findStream(&s, quietStream), "stage").Error, findStage(findStream(&s, quietStream), "stage").LagMessages)

	// The tracker stops: it is marked down, keeps its position, and its
	// lag rises as the owner goes on publishing.
	tracker.stop(t)
	trackerStopped = true
	var down console.StreamConsumer
	waitState(t, base, 60*time.Second, "the stopped tracker marked down with a lag", &s, func(s *console.State) string {
		c := findConsumer(findStream(s, stream), trackerID)
		if c == nil || c.Up || !c.LagEstimated || c.DownSince == nil || c.LagMessages == 0 || c.Error == "" {
			return fmt.Sprintf("consumer: %+v", c)
		}
		down = *c
		return ""
	})
	waitState(t, base, 60*time.Second, "the stopped tracker's lag rising", &s, func(s *console.State) string {
		c := findConsumer(findStream(s, stream), trackerID)
		if c == nil || c.Up || c.LastContiguous != down.LastContiguous || c.LagMessages < down.LagMessages+10 || c.LagSeconds <= down.LagSeconds {
			return fmt.Sprintf("consumer: %+v (was lag %d, %.2fs at %d)", c, down.LagMessages, down.LagSeconds, down.LastContiguous)
		}
		return ""
	})
	t.Logf("stopped tracker: error %q, lag %d → %d messages", down.Error, down.LagMessages, findConsumer(findStream(&s, stream), trackerID).LagMessages)

	// A body that is not an envelope, published with nsqd's own HTTP
	// /pub to a consumed topic, becomes a dead letter: counted, listed,
	// its bytes previewed.
	garbage := []byte("console-garbage \x00\x01 not an envelope")
	st.NSQD.Publish(t, orders, garbage)
	var letter console.DeadLetter
	waitState(t, base, 60*time.Second, "the dead letter of orders counted and previewed", &s, func(s *console.State) string {
		d := findDeadLetters(s, orders)
		if d == nil || d.Count != 1 || d.NSQD != 1 || len(d.Letters) != 1 || len(d.Reasons) != 1 {
			return fmt.Sprintf("dead letters of orders: %+v", d)
		}
		l := d.Letters[0]
		if l.Stored != "nsqd" || !strings.Contains(l.Preview, "console-garbage") || l.Size != len(garbage) || l.Topic != orders ||
			!strings.HasPrefix(l.Reason, "decode") || l.ID == "" {
			return fmt.Sprintf("letter: %+v", l)
		}
		letter = l
		return ""
	})
	t.Logf("dead letter %s: reason %q, preview %s", letter.ID, letter.Reason, letter.Preview)

	// Requeueing needs the operator's token, from this console's origin.
	requeue := func(hdr map[string]string, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+"/api/deadletters/requeue", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	body := `{"topic":"` + orders + `","id":"` + letter.ID + `"}`
	var ordersBefore uint64
	if tp := findTopic(getState(t, base), orders); tp != nil {
		ordersBefore = tp.MessageCount
	}
	refusedAt := time.Now()
	if code, msg := requeue(nil, body); code != http.StatusUnauthorized || strings.Count(strings.TrimSpace(msg), "\n") != 0 || msg == "" {
		t.Errorf("requeue without the token: HTTP %d %q, want 401 and one line", code, msg)
	}
	if code, msg := requeue(map[string]string{"Authorization": "Bearer wrong"}, body); code != http.StatusUnauthorized {
		t.Errorf("requeue with a wrong token: HTTP %d %q, want 401", code, msg)
	}
	if code, msg := requeue(map[string]string{"Authorization": "Bearer " + token, "Origin": "http://evil.example"}, body); code != http.StatusForbidden ||
		!strings.Contains(msg, "Origin") {
		t.Errorf("requeue from another origin: HTTP %d %q, want 403 naming the Origin", code, msg)
	}
	if code, msg := requeue(map[string]string{"Authorization": "Bearer " + token}, `{"topic":"`+orders+`","id":"none-such"}`); code != http.StatusNotFound {
		t.Errorf("requeue of an unknown letter: HTTP %d %q, want 404", code, msg)
	}
	// The refused requeues sent nothing: in a state collected after them,
	// orders received no message and the same letter (not one dead-lettered
	// again, which would have a new id) is the only one.
	waitState(t, base, 60*time.Second, "a state collected after the refused requeues", &s, func(s *console.State) string {
		if !s.GeneratedAt.After(refusedAt.Add(time.Second)) {
			return "state of " + s.GeneratedAt.String()
		}
		// The previews of nsqd's letters are read now and then, not in
		// every state: wait for one that lists them.
		if d := findDeadLetters(s, orders); d == nil || len(d.Letters) == 0 {
			return fmt.Sprintf("dead letters of orders not listed: %+v", d)
		}
		return ""
	})
	d := findDeadLetters(&s, orders)
	tp := findTopic(&s, orders)
	if d == nil || d.Count != 1 || len(d.Letters) != 1 || d.Letters[0].ID != letter.ID || tp == nil || tp.MessageCount != ordersBefore {
		t.Fatalf("the refused requeues changed something: dead letters %+v, orders %+v (received %d before)", d, tp, ordersBefore)
	}
	// The sink goes away first, so that the letter, back in orders, stays
	// in its channel instead of being dead-lettered again.
	sink.stop(t)
	sinkStopped = true
	code, msg := requeue(map[string]string{"Authorization": "Bearer " + token, "Origin": base}, body)
	if code != http.StatusOK {
		t.Fatalf("requeue with the token: HTTP %d %q", code, msg)
	}
	var res console.RequeueResult
	if err := json.Unmarshal([]byte(msg), &res); err != nil || res.Requeued != 1 || res.FromNSQD != 1 || len(res.Problems) != 0 {
		t.Fatalf("requeue answer %q: %+v %v", msg, res, err)
	}
	waitState(t, base, 60*time.Second, "the letter back in orders, none dead", &s, func(s *console.State) string {
		d := findDeadLetters(s, orders)
		tp := findTopic(s, orders)
		if d == nil || d.Count != 0 || len(d.Letters) != 0 || tp == nil {
			return fmt.Sprintf("dead letters of orders: %+v", d)
		}
		for _, ch := range tp.Channels {
			if ch.Name == "sink" && ch.Depth+int64(ch.InFlight) == 1 {
				return ""
			}
		}
		return fmt.Sprintf("channels of orders: %+v", tp.Channels)
	})

	// The event stream delivers a state within 2 s.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /api/events: %v", err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("GET /api/events: Content-Type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 16<<20)
	var event string
	var got *console.State
	for got == nil && sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			event = v
		} else if v, ok := strings.CutPrefix(line, "data: "); ok && event == "state" {
			got = &console.State{}
			if err := json.Unmarshal([]byte(v), got); err != nil {
				t.Fatalf("state event: %v", err)
			}
		}
	}
	resp.Body.Close()
	if got == nil || got.Version != console.StateVersion || findStream(got, stream) == nil {
		t.Fatalf("no state event within 2 s (%v): %+v", sc.Err(), got)
	}

	// The page: embedded, and nothing in it comes from elsewhere.
	for path, ctype := range map[string]string{"/": "text/html", "/console.js": "javascript", "/console.css": "text/css"} {
		code, page, ct := get(t, base+path)
		if code != http.StatusOK || !strings.Contains(ct, ctype) {
			t.Errorf("GET %s: HTTP %d, %s", path, code, ct)
		}
		for _, scheme := range []string{"http://", "https://", "//cdn", "@import"} {
			if strings.Contains(page, scheme) {
				t.Errorf("GET %s: the page refers elsewhere (%q)", path, scheme)
			}
		}
	}
	if _, page, _ := get(t, base+"/"); !strings.Contains(page, `id="pipeline-svg"`) || !strings.Contains(page, `src="console.js"`) {
		t.Errorf("GET /: not the console's page:\n%.400s", page)
	}

	// nsqd stops: the state says so (down, since when, why), and the
	// topics' numbers are marked incomplete rather than kept silently.
	_ = st.NSQD.Stop()
	waitState(t, base, 60*time.Second, "nsqd down in the state", &s, func(s *console.State) string {
		if !s.NSQDDown || len(s.NSQDs) != 1 || s.NSQDs[0].Up || s.NSQDs[0].Error == "" || s.NSQDs[0].DownSince == nil {
			return fmt.Sprintf("nsqds: %+v", s.NSQDs)
		}
		if tp := findTopic(s, ticks); tp == nil || !tp.Stale {
			return fmt.Sprintf("topic ticks: %+v", tp)
		}
		return ""
	})
	t.Logf("nsqd down: %s", s.NSQDs[0].Error)
}

// counts is a tracker's state: messages per stream.
type counts struct {
	mu sync.Mutex
	n  map[string]uint64
}

func (c *counts) Apply(stream string, _ envelope.Envelope) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]uint64{}
	}
	c.n[stream]++
	return nil
}

func (c *counts) ApplySnapshot(stream string, _ uint64, _ []byte) error { return nil }

func (c *counts) ExportState(stream string) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return json.Marshal(c.n[stream])
}

func (c *counts) ImportState(stream string, b []byte) error {
	var n uint64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]uint64{}
	}
	c.n[stream] = n
	return nil
}

// running is a service run in-process, as service.Main runs it, but
// stopped by the test.
type running struct {
	s      *service.Service
	cancel context.CancelFunc
	done   chan error
}

// start runs a service named name with the common flags and flags, the
// environment ignored, given args, and setup as its Spec's Setup.
func start(t *testing.T, name string, flags []cli.Flag, args []string, setup func(*cli.Context, *service.Service) (func(context.Context) error, error)) *running {
	t.Helper()
	all := append(config.Flags(), flags...)
	for _, f := range all {
		// The test's environment must not configure the service.
		switch f := f.(type) {
		case *cli.StringFlag:
			f.EnvVars = nil
		case *cli.StringSliceFlag:
			f.EnvVars = nil
		case *cli.IntFlag:
			f.EnvVars = nil
		case *cli.Int64Flag:
			f.EnvVars = nil
		case *cli.Uint64Flag:
			f.EnvVars = nil
		case *cli.Float64Flag:
			f.EnvVars = nil
		case *cli.BoolFlag:
			f.EnvVars = nil
		case *cli.DurationFlag:
			f.EnvVars = nil
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan *service.Service, 1)
	app := &cli.App{Name: name, Flags: all, Writer: io.Discard, ErrWriter: io.Discard, ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			cfg, err := config.FromCLI(c, name, "test")
			if err != nil {
				return err
			}
			s, err := service.New(c.Context, cfg, testenv.Logger(t))
			if err != nil {
				return err
			}
			loop, err := setup(c, s)
			if err != nil {
				_ = s.Close(context.Background())
				return err
			}
			ready <- s
			return s.Run(c.Context, loop)
		}}
	go func() { r.done <- app.RunContext(ctx, append([]string{name}, args...)) }()
	select {
	case r.s = <-ready:
		return r
	case err := <-r.done:
		cancel()
		t.Fatalf("starting %s: %v", name, err)
	case <-time.After(90 * time.Second):
		cancel()
		t.Fatalf("%s did not start", name)
	}
	return nil
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("%s: %v", r.s.Config.Name, err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("%s did not stop", r.s.Config.Name)
	}
}

func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header.Get("Content-Type")
}

func getState(t *testing.T, base string) *console.State {
	t.Helper()
	code, body, _ := get(t, base+"/api/state")
	if code != http.StatusOK {
		return nil
	}
	var s console.State
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("GET /api/state: %v\n%.300s", err, body)
	}
	return &s
}

// waitState polls GET /api/state until cond says nothing ("" = met), or
// fails the test with what it said last.
func waitState(t *testing.T, base string, timeout time.Duration, what string, out *console.State, cond func(*console.State) string) {
	t.Helper()
	last := "no state yet"
	ok := testenv.Eventually(timeout, func() bool {
		s := getState(t, base)
		if s == nil {
			return false
		}
		if last = cond(s); last == "" {
			*out = *s
			return true
		}
		return false
	})
	if !ok {
		t.Fatalf("waiting %s for %s: %s", timeout, what, last)
	}
}

func findService(s *console.State, name string) *console.Service {
	for i := range s.Services {
		if s.Services[i].Name == name {
			return &s.Services[i]
		}
	}
	return nil
}

func findTopic(s *console.State, name string) *console.Topic {
	for i := range s.Topics {
		if s.Topics[i].Name == name {
			return &s.Topics[i]
		}
	}
	return nil
}

func findStream(s *console.State, id string) *console.Stream {
	for i := range s.Streams {
		if s.Streams[i].Stream == id {
			return &s.Streams[i]
		}
	}
	return nil
}

func findConsumer(s *console.Stream, instance string) *console.StreamConsumer {
	if s == nil {
		return nil
	}
	for i := range s.Consumers {
		if s.Consumers[i].Consumer == instance {
			return &s.Consumers[i]
		}
	}
	return nil
}

// findStage is the row of the stage service name in s.
func findStage(s *console.Stream, name string) *console.StreamConsumer {
	if s == nil {
		return nil
	}
	for i := range s.Consumers {
		if s.Consumers[i].Kind == "stage" && s.Consumers[i].Consumer == name {
			return &s.Consumers[i]
		}
	}
	return nil
}

func findDeadLetters(s *console.State, topic string) *console.DeadLetterTopic {
	for i := range s.DeadLetters {
		if s.DeadLetters[i].Topic == topic {
			return &s.DeadLetters[i]
		}
	}
	return nil
}

func slicesHas(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// lagHistoryOf is one consumer's points in GET /api/lag-history.
func lagHistoryOf(t *testing.T, base, kind, consumer, stream string) [][3]float64 {
	t.Helper()
	code, body, _ := get(t, base+"/api/lag-history")
	if code != http.StatusOK {
		t.Fatalf("GET /api/lag-history: HTTP %d %s", code, body)
	}
	var doc struct {
		Version   int `json:"version"`
		BucketMS  int `json:"bucket_ms"`
		Consumers []struct {
			Kind, Consumer, Stream string
			Points                 [][3]float64
		} `json:"consumers"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil || doc.Version != 1 || doc.BucketMS != 10000 {
		t.Fatalf("GET /api/lag-history: %v, version %d, bucket %d ms", err, doc.Version, doc.BucketMS)
	}
	for _, c := range doc.Consumers {
		if c.Kind == kind && c.Consumer == consumer && c.Stream == stream {
			return c.Points
		}
	}
	return nil
}
