package pipeline_test

import (
	"testing"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
)

// reading is the sensor's message seq: values from -3 to 9, zeros among
// them (a stage may filter those out).
func reading(seq uint64) []byte {
	return pipeline.MarshalReading(pipeline.Reading{Value: int64(seq*7%13) - 3})
}

// The sensor's fold (its snapshot) against the replay.Fold contract.
func TestReadingFoldConformance(t *testing.T) {
	replaytest.TestFold(t, func() replay.Fold { return &pipeline.ReadingFold{} }, reading, replaytest.FoldOptions{})
}
