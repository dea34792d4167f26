package replaytest

import (
	"bytes"

	"github.com/svckit/svckit/svckit/replay"
)

// FoldOptions configures TestFold. Zero values take the defaults named on
// each field.
type FoldOptions struct {
	// N is how many messages (seq 1..N) each check folds; 0 is DefaultN.
	N uint64
	// Equal reports whether two States are the same fold; nil is
	// bytes.Equal.
	Equal func(a, b []byte) bool
}

// TestFold checks a replay.Fold (see the package documentation for each
// check): Determinism, StateIsJSON, StateStable, PayloadNotRetained,
// RoundTrip and RestoreReplaces, each a subtest. newFold makes a new, empty
// fold, as OwnerOptions.Fold starts; payloads(seq) is the payload the owner
// publishes as message seq (called once per seq; the fold must accept it).
func TestFold[T TB[T]](t T, newFold func() replay.Fold, payloads func(seq uint64) []byte, opts FoldOptions) {
	t.Helper()
	if newFold == nil || payloads == nil {
		t.Fatalf("replaytest.TestFold: newFold and payloads are required")
		return
	}
	runFoldChecks(t, newFoldCase(newFold, func(seq uint64) []byte { return payloads(seq) }, opts))
}

type foldCase struct {
	newFold func() replay.Fold
	n       uint64
	ps      [][]byte // ps[seq] for seq 1..n
	eq      func(a, b []byte) bool
}

func newFoldCase(newFold func() replay.Fold, payloads func(seq uint64) []byte, opts FoldOptions) *foldCase {
	c := &foldCase{newFold: newFold, n: orDefault(opts.N), eq: opts.Equal}
	if c.eq == nil {
		c.eq = bytes.Equal
	}
	c.ps = make([][]byte, c.n+1)
	for seq := uint64(1); seq <= c.n; seq++ {
		c.ps[seq] = clone(payloads(seq))
	}
	return c
}

func runFoldChecks[T TB[T]](t T, c *foldCase) {
	t.Helper()
	t.Run("Determinism", func(t T) { foldDeterminism(t, c) })
	t.Run("StateIsJSON", func(t T) { foldStateIsJSON(t, c) })
	t.Run("StateStable", func(t T) { foldStateStable(t, c) })
	t.Run("PayloadNotRetained", func(t T) { foldPayloadNotRetained(t, c) })
	t.Run("RoundTrip", func(t T) { foldRoundTrip(t, c) })
	t.Run("RestoreReplaces", func(t T) { foldRestoreReplaces(t, c) })
}

// apply folds message seq into f, with payload (a copy of c.ps[seq] the
// caller may then overwrite).
func foldApply[T TB[T]](t T, c *foldCase, f replay.Fold, seq uint64, payload []byte) {
	t.Helper()
	if err := f.Apply(seq, payload); err != nil {
		t.Fatalf("Apply(%d, %s): %v (a fold that fails stops its owner from publishing: the generator must make payloads the fold accepts)", seq, show(c.ps[seq]), err)
	}
}

// states is the State of one fold before any message (0) and after each
// message 1..n.
func foldStates[T TB[T]](t T, c *foldCase) [][]byte {
	t.Helper()
	f := c.newFold()
	out := make([][]byte, c.n+1)
	out[0] = clone(f.State())
	for seq := uint64(1); seq <= c.n; seq++ {
		foldApply(t, c, f, seq, clone(c.ps[seq]))
		out[seq] = clone(f.State())
	}
	return out
}

func foldDeterminism[T TB[T]](t T, c *foldCase) {
	t.Helper()
	a, b := c.newFold(), c.newFold()
	if sa, sb := a.State(), b.State(); !c.eq(sa, sb) {
		t.Errorf("two new folds have different States:\n first:  %s\n second: %s", show(sa), show(sb))
		return
	}
	for seq := uint64(1); seq <= c.n; seq++ {
		foldApply(t, c, a, seq, clone(c.ps[seq]))
		foldApply(t, c, b, seq, clone(c.ps[seq]))
		if sa, sb := a.State(), b.State(); !c.eq(sa, sb) {
			t.Errorf("after message %d: two folds fed the same messages 1..%d have different States (a State must follow from the messages alone: no time, randomness or map iteration order; the owner rebuilds its fold when it restarts, and every consumer that recovers through the snapshot takes it as the stream's state):\n first:  %s\n second: %s", seq, seq, show(sa), show(sb))
			return
		}
	}
}

func foldStateIsJSON[T TB[T]](t T, c *foldCase) {
	t.Helper()
	f := c.newFold()
	for seq := uint64(0); seq <= c.n; seq++ {
		if seq > 0 {
			foldApply(t, c, f, seq, clone(c.ps[seq]))
		}
		s := f.State()
		if _, err := viaJSON(s); err != nil {
			t.Errorf("State after message %d is not JSON (%v): %s\nthe owner keeps State in snapshot.json and serves it on /snapshot as a JSON value, so every save would fail (and the published watermark with it): return JSON, or nil", seq, err, show(s))
			return
		}
	}
}

func foldStateStable[T TB[T]](t T, c *foldCase) {
	t.Helper()
	a, b := c.newFold(), c.newFold()
	type taken struct {
		seq       uint64
		got, copy []byte
	}
	var kept []taken
	for seq := uint64(0); seq <= c.n; seq++ {
		if seq > 0 {
			foldApply(t, c, a, seq, clone(c.ps[seq]))
			foldApply(t, c, b, seq, clone(c.ps[seq]))
		}
		s1 := a.State()
		s1c := clone(s1)
		if s2 := a.State(); !c.eq(s1c, s2) {
			t.Errorf("after message %d: State twice in a row gives different bytes:\n first:  %s\n second: %s", seq, show(s1c), show(s2))
			return
		}
		kept = append(kept, taken{seq, s1, s1c})
		for _, k := range kept {
			if !bytes.Equal(k.got, k.copy) {
				t.Errorf("the State returned after message %d changed by the time message %d was folded in (%s, was %s): State must return bytes the fold no longer writes to (the owner encodes a State after it let go of its lock, while Apply goes on)", k.seq, seq, show(k.got), show(k.copy))
				return
			}
		}
	}
	if sa, sb := a.State(), b.State(); !c.eq(sa, sb) {
		t.Errorf("calling State changed the fold: after messages 1..%d, a fold asked for its State after every message has %s, one never asked before %s", c.n, show(sa), show(sb))
	}
}

func foldPayloadNotRetained[T TB[T]](t T, c *foldCase) {
	t.Helper()
	reused, fresh := c.newFold(), c.newFold()
	for seq := uint64(1); seq <= c.n; seq++ {
		buf := clone(c.ps[seq])
		foldApply(t, c, reused, seq, buf)
		scribble(buf)
		foldApply(t, c, fresh, seq, clone(c.ps[seq]))
		if sr, sf := reused.State(), fresh.State(); !c.eq(sr, sf) {
			t.Errorf("after message %d: a fold whose payload buffers were overwritten once Apply returned has State %s, one fed fresh payloads %s: Apply must copy what it keeps of the payload (a restarting owner rebuilds its fold from the retained log, whose records alias a reused buffer)", seq, show(sr), show(sf))
			return
		}
	}
}

func foldRoundTrip[T TB[T]](t T, c *foldCase) {
	t.Helper()
	states := foldStates(t, c)
	for k := uint64(0); k <= c.n; k++ {
		in, err := viaJSON(states[k])
		if err != nil {
			t.Fatalf("State after message %d is not JSON (%v): see StateIsJSON", k, err)
		}
		f := c.newFold()
		if err := f.Restore(in); err != nil {
			t.Errorf("Restore of the State after message %d: %v\n state: %s", k, err, show(in))
			return
		}
		if got := f.State(); !c.eq(got, states[k]) {
			t.Errorf("a new fold restored from the State after message %d has State %s, want %s (the State it was restored from, as snapshot.json gives it back: %s)", k, show(got), show(states[k]), show(in))
			return
		}
		for seq := k + 1; seq <= c.n; seq++ {
			foldApply(t, c, f, seq, clone(c.ps[seq]))
			if got := f.State(); !c.eq(got, states[seq]) {
				t.Errorf("restored from the State after message %d, then fed messages %d..%d: State %s, want %s (a fold that folded 1..%d without a restart)", k, k+1, seq, show(got), show(states[seq]), seq)
				return
			}
		}
	}
}

func foldRestoreReplaces[T TB[T]](t T, c *foldCase) {
	t.Helper()
	states := foldStates(t, c)
	for k := uint64(0); k < c.n; k++ {
		in, err := viaJSON(states[k])
		if err != nil {
			t.Fatalf("State after message %d is not JSON (%v): see StateIsJSON", k, err)
		}
		f := c.newFold()
		for seq := uint64(1); seq <= c.n; seq++ {
			foldApply(t, c, f, seq, clone(c.ps[seq]))
		}
		if err := f.Restore(in); err != nil {
			t.Errorf("Restore of the State after message %d into a fold that folded 1..%d: %v", k, c.n, err)
			return
		}
		if got := f.State(); !c.eq(got, states[k]) {
			t.Errorf("a fold that folded messages 1..%d, restored from the State after message %d, has State %s, want %s: Restore must replace the fold, not add to it (json.Unmarshal into a filled map merges)", c.n, k, show(got), show(states[k]))
			return
		}
	}
}
