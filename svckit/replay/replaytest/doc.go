// Package replaytest checks a user's code against the contracts svckit's
// exactly-once recovery rests on, as Watermill's test suite checks a
// Pub/Sub: the user calls it from a test of their own, and describes what
// their implementation supports in an options struct (Features, the
// counterpart of Watermill's Features).
//
//   - TestFold checks a replay.Fold, the owner's running summary of its
//     stream, which it serves as the stream's snapshot.
//   - TestApplier checks a replay.Applier, the consumer's state that a
//     replay.Tracker drives.
//   - TestPipeline checks a whole path from an owner to a consumer: the
//     owner's Fold, the stages' transforms and snapshot mappers
//     (svckit/stage), and the consumer's Applier, together.
//
// Usage, in the user's own _test.go file:
//
//	func TestCounterFoldConformance(t *testing.T) {
//		replaytest.TestFold(t,
//			func() replay.Fold { return &CounterFold{} },
//			func(seq uint64) []byte { return strconv.AppendUint(nil, seq, 10) },
//			replaytest.FoldOptions{})
//	}
//
//	func TestPipelineConformance(t *testing.T) {
//		replaytest.TestPipeline(t, replaytest.Pipeline{
//			NewFold:     func() replay.Fold { return &pipeline.ReadingFold{} },
//			ContentType: pipeline.ReadingType,
//			Payload: func(stream string, seq uint64) []byte {
//				return pipeline.MarshalReading(pipeline.Reading{Value: int64(seq % 10)})
//			},
//			Stages: []replaytest.Stage{
//				{Name: "worker", Append: worker.AppendTransform(3), Snapshot: worker.Snapshot(3)},
//			},
//			NewApplier: func() replay.Applier { return app.NewState(metrics.New("app", "test")) },
//		}, replaytest.PipelineOptions{})
//	}
//
// Every check is a subtest (t.Run) whose failure names the sequence, the
// crash point or the snapshot where the property broke, so that
// go test -run 'Conformance/Applier/CheckpointRoundTrip' runs one. The
// suite needs no nsqd and no Consul: it drives the user's code the way
// svckit does, in memory. Messages it applies are encoded and decoded as
// envelopes, as a consumer receives them; every state it moves between a
// fold, a stage and a consumer goes through the JSON encoding svckit uses
// for it (snapshot.json, GET /snapshot, the checkpoint), which compacts
// JSON, escapes HTML characters and turns a nil state into null.
//
// # What is checked, and why
//
// A Fold (TestFold) is fed messages 1..N in order, as an owner does.
//
//   - Determinism: two folds fed the same messages have equal States after
//     every message. A snapshot is the stream's state for every consumer
//     that recovers through it, and a restarted owner rebuilds its fold;
//     a State depending on time, randomness or map order differs between
//     them.
//   - StateIsJSON: State is JSON, or nil. The owner keeps it in
//     snapshot.json and serves it on /snapshot as a JSON value: any other
//     bytes make every save fail (and with it the published watermark).
//   - StateStable: State called twice in a row gives the same bytes, and
//     calling it does not change the fold; the bytes it returned are not
//     changed by a later Apply (the owner encodes a State after it let go
//     of its lock, while Apply goes on).
//   - PayloadNotRetained: a fold whose payload buffers are overwritten
//     once Apply returned ends as one fed fresh payloads. A restarting
//     owner rebuilds its fold from the retained log, whose records alias
//     a reused buffer.
//   - RoundTrip: for every point k of 0..N, a new fold restored from the
//     State after message k has that State, and fed k+1..N it has, after
//     every message, the State of a fold that never restored: the owner
//     restores from snapshot.json and folds in the log after it.
//   - RestoreReplaces: Restore into a fold that folded 1..N gives the
//     restored State: Restore replaces the fold (a json.Unmarshal into a
//     map that is already filled merges instead).
//
// An Applier (TestApplier, and TestPipeline's "Applier" checks) is fed
// messages 1..N of several streams, interleaved.
//
//   - Determinism: two appliers fed the same messages export the same
//     state after every message.
//   - ExportIsJSON: ExportState is JSON or nil: the checkpoint keeps it as
//     a JSON value, and anything else makes every checkpoint fail.
//   - ExportStable: exporting twice gives the same bytes, exporting does
//     not change the state, and the bytes are not changed by a later Apply
//     (the tracker encodes its checkpoint after it let go of the stream).
//   - PayloadNotRetained: env.Payload is only valid during Apply.
//   - UnknownStream: ExportState of a stream never applied to succeeds,
//     is the same whatever other streams hold, and imports as an empty
//     state. The tracker exports every stream it knows, and it knows
//     streams it never applied a message of (an owner's /streams named
//     them, or their first message failed): one error fails the whole
//     checkpoint.
//   - StreamsIndependent: applying a message of one stream leaves every
//     other stream's export unchanged, and each stream ends the same
//     whether the streams' messages are interleaved, applied one stream
//     after the other, or applied to an applier that never sees the other
//     streams. The tracker runs streams in parallel and recovers each on
//     its own.
//   - OrderIndependent (skipped with Features.OrderSensitive): a stream's
//     messages applied in another order (reversed, shuffled; the parts of
//     a split message too) give the same state. NSQ does not order
//     messages and replay fills gaps later: the tracker applies them as
//     they arrive.
//   - CheckpointRoundTrip: see below.
//   - Snapshot (when a snapshot is given: ApplierOptions.Snapshot, or a
//     pipeline's fold and mappers): EqualsApplied, ApplySnapshot(k) on a
//     new applier gives the state of one that applied 1..k; ThenRest,
//     ApplySnapshot(k) then k+1..N gives the state of one that applied
//     1..N; Replaces, ApplySnapshot(k) on a stream that applied 1..N
//     gives what it gives on a new applier, before and after k+1..N again
//     (the tracker forgets what it applied above k and applies it again),
//     and leaves the other streams alone; ThenCheckpoint,
//     a checkpoint (Export, Import into a new applier) right after the
//     snapshot and then k+1..N gives what the same without the crash
//     gives. For every k in 1..N.
//
// TestPipeline also checks the stages: Stages/Outputs, every output can be
// published and every error is pubsub.Reject (another error is retried for
// ever live and fails every replay of its range); Stages/Deterministic, the
// outputs are the same when the transform runs again on the same input,
// with the memory a relay reuses (an AppendTransform gets the previous
// input's buffers, whose bytes are garbage to it); Snapshots, every hop of
// a snapshot (the fold's State, each mapper's output) is JSON and no
// mapper fails.
//
// # Idempotence under replay
//
// The tracker never calls Apply twice for a (stream, seq), nor for a part
// of one: it keeps the set of handled sequences together with the
// applier's exported state in one checkpoint, written atomically, and
// after a crash it imports that state and applies exactly the messages
// the checkpoint lacks, replayed or redelivered. So an Applier's Apply
// need not be idempotent, and the suite never applies a message twice.
// What the user must guarantee instead is that a checkpoint loses nothing
// and adds nothing: CheckpointRoundTrip takes a checkpoint at every point
// of the interleaved sequence of messages (every part of a split message
// included, before the first message and after the last), imports it into
// a new applier, which must then export exactly what was exported, feeds
// that applier the messages after the point, and requires every stream to
// end equal to an applier that never crashed. Snapshot/ThenCheckpoint
// does the same right after a snapshot.
// The suite sees a state only through ExportState, as the checkpoint does:
// a field ExportState leaves out shows through its effect on what is
// exported after more messages (a set of values seen, kept but not
// exported, counts a value again after a restart), so the generated
// messages must give it one.
//
// Markers are modelled as the tracker handles them: a sequence a stage
// made no output of (filtered out), or dead-lettered (its transform
// returned pubsub.Reject), reaches the consumer as a marker, which the
// tracker counts as handled without calling Apply. A snapshot, however,
// is the owner's fold over every message, so a stage's SnapshotMapper must
// account for what the stage filters out or dead-letters:
// Snapshot/EqualsApplied is the check that it does.
//
// # Comparing states
//
// States are compared byte for byte unless Features.Equal (or
// FoldOptions.Equal) says otherwise. A state recovered through a snapshot
// may not carry everything an applied state does (a count of payload
// bytes, which a snapshot of another stage's data cannot know):
// Features.SnapshotEqual then compares what a snapshot does carry, and
// says in the user's test what the consumer gives up.
package replaytest
