package faulttest

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// splitTopic is where the splitter (examples/splitter) publishes.
const splitTopic = "split-results"

// splitTotals is the app's state behind the splitter, from the state the
// workers' results add up to: results of readings of 0 are filtered out
// (a marker each), every other result is split into two parts, the first
// with its value and the second with value 0, whose results add up to the
// original's.
func splitTotals(in pipeline.Totals) pipeline.Totals {
	kept := in.Count - in.Zeros
	return pipeline.Totals{Count: 2 * kept, Sum: in.Sum, SumResults: in.SumResults, Zeros: kept}
}

// Case 21: replay through every stage. A four-stage pipeline, sensor →
// workers (factor 3) → splitter (a stage that filters some inputs out and
// splits the others in two, examples/splitter) → app, recovers exactly
// after each of: the app away 30 s; nsqd SIGKILLed with messages in flight
// on every hop (one nsqd carries all three topics); a splitter SIGKILLed;
// and the sensor's retention trimmed past what the app has, so that the
// app's recovery goes through the snapshot, mapped by every stage on the
// way. The app asks only its direct upstream (the splitters), which relay
// to the workers, which relay to the sensor: it contains no stage's logic.
func TestReplayThroughEveryStage(t *testing.T) {
	t.Parallel()
	away := holdFor(30*time.Second, 60*time.Second)
	observeSplit := func(t *testing.T, n *testenv.NSQD) {
		// The app's ephemeral channel must really miss what is published
		// while it is away: another channel keeps the topic's messages.
		for _, p := range []string{"/topic/create?topic=" + splitTopic, "/channel/create?topic=" + splitTopic + "&channel=" + observer} {
			code, body, err := testenv.HTTPPost("http://"+n.HTTPAddr+p, "text/plain", nil)
			if err != nil || code != http.StatusOK {
				t.Fatalf("nsqd %s POST %s: %d %s %v", n.HTTPAddr, p, code, body, err)
			}
		}
	}
	r := newRig(t, rigOptions{
		sensorArgs:  []string{"--max-value=10"}, // readings of 0 are common: the splitter filters them
		workerArgs:  []string{"--factor=3"},
		appArgs:     []string{"--topic=" + splitTopic, "--upstream=splitter"},
		beforeStart: observeSplit,
		middle: func(r *rig) {
			for _, id := range []string{"splitter-1", "splitter-2"} {
				r.middle = append(r.middle, r.newSvc("splitter", id, "--upstream=worker"))
			}
			r.want = func(a pipeline.Aggregate) pipeline.Totals { return splitTotals(pipeline.TotalsOf(a, 3)) }
		},
	})
	var notes []string
	exactAfter := func(what string) {
		t.Helper()
		took := r.watchExact(time.Now()).wait()
		notes = append(notes, fmt.Sprintf("%s: exact %s later", what, took.Round(10*time.Millisecond)))
	}

	// 1. The app away.
	r.app.stop()
	hold(away)
	r.app.start()
	r.app.addr()
	exactAfter(fmt.Sprintf("app away %s", away))
	replayed := metric(t, r.app.at, "svckit_replay_received_messages_total")
	if replayed == 0 {
		t.Fatal("the app caught up after its absence without asking the splitters for anything")
	}

	// 2. nsqd SIGKILLed: its memory queues of readings, results and
	// split results go with it.
	n := r.nsqds[0]
	r.waitApplied(r.appStream().Applied + rate)
	n.Kill()
	n.Start(t)
	exactAfter("nsqd SIGKILLed")

	// 3. A middle stage SIGKILLed with inputs in flight.
	r.waitApplied(r.appStream().Applied + rate)
	r.middle[0].proc.Kill()
	r.middle[0].start()
	r.middle[0].addr()
	exactAfter("splitter-1 SIGKILLed")

	// 4. The sensor keeps only the last 100 readings (4 KiB segments), and
	// the app comes back after it trimmed past what the app has: only a
	// snapshot, taken through both stages, can bring it back.
	r.sensor.stop()
	r.sensor.extra = append(r.sensor.extra, "--log-segment-bytes=4096", "--retain-messages=100")
	r.sensor.start()
	r.sensor.addr()
	r.app.stop()
	has := pipetest.CheckpointApplied(t, r.app.dataDir, r.stream)
	testenv.WaitFor(t, stepTimeout, "the sensor to trim past what the app has", func() bool {
		st, err := pipetest.SensorStreamOf(r.sensor.at, r.stream)
		return err == nil && st.RetainedFirst > has+1
	})
	r.app.start()
	r.app.addr()
	exactAfter("sensor trimmed past the app")
	if got := metric(t, r.app.at, "svckit_snapshot_recoveries_total"); got < 1 {
		t.Fatal("the app recovered past the sensor's retention without a snapshot")
	}
	if got := metric(t, r.app.at, "svckit_replay_snapshot_unavailable"); got != 0 {
		t.Fatalf("the app reports a stream needing an unavailable snapshot (%v)", got)
	}
	res := result{}
	r.finish(res, fmt.Sprintf("sensor → workers (factor 3) → 2 splitters → app: %v", notes))
	if got := topicMessages(r.nsqds[0], splitTopic+".dead"); got != 0 {
		t.Fatalf("%d dead letters in %s.dead: the app refused what the splitters published (markers?)", got, splitTopic)
	}
}
