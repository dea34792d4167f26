package faulttest

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/testenv"
)

// Case 20: hostile input. One well-formed result for the live stream with
// sequence 10^12, published through nsqd's own HTTP /pub, where anyone who
// reaches nsqd can publish. The app must not apply it: the owner never
// published that sequence. It is dead-lettered (the app's
// svckit_replay_never_published_total counts it, <topic>.dead receives
// it), no gap opens towards it, /streams never reports a sequence beyond
// what the owner published, and the app ends exact with the sensor's fold.
func TestForgedFarFutureSequence(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	n := r.nsqds[0]
	const forged = uint64(1_000_000_000_000)
	env := envelope.Envelope{Stream: r.stream, Seq: forged, Created: time.Now(), ContentType: pipeline.ResultType,
		Payload: pipeline.MarshalResult(pipeline.Compute(pipeline.Reading{Value: 999}, 1))}
	body, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	code, resp, err := testenv.HTTPPost("http://"+n.HTTPAddr+"/pub?topic="+pipeline.ResultsTopic, "application/octet-stream", body)
	if err != nil || code != http.StatusOK {
		t.Fatalf("nsqd /pub: %d %s %v", code, resp, err)
	}
	appAddr := r.appAddr()
	testenv.WaitFor(t, stepTimeout, "the app to refuse the forged sequence", func() bool {
		v, err := pipetest.Metric(appAddr, "svckit_replay_never_published_total")
		return err == nil && v == 1
	})
	testenv.WaitFor(t, stepTimeout, "the forged message in "+pipeline.ResultsTopic+".dead", func() bool {
		return topicMessages(n, pipeline.ResultsTopic+".dead") >= 1
	})
	// Refused for good at its first delivery: not requeued to be asked
	// about again.
	if got := metric(t, appAddr, "svckit_messages_requeued_total"); got != 0 {
		t.Fatalf("the app requeued %v messages: the forged one was retried instead of dead-lettered at once", got)
	}
	if got := metric(t, appAddr, "svckit_replay_never_published_total"); got != 1 {
		t.Fatalf("svckit_replay_never_published_total = %v, want 1", got)
	}
	st := r.appStream()
	for _, g := range st.Gaps {
		if g[1] >= forged/2 {
			t.Fatalf("the app shows a gap %v towards the forged sequence", g)
		}
	}
	res := result{}
	res = r.finish(res, fmt.Sprintf("a forged result with seq %d was refused and dead-lettered; the app's gaps stayed bounded (%v)", forged, st.Gaps))
	final, err := pipetest.AppStreamOf(r.appAddr(), r.stream)
	if err != nil {
		t.Fatal(err)
	}
	if final.Applied != res.published || final.LastContiguous != res.published {
		t.Fatalf("the app's stream %+v after the forged message, want exactly 1..%d", final, res.published)
	}
}
