package replaytest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// The checks TestApplier and TestPipeline run on an Applier, one subtest
// each (runApplierChecks): each makes new appliers from the case, applies
// messages (and snapshots) in some order and compares exports, so that a
// failure names the message, the order and the rule the tracker relies on.

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
