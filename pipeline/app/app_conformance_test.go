package app_test

import (
	"testing"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/pipeline/app"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
)

const factor = 3

// value is the reading behind message seq of stream.
func value(stream string, seq uint64) int64 {
	return int64((seq*7+uint64(len(stream))+uint64(stream[len(stream)-1]))%13) - 3
}

// The app's state against the replay.Applier contract, fed the workers'
// results, with the snapshot the workers serve: the sensor's Aggregate
// mapped onto Totals (pipeline.TotalsOf, with the workers' factor).
func TestStateConformance(t *testing.T) {
	replaytest.TestApplier(t,
		func() replay.Applier { return app.NewState(metrics.New("app", "conformance")) },
		func(stream string, seq uint64) envelope.Envelope {
			r := pipeline.Compute(pipeline.Reading{Value: value(stream, seq)}, factor)
			return envelope.Envelope{ContentType: pipeline.ResultType, Payload: pipeline.MarshalResult(r)}
		},
		replaytest.ApplierOptions{Snapshot: func(stream string, seq uint64) []byte {
			var a pipeline.Aggregate
			for q := uint64(1); q <= seq; q++ {
				a.Add(q, pipeline.Reading{Value: value(stream, q)})
			}
			return pipeline.TotalsOf(a, factor).Marshal()
		}})
}
