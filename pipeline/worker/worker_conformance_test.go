package worker_test

import (
	"testing"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/pipeline/app"
	"github.com/svckit/svckit/pipeline/worker"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
)

// The reference pipeline end to end: the sensor's fold, the worker's
// transform and snapshot mapper, the app's state. Above all, for every k,
// the app recovering through the workers' snapshot of 1..k (the sensor's
// Aggregate mapped by worker.Snapshot) holds what an app that applied
// the results of 1..k holds, and still does after k+1..N.
func TestWorkerPipelineConformance(t *testing.T) {
	const factor = 7
	replaytest.TestPipeline(t, replaytest.Pipeline{
		NewFold:     func() replay.Fold { return &pipeline.ReadingFold{} },
		ContentType: pipeline.ReadingType,
		Payload: func(stream string, seq uint64) []byte {
			v := int64((seq*7+uint64(stream[len(stream)-1]))%13) - 3
			return pipeline.MarshalReading(pipeline.Reading{Value: v})
		},
		Stages: []replaytest.Stage{
			{Name: "worker", Append: worker.AppendTransform(factor), Snapshot: worker.Snapshot(factor)},
		},
		NewApplier: func() replay.Applier { return app.NewState(metrics.New("app", "conformance")) },
	}, replaytest.PipelineOptions{})
}
