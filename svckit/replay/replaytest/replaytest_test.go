package replaytest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/replay/replaytest"
	"github.com/svckit/svckit/svckit/stage"
)

func foldPayload(seq uint64) []byte { return payload("s1", seq) }

// The suite on *testing.T, as a user runs it: correct implementations
// pass every check.
func TestCorrectImplementationsPass(t *testing.T) {
	replaytest.TestFold(t, func() replay.Fold { return &sumFold{} }, foldPayload, replaytest.FoldOptions{})
	replaytest.TestApplier(t, func() replay.Applier { return newTotals() }, envs, replaytest.ApplierOptions{Snapshot: foldSnapshot})
	replaytest.TestPipeline(t, goodPipeline(), replaytest.PipelineOptions{})
}

func runFold(newFold func() replay.Fold) *recLog {
	return record(func(r *rec) { replaytest.TestFold(r, newFold, foldPayload, replaytest.FoldOptions{N: 20}) })
}

func TestFoldChecks(t *testing.T) {
	t.Run("correct", func(t *testing.T) {
		runFold(func() replay.Fold { return &sumFold{} }).passes(t)
	})
	t.Run("non-deterministic", func(t *testing.T) {
		salt := 0
		runFold(func() replay.Fold { salt++; return &nondetFold{salt: salt} }).fails(t, "Determinism", "two new folds have different States")
	})
	t.Run("Restore drops state", func(t *testing.T) {
		l := runFold(func() replay.Fold { return &dropFold{} })
		l.fails(t, "RoundTrip", "a new fold restored from the State after message 1 has State")
		l.only(t, "RoundTrip", "RestoreReplaces")
	})
	t.Run("Restore merges", func(t *testing.T) {
		l := runFold(func() replay.Fold { return &mergeFold{} })
		l.fails(t, "RestoreReplaces", "Restore must replace the fold")
		l.only(t, "RestoreReplaces") // a new fold restores fine
	})
	t.Run("Apply keeps the payload", func(t *testing.T) {
		l := runFold(func() replay.Fold { return &retainFold{} })
		l.fails(t, "PayloadNotRetained", "after message 1:")
		l.only(t, "PayloadNotRetained")
	})
	t.Run("State returns its buffer", func(t *testing.T) {
		l := runFold(func() replay.Fold { return &aliasFold{} })
		l.fails(t, "StateStable", "the State returned after message 0 changed by the time message 1")
		l.only(t, "StateStable")
	})
	t.Run("State is not JSON", func(t *testing.T) {
		l := runFold(func() replay.Fold { return &binaryFold{} })
		l.fails(t, "StateIsJSON", "State after message 0 is not JSON")
		l.only(t, "StateIsJSON", "RoundTrip", "RestoreReplaces") // these cannot restore what snapshot.json cannot hold
	})
	t.Run("State changes the fold", func(t *testing.T) {
		runFold(func() replay.Fold { return &countingState{} }).fails(t, "StateStable", "State twice in a row gives different bytes")
	})
	t.Run("Apply fails", func(t *testing.T) {
		l := record(func(r *rec) {
			replaytest.TestFold(r, func() replay.Fold { return &sumFold{} }, func(seq uint64) []byte {
				if seq == 5 {
					return []byte("five")
				}
				return foldPayload(seq)
			}, replaytest.FoldOptions{N: 8})
		})
		l.fails(t, "Determinism", "Apply(5, \"five\")")
	})
}

func runApplier(newApplier func() replay.Applier, opts replaytest.ApplierOptions) *recLog {
	if opts.N == 0 {
		opts.N = 12
	}
	return record(func(r *rec) { replaytest.TestApplier(r, newApplier, envs, opts) })
}

func TestApplierChecks(t *testing.T) {
	withSnap := replaytest.ApplierOptions{Snapshot: foldSnapshot}
	t.Run("correct", func(t *testing.T) {
		runApplier(func() replay.Applier { return newTotals() }, withSnap).passes(t)
	})
	t.Run("markers are not applied", func(t *testing.T) {
		// Every 0 is a marker: the snapshot (count and sum of the rest)
		// matches only if the suite never applies them.
		l := record(func(r *rec) {
			replaytest.TestApplier(r, func() replay.Applier { return newTotals() }, func(stream string, seq uint64) envelope.Envelope {
				if value(stream, seq) == 0 {
					return envelope.Envelope{Marker: true}
				}
				return envs(stream, seq)
			}, replaytest.ApplierOptions{N: 12, Snapshot: func(stream string, seq uint64) []byte {
				var f sumFold
				_ = f.Restore(foldSnapshot(stream, seq))
				b, _ := json.Marshal(tot{Count: f.Count - f.Zeros, Sum: f.Sum})
				return b
			}})
		})
		l.passes(t)
	})
	t.Run("Export misses a field", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return newMissField() }, replaytest.ApplierOptions{})
		l.fails(t, "CheckpointRoundTrip", "checkpoint after stream s1 seq 1 (1 applied), crash, then the", "stream s1 ends with")
		l.only(t, "CheckpointRoundTrip")
	})
	t.Run("Export of an unknown stream fails", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return unknownErr{newTotals()} }, replaytest.ApplierOptions{})
		l.fails(t, "UnknownStream", "of a stream never applied to: no such stream")
	})
	t.Run("streams share state", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return shared{newTotals()} }, replaytest.ApplierOptions{})
		l.fails(t, "StreamsIndependent", "applying stream s1 seq 1 changed stream s2")
	})
	t.Run("order-dependent state", func(t *testing.T) {
		newA := func() replay.Applier { return lastWins{newTotals(), map[string]uint64{}} }
		l := runApplier(newA, replaytest.ApplierOptions{})
		l.fails(t, "OrderIndependent", "stream s1: applying its messages in the order 12 11 10")
		l.only(t, "OrderIndependent")
		l = runApplier(newA, replaytest.ApplierOptions{Features: replaytest.Features{OrderSensitive: true}})
		l.passes(t)
		if !l.wasSkipped("OrderIndependent") {
			t.Error("OrderIndependent ran despite Features.OrderSensitive")
		}
	})
	t.Run("ApplySnapshot merges", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return snapMerge{newTotals()} }, withSnap)
		l.fails(t, "Replaces", "stream s1: after messages 1..12, ApplySnapshot at 1 (Snapshot(stream, 1))", "ApplySnapshot must replace")
		l.only(t, "Replaces")
	})
	t.Run("snapshot inconsistent with the messages", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return newTotals() }, replaytest.ApplierOptions{Snapshot: func(stream string, seq uint64) []byte {
			return foldSnapshot(stream, seq-1) // one message short
		}})
		l.fails(t, "EqualsApplied", "stream s1: ApplySnapshot at 1")
		l.fails(t, "ThenRest")
	})
	t.Run("snapshot is not JSON", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return newTotals() }, replaytest.ApplierOptions{Snapshot: func(string, uint64) []byte { return []byte("count=1") }})
		l.fails(t, "EqualsApplied", `Snapshot("s1", 1) is not JSON`)
	})
	t.Run("Apply keeps the payload", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return lazySum{newTotals(), map[string][][]byte{}} }, replaytest.ApplierOptions{})
		l.fails(t, "PayloadNotRetained", "env.Payload is only valid during Apply")
		l.only(t, "PayloadNotRetained")
	})
	t.Run("Export returns its buffer", func(t *testing.T) {
		l := runApplier(func() replay.Applier { return aliasExport{newTotals(), new([]byte)} }, replaytest.ApplierOptions{})
		l.fails(t, "ExportStable", "the bytes ExportState returned after stream s1 seq 1 (1 applied) had changed after stream s2 seq 1")
		l.only(t, "ExportStable")
	})
	t.Run("non-deterministic", func(t *testing.T) {
		salt := 0
		l := runApplier(func() replay.Applier { salt++; return salted{newTotals(), salt} }, replaytest.ApplierOptions{})
		l.fails(t, "Determinism", "after stream s1 seq 1 (1 applied): two appliers fed the same messages")
	})
	t.Run("Equal", func(t *testing.T) {
		// A non-deterministic field the consumer accepts: Equal ignores it.
		salt := 0
		l := runApplier(func() replay.Applier { salt++; return salted{newTotals(), salt} }, replaytest.ApplierOptions{Features: replaytest.Features{
			Equal: func(a, b []byte) bool {
				var x, y tot
				return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && x == y
			}}})
		l.passes(t)
	})
}

func runPipeline(p replaytest.Pipeline) *recLog {
	return record(func(r *rec) { replaytest.TestPipeline(r, p, replaytest.PipelineOptions{N: 16}) })
}

func TestPipelineChecks(t *testing.T) {
	t.Run("correct", func(t *testing.T) {
		runPipeline(goodPipeline()).passes(t)
	})
	t.Run("no stages", func(t *testing.T) {
		p := goodPipeline()
		p.Stages = nil
		runPipeline(p).passes(t)
	})
	t.Run("mapper forgets the filtered-out inputs", func(t *testing.T) {
		p := goodPipeline()
		p.Stages[0].Snapshot = func(_ string, _ uint64, up []byte) ([]byte, error) {
			var f sumFold
			if err := json.Unmarshal(up, &f); err != nil {
				return nil, err
			}
			return json.Marshal(tot{Count: 2 * (f.Count - f.Sevens), Sum: f.Sum - 7*f.Sevens})
		}
		l := runPipeline(p)
		// s1's message 3 is a 0: the first snapshot that differs.
		l.fails(t, "EqualsApplied", "stream s1: ApplySnapshot at 3 (the fold over 1..3 mapped by split, then double", "applying messages 1..3 gives")
		l.only(t, "EqualsApplied", "ThenRest")
	})
	t.Run("mapper forgets the rejected inputs", func(t *testing.T) {
		p := goodPipeline()
		p.Stages[0].Snapshot = func(_ string, _ uint64, up []byte) ([]byte, error) {
			var f sumFold
			if err := json.Unmarshal(up, &f); err != nil {
				return nil, err
			}
			return json.Marshal(tot{Count: 2 * (f.Count - f.Zeros), Sum: f.Sum})
		}
		l := runPipeline(p)
		// s1's message 4 is a 7, which split rejects: its dead marker is
		// not applied.
		l.fails(t, "EqualsApplied", "stream s1: ApplySnapshot at 4")
	})
	t.Run("transform not deterministic", func(t *testing.T) {
		p := goodPipeline()
		calls := 0
		p.Stages[1].Append = func(ctx context.Context, in envelope.Envelope, outs []stage.Output, buf []byte) ([]stage.Output, []byte, error) {
			calls++
			if calls%5 == 0 {
				return append(outs, stage.Output{ContentType: "text/plain", Payload: []byte("1")}), buf, nil
			}
			return double(ctx, in, outs, buf)
		}
		l := runPipeline(p)
		l.fails(t, "Deterministic", "a transform must depend on its input alone")
	})
	t.Run("AppendTransform reads memory it did not write", func(t *testing.T) {
		p := goodPipeline()
		// Pads to 4 bytes by reslicing, never writing the padding: fresh
		// memory is zeros, a relay's is the previous input's.
		p.Stages[1].Append = func(_ context.Context, in envelope.Envelope, outs []stage.Output, buf []byte) ([]stage.Output, []byte, error) {
			v, err := parse(in.Payload)
			if err != nil {
				return outs, buf, err
			}
			start := len(buf)
			if cap(buf)-start < 4 {
				buf = append(buf, 0, 0, 0, 0)[:start]
			}
			rec := buf[start : start+4]
			copy(rec, strconv.AppendUint(nil, 2*v, 10))
			return append(outs, stage.Output{ContentType: "application/octet-stream", Payload: rec}), buf[:start+4], nil
		}
		p.NewApplier = func() replay.Applier { return newTotals() } // never reached: the check fails before
		l := runPipeline(p)
		l.fails(t, "Deterministic", "as a relayed replay")
	})
	t.Run("an error that is not Reject", func(t *testing.T) {
		p := goodPipeline()
		p.Stages[0].Transform = func(ctx context.Context, in envelope.Envelope) ([]stage.Output, error) {
			if bytes.Equal(in.Payload, []byte("3")) {
				return nil, errors.New("three")
			}
			return split(ctx, in)
		}
		l := runPipeline(p)
		l.fails(t, "Outputs", "stage split, stream s1 seq 2: three: an error that is not pubsub.Reject")
		l.only(t, "Outputs")
	})
	t.Run("mapper output is not JSON", func(t *testing.T) {
		p := goodPipeline()
		p.Stages[1].Snapshot = func(_ string, seq uint64, _ []byte) ([]byte, error) { return fmt.Appendf(nil, "count=%d", seq), nil }
		l := runPipeline(p)
		l.fails(t, "Snapshots", "stream s1, snapshot at 1: stage double's SnapshotMapper made \"count=1\", which is not JSON")
	})
	t.Run("a stage maps no snapshots", func(t *testing.T) {
		p := goodPipeline()
		p.Stages[1].Snapshot = nil
		l := runPipeline(p)
		l.passes(t)
		if !l.wasSkipped("Snapshot") {
			t.Error("the Snapshot checks ran without a snapshot")
		}
	})
	t.Run("applier checks run on parts", func(t *testing.T) {
		p := goodPipeline()
		p.NewApplier = func() replay.Applier { return newMissField() }
		l := runPipeline(p)
		l.fails(t, "CheckpointRoundTrip", "checkpoint after stream s1 seq 1 part 0 of 2 (1 applied), crash, then the 77 applies after it")
	})
}
