package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/svckit/svckit/internal/jaegertest"
	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/svckit/testenv"
)

// TestTracingFollowsAReading: with OTEL_EXPORTER_OTLP_ENDPOINT set (the
// sensor exporting over gRPC, the worker and the app over HTTP), a real
// Jaeger receives, for one reading, one trace: the sensor's send (or the
// create span of its batch) at the root, the worker's process as its child
// and link, the worker's send of the result under that, and the app's
// process under the worker's send, in that order, with the conventions'
// attributes. A reading the app missed while it was down and recovered by
// replay (relayed by the worker) shows the app's process in the reading's
// original trace, marked as relayed.
func TestTracingFollowsAReading(t *testing.T) {
	j := jaegertest.Start(t)
	e := newEnv(t)
	otel := func(protocol string) []string {
		return []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPEndpoint(protocol), "OTEL_EXPORTER_OTLP_PROTOCOL=" + protocol,
			"OTEL_BSP_SCHEDULE_DELAY=100"}
	}
	e.extraEnv = otel("grpc")
	sensor := e.sensor("sensor-1", "s1", "--rate", "50", "--count", "100")
	e.extraEnv = otel("http/protobuf")
	e.worker("worker-1")
	app := e.app("app-1")
	// A second app, not traced, keeps a channel on "results" while app-1
	// is down: a topic with no channel would hold app-1's messages for its
	// return, and nothing would be replayed.
	e.extraEnv = nil
	e.app("app-2").Addr()
	appAddr := app.Addr()
	pipetest.WaitAppExactAt(t, appAddr, "s1", 100)

	live := waitReadingTrace(t, j, "s1/10", func(tr jaegertest.Trace) bool { return len(tr.Spans) >= 4 })
	checkReadingTrace(t, live, "s1/10", "live")

	// App-1 misses what is published while it is down; its ephemeral
	// channel keeps nothing, so it comes back by replay through the worker.
	app.Stop()
	sensor.Stop()
	e.extraEnv = otel("grpc")
	sensor = e.sensor("sensor-1", "s1", "--rate", "50", "--count", "50") // --count counts this run's
	waitSensorLast(t, sensor.Addr(), "s1", 150)
	appAddr = app.Restart()
	pipetest.WaitAppExactAt(t, appAddr, "s1", 150)
	id := "s1/140"
	replayed := waitReadingTrace(t, j, id, func(tr jaegertest.Trace) bool {
		_, ok := spanOf(tr, "app", "process results", "relayed")
		return ok
	})
	checkReadingTrace(t, replayed, id, "relayed")
}

// waitReadingTrace polls Jaeger for the trace of the reading with the
// message id until done says it is complete (the services export on their
// own schedules).
func waitReadingTrace(t *testing.T, j *jaegertest.Jaeger, id string, done func(jaegertest.Trace) bool) jaegertest.Trace {
	t.Helper()
	var tr jaegertest.Trace
	var last error
	defer func() {
		if t.Failed() {
			t.Logf("the last trace of %s found, %s:\n%s", id, tr.TraceID, describe(tr))
		}
	}()
	testenv.WaitFor(t, stepTimeout, "jaeger: the trace of "+id, func() bool {
		ts, err := j.Find("sensor", map[string]string{"messaging.message.id": id})
		if err != nil || len(ts) == 0 {
			last = err
			return false
		}
		if tr, err = j.Trace(ts[0].TraceID); err != nil {
			last = err
			return false
		}
		return done(tr)
	})
	if last != nil {
		t.Logf("last query error: %v", last)
	}
	return tr
}

// spanOf finds the span named op from service in tr (with svckit.delivery
// how, for process spans).
func spanOf(tr jaegertest.Trace, service, op, how string) (jaegertest.Span, bool) {
	for _, s := range tr.Spans {
		if tr.Service(s) == service && s.OperationName == op && (how == "" || s.Tag("svckit.delivery") == how) {
			return s, true
		}
	}
	return jaegertest.Span{}, false
}

// checkReadingTrace checks the spans of one reading's trace: the sensor's
// creation context at the root, then the worker's process and send, then
// the app's process (delivered how), each a child of the one before, the
// process spans also linked to their message's creation context.
func checkReadingTrace(t *testing.T, tr jaegertest.Trace, id, how string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("trace %s:\n%s", tr.TraceID, describe(tr))
		}
	}()
	// The sensor's creation context: its send span (one reading
	// published alone) or the create span of a reading in a batch.
	root, ok := spanOf(tr, "sensor", "send readings", "")
	if !ok || root.Tag("messaging.message.id") != id {
		if root, ok = spanOf(tr, "sensor", "create readings", ""); !ok {
			t.Fatalf("no send or create span of the sensor's for %s", id)
		}
	}
	if root.Tag("messaging.message.id") != id || root.Tag("messaging.system") != "nsq" ||
		root.Tag("messaging.destination.name") != "readings" || root.Tag("span.kind") != "producer" {
		t.Errorf("sensor's span %s: tags %v", root.OperationName, root.Tags)
	}
	if _, has := root.Parent(); has {
		t.Errorf("the sensor's %s has a parent", root.OperationName)
	}
	work, ok := spanOf(tr, "worker", "process readings", "live")
	if !ok {
		t.Fatal("no process span of the worker's")
	}
	checkProcess(t, work, root, id, "readings", "workers")
	send, ok := spanOf(tr, "worker", "send results", "")
	if !ok {
		t.Fatal("no send span of the worker's")
	}
	if p, _ := send.Parent(); p.SpanID != work.SpanID || send.Tag("span.kind") != "producer" ||
		send.Tag("messaging.destination.name") != "results" {
		t.Errorf("the worker's send: parent %s (want %s), tags %v", p.SpanID, work.SpanID, send.Tags)
	}
	appProc, ok := spanOf(tr, "app", "process results", how)
	if !ok {
		t.Fatalf("no %s process span of the app's", how)
	}
	if how == "live" {
		checkProcess(t, appProc, send, id, "results", "app")
		if !(root.StartTime <= work.StartTime && work.StartTime <= send.StartTime && send.StartTime <= appProc.StartTime) {
			t.Errorf("spans out of order: sensor %d, worker process %d, worker send %d, app process %d",
				root.StartTime, work.StartTime, send.StartTime, appProc.StartTime)
		}
		return
	}
	// Relayed by the worker, the reading keeps its original creation
	// context: the replayed process is the sensor's span's child.
	checkProcess(t, appProc, root, id, "results", "app")
	if appProc.StartTime < send.StartTime {
		t.Errorf("the replay (%d) starts before the live send it recovers (%d)", appProc.StartTime, send.StartTime)
	}
}

// checkProcess checks a process span: a child of its message's creation
// context and linked to it. Jaeger shows the pair as one FOLLOWS_FROM
// reference (its OTLP translation adds no CHILD_OF for a parent that is
// also a link); the span being in the creation context's trace is what
// shows it is the child (a span that only linked would start a trace).
func checkProcess(t *testing.T, s, created jaegertest.Span, id, topic, group string) {
	t.Helper()
	if s.TraceID != created.TraceID || !s.LinksTo("FOLLOWS_FROM", created.SpanID) {
		t.Errorf("%s: trace %s, references %v; want a child of and a link to %s (%s) in trace %s",
			s.OperationName, s.TraceID, s.References, created.SpanID, created.OperationName, created.TraceID)
	}
	if s.Tag("span.kind") != "consumer" || s.Tag("messaging.message.id") != id || s.Tag("messaging.destination.name") != topic ||
		!strings.HasPrefix(s.Tag("messaging.consumer.group.name"), group) || s.Tag("messaging.operation.type") != "process" {
		t.Errorf("%s: tags %v", s.OperationName, s.Tags)
	}
}

func describe(tr jaegertest.Trace) string {
	spans := append([]jaegertest.Span(nil), tr.Spans...)
	sort.Slice(spans, func(a, b int) bool { return spans[a].StartTime < spans[b].StartTime })
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %d %s %s %s refs=%v delivery=%s id=%s\n", s.StartTime, tr.Service(s), s.SpanID, s.OperationName,
			s.References, s.Tag("svckit.delivery"), s.Tag("messaging.message.id"))
	}
	return b.String()
}
