package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/svckit/svckit/examples/internal/extest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/testenv"
)

func result(r pipeline.Result) envelope.Envelope {
	return envelope.Envelope{Stream: "s", Seq: 1, ContentType: pipeline.ResultType, Payload: pipeline.MarshalResult(r)}
}

func TestTransform(t *testing.T) {
	for _, r := range []pipeline.Result{{Value: 3, Result: 9}, {Value: 5, Result: 75}, {Value: -2, Result: 4}, {Value: 1, Result: 1}, {Value: 7, Result: -49}} {
		outs, err := Transform(context.Background(), result(r))
		if err != nil || len(outs) != 2 {
			t.Fatalf("%+v: %d outputs, %v; want 2", r, len(outs), err)
		}
		var parts [2]pipeline.Result
		for i, o := range outs {
			if o.ContentType != pipeline.ResultType {
				t.Errorf("%+v part %d: content type %q", r, i, o.ContentType)
			}
			if parts[i], err = pipeline.UnmarshalResult(o.Payload); err != nil {
				t.Fatal(err)
			}
		}
		want := [2]pipeline.Result{{Value: r.Value, Result: r.Result - r.Result/2}, {Value: 0, Result: r.Result / 2}}
		if parts != want {
			t.Errorf("%+v: parts %+v, want %+v", r, parts, want)
		}
		if parts[0].Value+parts[1].Value != r.Value || parts[0].Result+parts[1].Result != r.Result {
			t.Errorf("%+v: the parts %+v do not add up to it", r, parts)
		}
	}
	if outs, err := Transform(context.Background(), result(pipeline.Result{Value: 0, Result: 0})); err != nil || len(outs) != 0 {
		t.Errorf("a result of 0: %d outputs, %v; want none (filtered out)", len(outs), err)
	}
	var perm pubsub.PermanentError
	bad := result(pipeline.Result{Value: 1, Result: 1})
	bad.ContentType = "text/plain"
	if _, err := Transform(context.Background(), bad); !errors.As(err, &perm) {
		t.Errorf("another content type: %v; want a permanent error (pubsub.Reject)", err)
	}
	bad = result(pipeline.Result{})
	bad.Payload = bad.Payload[:3]
	if _, err := Transform(context.Background(), bad); !errors.As(err, &perm) {
		t.Errorf("a short payload: %v; want a permanent error (pubsub.Reject)", err)
	}
}

// MapSnapshot gives exactly the totals of an app that applied every part
// the splitter made of the same results, in any order.
func TestMapSnapshotMatchesTheApp(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		var upstream, app pipeline.Totals
		n := rng.IntN(200)
		type part struct {
			seq uint64
			r   pipeline.Result
		}
		var parts []part
		for seq := uint64(1); seq <= uint64(n); seq++ {
			r := pipeline.Compute(pipeline.Reading{Value: rng.Int64N(5)}, 1+rng.Int64N(7))
			upstream.Add(seq, r)
			outs, err := Transform(context.Background(), result(r))
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range outs {
				p, _ := pipeline.UnmarshalResult(o.Payload)
				parts = append(parts, part{seq, p})
			}
		}
		rng.Shuffle(len(parts), func(i, j int) { parts[i], parts[j] = parts[j], parts[i] })
		for _, p := range parts {
			app.Add(p.seq, p.r)
		}
		b, err := MapSnapshot("s", upstream.LastSeq, upstream.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		got, err := pipeline.UnmarshalTotals(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Count != app.Count || got.Sum != app.Sum || got.SumResults != app.SumResults || got.Zeros != app.Zeros {
			t.Fatalf("trial %d (%d results): mapped %+v, the app has %+v", trial, n, got, app)
		}
		if got.Last != 0 || got.LastSeq != upstream.LastSeq {
			t.Errorf("trial %d: Last %d, LastSeq %d; want 0 and the upstream's %d", trial, got.Last, got.LastSeq, upstream.LastSeq)
		}
	}
	if _, err := MapSnapshot("s", 1, []byte("not json")); err == nil {
		t.Error("MapSnapshot of garbage: no error")
	}
}

// The splitter as the third stage of sensor → worker → splitter → app: the
// app, reading split-results, ends with exactly the totals MapSnapshot
// gives of the workers' snapshot; after losing its state while the
// sensor no longer retains the stream, it recovers from a snapshot the
// splitter maps (app → splitter → worker → sensor) and is exact again.
func TestSplitterBetweenWorkerAndApp(t *testing.T) {
	const n, factor = 3000, 3
	splitter := extest.Build(t, ".")
	st := testenv.StartStack(t)
	c := st.Consul
	worker := extest.Start(t, c, "worker-1", testenv.Bin(t, "worker"), "--factor="+strconv.Itoa(factor))
	split := extest.Start(t, c, "splitter-1", splitter)
	appDir := t.TempDir()
	appArgs := []string{"--topic=split-results", "--upstream=splitter", "--summary-interval=0", "--replay-tail-interval=1s", "--replay-gap-grace=500ms"}
	app := extest.StartIn(t, c, "app-1", testenv.Bin(t, "app"), appDir, appArgs...)
	extest.Addr(t, c, worker, "worker", "worker-1")
	splitAddr := extest.Addr(t, c, split, "splitter", "splitter-1")
	appAddr := extest.Addr(t, c, app, "app", "app-1")
	// Readings in 0..3: a quarter are 0, which the splitter filters out.
	sensor := extest.Start(t, c, "sensor-1", testenv.Bin(t, "sensor"), "--stream-id=s1", "--rate=0", "--count="+strconv.Itoa(n),
		"--max-value=4", "--log-segment-bytes=4096", "--retain-messages=100")
	sensorAddr := extest.Addr(t, c, sensor, "sensor", "sensor-1")

	complete(t, appAddr, n)
	ctx := context.Background()
	seq, state, err := replay.Client{}.Snapshot(ctx, sensorAddr, "s1")
	if err != nil || seq != n {
		t.Fatalf("the sensor's snapshot: at %d, %v; want at %d", seq, err, n)
	}
	agg, err := pipeline.UnmarshalAggregate(state)
	if err != nil {
		t.Fatal(err)
	}
	if agg.Zeros == 0 || agg.Zeros == agg.Count {
		t.Fatalf("the sensor's readings: %d zeros of %d; the test needs some of each", agg.Zeros, agg.Count)
	}
	b, err := MapSnapshot("s1", n, pipeline.TotalsOf(agg, factor).Marshal())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := pipeline.UnmarshalTotals(b)
	// The splitter serves the same through its upstream.
	seq, state, err = replay.Client{}.Snapshot(ctx, splitAddr, "s1")
	if got, _ := pipeline.UnmarshalTotals(state); err != nil || seq != n || !same(got, want) {
		t.Errorf("the splitter's snapshot at %d (%v): %+v; want %+v", seq, err, got, want)
	}
	checkTotals(t, appAddr, want)
	t.Logf("%d readings (%d of 0): the app applied %d parts", n, agg.Zeros, want.Count)

	// Retention trims the sensor's log (it keeps what its saved snapshot
	// and nsqd's acknowledgements do not cover, both saved every second).
	testenv.WaitFor(t, extest.Timeout, "the sensor's retention to trim its log", func() bool {
		var ss []replay.Status
		return extest.GetJSON(sensorAddr, "/streams", &ss) == nil && len(ss) == 1 && ss[0].RetainedFirst > 1
	})
	if err := app.Stop(); err != nil {
		t.Fatalf("app SIGTERM: %v", err)
	}
	if err := os.RemoveAll(appDir); err != nil {
		t.Fatal(err)
	}
	app = extest.StartIn(t, c, "app-1", testenv.Bin(t, "app"), appDir, appArgs...)
	appAddr = extest.Addr(t, c, app, "app", "app-1")
	complete(t, appAddr, n)
	checkTotals(t, appAddr, want)
	if got := extest.Metric(t, appAddr, "svckit_snapshot_recoveries_total"); got < 1 {
		t.Errorf("svckit_snapshot_recoveries_total = %v; want the app to have recovered from a snapshot", got)
	}
}

func same(a, b pipeline.Totals) bool {
	return a.Count == b.Count && a.Sum == b.Sum && a.SumResults == b.SumResults && a.Zeros == b.Zeros
}

// complete waits until the app has every sequence of stream s1 up to n.
func complete(t *testing.T, appAddr string, n uint64) {
	t.Helper()
	testenv.WaitFor(t, extest.Timeout, "the app to complete s1", func() bool {
		var ss []replay.StreamStatus
		return extest.GetJSON(appAddr, "/streams", &ss) == nil && len(ss) == 1 && ss[0].LastContiguous == n && len(ss[0].Gaps) == 0
	})
}

func checkTotals(t *testing.T, appAddr string, want pipeline.Totals) {
	t.Helper()
	var state map[string]pipeline.Totals
	if err := extest.GetJSON(appAddr, "/state", &state); err != nil {
		t.Fatal(err)
	}
	if got := state["s1"]; !same(got, want) {
		t.Errorf("the app's totals of s1: %+v; want %+v", got, want)
	}
}
