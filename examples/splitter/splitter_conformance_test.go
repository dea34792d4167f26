package main

import (
	"encoding/json"
	"testing"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/pipeline/app"
	"github.com/svckit/svckit/pipeline/worker"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
)

// totals decodes an app's exported pipeline.Totals; a failure is a
// different state.
func totals(b []byte) (pipeline.Totals, bool) {
	var t pipeline.Totals
	return t, json.Unmarshal(b, &t) == nil
}

// The splitter in the reference pipeline (svckit/replay/replaytest): the
// sensor's fold, the worker (its transform and snapshot mapper), the
// splitter (Transform and MapSnapshot), and the app's state. Readings of 0
// make markers (the splitter filters their results out); the others make
// two parts.
//
// What MapSnapshot documents is what is compared: an app recovered through
// the splitter's snapshot holds the Count, Sum, SumResults and Zeros of
// one that applied every part (Snapshot/EqualsApplied, for every point k),
// not Last nor LastSeq. And Last, the value of whichever part of the
// highest sequence the app applied last, depends on the parts' order, so
// the other checks compare everything else.
func TestSplitterPipelineConformance(t *testing.T) {
	const factor = 3
	replaytest.TestPipeline(t, replaytest.Pipeline{
		NewFold:     func() replay.Fold { return &pipeline.ReadingFold{} },
		ContentType: pipeline.ReadingType,
		Payload: func(stream string, seq uint64) []byte {
			v := int64((seq*7+uint64(stream[len(stream)-1]))%11) - 2 // -2..8, zeros among them
			return pipeline.MarshalReading(pipeline.Reading{Value: v})
		},
		Stages: []replaytest.Stage{
			{Name: "worker", Append: worker.AppendTransform(factor), Snapshot: worker.Snapshot(factor)},
			{Name: "splitter", Transform: Transform, Snapshot: MapSnapshot},
		},
		NewApplier: func() replay.Applier { return app.NewState(metrics.New("app", "conformance")) },
	}, replaytest.PipelineOptions{Features: replaytest.Features{
		Equal: func(a, b []byte) bool {
			x, okx := totals(a)
			y, oky := totals(b)
			x.Last, y.Last = 0, 0
			return okx && oky && x == y
		},
		SnapshotEqual: func(a, b []byte) bool {
			x, okx := totals(a)
			y, oky := totals(b)
			return okx && oky && x.Count == y.Count && x.Sum == y.Sum && x.SumResults == y.SumResults && x.Zeros == y.Zeros
		},
	}})
}
