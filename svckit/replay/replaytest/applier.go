package replaytest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
)

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

func applierDeterminism[T TB[T]](t T, c *applierCase) {
	t.Helper()
	a, b := c.newApplier(), c.newApplier()
	steps := c.interleaved()
	for i, st := range steps {
		applyStep(t, c, a, st, false)
		applyStep(t, c, b, st, false)
		id := c.streams[st.s]
		if ea, eb := exportOf(t, a, id), exportOf(t, b, id); !c.f.equal(ea, eb) {
			t.Errorf("%s: two appliers fed the same messages export different states of stream %s (a state must follow from the messages alone: no time, randomness or map iteration order):\n first:  %s\n second: %s", c.after(steps, i+1), id, show(ea), show(eb))
			return
		}
	}
}

func applierExportIsJSON[T TB[T]](t T, c *applierCase) {
	t.Helper()
	a := c.newApplier()
	check := func(id, when string) bool {
		e := exportOf(t, a, id)
		if _, err := viaJSON(e); err != nil {
			t.Errorf("ExportState(%q) %s is not JSON (%v): %s\nthe checkpoint keeps each stream's state as a JSON value, so every checkpoint would fail to encode: return JSON, or nil", id, when, err, show(e))
			return false
		}
		return true
	}
	for _, id := range append(slices.Clone(c.streams), c.unknown) {
		if !check(id, "of a new applier") {
			return
		}
	}
	steps := c.interleaved()
	for i, st := range steps {
		applyStep(t, c, a, st, false)
		if !check(c.streams[st.s], c.after(steps, i+1)) {
			return
		}
	}
}

func applierExportStable[T TB[T]](t T, c *applierCase) {
	t.Helper()
	a, b := c.newApplier(), c.newApplier()
	type taken struct {
		when      string
		got, copy []byte
	}
	var kept []taken
	steps := c.interleaved()
	for i, st := range steps {
		applyStep(t, c, a, st, false)
		applyStep(t, c, b, st, false)
		id, when := c.streams[st.s], c.after(steps, i+1)
		e1 := exportOf(t, a, id)
		e1c := clone(e1)
		if e2 := exportOf(t, a, id); !c.f.equal(e1c, e2) {
			t.Errorf("%s: ExportState(%q) twice in a row gives different states:\n first:  %s\n second: %s", when, id, show(e1c), show(e2))
			return
		}
		kept = append(kept, taken{when, e1, e1c})
		for _, k := range kept {
			if !bytes.Equal(k.got, k.copy) {
				t.Errorf("the bytes ExportState returned %s had changed %s (%s, was %s): ExportState must return bytes the applier no longer writes to (the tracker encodes its checkpoint after it let go of the stream, while messages are applied)", k.when, when, show(k.got), show(k.copy))
				return
			}
		}
	}
	for _, id := range c.streams {
		if ea, eb := exportOf(t, a, id), exportOf(t, b, id); !c.f.equal(ea, eb) {
			t.Errorf("exporting changed the state: stream %s ends with %s when exported after every message, %s when not exported before the end", id, show(ea), show(eb))
			return
		}
	}
}

func applierPayloadNotRetained[T TB[T]](t T, c *applierCase) {
	t.Helper()
	reused, fresh := c.newApplier(), c.newApplier()
	steps := c.interleaved()
	for i, st := range steps {
		applyStep(t, c, reused, st, true)
		applyStep(t, c, fresh, st, false)
		for _, id := range c.streams {
			if er, ef := exportOf(t, reused, id), exportOf(t, fresh, id); !c.f.equal(er, ef) {
				t.Errorf("%s: stream %s of an applier whose message buffers were overwritten once Apply returned exports %s, of one whose buffers were not %s: env.Payload is only valid during Apply; copy what you keep of it", c.after(steps, i+1), id, show(er), show(ef))
				return
			}
		}
	}
}

func applierUnknownStream[T TB[T]](t T, c *applierCase) {
	t.Helper()
	a := c.newApplier()
	e0, err := a.ExportState(c.unknown)
	if err != nil {
		t.Errorf("ExportState(%q) of a stream never applied to: %v\nthe tracker exports every stream it knows at each checkpoint, including streams it never applied a message of (an owner's /streams named them, or their first message failed to apply), and one error fails the whole checkpoint: export the empty state", c.unknown, err)
		return
	}
	e0 = clone(e0)
	if _, err := viaJSON(e0); err != nil {
		t.Errorf("ExportState(%q) of a stream never applied to is not JSON (%v): %s", c.unknown, err, show(e0))
		return
	}
	applySteps(t, c, a, c.interleaved())
	before := make([][]byte, len(c.streams))
	for s, id := range c.streams {
		before[s] = clone(exportOf(t, a, id))
	}
	if e1 := exportOf(t, a, c.unknown); !c.f.equal(e1, e0) {
		t.Errorf("the export of stream %s, never applied to, is %s once other streams have state, %s before: a stream's state must not depend on other streams'", c.unknown, show(e1), show(e0))
		return
	}
	for s, id := range c.streams {
		if e := exportOf(t, a, id); !c.f.equal(e, before[s]) {
			t.Errorf("exporting stream %s, never applied to, changed stream %s: %s, was %s", c.unknown, id, show(e), show(before[s]))
			return
		}
	}
	pre := prefixes(t, c)
	for s, id := range c.streams {
		b := c.newApplier()
		importInto(t, b, id, e0, "of a stream never applied to")
		if e := exportOf(t, b, id); !c.f.equal(e, pre[s][0]) {
			t.Errorf("stream %s: importing the export of a stream never applied to (%s) gives %s, a new applier %s: a checkpoint of a stream the tracker knew before its first message must import as the empty state", id, show(e0), show(e), show(pre[s][0]))
			return
		}
		applySteps(t, c, b, c.streamSteps(s, 1, c.n))
		if e := exportOf(t, b, id); !c.f.equal(e, pre[s][c.n]) {
			t.Errorf("stream %s: importing the export of a stream never applied to (%s), then applying messages 1..%d, gives %s; applying them to a new applier gives %s", id, show(e0), c.n, show(e), show(pre[s][c.n]))
			return
		}
	}
}

func applierStreamsIndependent[T TB[T]](t T, c *applierCase) {
	t.Helper()
	a := c.newApplier()
	prev := exports(t, c, a)
	steps := c.interleaved()
	for _, st := range steps {
		applyStep(t, c, a, st, false)
		for s, id := range c.streams {
			e := exportOf(t, a, id)
			if s == st.s {
				prev[s] = clone(e)
				continue
			}
			if !c.f.equal(e, prev[s]) {
				t.Errorf("applying %s changed stream %s: %s, was %s (the tracker runs and recovers each stream on its own: a stream's state must depend on its own messages alone)", c.at(st), id, show(e), show(prev[s]))
				return
			}
		}
	}
	want := exports(t, c, a)
	orders := []struct {
		name  string
		steps []step
	}{
		{"one stream after the other", c.byStream(false)},
		{"one stream after the other, last stream first", c.byStream(true)},
	}
	for _, o := range orders {
		b := c.newApplier()
		applySteps(t, c, b, o.steps)
		for s, id := range c.streams {
			if e := exportOf(t, b, id); !c.f.equal(e, want[s]) {
				t.Errorf("stream %s: applying the streams' messages %s gives %s, interleaved %s", id, o.name, show(e), show(want[s]))
				return
			}
		}
	}
	pre := prefixes(t, c)
	for s, id := range c.streams {
		if !c.f.equal(pre[s][c.n], want[s]) {
			t.Errorf("stream %s: an applier that only ever saw this stream ends with %s, one that saw every stream %s", id, show(pre[s][c.n]), show(want[s]))
			return
		}
	}
}

// showOrder formats the messages of steps, for a failure message.
func (c *applierCase) showOrder(steps []step) string {
	var b strings.Builder
	for i, st := range steps {
		if i == 24 {
			fmt.Fprintf(&b, " … (%d)", len(steps))
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fr := c.frames[st.s][st.seq][st.part]
		if fr.parts > 1 {
			fmt.Fprintf(&b, "%d.%d", st.seq, fr.part)
		} else {
			fmt.Fprintf(&b, "%d", st.seq)
		}
	}
	return b.String()
}

func applierOrderIndependent[T TB[T]](t T, c *applierCase) {
	t.Helper()
	if c.f.OrderSensitive {
		t.Skipf("Features.OrderSensitive: the state depends on the order messages arrive in, so it differs between runs and between a consumer and its recovery")
		return
	}
	pre := prefixes(t, c)
	for s, id := range c.streams {
		inOrder := c.streamSteps(s, 1, c.n)
		reversed := slices.Clone(inOrder)
		slices.Reverse(reversed)
		orders := [][]step{reversed}
		for seed := uint64(1); seed <= 3; seed++ {
			o := slices.Clone(inOrder)
			r := rand.New(rand.NewPCG(seed, uint64(s)))
			r.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
			orders = append(orders, o)
		}
		for _, o := range orders {
			a := c.newApplier()
			applySteps(t, c, a, o)
			if e := exportOf(t, a, id); !c.f.equal(e, pre[s][c.n]) {
				t.Errorf("stream %s: applying its messages in the order %s gives %s, in order %s: the tracker applies messages in the order they arrive (NSQ does not order them, and replay fills gaps later), so a state that depends on it differs between runs; set Features.OrderSensitive only if that is acceptable", id, c.showOrder(o), show(e), show(pre[s][c.n]))
				return
			}
		}
	}
}

func applierCheckpointRoundTrip[T TB[T]](t T, c *applierCase) {
	t.Helper()
	steps := c.interleaved()
	ref := c.newApplier()
	applySteps(t, c, ref, steps)
	want := exports(t, c, ref)
	a := c.newApplier()
	for i := 0; i <= len(steps); i++ {
		if i > 0 {
			applyStep(t, c, a, steps[i-1], false)
		}
		when := c.after(steps, i)
		cp := exports(t, c, a)
		b := c.newApplier()
		for s, id := range c.streams {
			importInto(t, b, id, cp[s], "at a checkpoint "+when)
		}
		for s, id := range c.streams {
			if e := exportOf(t, b, id); !c.f.equal(e, cp[s]) {
				t.Errorf("checkpoint %s: stream %s exported %s, and ImportState of that into a new applier exports %s: a checkpoint must restore the state exactly", when, id, show(cp[s]), show(e))
				return
			}
		}
		applySteps(t, c, b, steps[i:])
		for s, id := range c.streams {
			if e := exportOf(t, b, id); !c.f.equal(e, want[s]) {
				t.Errorf("checkpoint %s, crash, then the %d applies after it: stream %s ends with %s; without the crash %s (the tracker applies each message once and saves the applied set with the exported state: after a crash it applies exactly what the checkpoint lacks, so Export and Import must lose and add nothing)", when, len(steps)-i, id, show(e), show(want[s]))
				return
			}
		}
	}
}

func snapshotEqualsApplied[T TB[T]](t T, c *applierCase) {
	t.Helper()
	pre := prefixes(t, c)
	for s, id := range c.streams {
		for k := uint64(1); k <= c.n; k++ {
			a := c.newApplier()
			applySnapshot(t, c, a, s, k)
			if e := exportOf(t, a, id); !c.f.snapshotEqual(pre[s][k], e) {
				state, _ := c.snapshot(s, k)
				t.Errorf("stream %s: ApplySnapshot at %d (%s = %s) gives %s; applying messages 1..%d gives %s: a consumer that recovers through the snapshot would not hold what one that applied every message holds", id, k, c.snapAt(k), show(state), show(e), k, show(pre[s][k]))
				return
			}
		}
	}
}

func snapshotThenRest[T TB[T]](t T, c *applierCase) {
	t.Helper()
	pre := prefixes(t, c)
	for s, id := range c.streams {
		for k := uint64(1); k <= c.n; k++ {
			a := c.newApplier()
			applySnapshot(t, c, a, s, k)
			applySteps(t, c, a, c.streamSteps(s, k+1, c.n))
			if e := exportOf(t, a, id); !c.f.snapshotEqual(pre[s][c.n], e) {
				t.Errorf("stream %s: ApplySnapshot at %d (%s), then messages %d..%d, gives %s; applying messages 1..%d gives %s", id, k, c.snapAt(k), k+1, c.n, show(e), c.n, show(pre[s][c.n]))
				return
			}
		}
	}
}

func snapshotReplaces[T TB[T]](t T, c *applierCase) {
	t.Helper()
	all := c.interleaved()
	for s, id := range c.streams {
		for k := uint64(1); k <= c.n; k++ {
			fresh := c.newApplier()
			applySnapshot(t, c, fresh, s, k)
			a := c.newApplier()
			applySteps(t, c, a, all)
			before := exports(t, c, a)
			applySnapshot(t, c, a, s, k)
			for o, other := range c.streams {
				if o == s {
					continue
				}
				if e := exportOf(t, a, other); !c.f.equal(e, before[o]) {
					t.Errorf("ApplySnapshot(%q, %d) changed stream %s: %s, was %s", id, k, other, show(e), show(before[o]))
					return
				}
			}
			if e, want := exportOf(t, a, id), exportOf(t, fresh, id); !c.f.equal(e, want) {
				t.Errorf("stream %s: after messages 1..%d, ApplySnapshot at %d (%s) gives %s; on a new applier it gives %s: ApplySnapshot must replace the stream's state (the tracker forgets what it applied above the snapshot and applies it again)", id, c.n, k, c.snapAt(k), show(e), show(want))
				return
			}
			rest := c.streamSteps(s, k+1, c.n)
			applySteps(t, c, a, rest)
			applySteps(t, c, fresh, rest)
			if e, want := exportOf(t, a, id), exportOf(t, fresh, id); !c.f.equal(e, want) {
				t.Errorf("stream %s: after messages 1..%d, ApplySnapshot at %d (%s) and messages %d..%d again gives %s; on a new applier the snapshot and %d..%d give %s", id, c.n, k, c.snapAt(k), k+1, c.n, show(e), k+1, c.n, show(want))
				return
			}
		}
	}
}

func snapshotThenCheckpoint[T TB[T]](t T, c *applierCase) {
	t.Helper()
	for s, id := range c.streams {
		for k := uint64(1); k <= c.n; k++ {
			a := c.newApplier()
			applySnapshot(t, c, a, s, k)
			cp := clone(exportOf(t, a, id))
			b := c.newApplier()
			importInto(t, b, id, cp, fmt.Sprintf("right after a snapshot at %d", k))
			if e := exportOf(t, b, id); !c.f.equal(e, cp) {
				t.Errorf("stream %s: right after ApplySnapshot at %d (%s) it exports %s, and ImportState of that into a new applier exports %s", id, k, c.snapAt(k), show(cp), show(e))
				return
			}
			rest := c.streamSteps(s, k+1, c.n)
			applySteps(t, c, a, rest)
			applySteps(t, c, b, rest)
			if ea, eb := exportOf(t, a, id), exportOf(t, b, id); !c.f.equal(ea, eb) {
				t.Errorf("stream %s: ApplySnapshot at %d (%s), a checkpoint, a crash, then messages %d..%d gives %s; the same without the crash gives %s", id, k, c.snapAt(k), k+1, c.n, show(eb), show(ea))
				return
			}
		}
	}
}
