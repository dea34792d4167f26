package replaytest

import (
	"fmt"
	"slices"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
)

// TestApplier and the machinery its checks share: the case (streams,
// the frames the tracker applies, the snapshot), orders of applies, and
// applying and exporting with a failure that names the step. The checks
// themselves are in applier_checks.go; TestPipeline (pipeline.go) builds
// a case of its own and runs the same checks.

// ApplierOptions configures TestApplier. Zero values take the defaults
// named on each field.
type ApplierOptions struct {
	Features
	// Streams are the stream ids messages are applied to; nil is s1, s2,
	// s3.
	Streams []string
	// N is how many messages (seq 1..N) each stream gets; 0 is DefaultN.
	N uint64
	// Snapshot, if set, is the snapshot of stream over 1..seq as the
	// applier's upstream serves it: the owner's Fold over the messages
	// whose envelopes envs makes, through the SnapshotMapper of every
	// stage in between (JSON, or nil). nil skips the Snapshot checks.
	Snapshot func(stream string, seq uint64) []byte
}

// TestApplier checks a replay.Applier (see the package documentation for
// each check): Determinism, ExportIsJSON, ExportStable, PayloadNotRetained,
// UnknownStream, StreamsIndependent, OrderIndependent, CheckpointRoundTrip
// and Snapshot, each a subtest. newApplier makes a new applier with no
// state, as a consumer starts before its checkpoint is loaded. envs(stream,
// seq) is the envelope the consumer receives as message seq of stream (the
// suite sets Stream and Seq; called once per message): a whole message, or
// a marker (Marker set), which the tracker counts without calling Apply.
// To check an applier downstream of a stage that splits messages, use
// TestPipeline with that stage.
func TestApplier[T TB[T]](t T, newApplier func() replay.Applier, envs func(stream string, seq uint64) envelope.Envelope, opts ApplierOptions) {
	t.Helper()
	if newApplier == nil || envs == nil {
		t.Fatalf("replaytest.TestApplier: newApplier and envs are required")
		return
	}
	c, err := newApplierCase(newApplier, opts.Streams, orDefault(opts.N), opts.Features)
	if err != nil {
		t.Fatalf("replaytest.TestApplier: %v", err)
		return
	}
	for s, stream := range c.streams {
		for seq := uint64(1); seq <= c.n; seq++ {
			env := envs(stream, seq)
			if env.Parts > 1 {
				t.Fatalf("envs(%q, %d) is part %d of %d: TestApplier applies whole messages; check an applier of split messages with TestPipeline and the stage that splits them", stream, seq, env.Part, env.Parts)
				return
			}
			env.Stream, env.Seq, env.Part, env.Parts = stream, seq, 0, 0
			if env.Marker {
				continue // handled by the tracker alone
			}
			b, err := env.Marshal()
			if err != nil {
				t.Fatalf("envs(%q, %d) cannot be encoded as an envelope: %v", stream, seq, err)
				return
			}
			c.frames[s][seq] = []frame{{b: b}}
		}
	}
	if opts.Snapshot != nil {
		c.snapDesc = "Snapshot(stream, %d)"
		c.snapshot = func(s int, seq uint64) ([]byte, error) {
			raw := opts.Snapshot(c.streams[s], seq)
			state, err := viaJSON(raw)
			if err != nil {
				return nil, fmt.Errorf("Snapshot(%q, %d) is not JSON (%v): %s; the owner and the stages serve snapshots as JSON values (GET /snapshot)", c.streams[s], seq, err, show(raw))
			}
			return state, nil
		}
	} else {
		c.noSnapshot = "ApplierOptions.Snapshot is nil"
	}
	runApplierChecks(t, c)
}

// frame is one envelope the tracker applies: a whole message or a part.
type frame struct {
	b           []byte // encoded
	part, parts uint32
}

type applierCase struct {
	newApplier func() replay.Applier
	streams    []string
	unknown    string // a stream never applied to
	n          uint64
	// frames[s][seq] are what the tracker applies for message seq of
	// streams[s]: the message, its parts, or nothing (a marker).
	frames [][][]frame
	f      Features
	// snapshot is the snapshot of streams[s] over 1..seq as ApplySnapshot
	// gets it; nil when there is none (noSnapshot says why).
	snapshot   func(s int, seq uint64) ([]byte, error)
	snapDesc   string // how a snapshot at %d is made, for messages
	noSnapshot string
}

func newApplierCase(newApplier func() replay.Applier, streams []string, n uint64, f Features) (*applierCase, error) {
	if streams == nil {
		streams = []string{"s1", "s2", "s3"}
	}
	if len(streams) == 0 {
		return nil, fmt.Errorf("no streams")
	}
	for i, s := range streams {
		if !replay.ValidStreamID(s) {
			return nil, fmt.Errorf("stream id %q: want 1-255 of [A-Za-z0-9._-]", s)
		}
		if slices.Contains(streams[:i], s) {
			return nil, fmt.Errorf("stream id %q twice", s)
		}
	}
	unknown := "replaytest-never-applied"
	for slices.Contains(streams, unknown) {
		unknown += "-"
	}
	c := &applierCase{newApplier: newApplier, streams: streams, unknown: unknown, n: n, f: f}
	c.frames = make([][][]frame, len(streams))
	for s := range c.frames {
		c.frames[s] = make([][]frame, n+1)
	}
	return c, nil
}

// step is one Apply: part (an index into frames[s][seq]) of message seq
// of stream s.
type step struct {
	s    int
	seq  uint64
	part int
}

func (c *applierCase) at(st step) string {
	fr := c.frames[st.s][st.seq][st.part]
	if fr.parts > 1 {
		return fmt.Sprintf("stream %s seq %d part %d of %d", c.streams[st.s], st.seq, fr.part, fr.parts)
	}
	return fmt.Sprintf("stream %s seq %d", c.streams[st.s], st.seq)
}

// after describes the point after steps[:i].
func (c *applierCase) after(steps []step, i int) string {
	if i == 0 {
		return "before any message"
	}
	return fmt.Sprintf("after %s (%d applied)", c.at(steps[i-1]), i)
}

// streamSteps are stream s's applies of messages from..to, in order.
func (c *applierCase) streamSteps(s int, from, to uint64) []step {
	var out []step
	for seq := from; seq <= to; seq++ {
		for p := range c.frames[s][seq] {
			out = append(out, step{s, seq, p})
		}
	}
	return out
}

// interleaved is every apply, message by message across the streams.
func (c *applierCase) interleaved() []step {
	var out []step
	for seq := uint64(1); seq <= c.n; seq++ {
		for s := range c.streams {
			for p := range c.frames[s][seq] {
				out = append(out, step{s, seq, p})
			}
		}
	}
	return out
}

// byStream is every apply, one stream after the other (in reverse order of
// streams if rev).
func (c *applierCase) byStream(rev bool) []step {
	var out []step
	for i := range c.streams {
		s := i
		if rev {
			s = len(c.streams) - 1 - i
		}
		out = append(out, c.streamSteps(s, 1, c.n)...)
	}
	return out
}

func (c *applierCase) snapAt(k uint64) string {
	return fmt.Sprintf(c.snapDesc, k)
}

func runApplierChecks[T TB[T]](t T, c *applierCase) {
	t.Helper()
	t.Run("Determinism", func(t T) { applierDeterminism(t, c) })
	t.Run("ExportIsJSON", func(t T) { applierExportIsJSON(t, c) })
	t.Run("ExportStable", func(t T) { applierExportStable(t, c) })
	t.Run("PayloadNotRetained", func(t T) { applierPayloadNotRetained(t, c) })
	t.Run("UnknownStream", func(t T) { applierUnknownStream(t, c) })
	t.Run("StreamsIndependent", func(t T) { applierStreamsIndependent(t, c) })
	t.Run("OrderIndependent", func(t T) { applierOrderIndependent(t, c) })
	t.Run("CheckpointRoundTrip", func(t T) { applierCheckpointRoundTrip(t, c) })
	t.Run("Snapshot", func(t T) {
		if c.snapshot == nil {
			t.Skipf("no snapshot to check against: %s", c.noSnapshot)
			return
		}
		t.Run("EqualsApplied", func(t T) { snapshotEqualsApplied(t, c) })
		t.Run("ThenRest", func(t T) { snapshotThenRest(t, c) })
		t.Run("Replaces", func(t T) { snapshotReplaces(t, c) })
		t.Run("ThenCheckpoint", func(t T) { snapshotThenCheckpoint(t, c) })
	})
}

// applyStep applies st to a from a buffer of its own, as the tracker
// does; with reuse, the buffer is overwritten once Apply returned.
func applyStep[T TB[T]](t T, c *applierCase, a replay.Applier, st step, reuse bool) {
	t.Helper()
	buf := clone(c.frames[st.s][st.seq][st.part].b)
	env, err := envelope.Decode(buf)
	if err != nil {
		t.Fatalf("decoding the envelope of %s: %v", c.at(st), err)
	}
	if err := a.Apply(c.streams[st.s], env); err != nil {
		t.Fatalf("Apply(%s): %v (the tracker leaves a message whose Apply fails unhandled and retries it: the generator must make messages the applier accepts)", c.at(st), err)
	}
	if reuse {
		scribble(buf)
	}
}

func applySteps[T TB[T]](t T, c *applierCase, a replay.Applier, steps []step) {
	t.Helper()
	for _, st := range steps {
		applyStep(t, c, a, st, false)
	}
}

func exportOf[T TB[T]](t T, a replay.Applier, stream string) []byte {
	t.Helper()
	b, err := a.ExportState(stream)
	if err != nil {
		t.Fatalf("ExportState(%q): %v (the tracker exports every stream it knows at each checkpoint: one error fails the whole checkpoint)", stream, err)
	}
	return b
}

// exports exports every stream.
func exports[T TB[T]](t T, c *applierCase, a replay.Applier) [][]byte {
	t.Helper()
	out := make([][]byte, len(c.streams))
	for s, id := range c.streams {
		out[s] = clone(exportOf(t, a, id))
	}
	return out
}

// importInto imports state, as ExportState returned it, into stream of a
// through the checkpoint's encoding.
func importInto[T TB[T]](t T, a replay.Applier, stream string, state []byte, when string) {
	t.Helper()
	in, err := viaJSON(state)
	if err != nil {
		t.Fatalf("ExportState(%q) %s is not JSON (%v): %s; see ExportIsJSON", stream, when, err, show(state))
	}
	if err := a.ImportState(stream, in); err != nil {
		t.Fatalf("ImportState(%q, %s), exported %s: %v", stream, show(in), when, err)
	}
}

// applySnapshot applies the snapshot of stream s at k.
func applySnapshot[T TB[T]](t T, c *applierCase, a replay.Applier, s int, k uint64) {
	t.Helper()
	state, err := c.snapshot(s, k)
	if err != nil {
		t.Fatalf("stream %s: the snapshot at %d: %v", c.streams[s], k, err)
	}
	if err := a.ApplySnapshot(c.streams[s], k, state); err != nil {
		t.Fatalf("ApplySnapshot(%q, %d, %s), the snapshot being %s: %v", c.streams[s], k, show(state), c.snapAt(k), err)
	}
}

// prefixes[s][k] is the export of stream s of a new applier that applied
// its messages 1..k in order, and nothing else.
func prefixes[T TB[T]](t T, c *applierCase) [][][]byte {
	t.Helper()
	out := make([][][]byte, len(c.streams))
	for s, id := range c.streams {
		a := c.newApplier()
		out[s] = make([][]byte, c.n+1)
		out[s][0] = clone(exportOf(t, a, id))
		for seq := uint64(1); seq <= c.n; seq++ {
			applySteps(t, c, a, c.streamSteps(s, seq, seq))
			out[s][seq] = clone(exportOf(t, a, id))
		}
	}
	return out
}
