package faulttest

import (
	"fmt"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

var republishRe = regexp.MustCompile(`publishing messages not acknowledged before the last stop.*from=(\d+) to=(\d+)`)

// Case 6: the sensor is SIGKILLed mid-stream and started again on the same
// data dir and stream id. Its sequence continues where the retained log
// ends (never from 1, never reusing a number), what nsqd had not
// acknowledged is republished from the log, and nothing is lost.
func TestSensorKilled(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	l0 := r.lastSeq()
	r.sensor.proc.Kill()
	killed := time.Now()
	addr := r.sensor.restart()
	back := time.Now()
	exact := r.watchExact(back)
	st, err := pipetest.SensorStreamOf(addr, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastSeq < l0 {
		t.Fatalf("the restarted sensor's last_seq is %d, below %d published before the kill", st.LastSeq, l0)
	}
	republished := "nothing"
	if m := republishRe.FindAllStringSubmatch(r.sensor.proc.Log(), -1); len(m) > 0 {
		last := m[len(m)-1]
		republished = fmt.Sprintf("%s..%s", last[1], last[2])
	}
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("sensor SIGKILLed at last_seq >= %d, passing again %s later, continuing at %d; republished from its log: %s",
		l0, back.Sub(killed).Round(10*time.Millisecond), st.LastSeq, republished))
}

// Case 7: a worker is SIGKILLed while it holds readings in flight. nsqd
// redelivers them to the other worker once their message timeout (5 s here)
// expires; nothing is lost. The worker is first stopped (SIGSTOP) for a
// moment, so that it surely holds readings when it dies — a worker that hangs
// and is then killed; at this rate a healthy worker often holds none.
func TestWorkerKilled(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{workerArgs: []string{"--nsq-msg-timeout=5s"}})
	n := r.nsqds[0]
	w1, w2 := r.workers[0], r.workers[1]
	c0, _ := channelStats(n, pipeline.ReadingsTopic, pipeline.WorkersChannel)
	consumed0 := metric(t, w2.at, "svckit_messages_consumed_total")

	if err := syscall.Kill(w1.proc.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var c1 chanStats
	testenv.WaitFor(t, stepTimeout, "the stopped worker to hold 100 readings in flight", func() bool {
		var ok bool
		c1, ok = channelStats(n, pipeline.ReadingsTopic, pipeline.WorkersChannel)
		return ok && c1.InFlight >= 100
	})
	w1.proc.Kill()
	killed := time.Now()
	exact := r.watchExact(killed)
	var c2 chanStats
	testenv.WaitFor(t, stepTimeout, "nsqd to time out and redeliver the dead worker's readings", func() bool {
		var ok bool
		c2, ok = channelStats(n, pipeline.ReadingsTopic, pipeline.WorkersChannel)
		return ok && c2.Timeouts >= c0.Timeouts+uint64(c1.InFlight)/2 && c2.InFlight < c1.InFlight/2
	})
	redelivered := time.Since(killed)
	res := result{timeToExact: exact.wait()}
	consumed := metric(t, w2.at, "svckit_messages_consumed_total") - consumed0
	c3, _ := channelStats(n, pipeline.ReadingsTopic, pipeline.WorkersChannel)
	r.finish(res, fmt.Sprintf("worker-1 SIGSTOPped until the channel had %d readings in flight, then SIGKILLed; nsqd timed out %d of them (by %s after the kill) and redelivered them to worker-2, which handled %.0f readings from the kill on",
		c1.InFlight, c3.Timeouts-c0.Timeouts, redelivered.Round(10*time.Millisecond), consumed))
}

// Case 8: the app is SIGKILLed and started again on the same data dir. It
// restores state and applied set from its checkpoint (saved together every
// second), and replays from the sensor what it missed: what it had applied
// after the last checkpoint, and what was published while its ephemeral
// channel did not exist.
func TestAppKilled(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	a0 := r.appStream().Applied
	r.app.proc.Kill()
	killed := time.Now()
	cp := pipetest.CheckpointApplied(t, r.app.dataDir, r.stream)
	r.app.restart()
	back := time.Now()
	exact := r.watchExact(back)
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("app SIGKILLed having applied >= %d; its checkpoint held %d; passing again %s later",
		a0, cp, back.Sub(killed).Round(10*time.Millisecond)))
}

// Case 9: the app is away for 30 s (SIGTERM, 30 s, start again). Its
// ephemeral channel disappears with it, so nothing published meanwhile waits
// for it in NSQ: it all comes back by replay from the sensor.
func TestAppAway30s(t *testing.T) {
	t.Parallel()
	const away = 30 * time.Second // the "the app away for 30 s": kept in the default suite
	r := newRig(t, rigOptions{})
	n := r.nsqds[0]
	r.app.stop()
	stopped := time.Now()
	l0 := r.lastSeq()
	testenv.WaitFor(t, stepTimeout, "the app's ephemeral channel to disappear from nsqd", func() bool {
		_, ok := channelStats(n, pipeline.ResultsTopic, "app-*")
		return !ok
	})
	hold(time.Until(stopped.Add(away))) // the app stays away
	l1 := r.lastSeq()
	r.app.restart()
	back := time.Now()
	exact := r.watchExact(back)
	res := result{timeToExact: exact.wait()}
	replayed := metric(t, r.appAddr(), "svckit_replay_received_messages_total")
	if missed := l1 - l0; replayed < float64(missed) {
		t.Fatalf("the app received %.0f readings by replay; the %d published while it was away can only have come that way", replayed, missed)
	}
	r.finish(res, fmt.Sprintf("app away %s (SIGTERM, exit 0); %d readings published meanwhile",
		back.Sub(stopped).Round(100*time.Millisecond), l1-l0))
}
