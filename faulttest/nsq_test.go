package faulttest

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// consumersNotReady lists the failing /ready checks of the workers and the
// app ("all ready" if none).
func (r *rig) consumersNotReady() string {
	var out []string
	for _, s := range append([]*svc{r.app}, r.workers...) {
		rd, err := pipetest.Ready(s.at)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", s.id, err))
			continue
		}
		var bad []string
		for name, c := range rd.Checks {
			if !c.OK {
				bad = append(bad, name)
			}
		}
		sort.Strings(bad)
		if len(bad) > 0 {
			out = append(out, fmt.Sprintf("%s: %s", s.id, strings.Join(bad, ",")))
		}
	}
	if len(out) == 0 {
		return "all ready"
	}
	return strings.Join(out, "; ")
}

// Case 3: nsqlookupd is SIGKILLed. Consumers keep their nsqd connections
// (the app keeps applying); a new nsqd, started and registered in Consul
// (and configured with the lookupd) while the lookupd is down, is picked up;
// once the lookupd is back it knows both nsqds; the first nsqd is then
// stopped, so the whole pipeline runs through the new one.
func TestNSQLookupdKilled(t *testing.T) {
	t.Parallel()
	outage := holdFor(10*time.Second, 60*time.Second)
	r := newRig(t, rigOptions{})
	first := r.nsqds[0]

	r.lookupd.Kill()
	killed := time.Now()
	a0 := r.appStream().Applied
	// The lookupd stays away; consumers must not notice.
	end := killed.Add(outage)
	hold(time.Until(killed.Add(outage / 2))) // the first half; the second is checked
	ends := r.appEnds()
	fl := ends.flowsDuring(t, "nsqlookupd is down", ends.seqNow(t), end)
	hold(time.Until(end)) // the rest
	a1 := r.appStream().Applied
	ready := r.consumersNotReady()
	t.Logf("nsqlookupd down %s: the app applied %d readings meanwhile, kept flowing (%v); consumers: %s", outage, a1-a0, fl, ready)

	// A new nsqd while the lookupd is still down.
	second := r.addNSQD()
	r.observe(second)
	added := time.Now()
	testenv.WaitFor(t, stepTimeout, "the workers and the app to connect to the new nsqd", func() bool {
		w, ok1 := channelStats(second, pipeline.ReadingsTopic, pipeline.WorkersChannel)
		a, ok2 := channelStats(second, pipeline.ResultsTopic, "app-*")
		return ok1 && ok2 && w.Clients == 2 && a.Clients == 1
	})
	pickedUp := time.Since(added)
	t.Logf("new nsqd %s: both workers and the app connected %s after its registration in consul, with nsqlookupd still down",
		second.TCPAddr, pickedUp.Round(10*time.Millisecond))

	r.lookupd.Start(t)
	back := time.Now()
	testenv.WaitFor(t, stepTimeout, "the returned nsqlookupd to know both nsqds", func() bool {
		ps, err := r.lookupd.Producers()
		return err == nil && slices.Contains(ps, first.TCPAddr) && slices.Contains(ps, second.TCPAddr)
	})
	known := time.Since(back)
	t.Logf("nsqlookupd back after %s down; both nsqds registered with it %s after its return", back.Sub(killed).Round(10*time.Millisecond), known.Round(10*time.Millisecond))

	// Move everything to the new nsqd.
	if err := first.Stop(); err != nil {
		t.Fatalf("stopping the first nsqd: %v", err)
	}
	moved := time.Now()
	exact := r.watchExact(moved)
	base := topicMessages(second, pipeline.ReadingsTopic)
	testenv.WaitFor(t, stepTimeout, "the sensor to publish to the new nsqd", func() bool {
		return topicMessages(second, pipeline.ReadingsTopic) >= base+rate
	})
	t.Logf("first nsqd stopped; the sensor published %d readings to the new one within %s", rate, time.Since(moved).Round(10*time.Millisecond))
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("lookupd down %s, app +%d meanwhile (%s; kept flowing: %v); new nsqd picked up by all consumers %s after its registration (lookupd still down); lookupd knew both nsqds %s after its return; first nsqd then stopped",
		back.Sub(killed).Round(time.Second), a1-a0, ready, fl, pickedUp.Round(10*time.Millisecond), known.Round(10*time.Millisecond)))
}

// Case 4: nsqd is SIGKILLed while readings wait in its memory queue (the
// workers were stopped first). Those readings are gone with it; nsqd comes
// back on the same ports and data dir, the workers start again, and the app
// recovers the lost readings from the sensor by replay.
func TestNSQDKilledWithFullMemoryQueue(t *testing.T) {
	t.Parallel()
	const pile = 1500 // readings waiting in memory when nsqd dies
	r := newRig(t, rigOptions{})
	n := r.nsqds[0]

	for _, w := range r.workers {
		w.stop()
	}
	var c chanStats
	testenv.WaitFor(t, stepTimeout, fmt.Sprintf("%d readings to pile up in channel %s", pile, pipeline.WorkersChannel), func() bool {
		var ok bool
		c, ok = channelStats(n, pipeline.ReadingsTopic, pipeline.WorkersChannel)
		return ok && c.Depth >= pile
	})
	if c.BackendDepth != 0 {
		t.Fatalf("channel %s: %d of %d readings on disk; want all in memory", pipeline.WorkersChannel, c.BackendDepth, c.Depth)
	}
	applied := r.appStream().Applied
	n.Kill()
	killed := time.Now()
	n.Start(t)
	back := time.Now()
	r.observe(n)
	for _, w := range r.workers {
		w.restart()
	}
	exact := r.watchExact(back)
	res := result{timeToExact: exact.wait()}
	replayed := metric(t, r.appAddr(), "svckit_replay_received_messages_total")
	if replayed < float64(c.Depth) {
		t.Fatalf("the app received %.0f readings by replay; at least the %d lost with nsqd's memory queue must have come that way", replayed, c.Depth)
	}
	r.finish(res, fmt.Sprintf("workers stopped, %d readings in nsqd's memory (0 on disk, app at %d) lost by SIGKILL; nsqd back after %s; workers restarted",
		c.Depth, applied, back.Sub(killed).Round(10*time.Millisecond)))
}

// Case 5: one of two nsqds is stopped (SIGTERM) and stays down. The sensor's
// producer moves to the other nsqd (found in Consul) without losing or
// stalling; whatever the stopped nsqd still held (flushed to its disk) is
// recovered by the app from the sensor's retained log.
func TestNSQDStoppedWithTwoNSQDs(t *testing.T) {
	t.Parallel()
	outage := holdFor(10*time.Second, 60*time.Second)
	r := newRig(t, rigOptions{nsqds: 2})

	// The nsqd the sensor publishes to is the one whose readings grow.
	var from, to *testenv.NSQD
	b0 := []uint64{topicMessages(r.nsqds[0], pipeline.ReadingsTopic), topicMessages(r.nsqds[1], pipeline.ReadingsTopic)}
	testenv.WaitFor(t, stepTimeout, "the sensor's nsqd", func() bool {
		for i, n := range r.nsqds {
			if topicMessages(n, pipeline.ReadingsTopic) >= b0[i]+rate/2 {
				from, to = n, r.nsqds[1-i]
				return true
			}
		}
		return false
	})
	l0 := r.lastSeq()
	a0 := r.appStream().Applied
	base := topicMessages(to, pipeline.ReadingsTopic)
	if err := from.Stop(); err != nil {
		t.Fatalf("stopping nsqd %s: %v", from.TCPAddr, err)
	}
	stopped := time.Now()
	exact := r.watchExact(stopped)
	testenv.WaitFor(t, stepTimeout, "the sensor to publish to the other nsqd", func() bool {
		return topicMessages(to, pipeline.ReadingsTopic) > base
	})
	movedAfter := time.Since(stopped)
	// The first nsqd stays down; the pipeline must not stall (readings the
	// stopped nsqd kept, if any, the app replays from the sensor).
	end := time.Now().Add(outage)
	hold(outage / 2) // the first half; the second is checked
	ends := r.appEnds()
	fl := ends.flowsDuring(t, "the sensor's nsqd is stopped", ends.seqNow(t), end)
	hold(time.Until(end)) // the rest
	l1 := r.lastSeq()
	a1 := r.appStream().Applied
	held := time.Since(stopped)
	sensorAddr := r.sensor.addr()
	errs := metric(t, sensorAddr, "svckit_publish_errors_total")
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("the sensor's nsqd stopped and kept down; its first publish to the other nsqd %s later; in %s the sensor published %d and the app applied %d, kept flowing (%v); sensor publish errors %.0f",
		movedAfter.Round(10*time.Millisecond), held.Round(time.Second), l1-l0, a1-a0, fl, errs))
}
