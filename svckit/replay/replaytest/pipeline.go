package replaytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/stage"
)

// Stage is one stateless stage between the owner and the consumer, as
// stage.Options describes it.
type Stage struct {
	// Name names the stage in failure messages (and dead markers' reasons,
	// as stage.Options.Name does); "" is "stage N".
	Name string
	// Transform or Append (exactly one): the stage's transform.
	Transform stage.Transform
	Append    stage.AppendTransform
	// Snapshot maps the upstream's snapshot onto what the stage's
	// downstream expects. nil: the stage serves no snapshots (it answers
	// 501), and the Snapshot checks are skipped.
	Snapshot stage.SnapshotMapper
}

// Pipeline is the path of a stream from its owner to a consumer.
type Pipeline struct {
	// NewFold makes a new owner's fold (OwnerOptions.Fold), one per
	// stream. nil: the owner offers no snapshot, and the Fold and Snapshot
	// checks are skipped.
	NewFold func() replay.Fold
	// ContentType of the owner's messages (OwnerOptions.ContentType).
	ContentType string
	// Payload is what the owner publishes as message seq of stream
	// (called once per message).
	Payload func(stream string, seq uint64) []byte
	// Stages, from the owner's side to the consumer's; none is a consumer
	// of the owner's topic.
	Stages []Stage
	// NewApplier makes a new consumer state, with no stream.
	NewApplier func() replay.Applier
}

// PipelineOptions configures TestPipeline. Zero values take the defaults
// named on each field.
type PipelineOptions struct {
	// Features of the Applier.
	Features
	// Streams are the stream ids; nil is s1, s2, s3.
	Streams []string
	// N is how many messages (seq 1..N) each stream gets; 0 is DefaultN.
	N uint64
	// Fold configures the Fold checks; its N defaults to N.
	Fold FoldOptions
}

// TestPipeline checks a whole pipeline, as subtests:
//
//   - Fold: TestFold's checks on NewFold, with the first stream's payloads.
//   - Stages: Outputs (every input makes outputs that can be published,
//     or is rejected with pubsub.Reject) and Deterministic (a transform
//     run again on the same input, as a relayed replay does, with the
//     memory a relay reuses, makes the same outputs).
//   - Snapshots: the fold's State and every mapper's output, at every
//     point, are JSON, and no mapper fails.
//   - Applier: TestApplier's checks, on what the consumer receives (each
//     message through every stage: whole messages, parts, and markers,
//     which the tracker counts without calling Apply), and with the
//     pipeline's own snapshots: the owner's fold over 1..k, through every
//     stage's SnapshotMapper. Applier/Snapshot/EqualsApplied is the
//     property that makes recovery exact: for every k, ApplySnapshot(k,
//     the mapped fold over 1..k) equals applying the outputs of 1..k, and
//     ThenRest that it still does after the outputs of k+1..N.
//
// The owner's messages carry ContentType, a Created time that follows seq
// and no correlation id.
func TestPipeline[T TB[T]](t T, p Pipeline, opts PipelineOptions) {
	t.Helper()
	if p.NewApplier == nil || p.Payload == nil {
		t.Fatalf("replaytest.TestPipeline: Pipeline.NewApplier and Pipeline.Payload are required")
		return
	}
	for i, st := range p.Stages {
		if (st.Transform == nil) == (st.Append == nil) {
			t.Fatalf("replaytest.TestPipeline: stage %d (%q): exactly one of Transform and Append is required", i+1, st.Name)
			return
		}
	}
	n := orDefault(opts.N)
	c, err := newApplierCase(p.NewApplier, opts.Streams, n, opts.Features)
	if err != nil {
		t.Fatalf("replaytest.TestPipeline: %v", err)
		return
	}
	names := make([]string, len(p.Stages))
	for i, st := range p.Stages {
		names[i] = st.Name
		if names[i] == "" {
			names[i] = fmt.Sprintf("stage %d", i+1)
		}
	}
	// payloads[s][seq], made once.
	payloads := make([][][]byte, len(c.streams))
	for s, id := range c.streams {
		payloads[s] = make([][]byte, n+1)
		for seq := uint64(1); seq <= n; seq++ {
			payloads[s][seq] = clone(p.Payload(id, seq))
		}
	}
	if p.NewFold != nil {
		t.Run("Fold", func(t T) {
			fo := opts.Fold
			if fo.N == 0 {
				fo.N = n
			}
			runFoldChecks(t, newFoldCase(p.NewFold, func(seq uint64) []byte {
				if seq < uint64(len(payloads[0])) {
					return payloads[0][seq]
				}
				return p.Payload(c.streams[0], seq)
			}, fo))
		})
	}
	ch := &chain{p: p, names: names}
	input := func(s int, seq uint64) envelope.Envelope {
		return envelope.Envelope{Stream: c.streams[s], Seq: seq, Created: created(seq), ContentType: p.ContentType, Payload: clone(payloads[s][seq])}
	}
	ok := false
	t.Run("Stages", func(t T) {
		var live [][][][]byte // [s][seq]: every envelope the consumer receives, encoded
		if t.Run("Outputs", func(t T) { live = stagesOutputs(t, c, ch, input) }) && live != nil {
			ok = true
		}
		t.Run("Deterministic", func(t T) {
			if live == nil {
				t.Skipf("Outputs failed")
				return
			}
			stagesDeterministic(t, c, ch, input, live)
		})
	})
	if !ok {
		return
	}
	switch {
	case p.NewFold == nil:
		c.noSnapshot = "Pipeline.NewFold is nil: the owner offers no snapshot, and a consumer that falls behind its retained log cannot recover"
	default:
		for i, st := range p.Stages {
			if st.Snapshot == nil {
				c.noSnapshot = fmt.Sprintf("stage %s has no SnapshotMapper: it answers snapshot requests 501, and a consumer that falls behind the owner's retained log cannot recover (it says so in /ready)", names[i])
			}
		}
	}
	if c.noSnapshot == "" {
		snaps := makeSnapshots(c, p, names, payloads)
		t.Run("Snapshots", func(t T) {
			for s := range c.streams {
				for k := uint64(1); k <= n; k++ {
					if err := snaps.errs[s][k]; err != nil {
						t.Errorf("stream %s, snapshot at %d: %v", c.streams[s], k, err)
						return
					}
				}
			}
		})
		c.snapshot = func(s int, k uint64) ([]byte, error) { return snaps.states[s][k], snaps.errs[s][k] }
		if len(names) == 0 {
			c.snapDesc = "the fold over 1..%d"
		} else {
			c.snapDesc = "the fold over 1..%d mapped by " + strings.Join(names, ", then ")
		}
	}
	t.Run("Applier", func(t T) { runApplierChecks(t, c) })
}

// created is the Created time of the owner's message seq.
func created(seq uint64) time.Time {
	return time.Unix(1_700_000_000, 0).UTC().Add(time.Duration(seq) * time.Millisecond)
}

// chain runs a pipeline's stages as svckit/stage does.
type chain struct {
	p     Pipeline
	names []string
}

// scratch is the memory a relay hands an AppendTransform, input after
// input (stage.Stage.Replay).
type scratch struct {
	outs []stage.Output
	buf  []byte
}

// run is what the consumer receives of in: every stage's outputs of the
// previous stage's, in order. With relay, each stage's AppendTransform
// gets the scratch of its stage (sc[i]), holding garbage; else fresh
// memory, as live messages do. An error that is not pubsub.Reject is
// returned; a rejected input becomes a marker carrying the reason, as the
// stage publishes it (dead says which).
func (ch *chain) run(in envelope.Envelope, sc []scratch) (outs []envelope.Envelope, dead []string, err error) {
	// Each stage gets its input as it comes off NSQ (or a replay): decoded.
	in, err = republish(in)
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s seq %d: the owner cannot encode its message: %w", in.Stream, in.Seq, err)
	}
	envs := []envelope.Envelope{in}
	for i, st := range ch.p.Stages {
		var next []envelope.Envelope
		for _, e := range envs {
			var s *scratch
			if sc != nil {
				s = &sc[i]
			}
			o, rejected, err := ch.outputs(i, st, e, s)
			if err != nil {
				return nil, nil, err
			}
			if rejected != "" {
				dead = append(dead, rejected)
			}
			for j := range o {
				if o[j], err = republish(o[j]); err != nil {
					return nil, nil, fmt.Errorf("stage %s, stream %s seq %d: an output cannot be published: %w", ch.names[i], e.Stream, e.Seq, err)
				}
			}
			next = append(next, o...)
		}
		envs = next
	}
	return envs, dead, nil
}

// republish is env as its receiver decodes it.
func republish(env envelope.Envelope) (envelope.Envelope, error) {
	b, err := env.Marshal()
	if err != nil {
		return env, err
	}
	return envelope.Decode(b)
}

// outputs is stage.Stage's outputs and deadMarker: what stage i makes of
// in. Output payloads are copied: a relay encodes them before its next
// input.
func (ch *chain) outputs(i int, st Stage, in envelope.Envelope, sc *scratch) ([]envelope.Envelope, string, error) {
	name := ch.names[i]
	if in.Marker {
		return []envelope.Envelope{in}, "", nil // nothing to transform: passed on
	}
	ctx := context.Background()
	var outs []stage.Output
	var err error
	switch {
	case st.Append != nil && sc != nil:
		garbage := sc.buf[:cap(sc.buf)]
		for j := range garbage {
			garbage[j] = 0xA5
		}
		sc.outs, sc.buf, err = st.Append(ctx, in, sc.outs[:0], sc.buf[:0])
		outs = sc.outs
	case st.Append != nil:
		fresh := new(struct {
			outs [1]stage.Output
			buf  [64]byte
		})
		outs, _, err = st.Append(ctx, in, fresh.outs[:0], fresh.buf[:0])
	default:
		outs, err = st.Transform(ctx, in)
	}
	if err == nil && in.Parts > 1 && len(outs) > 1 {
		err = pubsub.Reject(fmt.Errorf("%s: an input that is a part of a split message may make at most one output (part %d of %d of %s/%d made %d)", name, in.Part, in.Parts, in.Stream, in.Seq, len(outs)))
	}
	what := fmt.Sprintf("stream %s seq %d", in.Stream, in.Seq)
	if in.Parts > 1 {
		what += fmt.Sprintf(" part %d of %d", in.Part, in.Parts)
	}
	if err != nil {
		var perm pubsub.PermanentError
		if !errors.As(err, &perm) {
			return nil, "", fmt.Errorf("stage %s, %s: %w: an error that is not pubsub.Reject is retried for ever live, and fails every replay of the range: make payloads the stage accepts, or Reject the input", name, what, err)
		}
		m := envelope.Envelope{Stream: in.Stream, Seq: in.Seq, Created: in.Created, CorrelationID: in.CorrelationID,
			Part: in.Part, Parts: in.Parts, Marker: true,
			Payload: fmt.Appendf(nil, "dead-lettered by %s: %v", name, err)}
		return []envelope.Envelope{m}, fmt.Sprintf("stage %s rejected %s: %v", name, what, err), nil
	}
	id := envelope.Envelope{Stream: in.Stream, Seq: in.Seq, Created: in.Created, CorrelationID: in.CorrelationID,
		Part: in.Part, Parts: in.Parts}
	switch len(outs) {
	case 0:
		id.Marker = true
		return []envelope.Envelope{id}, "", nil
	case 1:
		id.ContentType, id.Payload = outs[0].ContentType, clone(outs[0].Payload)
		return []envelope.Envelope{id}, "", nil
	}
	envs := make([]envelope.Envelope, len(outs))
	for j, o := range outs {
		e := id
		e.ContentType, e.Payload = o.ContentType, clone(o.Payload)
		e.Part, e.Parts = uint32(j), uint32(len(outs))
		envs[j] = e
	}
	return envs, "", nil
}

// encodeAll encodes envs (as the stage publishes them).
func encodeAll(envs []envelope.Envelope) ([][]byte, error) {
	out := make([][]byte, len(envs))
	for i := range envs {
		b, err := envs[i].Marshal()
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// stagesOutputs runs every message through the stages as live messages,
// fills c.frames with what the tracker applies, and returns every
// envelope the consumer receives, encoded; nil on failure.
func stagesOutputs[T TB[T]](t T, c *applierCase, ch *chain, input func(s int, seq uint64) envelope.Envelope) [][][][]byte {
	t.Helper()
	live := make([][][][]byte, len(c.streams))
	var markers, parts, rejected int
	for s := range c.streams {
		live[s] = make([][][]byte, c.n+1)
		for seq := uint64(1); seq <= c.n; seq++ {
			outs, dead, err := ch.run(input(s, seq), nil)
			if err != nil {
				t.Errorf("%v", err)
				return nil
			}
			for _, d := range dead {
				rejected++
				if rejected <= 5 {
					t.Logf("%s: the stage dead-letters it, and the consumer never applies it (its marker completes the sequence): a SnapshotMapper must account for it", d)
				}
			}
			enc, err := encodeAll(outs)
			if err != nil {
				t.Errorf("stream %s seq %d: an output cannot be published: %v", c.streams[s], seq, err)
				return nil
			}
			live[s][seq] = enc
			c.frames[s][seq] = nil
			for i, o := range outs {
				if o.Marker {
					markers++
					continue
				}
				if o.Parts > 1 {
					parts++
				}
				c.frames[s][seq] = append(c.frames[s][seq], frame{b: enc[i], part: o.Part, parts: o.Parts})
			}
		}
	}
	t.Logf("%d streams × %d messages: the consumer receives %d markers (not applied), %d parts of split messages; %d inputs dead-lettered", len(c.streams), c.n, markers, parts, rejected)
	return live
}

// stagesDeterministic runs every message through the stages again, as a
// live message and as a relayed replay does (with the memory it reuses),
// and compares with live.
func stagesDeterministic[T TB[T]](t T, c *applierCase, ch *chain, input func(s int, seq uint64) envelope.Envelope, live [][][][]byte) {
	t.Helper()
	for s, id := range c.streams {
		sc := make([]scratch, len(ch.p.Stages)) // one replay of the stream, through every stage
		for seq := uint64(1); seq <= c.n; seq++ {
			for _, mode := range []string{"a live message again", "a relayed replay"} {
				var outs []envelope.Envelope
				var err error
				if mode == "a relayed replay" {
					outs, _, err = ch.run(input(s, seq), sc)
				} else {
					outs, _, err = ch.run(input(s, seq), nil)
				}
				if err != nil {
					t.Errorf("as %s: %v", mode, err)
					return
				}
				enc, err := encodeAll(outs)
				if err != nil {
					t.Errorf("stream %s seq %d, as %s: an output cannot be published: %v", id, seq, mode, err)
					return
				}
				if !framesEqual(enc, live[s][seq]) {
					t.Errorf("stream %s seq %d: the stages make %s as a live message and %s as %s: a transform must depend on its input alone (a replay runs it again, and an AppendTransform gets memory of the previous input in a relay)", id, seq, showFrames(live[s][seq]), showFrames(enc), mode)
					return
				}
			}
		}
	}
}

func framesEqual(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func showFrames(fs [][]byte) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		env, err := envelope.Decode(f)
		switch {
		case err != nil:
			parts[i] = fmt.Sprintf("undecodable %q", f)
		case env.Marker:
			parts[i] = fmt.Sprintf("marker %q", env.Payload)
		default:
			parts[i] = fmt.Sprintf("%s %s", env.ContentType, show(env.Payload))
		}
		if env.Parts > 1 {
			parts[i] = fmt.Sprintf("part %d of %d: %s", env.Part, env.Parts, parts[i])
		}
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

type snapshots struct {
	states [][][]byte // [s][k], as ApplySnapshot gets it
	errs   [][]error
}

// makeSnapshots is every stream's snapshot at every k: the owner's fold
// over 1..k, as GET /snapshot serves it, through every stage's mapper
// (each hop JSON-encoded, as each serves it).
func makeSnapshots(c *applierCase, p Pipeline, names []string, payloads [][][]byte) *snapshots {
	out := &snapshots{states: make([][][]byte, len(c.streams)), errs: make([][]error, len(c.streams))}
	for s, id := range c.streams {
		out.states[s] = make([][]byte, c.n+1)
		out.errs[s] = make([]error, c.n+1)
		f := p.NewFold()
		var failed error
		for k := uint64(1); k <= c.n; k++ {
			if failed == nil {
				if err := f.Apply(k, clone(payloads[s][k])); err != nil {
					failed = fmt.Errorf("the fold's Apply(%d, %s): %v", k, show(payloads[s][k]), err)
				}
			}
			if failed != nil {
				out.errs[s][k] = failed
				continue
			}
			state := f.State()
			b, err := viaJSON(state)
			if err != nil {
				out.errs[s][k] = fmt.Errorf("the fold's State is not JSON (%v): %s", err, show(state))
				continue
			}
			for i, st := range p.Stages {
				m, err := st.Snapshot(id, k, b)
				if err != nil {
					out.errs[s][k] = fmt.Errorf("stage %s's SnapshotMapper(%q, %d, %s): %v", names[i], id, k, show(b), err)
					break
				}
				if b, err = viaJSON(m); err != nil {
					out.errs[s][k] = fmt.Errorf("stage %s's SnapshotMapper made %s, which is not JSON (%v): a stage serves snapshots on /snapshot as JSON values", names[i], show(m), err)
					break
				}
			}
			if out.errs[s][k] == nil {
				out.states[s][k] = b
			}
		}
	}
	return out
}
