package faulttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// "The pipeline keeps flowing while X is down" is checked on state, not
// against the clock: a count of readings over a hold depends on how loaded
// the machine is. At a point during the fault, the sensor's last_seq must be
// past a value it had earlier in the fault (it kept publishing), and the
// far end (the app; in the network cut, host A's nsqd) must then hold
// everything up to that last_seq before the fault is lifted (what was
// published got through). A case holds the first half of its fault and
// checks in the second, so that the check is about the fault well under
// way, not only its first moments.
//
// Where the fault cuts the sensor off from Consul, the earlier value is the
// one at the fault's start: the sensor assigns sequence numbers only while
// it holds its stream's claim (svckit/ownership), so it stops publishing
// within the claim's TTL (10 s) of its last renewal and goes on once Consul
// answers again. Elsewhere it is the value when the check begins: the sensor
// must still be publishing in the fault's second half.

// flowEnds reads the two ends of a flow: the sensor's last_seq, and how far
// the far end holds every reading.
type flowEnds struct {
	far     string // what reached reads, for messages
	lastSeq func() (uint64, error)
	reached func() (uint64, error)
}

// flow is what flowsDuring saw.
type flow struct {
	from, to uint64        // the sensor's last_seq earlier in the fault, and the one past it that the far end reached
	took     time.Duration // from the check's start until the far end held to
	left     time.Duration // then left of the fault
}

func (f flow) String() string {
	return fmt.Sprintf("sensor %d→%d, all of it through %s into the check, %s before the fault's end",
		f.from, f.to, f.took.Round(10*time.Millisecond), f.left.Round(100*time.Millisecond))
}

// seqNow returns the sensor's last_seq, trying again for a while if it does
// not answer.
func (e flowEnds) seqNow(t *testing.T) uint64 {
	t.Helper()
	var s uint64
	var err error
	if !testenv.Eventually(stepTimeout, func() bool {
		s, err = e.lastSeq()
		return err == nil
	}) {
		t.Fatalf("the sensor's last_seq: %v", err)
	}
	return s
}

// flowsDuring checks, while a fault is in place until lift, that readings
// flow through it: the sensor's last_seq is (or gets) past from, a value it
// had earlier in the fault, and the far end then gets to that last_seq. It
// fails the test, saying which did not happen, if that is not so by lift;
// the caller lifts the fault only after it returns, so what it saw happened
// during the fault. fault says what the fault is ("consul is stopped").
func (e flowEnds) flowsDuring(t *testing.T, fault string, from uint64, lift time.Time) flow {
	t.Helper()
	start := time.Now()
	f := flow{from: from}
	var err error
	if !testenv.Eventually(time.Until(lift), func() bool {
		var s uint64
		s, err = e.lastSeq()
		if err == nil && s > from {
			f.to = s
			return true
		}
		return false
	}) {
		t.Fatalf("the pipeline did not keep flowing while %s: the sensor's last_seq did not move past %d, by the fault's end %s after the check began (last error: %v)",
			fault, from, time.Since(start).Round(100*time.Millisecond), err)
	}
	var got uint64
	if !testenv.Eventually(time.Until(lift), func() bool {
		got, err = e.reached()
		return err == nil && got >= f.to
	}) {
		t.Fatalf("the pipeline did not keep flowing while %s: %s got to %d, not to %d (the sensor's last_seq during the fault), by the fault's end %s after the check began (last error: %v)",
			fault, e.far, got, f.to, time.Since(start).Round(100*time.Millisecond), err)
	}
	f.took, f.left = time.Since(start), time.Until(lift)
	t.Logf("while %s the pipeline kept flowing: %v", fault, f)
	return f
}

// appEnds are the sensor and the app: the app's last_contiguous (it holds
// 1..n without a gap) must reach the sensor's last_seq. Both are asked at
// the addresses found before the fault, which need no Consul.
func (r *rig) appEnds() flowEnds {
	return flowEnds{
		far: "the app's last_contiguous",
		lastSeq: func() (uint64, error) {
			s, err := pipetest.SensorStreamOf(r.sensor.at, r.stream)
			return s.LastSeq, err
		},
		reached: func() (uint64, error) {
			a, err := pipetest.AppStreamOf(r.app.at, r.stream)
			return a.LastContiguous, err
		},
	}
}

// getInA GETs url on host A, from inside its network namespace (with
// `svckit probe`): the test runs on host B, which a cut separates from A.
func (h *twoHosts) getInA(svckit, url string) ([]byte, error) {
	cmd := exec.Command(h.ip, append(h.inA()[1:], svckit, "probe", "--print", "--timeout=2s", url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("GET %s on host A: %v: %s", url, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// localEnds are, on host A, the sensor and its local nsqd: nsqd's count of
// readings taken must reach the sensor's last_seq. The sensor publishes
// seq 1, 2, … to that nsqd and to no other (a reading sent twice would be
// counted twice: this shows the flow; exactness is finish's job).
func (h *twoHosts) localEnds(t *testing.T, sensorAddr, stream string, nsqd *testenv.NSQD) flowEnds {
	svckit := testenv.Bin(t, "svckit")
	return flowEnds{
		far: "the readings host A's nsqd took",
		lastSeq: func() (uint64, error) {
			b, err := h.getInA(svckit, "http://"+sensorAddr+"/streams")
			if err != nil {
				return 0, err
			}
			var ss []pipetest.SensorStream
			if err := json.Unmarshal(b, &ss); err != nil {
				return 0, fmt.Errorf("the sensor's /streams: %w", err)
			}
			for _, s := range ss {
				if s.Stream == stream {
					return s.LastSeq, nil
				}
			}
			return 0, fmt.Errorf("the sensor's /streams lacks %s: %s", stream, b)
		},
		reached: func() (uint64, error) {
			b, err := h.getInA(svckit, "http://"+nsqd.HTTPAddr+"/stats?format=json&topic="+pipeline.ReadingsTopic)
			if err != nil {
				return 0, err
			}
			var s testenv.NSQDStats
			if err := json.Unmarshal(b, &s); err != nil {
				return 0, fmt.Errorf("nsqd's /stats: %w", err)
			}
			_, n, _ := s.TopicDepth(pipeline.ReadingsTopic)
			return n, nil
		},
	}
}
