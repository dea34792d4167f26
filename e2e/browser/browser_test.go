// Package browser drives `svckit console`'s page in a real headless
// Chromium (the DevTools protocol over a pipe, cdp_test.go) against the
// real programs: a Consul agent, nsqlookupd and nsqd (testenv), the
// console as bin/svckit runs it, and a stream's owner, a tracking
// consumer and a plain consumer built with the library and run
// in-process. Everything it asserts it reads from the page's DOM (the ids
// and data-* attributes console.js lists at its top), as an operator
// would see it, and the operator's actions are clicks and typing there.
package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/cdp"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/testenv"
	"github.com/urfave/cli/v2"
)

const (
	stream, ticks, orders = "browser-s1", "ticks", "orders"
	trackerID             = "tracker-1"
	token                 = "browser-test-operator-token-0123456789"
	// missed is what the owner publishes at once while the tracker is
	// down: at the tracker's pace (applyPace), a recovery of seconds, which
	// the console's collections (one a second) see in progress.
	missed = 6000
	// applyPace is how many messages a second the tracker applies at
	// most, as a consumer whose every message costs work would: the live
	// stream (20/s) never waits for it.
	applyPace = 2000
	// poll is how often the page is read.
	poll = 50 * time.Millisecond
)

func TestConsolePageInChromium(t *testing.T) {
	bin := cdp.Bin(t)
	var exMu sync.Mutex
	var exceptions []string
	chrome := cdp.Start(t, bin, func(method string, params json.RawMessage) {
		if method == "Runtime.exceptionThrown" {
			exMu.Lock()
			exceptions = append(exceptions, string(params))
			exMu.Unlock()
		}
	})
	t.Cleanup(func() {
		// A step that failed may have failed for a script error.
		if t.Failed() {
			exMu.Lock()
			defer exMu.Unlock()
			for _, e := range exceptions {
				t.Logf("the page threw: %s", e)
			}
		}
	})

	st := testenv.StartStack(t)
	common := func(dataDir string, more ...string) []string {
		return append([]string{"--consul-addr=" + st.Consul.HTTPAddr, "--data-dir=" + dataDir, "--check-interval=1s",
			"--nsq-lookupd-poll-interval=1s", "--shutdown-timeout=5s"}, more...)
	}

	// The owner publishes 20 messages a second to ticks (and, while the
	// tracker is down, a burst the test asks for).
	var owner *replay.Owner
	ownerSvc := start(t, "owner", common(t.TempDir()), func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
		o, err := s.OpenStream(c.Context, service.StreamOptions{Stream: stream, Topic: ticks, Owner: replay.OwnerOptions{
			Log: retainlog.DefaultOptions(""), ContentType: "text/plain"}})
		if err != nil {
			return nil, err
		}
		owner = o
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
	defer ownerSvc.stop(t)

	// The tracking consumer of ticks, with a data directory (its
	// checkpoint) and an instance id of its own that its restart keeps.
	trackerArgs := common(t.TempDir(), "--instance-id="+trackerID)
	trackerSetup := func(_ *cli.Context, s *service.Service) (func(context.Context) error, error) {
		_, err := s.Track(&counts{}, service.TrackOptions{Topic: ticks, Channel: "tracker", Upstream: "owner"})
		return nil, err
	}
	tracker := start(t, "tracker", trackerArgs, trackerSetup)
	defer func() {
		if tracker != nil {
			tracker.stop(t)
		}
	}()

	// A plain consumer of orders, where what is not an envelope becomes a
	// dead letter at once, and of ticks: its channel there keeps nsqd
	// from holding ticks for the tracker's (ephemeral) channel while the
	// tracker is away, so that what it missed comes back by replay.
	sink := start(t, "sink", common(t.TempDir(), "--tag=consumes="+orders, "--tag=consumes="+ticks),
		func(_ *cli.Context, s *service.Service) (func(context.Context) error, error) {
			none := pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil })
			if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: orders, Channel: "sink"}, none); err != nil {
				return nil, err
			}
			_, err := s.Consumer(pubsub.ConsumerOptions{Topic: ticks, Channel: "sink"}, none)
			return nil, err
		})
	defer func() {
		if sink != nil {
			sink.stop(t)
		}
	}()

	// The console, as `svckit console` runs, with the operator's token.
	tokenFile := filepath.Join(t.TempDir(), "operator.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Where a reading's trace would be found (never fetched: the page
	// only makes links).
	const traceURL = "http://127.0.0.1:9/search?service=sensor&tags=%7B%22messaging.message.id%22%3A%22{id}%22%7D"
	port := testenv.FreePort(t)
	con := testenv.StartProcess(t, "console", testenv.Bin(t, "svckit"),
		append([]string{"console"}, common(t.TempDir(), "--http-addr="+testenv.Addr(port), "--operator-token-file="+tokenFile, "--open-read",
			"--trace-url="+traceURL)...), nil)
	testenv.WaitPassing(t, st.Consul, "console", 1)
	if !con.Running() {
		t.Fatalf("the console exited (code %d)", con.ExitCode())
	}
	base := "http://" + testenv.Addr(port) + "/"

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	pg, err := chrome.Open(ctx, base)
	cancel()
	if err != nil {
		t.Fatalf("opening %s in Chromium: %v", base, err)
	}
	read := func(v *view) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return pg.Eval(ctx, viewJS, v)
	}
	// wait reads the page every poll until cond says nothing ("" = met),
	// or fails the test with what it said last.
	wait := func(timeout time.Duration, what string, cond func(*view) string) *view {
		t.Helper()
		last := "the page was not read"
		deadline := time.Now().Add(timeout)
		for {
			var v view
			if err := read(&v); err != nil {
				last = err.Error()
			} else if last = cond(&v); last == "" {
				return &v
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting %s for the page to show %s: %s", timeout, what, last)
			}
			time.Sleep(poll)
		}
	}
	click := func(topic, id string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res string
		expr := fmt.Sprintf(`(() => {
			const b = [...document.querySelectorAll('button[data-requeue-topic]')].find(b => b.dataset.requeueTopic === %s && b.dataset.requeueId === %s);
			if (!b) return 'no requeue button';
			if (b.disabled) return 'the requeue button is disabled: ' + b.title;
			b.click();
			return '';
		})()`, jsString(topic), jsString(id))
		if err := pg.Eval(ctx, expr, &res); err != nil || res != "" {
			t.Fatalf("clicking requeue of %s %s: %v %s", topic, id, err, res)
		}
	}
	typeToken := func(value string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		expr := fmt.Sprintf(`(() => {
			const f = document.getElementById('operator-token');
			f.focus();
			f.value = %s;
			f.dispatchEvent(new Event('input', { bubbles: true }));
			f.dispatchEvent(new Event('change', { bubbles: true }));
		})()`, jsString(value))
		if err := pg.Eval(ctx, expr, nil); err != nil {
			t.Fatalf("typing the token: %v", err)
		}
	}

	// 0. A console as the datacenters run it, without --open-read: its
	// page asks for the operator's token before it shows anything, says
	// a wrong one was refused, and goes live with the right one.
	tokenRead(t, chrome, st.Consul, common(t.TempDir(), "--operator-token-file="+tokenFile), "stream-"+stream)
	// The first page in front again: a hidden page keeps its history but
	// does not draw.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	err = pg.Front(ctx)
	cancel()
	if err != nil {
		t.Fatalf("bringing the console's page to the front: %v", err)
	}

	// 1. The pipeline: the owner's and the tracker's services and the
	// topic in the picture, joined by the tracker's channel; the stream
	// and the tracker's position.
	t0 := time.Now()
	v := wait(90*time.Second, "the pipeline and the stream", func(v *view) string {
		switch {
		case !v.Ready || v.Connection != "live":
			return fmt.Sprintf("page ready %v, connection %q", v.Ready, v.Connection)
		case !v.has("service:owner") || !v.has("service:tracker") || !v.has("topic:"+ticks):
			return fmt.Sprintf("picture's nodes: %v", v.Nodes)
		case !v.hasEdge("service:owner", "topic:"+ticks) || !v.trackerChannel():
			return fmt.Sprintf("picture's edges: %v", v.Edges)
		case v.Health["owner"] != "passing" || v.Health["tracker"] != "passing":
			return fmt.Sprintf("services' health: %v", v.Health)
		case v.Stream == nil || v.Stream.OwnerUp != "true" || v.Stream.LastSeq == 0 || v.Stream.Topic != ticks:
			return fmt.Sprintf("stream: %+v", v.Stream)
		case v.Consumer == nil || !v.Consumer.Up || v.Consumer.State != "up" || v.Consumer.Position == 0 || v.Consumer.Points == 0:
			return fmt.Sprintf("tracker: %+v", v.Consumer)
		}
		return ""
	})
	t.Logf("1. page shows the pipeline (%d nodes, %d edges) and stream %s at %d, tracker at %d, lag %d (%.1fs)",
		len(v.Nodes), len(v.Edges), stream, v.Stream.LastSeq, v.Consumer.Position, v.Consumer.Lag, time.Since(t0).Seconds())

	// 1b. --trace-url: the stream's card links to a reading's trace, the
	// last reading's until a sequence is typed in, then that one's.
	traceHref := func(typed string) (href, seq string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res struct{ Href, Seq, Err string }
		expr := fmt.Sprintf(`(() => {
			const a = document.getElementById('trace-' + %[1]s), f = document.getElementById('trace-seq-' + %[1]s);
			if (!a || !f) return { Err: 'no trace link or sequence field' };
			if (%[2]s !== '') { f.value = %[2]s; f.dispatchEvent(new Event('input', { bubbles: true })); }
			return { Href: a.href, Seq: a.dataset.seq };
		})()`, jsString(stream), jsString(typed))
		if err := pg.Eval(ctx, expr, &res); err != nil || res.Err != "" {
			t.Fatalf("reading the trace link: %v %s", err, res.Err)
		}
		return res.Href, res.Seq
	}
	wantHref := func(seq string) string {
		return strings.ReplaceAll(traceURL, "{id}", url.PathEscape(stream)+"%2F"+seq)
	}
	if href, seq := traceHref(""); seq == "" || seq == "0" || href != wantHref(seq) {
		t.Fatalf("the trace link of the last reading: %q (seq %q), want %q", href, seq, wantHref(seq))
	}
	if href, _ := traceHref("7"); href != wantHref("7") {
		t.Fatalf("the trace link of reading 7: %q, want %q", href, wantHref("7"))
	}
	t.Logf("1b. the stream's card links to a reading's trace: %s", wantHref("7"))

	// 2. The tracker stops: within 2 s of its stop the page shows it down,
	// with a lag above the one it had, then rising as the owner goes on.
	lagBefore := v.Consumer.Lag
	t0 = time.Now()
	tracker.stop(t)
	tracker = nil
	stopped := time.Now()
	down := wait(2*time.Second, "the stopped tracker down with a lag", func(v *view) string {
		if c := v.Consumer; c == nil || c.Up || c.State != "down" || c.Lag <= lagBefore {
			return fmt.Sprintf("tracker: %+v (lag before %d)", c, lagBefore)
		}
		return ""
	})
	shownDown := time.Now()
	rising := wait(3*time.Second, "the stopped tracker's lag rising", func(v *view) string {
		if c := v.Consumer; c == nil || c.Up || c.State != "down" || c.Position != down.Consumer.Position || c.Lag <= down.Consumer.Lag {
			return fmt.Sprintf("tracker: %+v (down at %d, lag %d)", c, down.Consumer.Position, down.Consumer.Lag)
		}
		return ""
	})
	t.Logf("2. tracker stopped in %.2fs; the page showed it down %.2fs later (lag %d → %d messages), rising %.2fs after that (lag %d)",
		stopped.Sub(t0).Seconds(), shownDown.Sub(stopped).Seconds(), lagBefore, down.Consumer.Lag, time.Since(shownDown).Seconds(), rising.Consumer.Lag)

	// 3. While it is down the owner publishes a burst; the tracker starts
	// again from its checkpoint (the same data directory and instance id)
	// and replays what it missed, at its pace (applyPace) for seconds: the
	// page shows the replay's progress bar when a collection catches it in
	// progress (recorded, not required), and the lag back at 0.
	payloads := make([][]byte, missed)
	for i := range payloads {
		payloads[i] = []byte("burst " + strconv.Itoa(i))
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 60*time.Second)
	burstLast, err := owner.PublishBatch(pctx, payloads)
	pcancel()
	if err != nil {
		t.Fatalf("publishing %d messages: %v", missed, err)
	}
	wait(30*time.Second, "the burst in the stream", func(v *view) string {
		if v.Stream == nil || v.Stream.LastSeq < int64(burstLast) || v.Consumer == nil || v.Consumer.Lag < missed {
			return fmt.Sprintf("stream %+v, tracker %+v (burst up to %d)", v.Stream, v.Consumer, burstLast)
		}
		return ""
	})
	t0 = time.Now()
	tracker = start(t, "tracker", trackerArgs, trackerSetup)
	t.Logf("3. tracker restarted in %.2fs, %d messages behind at least", time.Since(t0).Seconds(), missed)
	shotPath := os.Getenv("SVCKIT_CONSOLE_SCREENSHOT")
	if shotPath == "" {
		shotPath = filepath.Join(t.TempDir(), "console.png")
	}
	var (
		sawReplay          bool
		replayPolls        int
		maxRequested       int64
		firstReplay        *view
		shot, shotInReplay string
		maxLagUp           int64
		trace              []string // what the page showed, each change
	)
	screenshot := func(v *view) string {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		png, err := pg.Screenshot(ctx)
		if err == nil && !strings.HasPrefix(string(png), "\x89PNG") {
			err = fmt.Errorf("not a PNG (%d bytes)", len(png))
		}
		if err == nil {
			err = os.WriteFile(shotPath, png, 0o644)
		}
		if err != nil {
			t.Errorf("screenshot: %v", err)
			return ""
		}
		desc := fmt.Sprintf("tracker %s at %d, lag %d", v.Consumer.State, v.Consumer.Position, v.Consumer.Lag)
		if r := v.Consumer.Replay; r != nil {
			desc += fmt.Sprintf(", replay %d/%d", r.Received, r.Requested)
		}
		return desc
	}
	t0 = time.Now()
	var upAt time.Time
	wait(120*time.Second, "the restarted tracker caught up (lag 0)", func(v *view) string {
		c := v.Consumer
		if c == nil {
			return "no tracker row"
		}
		if c.Up && upAt.IsZero() {
			upAt = time.Now()
		}
		step := fmt.Sprintf("%s at %d, lag %d", c.State, c.Position, c.Lag)
		if r := c.Replay; r != nil {
			step += fmt.Sprintf(", replay %d/%d", r.Received, r.Requested)
		}
		if len(trace) == 0 || !strings.HasSuffix(trace[len(trace)-1], step) {
			trace = append(trace, fmt.Sprintf("+%.2fs %s", time.Since(t0).Seconds(), step))
		}
		if r := c.Replay; r != nil {
			if !sawReplay {
				firstReplay = v
			}
			sawReplay = true
			replayPolls++
			maxRequested = max(maxRequested, r.Requested)
		}
		if c.Up && c.Lag > 0 {
			maxLagUp = max(maxLagUp, c.Lag)
			// The first moment it is back with a lag; the first with a
			// replay in progress replaces it.
			if shot == "" || c.Replay != nil && shotInReplay == "" {
				shot = screenshot(v)
				if c.Replay != nil {
					shotInReplay = shot
				}
			}
		}
		if !c.Up || c.Lag != 0 || c.Position < int64(burstLast) {
			return fmt.Sprintf("tracker: %+v (burst up to %d)", c, burstLast)
		}
		return ""
	})
	t.Logf("3. the page showed the tracker up %.2fs after its restart, lag at most %d while up, back at 0 after %.2fs",
		upAt.Sub(t0).Seconds(), maxLagUp, time.Since(t0).Seconds())
	t.Logf("3. the tracker's row, as it changed: %s", strings.Join(trace, "; "))
	if sawReplay {
		t.Logf("3. replay progress bar SEEN on the page in %d reads (first %d/%d, requested up to %d)",
			replayPolls, firstReplay.Consumer.Replay.Received, firstReplay.Consumer.Replay.Requested, maxRequested)
	} else {
		t.Logf("3. replay progress bar NOT seen: the recovery was over between two of the console's collections; the lag came back to 0")
	}
	if shot == "" {
		t.Errorf("no screenshot: the page never showed the restarted tracker with a lag")
	} else {
		t.Logf("3. screenshot %s: %s", shotPath, shot)
	}

	// 4. A body that is not an envelope, sent to nsqd's own HTTP /pub on a
	// consumed topic: the page's dead-letter count rises and the preview
	// shows its bytes.
	wait(10*time.Second, "no dead letter yet", func(v *view) string {
		if n := v.deadLetters(); n != 0 {
			return fmt.Sprintf("%d dead letters of %s", n, orders)
		}
		return ""
	})
	t0 = time.Now()
	// Its bytes are markup too: the page must show them as text, never
	// run them.
	const markup = `<img src=x onerror="document.body.dataset.pwned='yes'">`
	st.NSQD.Publish(t, orders, []byte("console-garbage "+markup+" \x00\x01 not an envelope"))
	var letter string
	v = wait(60*time.Second, "the dead letter counted and previewed", func(v *view) string {
		d := v.DeadLetters
		if d == nil || d.Count != 1 || len(d.Letters) != 1 || !strings.Contains(d.Letters[0].Preview, "console-garbage") || d.Letters[0].ID == "" {
			return fmt.Sprintf("dead letters of %s: %+v", orders, d)
		}
		letter = d.Letters[0].ID
		return ""
	})
	t.Logf("4. dead letter %s on the page %.2fs after the /pub, preview %s", letter, time.Since(t0).Seconds(), v.DeadLetters.Letters[0].Preview)
	{
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var injected struct {
			Pwned string `json:"pwned"`
			Imgs  int    `json:"imgs"`
		}
		err := pg.Eval(ctx, `({ pwned: document.body.dataset.pwned || '', imgs: document.querySelectorAll('#deadletters img').length })`, &injected)
		cancel()
		if err != nil || injected.Pwned != "" || injected.Imgs != 0 || !strings.Contains(v.DeadLetters.Letters[0].Preview, "<img") {
			t.Fatalf("a letter's markup on the page: %+v %v, preview %q; want it shown as text only", injected, err, v.DeadLetters.Letters[0].Preview)
		}
	}

	// 5. Requeue from the page: refused without the operator's token (the
	// page says what it needs), refused by the console with a wrong one;
	// with the token typed in, the letter goes back.
	if v.Token.Field != "" || v.Token.Stored != 0 {
		t.Fatalf("the page starts with a token: field %q, %d item(s) in sessionStorage", v.Token.Field, v.Token.Stored)
	}
	click(orders, letter)
	v = wait(5*time.Second, "the requeue refused for want of the token", func(v *view) string {
		if v.Requeue.Result != "error" || !strings.Contains(v.Requeue.Text, "enter the operator token") {
			return fmt.Sprintf("requeue status: %+v", v.Requeue)
		}
		return ""
	})
	t.Logf("5. without the token: %q", v.Requeue.Text)
	typeToken("not-the-token")
	click(orders, letter)
	v = wait(10*time.Second, "the requeue refused with a wrong token", func(v *view) string {
		if v.Requeue.Result != "error" || !strings.Contains(v.Requeue.Text, "HTTP 401") {
			return fmt.Sprintf("requeue status: %+v", v.Requeue)
		}
		return ""
	})
	t.Logf("5. with a wrong token: %q", v.Requeue.Text)
	// Nothing was requeued: a newer state still has the letter.
	gen := v.Generated
	wait(10*time.Second, "the letter still dead after the refusals", func(v *view) string {
		if v.Generated == gen || v.DeadLetters == nil || v.DeadLetters.Count != 1 {
			return fmt.Sprintf("state of %s, dead letters %+v", v.Generated, v.DeadLetters)
		}
		return ""
	})
	// The sink goes first, so that the letter, back in orders, stays in
	// its channel instead of being dead-lettered again.
	sink.stop(t)
	sink = nil
	typeToken(token)
	t0 = time.Now()
	click(orders, letter)
	v = wait(60*time.Second, "the letter requeued, none dead", func(v *view) string {
		switch {
		case v.Requeue.Result != "ok" || !strings.HasPrefix(v.Requeue.Text, "requeued 1 dead letter"):
			return fmt.Sprintf("requeue status: %+v", v.Requeue)
		case v.deadLetters() != 0:
			return fmt.Sprintf("dead letters of %s: %+v", orders, v.DeadLetters)
		case v.Token.Stored != 1:
			return fmt.Sprintf("%d item(s) in sessionStorage", v.Token.Stored)
		}
		return ""
	})
	t.Logf("5. with the token: %q; the page shows no dead letter %.2fs after the click", v.Requeue.Text, time.Since(t0).Seconds())

	// 6. nsqd stops: the banner says so, and the page goes on updating.
	if v.NSQDDown != "false" {
		t.Fatalf("the banner says nsqd is down before it stopped: %q", v.Banner)
	}
	t0 = time.Now()
	_ = st.NSQD.Stop()
	stopped = time.Now()
	v = wait(30*time.Second, "nsqd down in the banner", func(v *view) string {
		if v.BannerHidden || v.NSQDDown != "true" || !strings.Contains(v.Banner, "nsqd") || !strings.Contains(v.Banner, "down since") {
			return fmt.Sprintf("banner hidden %v, nsqd down %q: %q", v.BannerHidden, v.NSQDDown, v.Banner)
		}
		return ""
	})
	t.Logf("6. nsqd stopped in %.2fs; the banner said so %.2fs later: %q", stopped.Sub(t0).Seconds(), time.Since(stopped).Seconds(), v.Banner)
	gen = v.Generated
	v = wait(10*time.Second, "newer states while nsqd is down", func(v *view) string {
		if v.Generated == gen || v.Stale != "false" || v.Connection != "live" || v.NSQDDown != "true" {
			return fmt.Sprintf("state of %s (was %s), stale %q, connection %q, nsqd down %q", v.Generated, gen, v.Stale, v.Connection, v.NSQDDown)
		}
		return ""
	})
	t.Logf("6. the page still updates: state of %s, then of %s", gen, v.Generated)

	exMu.Lock()
	defer exMu.Unlock()
	for _, e := range exceptions {
		t.Errorf("the page threw: %.600s", e)
	}
}

// view is what the test reads of the page, all in one evaluation.
type view struct {
	Ready        bool              `json:"ready"`
	Connection   string            `json:"connection"`
	Generated    string            `json:"generated"`
	Banner       string            `json:"banner"`
	BannerHidden bool              `json:"banner_hidden"`
	NSQDDown     string            `json:"nsqd_down"`
	Stale        string            `json:"stale"`
	Nodes        []string          `json:"nodes"`  // the picture's: service:<name>, topic:<name>, channel:<topic>/<channel>
	Edges        []string          `json:"edges"`  // <from node> > <to node>
	Health       map[string]string `json:"health"` // the picture's services' data-health
	Stream       *struct {
		OwnerUp string `json:"owner_up"`
		LastSeq int64  `json:"last_seq"`
		Topic   string `json:"topic"`
	} `json:"stream"`
	Consumer *struct {
		Up       bool   `json:"up"`    // data-up="true" (console.js leaves a false attribute out)
		State    string `json:"state"` // its badge: up, down
		Position int64  `json:"position"`
		Lag      int64  `json:"lag"` // the lag cell's, in messages
		Points   int    `json:"points"`
		Replay   *struct {
			Requested int64 `json:"requested"`
			Received  int64 `json:"received"`
		} `json:"replay"` // the progress bar
	} `json:"consumer"`
	DeadLetters *struct {
		Count   int64 `json:"count"`
		Letters []struct {
			ID      string `json:"id"`
			Preview string `json:"preview"`
		} `json:"letters"`
	} `json:"deadletters"`
	Requeue struct {
		Result string `json:"result"`
		Text   string `json:"text"`
	} `json:"requeue"`
	Token struct {
		Field  string `json:"field"`
		Stored int    `json:"stored"` // items in sessionStorage
	} `json:"token"`
}

func (v *view) has(node string) bool {
	for _, n := range v.Nodes {
		if n == node {
			return true
		}
	}
	return false
}

func (v *view) hasEdge(from, to string) bool {
	for _, e := range v.Edges {
		if e == from+">"+to {
			return true
		}
	}
	return false
}

// trackerChannel: ticks → the tracker's channel → the tracker.
func (v *view) trackerChannel() bool {
	for _, e := range v.Edges {
		from, to, _ := strings.Cut(e, ">")
		if from == "topic:"+ticks && strings.HasPrefix(to, "channel:"+ticks+"/tracker-") && v.hasEdge(to, "service:tracker") {
			return true
		}
	}
	return false
}

func (v *view) deadLetters() int64 {
	if v.DeadLetters == nil {
		return 0
	}
	return v.DeadLetters.Count
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

var viewJS = fmt.Sprintf(`(() => {
	const $ = id => document.getElementById(id);
	const key = %s, dl = $(%s);
	const b = $('banner'), svg = $('pipeline-svg'), rs = $('requeue-status');
	const v = {
		ready: document.readyState === 'complete',
		connection: document.body.dataset.connection || '',
		generated: $('generated').dataset.generatedAt || '',
		banner: b.textContent, banner_hidden: b.hidden, nsqd_down: b.dataset.nsqdDown, stale: b.dataset.stale,
		nodes: [...svg.querySelectorAll('g[data-node]')].map(g => g.dataset.node + ':' +
			(g.dataset.node === 'service' ? g.dataset.service : g.dataset.node === 'topic' ? g.dataset.topic : g.dataset.topic + '/' + g.dataset.channel)),
		edges: [...svg.querySelectorAll('path.edge')].map(p => p.dataset.from + '>' + p.dataset.to),
		health: Object.fromEntries([...svg.querySelectorAll('g[data-node=service]')].map(g => [g.dataset.service, g.dataset.health])),
		stream: null, consumer: null, deadletters: null,
		requeue: { result: rs.dataset.result, text: rs.textContent },
		token: { field: $('operator-token').value, stored: sessionStorage.length },
	};
	const s = $(%s);
	if (s) v.stream = { owner_up: s.dataset.ownerUp, last_seq: Number(s.dataset.lastSeq), topic: s.dataset.topic };
	const c = $('consumer-' + key), lag = $('lag-' + key), r = $('replay-' + key), sp = $('spark-' + key);
	if (c && lag) v.consumer = { up: c.dataset.up === 'true', state: c.querySelector('.badge').textContent, position: Number(c.dataset.position), lag: Number(lag.dataset.lagMessages),
		points: sp ? Number(sp.dataset.points) : 0,
		replay: r ? { requested: Number(r.dataset.requested), received: Number(r.dataset.received) } : null };
	if (dl) v.deadletters = { count: Number(dl.dataset.count), letters: [...dl.querySelectorAll('tr.letter')].map(tr =>
		({ id: tr.dataset.letterId, preview: (tr.querySelector('code.preview') || {}).textContent || '' })) };
	return v;
})()`, jsString(trackerID+"-"+stream), jsString("dl-"+orders), jsString("stream-"+stream))

// counts is a tracker's state: messages per stream, applied at most
// applyPace a second.
type counts struct {
	mu   sync.Mutex
	n    map[string]uint64
	next time.Time // when the pace allows the next message
}

func (c *counts) Apply(stream string, _ envelope.Envelope) error {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]uint64{}
	}
	c.n[stream]++
	now := time.Now()
	if c.next.Before(now) {
		c.next = now
	}
	c.next = c.next.Add(time.Second / applyPace)
	ahead := c.next.Sub(now)
	c.mu.Unlock()
	// The work a message costs, in slices long enough for the timer.
	if ahead > 10*time.Millisecond {
		time.Sleep(ahead)
	}
	return nil
}

func (c *counts) ApplySnapshot(string, uint64, []byte) error { return nil }

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
// stopped by the test (as the console's integration test runs them).
type running struct {
	s      *service.Service
	cancel context.CancelFunc
	done   chan error
}

// start runs a service named name with args (the environment ignored)
// and setup as its Spec's Setup, and returns once it is set up.
func start(t *testing.T, name string, args []string, setup func(*cli.Context, *service.Service) (func(context.Context) error, error)) *running {
	t.Helper()
	all := config.Flags()
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

// tokenRead runs a second console, whose state needs the operator's
// token, opens its page and types the token in as an operator would.
func tokenRead(t *testing.T, chrome *cdp.Chromium, consul *testenv.Consul, args []string, streamElem string) {
	t.Helper()
	port := testenv.FreePort(t)
	con := testenv.StartProcess(t, "console-token", testenv.Bin(t, "svckit"),
		append([]string{"console", "--http-addr=" + testenv.Addr(port), "--instance-id=console-token"}, args...), nil)
	testenv.WaitPassing(t, consul, "console", 2)
	if !con.Running() {
		t.Fatalf("the second console exited (code %d)", con.ExitCode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	pg, err := chrome.Open(ctx, "http://"+testenv.Addr(port)+"/")
	cancel()
	if err != nil {
		t.Fatalf("opening the second console in Chromium: %v", err)
	}
	type look struct {
		Connection string `json:"connection"`
		Text       string `json:"text"`
		Stream     bool   `json:"stream"`
		Focused    bool   `json:"focused"`
	}
	lookJS := fmt.Sprintf(`(() => ({ connection: document.body.dataset.connection || '',
		text: document.getElementById('connection').textContent,
		stream: !!document.getElementById(%s),
		focused: document.activeElement === document.getElementById('operator-token') }))()`, jsString(streamElem))
	wait := func(what string, cond func(look) bool) look {
		t.Helper()
		var l look
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := pg.Eval(ctx, lookJS, &l)
			cancel()
			if err == nil && cond(l) {
				return l
			}
			if time.Now().After(deadline) {
				t.Fatalf("the console without --open-read: waiting for %s: %+v %v", what, l, err)
			}
			time.Sleep(poll)
		}
	}
	typeIn := func(value string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		expr := fmt.Sprintf(`(() => { const f = document.getElementById('operator-token'); f.value = %s;
			f.dispatchEvent(new Event('change', { bubbles: true })); })()`, jsString(value))
		if err := pg.Eval(ctx, expr, nil); err != nil {
			t.Fatalf("typing the token: %v", err)
		}
	}
	l := wait("the page to ask for the token", func(l look) bool {
		return l.Connection == "token" && strings.Contains(l.Text, "enter the operator token") && !l.Stream
	})
	t.Logf("0. without --open-read, the page asks: %q (token field focused %v)", l.Text, l.Focused)
	typeIn("not-the-token")
	l = wait("a wrong token refused", func(l look) bool {
		return l.Connection == "token" && strings.Contains(l.Text, "wrong operator token") && !l.Stream
	})
	t.Logf("0. a wrong token: %q", l.Text)
	typeIn(token)
	wait("the page live with the token", func(l look) bool { return l.Connection == "live" && l.Stream })
	t.Logf("0. with the token the page is live and shows the stream")
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pg.Close(ctx); err != nil {
		t.Fatalf("closing the second console's page: %v", err)
	}
}
