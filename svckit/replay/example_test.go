package replay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
)

// ackAll is a replay.PumpPublisher that acknowledges every message at once, as
// nsqd does when it takes one. A real owner gets a *pubsub.Batcher of its
// own (service.OpenStream makes one).
type ackAll struct{}

func (ackAll) PublishAsync(_ context.Context, _ []byte, done func(error)) { done(nil) }
func (ackAll) Close(context.Context) error                                { return nil }

// counter is a replay.Fold: the stream's snapshot, here the number of
// messages and the sum of their values.
type counter struct{ Count, Sum int }

func (c *counter) Apply(_ uint64, payload []byte) error {
	v, err := strconv.Atoi(string(payload))
	c.Count, c.Sum = c.Count+1, c.Sum+v
	return err
}
func (c *counter) State() []byte          { b, _ := json.Marshal(c); return b }
func (c *counter) Restore(b []byte) error { return json.Unmarshal(b, c) }

// An Owner publishes one stream: each message gets the next sequence
// number and goes to the retained log, from which Run hands it to the
// publisher (nsqd) and from which consumers that missed it replay it.
// service.OpenStream opens one inside a service (with a claim in Consul,
// a Batcher, and the replay endpoints); this is the owner alone.
func ExampleOpenOwner() {
	dir, err := os.MkdirTemp("", "owner")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	open := func() *replay.Owner {
		owner, err := replay.OpenOwner(replay.OwnerOptions{
			Stream:      "counter-1", // the same across restarts
			Dir:         filepath.Join(dir, "counter-1"),
			Log:         retainlog.DefaultOptions(""), // fsync before anything is published
			ContentType: "text/plain",
			Fold:        &counter{}, // restored from the directory: the snapshot, then the log after it
		}, ackAll{})
		if err != nil {
			panic(err)
		}
		return owner
	}
	ctx := context.Background()

	owner := open()
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = owner.Run(runCtx) }) // the pump: log → publisher, until stopped
	// Publish returns once the message is durable: from then on it
	// reaches nsqd, even if nsqd is down now or this process dies.
	seq, err := owner.Publish(ctx, []byte("5"), "")
	if err != nil {
		panic(err)
	}
	fmt.Println("published seq", seq)
	// PublishBatch: contiguous sequence numbers, one write to the log.
	last, err := owner.PublishBatch(ctx, [][]byte{[]byte("7"), []byte("9")})
	if err != nil {
		panic(err)
	}
	fmt.Println("published up to seq", last)
	st := owner.Status() // what GET /streams shows
	fmt.Printf("stream %s: last %d, retained %d..%d\n", st.Stream, st.LastSeq, st.RetainedFirst, st.RetainedLast)
	snapSeq, state, _ := owner.Snapshot() // what GET /snapshot serves
	fmt.Printf("snapshot at %d: %s\n", snapSeq, state)
	stop()
	wg.Wait()
	if err := owner.Close(ctx); err != nil { // saves the fold and what nsqd acknowledged
		panic(err)
	}

	// A restart continues the stream: the next sequence, the same fold.
	owner = open()
	seq, _ = owner.Publish(ctx, []byte("11"), "")
	snapSeq, state, _ = owner.Snapshot()
	fmt.Printf("after a restart: seq %d, snapshot at %d: %s\n", seq, snapSeq, state)
	_ = owner.Close(ctx)
	// Output:
	// published seq 1
	// published up to seq 3
	// stream counter-1: last 3, retained 1..3
	// snapshot at 3: {"Count":3,"Sum":21}
	// after a restart: seq 4, snapshot at 4: {"Count":4,"Sum":32}
}

// sums is a replay.Applier: a consumer's state, here the sum of the values
// of each stream.
type sums struct{ m map[string]int }

func (s *sums) Apply(stream string, env envelope.Envelope) error {
	v, err := strconv.Atoi(string(env.Payload))
	s.m[stream] += v
	return err
}
func (s *sums) ApplySnapshot(stream string, _ uint64, state []byte) error {
	var c counter // the owner's Fold, as its GET /snapshot serves it
	err := json.Unmarshal(state, &c)
	s.m[stream] = c.Sum
	return err
}
func (s *sums) ExportState(stream string) ([]byte, error) {
	return []byte(strconv.Itoa(s.m[stream])), nil
}
func (s *sums) ImportState(stream string, b []byte) error {
	v, err := strconv.Atoi(string(b))
	s.m[stream] = v
	return err
}

// A Tracker applies each (stream, seq) to the consumer's state exactly
// once, whatever NSQ delivers twice or out of order, and knows what is
// missing. With TrackerOptions.Owners (the stream owners' service in
// Consul) its Run asks them for the gaps; with CheckpointPath the state
// and what was applied survive a restart together.
func ExampleTracker_Deliver() {
	dir, err := os.MkdirTemp("", "tracker")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	checkpoint := filepath.Join(dir, "checkpoint.json")
	state := &sums{m: map[string]int{}}
	tr, err := replay.NewTracker(state, replay.TrackerOptions{CheckpointPath: checkpoint})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	deliver := func(tr *replay.Tracker, seq uint64, value string) {
		// A consumer's handler calls Deliver with each message's envelope.
		applied, err := tr.Deliver(ctx, envelope.Envelope{Stream: "counter-1", Seq: seq, Payload: []byte(value)})
		fmt.Printf("seq %d: applied %v, err %v\n", seq, applied, err)
	}
	deliver(tr, 1, "5")
	deliver(tr, 3, "9") // out of order: 2 is missing
	deliver(tr, 1, "5") // a redelivery
	for _, st := range tr.Status() {
		fmt.Printf("%s: last contiguous %d, applied %d, duplicates %d, gaps %v, sum %d\n",
			st.Stream, st.LastContiguous, st.Applied, st.Duplicates, st.Gaps, state.m[st.Stream])
	}
	deliver(tr, 2, "7") // the gap closes (live, or replayed by Run)
	// The checkpoint: Run saves it every CheckpointInterval.
	if err := tr.Save(); err != nil {
		panic(err)
	}

	// After a restart the checkpoint restores the state and what was
	// applied: a message seen before is still a duplicate.
	state = &sums{m: map[string]int{}}
	tr, err = replay.NewTracker(state, replay.TrackerOptions{CheckpointPath: checkpoint})
	if err != nil {
		panic(err)
	}
	deliver(tr, 2, "7")
	st := tr.Status()[0]
	fmt.Printf("after a restart: last contiguous %d, sum %d\n", st.LastContiguous, state.m["counter-1"])
	// Output:
	// seq 1: applied true, err <nil>
	// seq 3: applied true, err <nil>
	// seq 1: applied false, err <nil>
	// counter-1: last contiguous 1, applied 2, duplicates 1, gaps [[2 2]], sum 14
	// seq 2: applied true, err <nil>
	// seq 2: applied false, err <nil>
	// after a restart: last contiguous 3, sum 21
}
