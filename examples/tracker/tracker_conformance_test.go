package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/pipeline/worker"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
)

func newState() replay.Applier { return &State{streams: map[string]*Counts{}} }

// features: State's Bytes counts payload bytes since the last snapshot
// only (a snapshot of the upstream's data cannot know them) and
// SnapshotSeq says which snapshot that was, so a state recovered through a
// snapshot holds the same Messages as one that applied every message, and
// that is what is compared for those. Everything else is compared byte for
// byte.
var features = replaytest.Features{SnapshotEqual: func(a, b []byte) bool {
	var x, y Counts
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && x.Messages == y.Messages
}}

// State against the replay.Applier contract (svckit/replay/replaytest),
// over the producer example's stream: its values in decimal, and its
// CounterFold ({"count","sum"}) as the snapshot.
func TestStateConformance(t *testing.T) {
	replaytest.TestApplier(t, newState,
		func(_ string, seq uint64) envelope.Envelope {
			return envelope.Envelope{ContentType: "text/plain", Payload: strconv.AppendUint(nil, seq, 10)}
		},
		replaytest.ApplierOptions{Features: features, Snapshot: func(_ string, seq uint64) []byte {
			return fmt.Appendf(nil, `{"count":%d,"sum":%d}`, seq, seq*(seq+1)/2)
		}})
}

// State behind the reference pipeline's workers (its default upstream):
// the sensor's fold mapped by the worker's SnapshotMapper onto Totals,
// whose count ApplySnapshot reads.
func TestStatePipelineConformance(t *testing.T) {
	const factor = 2
	replaytest.TestPipeline(t, replaytest.Pipeline{
		NewFold:     func() replay.Fold { return &pipeline.ReadingFold{} },
		ContentType: pipeline.ReadingType,
		Payload: func(stream string, seq uint64) []byte {
			return pipeline.MarshalReading(pipeline.Reading{Value: int64((seq*5 + uint64(stream[len(stream)-1])) % 9)})
		},
		Stages:     []replaytest.Stage{{Name: "worker", Append: worker.AppendTransform(factor), Snapshot: worker.Snapshot(factor)}},
		NewApplier: newState,
	}, replaytest.PipelineOptions{Features: features})
}
