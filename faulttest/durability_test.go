package faulttest

import (
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/crashfuse"
	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/internal/skip"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/durable/crashfs"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// mountCrashFS mounts a filesystem that keeps only what was fsynced when
// its power is cut (crashfs over FUSE), or skips the case where FUSE is not
// available (fails in CI, where it must run: skip.CannotRun).
func mountCrashFS(t *testing.T) (*crashfuse.Server, string) {
	t.Helper()
	dir := t.TempDir()
	srv, err := crashfuse.Mount(dir, crashfs.New())
	if err != nil {
		skip.CannotRun(t, "power-loss case skipped: mounting crashfs over FUSE: %v", err)
	}
	// Registered before the services start, so it runs after testenv
	// killed them (cleanups run last-in first-out).
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return srv, dir
}

// Case 13: power loss, three times, mid-stream. The sensor and the app keep
// their data directories on a filesystem that, when the power is cut,
// keeps only what was fsynced (file data) and what a directory fsync made
// durable (creates, renames, removes). At each cut the whole "machine"
// goes at once: the sensor, the app and nsqd are SIGKILLed (nsqd loses its
// memory queue, as a power loss would take it), then the filesystem drops
// everything unsynced, and everything starts again on what is left.
//
// What must hold: no sequence the sensor had shown (its /streams last_seq,
// which only ever counts fsynced records) is lost or given to another
// reading; the sensor opens its log without refusing (its state files are
// never ahead of the log); the app's checkpoint is consistent; and at the
// end the app holds every reading exactly once with the sensor's fold. A
// reused sequence number would show there: the app would have dropped the
// new reading as a duplicate of the old one, and its state would differ
// from the fold.
func TestPowerLoss(t *testing.T) {
	t.Parallel()
	srv, dir := mountCrashFS(t)
	r := newRig(t, rigOptions{stateDir: dir})
	n := r.nsqds[0]
	const cuts = 3
	var notes []string
	for i := range cuts {
		r.waitApplied(r.appStream().Applied + rate) // a second of load since the last cut
		shown := r.lastSeq()
		// The power goes.
		r.sensor.proc.Kill()
		r.app.proc.Kill()
		n.Kill()
		srv.PowerCut()
		cut := time.Now()
		n.Start(t)
		r.app.start()
		r.sensor.start()
		addr := r.sensor.addr()
		r.app.addr()
		st, err := pipetest.SensorStreamOf(addr, r.stream)
		if err != nil {
			t.Fatal(err)
		}
		if st.LastSeq < shown {
			t.Fatalf("cut %d: the sensor had shown sequence %d, after the power cut its log ends at %d: a published reading was lost", i+1, shown, st.LastSeq)
		}
		notes = append(notes, fmt.Sprintf("cut %d at shown %d, log after %d, passing again %s later", i+1, shown, st.LastSeq, time.Since(cut).Round(10*time.Millisecond)))
	}
	exact := r.watchExact(time.Now())
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("%d power cuts under load with the sensor's and the app's data on crashfs: %v", cuts, notes))
}

// observeReadings creates a durable channel nobody reads on topic readings,
// from the rig's start: it ends up holding every reading nsqd ever took.
const readingsObserver = "faulttest-readings"

func observeReadings(t *testing.T, n *testenv.NSQD) {
	t.Helper()
	for _, p := range []string{"/topic/create?topic=" + pipeline.ReadingsTopic, "/channel/create?topic=" + pipeline.ReadingsTopic + "&channel=" + readingsObserver} {
		code, body, err := testenv.HTTPPost("http://"+n.HTTPAddr+p, "text/plain", nil)
		if err != nil || code != http.StatusOK {
			t.Fatalf("nsqd %s POST %s: %d %s %v", n.HTTPAddr, p, code, body, err)
		}
	}
}

// checkAllThroughNSQ drains the observer channel and checks that it holds
// every reading 1..last: all of them went through NSQ, not only to the app
// through replay.
func checkAllThroughNSQ(t *testing.T, n *testenv.NSQD, stream string, last uint64) {
	t.Helper()
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 2500
	c, err := nsq.NewConsumer(pipeline.ReadingsTopic, readingsObserver, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetLogger(nil, nsq.LogLevelError)
	var mu sync.Mutex
	var seen replay.SeqSet
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		env, err := envelope.Decode(m.Body)
		if err == nil && env.Stream == stream {
			mu.Lock()
			seen.Add(env.Seq)
			mu.Unlock()
		}
		return nil
	}))
	if err := c.ConnectToNSQD(n.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Stop(); <-c.StopChan }()
	ok := testenv.Eventually(stepTimeout, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen.Contiguous() >= last
	})
	mu.Lock()
	defer mu.Unlock()
	if !ok {
		t.Fatalf("the readings went through NSQ only up to %d of %d; missing %v: the sensor did not publish from its log what it took while nsqd was away",
			seen.Contiguous(), last, seen.Gaps())
	}
}

// Case 14: nsqd is down for 20 s (SIGTERM: it saves its queues) while the
// sensor keeps taking readings. They wait in the sensor's retained log and
// go out once nsqd is back, without a restart: the workers' durable channel
// (observed by a channel of its own on the same topic) receives every
// reading through NSQ, not only the app through replay.
func TestNSQDDownSensorKeepsPublishing(t *testing.T) {
	t.Parallel()
	outage := holdFor(20*time.Second, 60*time.Second)
	r := newRig(t, rigOptions{beforeStart: observeReadings})
	n := r.nsqds[0]
	l0 := r.lastSeq()
	if err := n.Stop(); err != nil {
		t.Fatalf("stopping nsqd: %v", err)
	}
	down := time.Now()
	hold(outage) // nsqd stays down on purpose
	l1 := r.lastSeq()
	if l1 <= l0 {
		t.Fatalf("the sensor took no reading while nsqd was down (last_seq %d before, %d after)", l0, l1)
	}
	n.Start(t)
	back := time.Now()
	exact := r.watchExact(back)
	res := result{timeToExact: exact.wait()}
	res = r.finish(res, fmt.Sprintf("nsqd down %s; the sensor took %d readings meanwhile into its log", back.Sub(down).Round(time.Second), l1-l0))
	checkAllThroughNSQ(t, n, r.stream, res.published)
}

// Case 15: as case 14, but the sensor gets SIGTERM during the outage. It
// exits within its --shutdown-timeout plus the teardown budget, without
// waiting for nsqd; what nsqd never acknowledged stays in its log and goes
// out after a start with nsqd back. Every reading still goes through NSQ.
func TestNSQDDownSensorStopped(t *testing.T) {
	t.Parallel()
	const shutdown = 5 * time.Second
	r := newRig(t, rigOptions{beforeStart: observeReadings, sensorArgs: []string{fmt.Sprintf("--shutdown-timeout=%s", shutdown)}})
	n := r.nsqds[0]
	if err := n.Stop(); err != nil {
		t.Fatalf("stopping nsqd: %v", err)
	}
	l0 := r.lastSeq()
	testenv.WaitFor(t, stepTimeout, "the sensor to take readings while nsqd is down", func() bool { return r.lastSeq() > l0+rate })
	took := stopWithin(t, r.sensor, shutdown)
	n.Start(t)
	r.sensor.start()
	r.sensor.addr()
	exact := r.watchExact(time.Now())
	res := result{timeToExact: exact.wait()}
	res = r.finish(res, fmt.Sprintf("sensor SIGTERMed with nsqd down: exited %s later; started again with nsqd back", took.Round(10*time.Millisecond)))
	checkAllThroughNSQ(t, n, r.stream, res.published)
}

// stopWithin sends SIGTERM to s and fails the test unless it exits within
// its shutdown timeout plus the teardown budget (service.TeardownTimeout,
// 3s), the stop hooks' grace (service.StopHookGrace, 1s) and a second of
// slack. It returns how long it took.
func stopWithin(t *testing.T, s *svc, shutdown time.Duration) time.Duration {
	t.Helper()
	bound := shutdown + service.StopHookGrace + service.TeardownTimeout + time.Second
	start := time.Now()
	if err := syscall.Kill(s.proc.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.proc.Exited():
	case <-time.After(bound + 30*time.Second): // only to report, see below
	}
	took := time.Since(start)
	if took > bound {
		s.proc.Kill()
		t.Fatalf("%s took %s to exit after SIGTERM, more than --shutdown-timeout %s plus the teardown budget:\n%s", s.id, took.Round(10*time.Millisecond), shutdown, tail(s.proc.Log()))
	}
	return took
}

// Case 16: shutdown is bounded whatever is down. With nsqd hung (SIGSTOP:
// it accepts connections and answers nothing) every service, then with
// the Consul agent hung every service, gets SIGTERM and must exit within
// --shutdown-timeout plus the teardown budget. With nsqd hung, Consul
// answers, so each must also be gone from Consul. Afterwards everything
// starts again and the app ends exact: what was accepted was kept.
func TestShutdownBoundedWhateverIsDown(t *testing.T) {
	t.Parallel()
	const shutdown = 5 * time.Second
	flag := fmt.Sprintf("--shutdown-timeout=%s", shutdown)
	r := newRig(t, rigOptions{sensorArgs: []string{flag}, workerArgs: []string{flag}, appArgs: []string{flag}})
	var notes []string
	for _, hung := range []struct {
		name string
		proc *testenv.Process
	}{{"nsqd", r.nsqds[0].Proc}, {"consul", r.consul.Proc}} {
		pid := hung.proc.Pid()
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
		testenv.WaitFor(t, 10*time.Second, hung.name+"'s threads stopped", func() bool { return pipetest.Stopped(pid) })
		var wg sync.WaitGroup
		took := make([]time.Duration, len(r.services()))
		for i, s := range r.services() {
			wg.Add(1)
			go func() { defer wg.Done(); took[i] = stopWithin(t, s, shutdown) }()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if hung.name == "nsqd" {
			for _, s := range r.services() {
				if entries, err := testenv.Passing(r.consul, s.bin); err == nil {
					for _, e := range entries {
						if e.Service.ID == s.id {
							t.Errorf("%s is still registered in Consul after it stopped with Consul answering", s.id)
						}
					}
				}
			}
		}
		notes = append(notes, fmt.Sprintf("%s hung: exits after %v", hung.name, roundAll(took)))
		for _, s := range []*svc{r.app, r.workers[0], r.workers[1], r.sensor} {
			s.start()
		}
		for _, s := range r.services() {
			s.addr()
		}
	}
	exact := r.watchExact(time.Now())
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("SIGTERM to every service with --shutdown-timeout %s: %v", shutdown, notes))
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(10 * time.Millisecond)
	}
	return out
}

// Case 22: shutdown with the disk hung. The sensor's and the app's data
// directories are on crashfs over FUSE, and the disk stops answering
// fsyncs (writes still reach the kernel's page cache). The sensor stops
// showing new readings (it shows only what is durable), and SIGTERM to
// the sensor and the app must still end each within --shutdown-timeout
// plus the teardown budget. Then the disk answers again, both start on
// what they left, and the app ends exact: nothing accepted was lost.
func TestShutdownBoundedDiskHung(t *testing.T) {
	t.Parallel()
	const shutdown = 5 * time.Second
	flag := fmt.Sprintf("--shutdown-timeout=%s", shutdown)
	srv, dir := mountCrashFS(t)
	r := newRig(t, rigOptions{stateDir: dir, sensorArgs: []string{flag}, appArgs: []string{flag}})
	r.waitApplied(r.appStream().Applied + rate)
	srv.HangSyncs()
	t.Cleanup(srv.ResumeSyncs) // before the unmount (cleanups run last-in first-out)
	var hungAt uint64
	testenv.WaitFor(t, stepTimeout, "the sensor to stop showing readings (its fsyncs hang)", func() bool {
		a := r.sensorLast()
		hold(time.Second) // a second with the fault in place: did it move?
		hungAt = r.sensorLast()
		return a == hungAt
	})
	var wg sync.WaitGroup
	took := make([]time.Duration, 2)
	for i, s := range []*svc{r.sensor, r.app} {
		wg.Add(1)
		go func() { defer wg.Done(); took[i] = stopWithin(t, s, shutdown) }()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	srv.ResumeSyncs()
	r.app.start()
	r.sensor.start()
	r.sensor.addr()
	r.app.addr()
	if last := r.sensorLast(); last < hungAt {
		t.Fatalf("the sensor had shown %d; after its restart its log ends at %d", hungAt, last)
	}
	exact := r.watchExact(time.Now())
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("every fsync hung at the sensor's shown %d; SIGTERM with --shutdown-timeout %s: sensor exited after %s, app after %s",
		hungAt, shutdown, took[0].Round(10*time.Millisecond), took[1].Round(10*time.Millisecond)))
}
