package faulttest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/svckit/testenv"
)

// lastLine is the last line a process wrote that is not testenv's own.
func lastLine(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.HasPrefix(lines[i], "=== testenv") {
			return lines[i]
		}
	}
	return ""
}

// refused waits for s to exit and checks it exited 2 with a last line
// containing every want.
func refused(t *testing.T, s *svc, want ...string) string {
	t.Helper()
	testenv.WaitFor(t, stepTimeout, s.id+" to refuse to start", func() bool { return !s.proc.Running() })
	line := lastLine(s.proc.Log())
	if code := s.proc.ExitCode(); code != 2 {
		t.Fatalf("%s exited %d, want 2 (a mistake in how it was started):\n%s", s.id, code, tail(s.proc.Log()))
	}
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Fatalf("%s's refusal %q does not name %q", s.id, line, w)
		}
	}
	return line
}

// Case 17: a second sensor started by mistake with the same stream id.
// Another instance (its own data directory) is refused while the first
// holds the stream, with one line naming the stream and the holder; one
// given the first's data directory is refused by the directory's lock.
// The first keeps publishing alone: the app ends exact, which it would
// not if two owners had assigned the same sequence numbers.
func TestSecondOwnerRefused(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	second := r.newSvc("sensor", "sensor-2", "--stream-id="+r.stream, "--rate=200")
	second.start()
	line := refused(t, second, r.stream, r.sensor.id)
	same := r.newSvc("sensor", "sensor-3", "--stream-id="+r.stream, "--rate=200")
	same.dataDir = r.sensor.dataDir
	same.start()
	sameLine := refused(t, same, "in use by another process")
	r.waitApplied(r.appStream().Applied + rate)
	res := result{}
	r.finish(res, fmt.Sprintf("a second owner was refused: %q; one with the holder's data directory: %q", line, sameLine))
}

// Case 18: the holder is SIGKILLed. Another instance with its own data
// directory is refused, both while the dead holder's session lives and
// after it expired (its data directory does not hold the stream's log:
// its sequence would start again at 1). The holder, restarted with its
// data directory, takes the stream back at once.
func TestOwnerKilledOnlyItsDataTakesOver(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	r.sensor.proc.Kill()
	other := r.newSvc("sensor", "sensor-2", "--stream-id="+r.stream, "--rate=200")
	other.start()
	whileAlive := refused(t, other, r.stream, r.sensor.id)
	// The killed holder's session expires within twice its TTL (10s).
	testenv.WaitFor(t, stepTimeout, "the killed holder's session to expire", func() bool {
		sessions, _, err := r.consul.Client.Session().List(nil)
		return err == nil && len(sessions) == 0
	})
	other.start()
	afterExpiry := refused(t, other, r.stream, "data directory")
	restarted := time.Now()
	addr := r.sensor.restart()
	l0, err := pipetest.SensorStreamOf(addr, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, stepTimeout, "the restarted holder to publish", func() bool {
		st, err := pipetest.SensorStreamOf(addr, r.stream)
		return err == nil && st.LastSeq > l0.LastSeq
	})
	exact := r.watchExact(time.Now())
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("another instance refused while the dead holder's session lived (%q) and after it expired (%q); the holder took its stream back and published %s after its restart",
		whileAlive, afterExpiry, time.Since(restarted).Round(10*time.Millisecond)))
}

// Case 19: the holder is cut off from Consul under load (its agent
// connection goes through a proxy the test cuts; Consul itself runs on and
// expires the holder's session). The holder stops assigning sequence
// numbers before its session can expire, takes the stream again once
// Consul is reachable, and continues the sequence: the app ends exact
// with the sensor's fold, so no number was used twice.
func TestOwnerCutOffFromConsul(t *testing.T) {
	t.Parallel()
	cutFor := holdFor(30*time.Second, 60*time.Second)
	var proxy *testenv.Proxy
	r := newRig(t, rigOptions{sensorConsul: func(c *testenv.Consul) string {
		proxy = testenv.StartProxy(t, c.HTTPAddr)
		return proxy.Addr
	}})
	l0 := r.lastSeq()
	proxy.Cut()
	cut := time.Now()
	// Within the session's TTL (10s) the sensor must stop; Consul expires
	// the session no sooner than that.
	var stoppedAt uint64
	testenv.WaitFor(t, stepTimeout, "the cut-off sensor to stop assigning sequence numbers", func() bool {
		a := r.sensorLast()
		hold(time.Second) // a second with the fault in place: did it move?
		b := r.sensorLast()
		stoppedAt = b
		return a == b
	})
	stopped := time.Since(cut)
	hold(time.Until(cut.Add(cutFor))) // the cut lasts
	if last := r.sensorLast(); last != stoppedAt {
		t.Fatalf("the sensor assigned sequence numbers %d..%d while cut off from Consul", stoppedAt+1, last)
	}
	proxy.Heal()
	healed := time.Now()
	testenv.WaitFor(t, stepTimeout, "the sensor to hold its stream again and go on", func() bool { return r.sensorLast() > stoppedAt })
	resumed := time.Since(healed)
	exact := r.watchExact(time.Now())
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("cut off from Consul for %s at last_seq >= %d: stopped at %d within %s of the cut, publishing again %s after the heal",
		cutFor, l0, stoppedAt, stopped.Round(100*time.Millisecond), resumed.Round(10*time.Millisecond)))
}

// sensorLast is the sensor's last_seq at the address it was last found at
// (Consul may be out of its reach).
func (r *rig) sensorLast() uint64 {
	r.t.Helper()
	var last uint64
	testenv.WaitFor(r.t, stepTimeout, "the sensor's /streams", func() bool {
		s, err := pipetest.SensorStreamOf(r.sensor.at, r.stream)
		last = s.LastSeq
		return err == nil
	})
	return last
}
