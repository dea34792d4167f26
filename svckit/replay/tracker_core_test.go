package replay

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
)

// These tests drive a stream's core (tracker_core.go) directly: no HTTP,
// no files, no Tracker. The Tracker's tests (replay_test.go, crash_test.go,
// …) cover the same rules end to end.

// coreApplier records what the core applies; Apply fails while fail[seq]
// is above 0 (counting down), ApplySnapshot while snapErr is set.
type coreApplier struct {
	n       map[[2]uint64]int // (seq, part) → Apply calls that succeeded
	fail    map[uint64]int
	snaps   []uint64
	state   []byte
	snapErr error
}

func newCoreApplier() *coreApplier {
	return &coreApplier{n: map[[2]uint64]int{}, fail: map[uint64]int{}}
}

func (a *coreApplier) Apply(_ string, env envelope.Envelope) error {
	if a.fail[env.Seq] > 0 {
		a.fail[env.Seq]--
		return errors.New("the database is away")
	}
	a.n[[2]uint64{env.Seq, uint64(env.Part)}]++
	return nil
}

func (a *coreApplier) ApplySnapshot(_ string, seq uint64, state []byte) error {
	if a.snapErr != nil {
		return a.snapErr
	}
	a.snaps = append(a.snaps, seq)
	a.state = state
	return nil
}
func (a *coreApplier) ExportState(string) ([]byte, error) { return []byte("{}"), nil }
func (a *coreApplier) ImportState(string, []byte) error   { return nil }

// coreApply applies env and fails the test unless the core's verdict is
// applied/duplicate with no error.
func coreApply(t *testing.T, c *streamCore, a Applier, env envelope.Envelope, wantApplied, wantDup bool) {
	t.Helper()
	env.Stream = c.id
	applied, dup, err := c.apply(a, env)
	if err != nil || applied != wantApplied || dup != wantDup {
		t.Fatalf("apply %+v: applied %v, duplicate %v, err %v; want applied %v, duplicate %v", env, applied, dup, err, wantApplied, wantDup)
	}
}

func TestCoreSuppressesDuplicates(t *testing.T) {
	c := newStreamCore("s")
	a := newCoreApplier()
	coreApply(t, &c, a, envelope.Envelope{Seq: 2}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2}, false, true)
	coreApply(t, &c, a, envelope.Envelope{Seq: 3}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, false, true)
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Marker: true}, false, true) // a marker for an applied sequence
	for k, n := range a.n {
		if n != 1 {
			t.Errorf("seq %d applied %d times", k[0], n)
		}
	}
	if st := c.status(); st.Applied != 3 || st.LastContiguous != 3 || st.Duplicates != 3 || len(st.Gaps) != 0 {
		t.Fatalf("status %+v, want 1..3 applied and 3 duplicates", st)
	}

	// An Apply error leaves the sequence unhandled: neither applied nor
	// a duplicate, and it applies when it comes again.
	a.fail[4] = 1
	if applied, dup, err := c.apply(a, envelope.Envelope{Stream: "s", Seq: 4}); applied || dup || err == nil {
		t.Fatalf("failing Apply: applied %v, duplicate %v, err %v", applied, dup, err)
	}
	if c.applied.Contains(4) {
		t.Fatal("a sequence whose Apply failed counts as handled")
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 4}, true, false)
	if c.duplicates != 3 || a.n[[2]uint64{4, 0}] != 1 {
		t.Fatalf("after the retry: %d duplicates, seq 4 applied %d times", c.duplicates, a.n[[2]uint64{4, 0}])
	}
}

func TestCoreDetectsGapsAfterGrace(t *testing.T) {
	const grace = 2 * time.Second
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newStreamCore("s")
	a := newCoreApplier()
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 4}, true, false)
	if got := c.missing(); !slices.Equal(got, [][2]uint64{{2, 3}}) {
		t.Fatalf("missing %v, want [2 3]", got)
	}
	scan := func(at time.Time, wantN uint64, wantDue bool, wantDetected [][2]uint64) {
		t.Helper()
		n, due, detected := c.scanGaps(at, grace)
		if n != wantN || due != wantDue || !slices.Equal(detected, wantDetected) {
			t.Fatalf("scan at +%v: %d missing, due %v, detected %v; want %d, %v, %v", at.Sub(t0), n, due, detected, wantN, wantDue, wantDetected)
		}
	}
	scan(t0, 2, false, nil) // first seen
	if due := c.dueGaps(t0.Add(grace-time.Nanosecond), grace); len(due) != 0 {
		t.Fatalf("due before the grace: %v", due)
	}
	scan(t0.Add(grace-time.Nanosecond), 2, false, nil)
	scan(t0.Add(grace), 2, true, [][2]uint64{{2, 3}}) // due, detected once
	scan(t0.Add(2*grace), 2, true, nil)               // still due, not detected again
	if due := c.dueGaps(t0.Add(grace), grace); !slices.Equal(due, [][2]uint64{{2, 3}}) {
		t.Fatalf("due after the grace: %v, want [2 3]", due)
	}

	// Filling the start of the gap opens another (it starts elsewhere):
	// its own grace begins, and the closed one is forgotten.
	coreApply(t, &c, a, envelope.Envelope{Seq: 2}, true, false)
	t1 := t0.Add(3 * grace)
	scan(t1, 1, false, nil)
	if _, ok := c.gapSeen[2]; ok || c.counted[2] {
		t.Fatal("a closed gap is still remembered")
	}
	scan(t1.Add(grace), 1, true, [][2]uint64{{3, 3}})
	coreApply(t, &c, a, envelope.Envelope{Seq: 3}, true, false)
	scan(t1.Add(2*grace), 0, false, nil)
	if len(c.gapSeen) != 0 || len(c.counted) != 0 {
		t.Fatalf("no gap, yet remembered: seen %v, counted %v", c.gapSeen, c.counted)
	}

	// The tail the owner reported is missing too, with the same grace.
	c.noteOwnerLast(10)
	if got := c.missing(); !slices.Equal(got, [][2]uint64{{5, 10}}) {
		t.Fatalf("missing with the owner at 10: %v, want [5 10]", got)
	}
	t2 := t1.Add(3 * grace)
	scan(t2, 6, false, nil)
	scan(t2.Add(grace), 6, true, [][2]uint64{{5, 10}})
}

func TestCoreBoundOnLiveSequences(t *testing.T) {
	const maxAhead = 100
	c := newStreamCore("s")
	a := newCoreApplier()
	if c.pastBound(100, maxAhead) || !c.pastBound(101, maxAhead) {
		t.Fatal("with nothing known of the owner, the bound is maxAhead")
	}
	// What this consumer applied (perhaps a forgery within the bound)
	// does not move the bound: only the owner's word does.
	coreApply(t, &c, a, envelope.Envelope{Seq: 100}, true, false)
	if !c.pastBound(101, maxAhead) {
		t.Fatal("an applied sequence moved the bound")
	}
	c.noteOwnerLast(10)
	if c.pastBound(110, maxAhead) || !c.pastBound(111, maxAhead) {
		t.Fatal("with the owner at 10, the bound is 110")
	}
	c.noteOwnerLast(5) // an older answer: the bound never goes back
	if c.ownerLast != 10 || c.pastBound(110, maxAhead) {
		t.Fatalf("an older answer moved the owner's last to %d", c.ownerLast)
	}
}

func TestCoreSplitSequence(t *testing.T) {
	c := newStreamCore("s")
	a := newCoreApplier()
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 3}, true, false) // seq 2, below it, is a gap until complete
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Part: 2, Parts: 3}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Part: 0, Parts: 3}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Part: 0, Parts: 3}, false, true) // a duplicate part
	if c.applied.Contains(2) || !slices.Equal(c.missing(), [][2]uint64{{2, 2}}) {
		t.Fatalf("seq 2 with a part missing: applied %v, missing %v", c.applied.Intervals(), c.missing())
	}
	// A whole message for a sequence in parts, and parts disagreeing on
	// their count, are refused for good.
	if _, _, err := c.apply(a, envelope.Envelope{Stream: "s", Seq: 2}); !isPermanent(err) {
		t.Fatalf("a whole message for a split sequence: %v, want a permanent error", err)
	}
	if _, _, err := c.apply(a, envelope.Envelope{Stream: "s", Seq: 2, Part: 1, Parts: 4}); !isPermanent(err) {
		t.Fatalf("a part of 4 after parts of 3: %v, want a permanent error", err)
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Part: 1, Parts: 3}, true, false)
	if !c.applied.Contains(2) || c.partial[2] != nil || c.parked.Count() != 0 {
		t.Fatalf("seq 2 complete: applied %v, partial %v, parked %v", c.applied.Intervals(), c.partial[2], c.parked.Intervals())
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Part: 1, Parts: 3}, false, true) // after completion
	for k, n := range a.n {
		if n != 1 {
			t.Errorf("seq %d part %d applied %d times", k[0], k[1], n)
		}
	}
	if len(a.n) != 5 || len(c.missing()) != 0 {
		t.Fatalf("applied %v, missing %v; want 1, 3 and the three parts of 2, nothing missing", a.n, c.missing())
	}
}

func TestCoreMarkers(t *testing.T) {
	c := newStreamCore("s")
	a := newCoreApplier()
	dead := []byte("dead-lettered upstream")
	coreApply(t, &c, a, envelope.Envelope{Seq: 1, Marker: true}, false, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Marker: true, Payload: dead}, false, false)
	if len(a.n) != 0 {
		t.Fatalf("markers reached Apply: %v", a.n)
	}
	if st := c.status(); st.LastContiguous != 2 || st.Applied != 1 || !slices.Equal(st.DeadLettered, [][2]uint64{{2, 2}}) {
		t.Fatalf("after two markers: %+v, want 1..2 complete, 2 dead-lettered", st)
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Marker: true, Payload: dead}, false, true) // the marker again
	coreApply(t, &c, a, envelope.Envelope{Seq: 1, Marker: true}, false, true)
	// The dead-lettered message, requeued, applies once.
	coreApply(t, &c, a, envelope.Envelope{Seq: 2}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2}, false, true)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Marker: true, Payload: dead}, false, true)
	if st := c.status(); st.Applied != 2 || len(st.DeadLettered) != 0 {
		t.Fatalf("after the requeued message: %+v", st)
	}

	// A split sequence with a part dead-lettered upstream: complete and
	// parked, its record kept so that exactly that part applies later.
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 0, Parts: 3}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 1, Parts: 3, Marker: true, Payload: dead}, false, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 2, Parts: 3, Marker: true}, false, false)
	if !c.applied.Contains(3) || !c.parked.Contains(3) || c.partial[3] == nil {
		t.Fatalf("seq 3 with a dead part: applied %v, parked %v, partial %v", c.applied.Intervals(), c.parked.Intervals(), c.partial[3])
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 0, Parts: 3}, false, true)
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 2, Parts: 3}, false, true) // marked: handled
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 1, Parts: 3}, true, false) // the dead part, requeued
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 1, Parts: 3}, false, true)
	if c.parked.Contains(3) || c.partial[3] != nil {
		t.Fatalf("seq 3 after its dead part came: parked %v, partial %v", c.parked.Intervals(), c.partial[3])
	}
	for k, n := range a.n {
		if n != 1 {
			t.Errorf("seq %d part %d applied %d times", k[0], k[1], n)
		}
	}
}

// park is what the tracker does to a replayed message it dead-lettered.
func TestCorePark(t *testing.T) {
	c := newStreamCore("s")
	a := newCoreApplier()
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, true, false)
	c.park(envelope.Envelope{Stream: "s", Seq: 1}) // already applied: stays applied
	c.park(envelope.Envelope{Stream: "s", Seq: 2})
	c.park(envelope.Envelope{Stream: "s", Seq: 2})
	if st := c.status(); st.LastContiguous != 2 || st.Applied != 1 || !slices.Equal(st.DeadLettered, [][2]uint64{{2, 2}}) {
		t.Fatalf("after parking 2: %+v", st)
	}
	// One part of a split sequence: the others are still wanted.
	c.park(envelope.Envelope{Stream: "s", Seq: 3, Part: 0, Parts: 3})
	if c.applied.Contains(3) {
		t.Fatal("parking one part completed the sequence")
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 0, Parts: 3}, true, false) // requeued: applies
	c.park(envelope.Envelope{Stream: "s", Seq: 3, Part: 0, Parts: 3})              // handled: no change
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 1, Parts: 3}, true, false)
	c.park(envelope.Envelope{Stream: "s", Seq: 3, Part: 2, Parts: 3})
	if !c.applied.Contains(3) || !c.parked.Contains(3) {
		t.Fatalf("seq 3 with its last part parked: applied %v, parked %v", c.applied.Intervals(), c.parked.Intervals())
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 3, Part: 2, Parts: 3}, true, false) // requeued: applies
	if c.parked.Contains(3) || c.partial[3] != nil {
		t.Fatalf("seq 3 whole: parked %v, partial %v", c.parked.Intervals(), c.partial[3])
	}
}

func TestCoreSnapshotResets(t *testing.T) {
	c := newStreamCore("s")
	a := newCoreApplier()
	for _, seq := range []uint64{1, 2, 3, 5, 8} {
		coreApply(t, &c, a, envelope.Envelope{Seq: seq}, true, false)
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 7, Marker: true, Payload: []byte("dead")}, false, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 9, Part: 0, Parts: 2}, true, false)
	c.noteOwnerLast(9)

	// At or below what is contiguous: nothing to gain, nothing changes.
	if ok, err := c.applySnapshot(a, 3, []byte("old")); ok || err != nil || len(a.snaps) != 0 {
		t.Fatalf("a snapshot at 3 with 1..3 applied: %v, %v, %v", ok, err, a.snaps)
	}
	// A failing ApplySnapshot changes nothing either.
	before := c.applied.Intervals()
	a.snapErr = errors.New("disk away")
	if ok, err := c.applySnapshot(a, 6, []byte("s6")); ok || !errors.Is(err, a.snapErr) {
		t.Fatalf("failing ApplySnapshot: %v, %v", ok, err)
	}
	if !slices.Equal(c.applied.Intervals(), before) || c.partial[9] == nil || c.snapshots != 0 {
		t.Fatal("a failed snapshot changed the core")
	}
	a.snapErr = nil

	if ok, err := c.applySnapshot(a, 6, []byte("s6")); !ok || err != nil {
		t.Fatalf("snapshot at 6: %v, %v", ok, err)
	}
	if !slices.Equal(a.snaps, []uint64{6}) || string(a.state) != "s6" {
		t.Fatalf("ApplySnapshot got %v %q", a.snaps, a.state)
	}
	// Exactly 1..6: what was applied above it (8, part of 9) is not in
	// the snapshot's state, so it is forgotten and applied again.
	if got := c.applied.Intervals(); !slices.Equal(got, [][2]uint64{{1, 6}}) || c.parked.Count() != 0 || len(c.partial) != 0 || c.snapshots != 1 {
		t.Fatalf("after the snapshot: applied %v, parked %v, partial %v, snapshots %d", got, c.parked.Intervals(), c.partial, c.snapshots)
	}
	if got := c.missing(); !slices.Equal(got, [][2]uint64{{7, 9}}) {
		t.Fatalf("missing after the snapshot: %v, want [7 9]", got)
	}
	coreApply(t, &c, a, envelope.Envelope{Seq: 6}, false, true)
	coreApply(t, &c, a, envelope.Envelope{Seq: 8}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 9, Part: 0, Parts: 2}, true, false)
	if a.n[[2]uint64{8, 0}] != 2 || a.n[[2]uint64{9, 0}] != 2 {
		t.Fatalf("8 and 9/0 once before and once after the snapshot: %v", a.n)
	}
}

// The core's part of the checkpoint round-trips through its JSON: a
// restored core takes exactly what the original would.
func TestCoreCheckpointRoundTrip(t *testing.T) {
	c := newStreamCore("s")
	a := newCoreApplier()
	dead := []byte("dead")
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 1}, false, true)
	coreApply(t, &c, a, envelope.Envelope{Seq: 2, Marker: true, Payload: dead}, false, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 4, Part: 0, Parts: 3}, true, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 4, Part: 1, Parts: 3, Marker: true, Payload: dead}, false, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 5, Part: 1, Parts: 2, Marker: true, Payload: dead}, false, false)
	coreApply(t, &c, a, envelope.Envelope{Seq: 5, Part: 0, Parts: 2}, true, false)
	c.noteOwnerLast(40)

	b, err := json.Marshal(c.checkpoint(json.RawMessage(`{"x":1}`)))
	if err != nil {
		t.Fatal(err)
	}
	var sc streamCheckpoint
	if err := json.Unmarshal(b, &sc); err != nil {
		t.Fatal(err)
	}
	if string(sc.State) != `{"x":1}` {
		t.Fatalf("state %s", sc.State)
	}
	r := newStreamCore("s")
	r.restore(sc)
	if !reflect.DeepEqual(r.status(), c.status()) || !reflect.DeepEqual(r.partial, c.partial) {
		t.Fatalf("restored %+v %v, want %+v %v", r.status(), r.partial, c.status(), c.partial)
	}
	if r.pastBound(140, 100) || !r.pastBound(141, 100) {
		t.Fatal("the bound restarted without the owner's last answer")
	}
	// The restored core takes what the original would, and nothing twice.
	b2 := newCoreApplier()
	coreApply(t, &r, b2, envelope.Envelope{Seq: 1}, false, true)
	coreApply(t, &r, b2, envelope.Envelope{Seq: 4, Part: 0, Parts: 3}, false, true)
	coreApply(t, &r, b2, envelope.Envelope{Seq: 4, Part: 1, Parts: 3}, true, false) // dead, requeued
	coreApply(t, &r, b2, envelope.Envelope{Seq: 4, Part: 2, Parts: 3}, true, false)
	coreApply(t, &r, b2, envelope.Envelope{Seq: 5, Part: 1, Parts: 2}, true, false) // dead, requeued
	coreApply(t, &r, b2, envelope.Envelope{Seq: 2}, true, false)                    // dead, requeued
	coreApply(t, &r, b2, envelope.Envelope{Seq: 3}, true, false)
	if st := r.status(); st.LastContiguous != 5 || len(st.DeadLettered) != 0 || st.Applied != 5 {
		t.Fatalf("restored core after the rest: %+v", st)
	}
}

// Any order, any duplicates, transient Apply failures redelivered later:
// every message (or part) is applied exactly once, and the stream ends
// complete, parked exactly where something was dead-lettered upstream.
func TestCoreExactlyOnceAnyOrder(t *testing.T) {
	for seed := uint64(1); seed <= 50; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed*7919))
			const n = 200
			dead := []byte("dead-lettered upstream")
			var msgs []envelope.Envelope
			want := map[[2]uint64]bool{} // (seq, part) Apply must see once
			wantParked := map[uint64]bool{}
			split := map[uint64]bool{}
			for seq := uint64(1); seq <= n; seq++ {
				parts := uint32(1)
				if rng.IntN(4) == 0 {
					parts = uint32(2 + rng.IntN(3))
					split[seq] = true
				}
				for part := uint32(0); part < parts; part++ {
					env := envelope.Envelope{Stream: "s", Seq: seq}
					if parts > 1 {
						env.Part, env.Parts = part, parts
					}
					switch rng.IntN(10) {
					case 0:
						env.Marker = true
					case 1:
						env.Marker, env.Payload = true, dead
						wantParked[seq] = true
					default:
						want[[2]uint64{seq, uint64(part)}] = true
					}
					msgs = append(msgs, env)
				}
			}
			// Deliveries: every message once or more, in any order.
			var queue []envelope.Envelope
			for _, m := range msgs {
				for range 1 + rng.IntN(3) {
					queue = append(queue, m)
				}
			}
			rng.Shuffle(len(queue), func(i, j int) { queue[i], queue[j] = queue[j], queue[i] })
			c := newStreamCore("s")
			a := newCoreApplier()
			for range n / 10 {
				a.fail[1+rng.Uint64N(n)]++
			}
			var dups uint64
			now := time.Unix(0, 0)
			for len(queue) > 0 {
				env := queue[0]
				queue = queue[1:]
				_, dup, err := c.apply(a, env)
				switch {
				case err != nil && isPermanent(err):
					t.Fatalf("(%d, %d): %v", env.Seq, env.Part, err)
				case err != nil:
					queue = append(queue, env) // requeued
				case dup:
					dups++
				}
				if rng.IntN(20) == 0 { // scans in between change nothing of the above
					now = now.Add(time.Second)
					c.scanGaps(now, time.Second)
				}
			}
			for k := range want {
				if a.n[k] != 1 {
					t.Errorf("seq %d part %d applied %d times", k[0], k[1], a.n[k])
				}
			}
			if len(a.n) != len(want) {
				t.Errorf("applied %d (seq, part) pairs, want %d", len(a.n), len(want))
			}
			if got := c.applied.Intervals(); !slices.Equal(got, [][2]uint64{{1, n}}) || len(c.missing()) != 0 {
				t.Fatalf("applied %v, missing %v; want exactly 1..%d", got, c.missing(), n)
			}
			for seq := uint64(1); seq <= n; seq++ {
				if c.parked.Contains(seq) != wantParked[seq] {
					t.Errorf("seq %d parked %v, want %v", seq, c.parked.Contains(seq), wantParked[seq])
				}
				// A record of parts stays only for a split sequence with a
				// dead part, which applies should it come again.
				if p := c.partial[seq]; (p != nil) != (split[seq] && wantParked[seq]) {
					t.Errorf("seq %d: partial record %v, split %v, parked %v", seq, p, split[seq], wantParked[seq])
				}
			}
			if c.duplicates != dups {
				t.Fatalf("%d duplicates counted, %d reported", c.duplicates, dups)
			}
		})
	}
}

// The lag is measured against the highest sequence known to exist (the
// owner's last, or one applied out of order), in messages and in seconds
// since the message at the contiguous position was created; it is 0, 0
// once the position caught up.
func TestCoreLag(t *testing.T) {
	core := newStreamCore("s")
	c := &core
	a := newCoreApplier()
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(seq uint64) time.Time { return t0.Add(time.Duration(seq) * time.Second) }
	if n, s := c.lag(t0); n != 0 || s != 0 {
		t.Fatalf("empty: lag %d, %vs", n, s)
	}
	coreApply(t, c, a, envelope.Envelope{Seq: 1, Created: at(1)}, true, false)
	coreApply(t, c, a, envelope.Envelope{Seq: 2, Created: at(2)}, true, false)
	if n, s := c.lag(at(10)); n != 0 || s != 0 {
		t.Fatalf("caught up: lag %d, %vs; want 0, 0", n, s)
	}
	c.noteOwnerLast(5)
	if n, s := c.lag(at(10)); n != 3 || s != 8 {
		t.Fatalf("owner at 5, position 2 (created at 2s): lag %d, %vs at 10s; want 3, 8", n, s)
	}
	coreApply(t, c, a, envelope.Envelope{Seq: 7, Created: at(7)}, true, false) // out of order: 7 exists
	if n, _ := c.lag(at(10)); n != 5 {
		t.Fatalf("7 applied, position 2: lag %d; want 5", n)
	}
	coreApply(t, c, a, envelope.Envelope{Seq: 3, Created: at(3)}, true, false)
	if n, s := c.lag(at(10)); n != 4 || s != 7 {
		t.Fatalf("position 3 (created at 3s): lag %d, %vs at 10s; want 4, 7", n, s)
	}
	for _, seq := range []uint64{4, 5, 6} {
		coreApply(t, c, a, envelope.Envelope{Seq: seq, Created: at(seq)}, true, false)
	}
	if n, s := c.lag(at(10)); n != 0 || s != 0 {
		t.Fatalf("position 7: lag %d, %vs; want 0, 0", n, s)
	}
}
