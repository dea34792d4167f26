package e2e

import (
	"strings"
	"testing"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// A worker stopped with SIGTERM mid-stream finishes what it holds, exits 0
// and leaves consul; the app (durable channel) still gets every reading once.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	t.Parallel()
	const n = 3000
	e := newEnv(t)
	w1 := e.worker("worker-1")
	w2 := e.worker("worker-2")
	app := e.app("app-1", "--ephemeral=false")
	w1Addr, _, appAddr := w1.Addr(), w2.Addr(), app.Addr()
	e.waitClients(pipeline.ReadingsTopic, pipeline.WorkersChannel, 2)
	e.waitClients(pipeline.ResultsTopic, pipeline.AppChannel, 1)

	sensor := e.sensor("sensor-1", "s1", "--rate", "300", "--count", "3000")
	sensorAddr := sensor.Addr()
	waitApplied(t, appAddr, "s1", 600)
	testenv.WaitFor(t, stepTimeout, "worker-1 to have consumed readings", func() bool {
		return pipetest.ReadMetric(t, w1Addr, "svckit_messages_consumed_total") > 0
	})
	if st, err := pipetest.SensorStreamOf(sensorAddr, "s1"); err != nil || st.LastSeq >= n {
		t.Fatalf("the sensor is not mid-stream any more (%+v, %v): nothing to test", st, err)
	}

	logAt := len(w1.proc.Log())
	w1.Stop() // fails the test unless it exits 0
	if code := w1.proc.ExitCode(); code != 0 {
		t.Fatalf("worker-1 exit code %d after SIGTERM", code)
	}
	if l := logSince(w1.proc, logAt); !strings.Contains(l, "deregistered") {
		t.Fatalf("worker-1 log after SIGTERM does not say it deregistered:\n%s", l)
	}
	if st, err := pipetest.SensorStreamOf(sensorAddr, "s1"); err != nil || st.LastSeq >= n {
		t.Fatalf("the sensor finished before worker-1 was down (%+v, %v): nothing was mid-stream", st, err)
	}
	testenv.WaitFor(t, stepTimeout, "worker-1 gone from consul's catalog", func() bool {
		svcs, _, err := e.st.Consul.Client.Catalog().Service("worker", "", nil)
		if err != nil || len(svcs) != 1 {
			return false
		}
		return svcs[0].ServiceID == "worker-2"
	})

	finish(t, appAddr, sensorAddr, "s1", sensorFinal(t, sensorAddr, "s1", n))
	// Nothing worker-1 held was requeued or timed out: it finished each
	// reading after its result was acknowledged, before it exited.
	st, err := e.st.NSQD.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range st.Topics {
		for _, c := range tp.Channels {
			if tp.TopicName == pipeline.ReadingsTopic && c.ChannelName == pipeline.WorkersChannel {
				if c.RequeueCount != 0 || c.TimeoutCount != 0 || c.Depth != 0 || c.InFlightCount != 0 {
					t.Errorf("readings/workers after the graceful stop: %+v", c)
				}
			}
		}
	}
	if got, want := e.topicMessages(pipeline.ResultsTopic), e.topicMessages(pipeline.ReadingsTopic); got != want {
		t.Errorf("topic results received %d messages, topic readings %d: a reading was redelivered", got, want)
	}
}
