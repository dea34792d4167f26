package main

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/svckit/svckit/examples/internal/extest"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/testenv"
)

func TestState(t *testing.T) {
	st := &State{streams: map[string]*Counts{}}
	for _, p := range []string{"a", "bb", "ccc"} {
		if err := st.Apply("s", envelope.Envelope{Stream: "s", Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := st.ExportState("s")
	if err != nil {
		t.Fatal(err)
	}
	again := &State{streams: map[string]*Counts{}}
	if err := again.ImportState("s", b); err != nil {
		t.Fatal(err)
	}
	if got := *again.counts("s"); got != (Counts{Messages: 3, Bytes: 6}) {
		t.Errorf("imported %+v, want 3 messages, 6 bytes", got)
	}
	// A snapshot: the upstream's count; bytes count from there.
	if err := again.ApplySnapshot("s", 40, []byte(`{"count":40,"sum":820}`)); err != nil {
		t.Fatal(err)
	}
	_ = again.Apply("s", envelope.Envelope{Payload: []byte("dd")})
	if got := *again.counts("s"); got != (Counts{Messages: 41, Bytes: 2, SnapshotSeq: 40}) {
		t.Errorf("after a snapshot at 40 and one message: %+v", got)
	}
	if err := again.ApplySnapshot("s", 50, []byte(`{"sum":1}`)); err == nil {
		t.Error("a snapshot without a count: no error")
	}
}

// bytesOf is the payload bytes of the producer's values from..to.
func bytesOf(from, to uint64) uint64 {
	var n uint64
	for v := from; v <= to; v++ {
		n += uint64(len(strconv.FormatUint(v, 10)))
	}
	return n
}

// The tracker over the producer example: it counts every value once, and
// what it missed while it was stopped (its channel is ephemeral: nsqd
// kept nothing for it) it replays from the producer on restart, on top of
// its checkpoint.
func TestTrackerCountsAndRecovers(t *testing.T) {
	tracker, producer := extest.Build(t, "."), extest.Build(t, "../producer")
	st := testenv.StartStack(t)
	c := st.Consul
	// Another consumer's channel on the topic: while the tracker is away
	// the topic has a channel, so nsqd hands its messages on rather than
	// keeping them for the first channel to come (a topic without any
	// channel does that), and the tracker must replay what it missed.
	for _, path := range []string{"/topic/create?topic=ticks-tr", "/channel/create?topic=ticks-tr&channel=other"} {
		url := "http://" + st.NSQD.HTTPAddr + path
		if code, body, err := testenv.HTTPPost(url, "text/plain", nil); err != nil || code != 200 {
			t.Fatalf("POST %s: %d %s %v", url, code, body, err)
		}
	}
	trackerDir, producerDir := t.TempDir(), t.TempDir()
	trackerArgs := []string{"--topic=ticks-tr", "--upstream=producer"}
	tr := extest.StartIn(t, c, "tracker-1", tracker, trackerDir, trackerArgs...)
	addr := extest.Addr(t, c, tr, "tracker", "tracker-1")
	producerArgs := []string{"--stream-id=t1", "--topic=ticks-tr", "--interval=1ms", "--batch=20"}
	p := extest.StartIn(t, c, "producer-1", producer, producerDir, append(producerArgs, "--count=500")...)
	extest.Addr(t, c, p, "producer", "producer-1")
	wait(t, addr, 500)

	if err := tr.Stop(); err != nil {
		t.Fatalf("tracker SIGTERM: %v", err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("producer SIGTERM: %v", err)
	}
	p = extest.StartIn(t, c, "producer-1", producer, producerDir, append(producerArgs, "--count=200")...)
	paddr := extest.Addr(t, c, p, "producer", "producer-1")
	testenv.WaitFor(t, extest.Timeout, "the producer to publish 700", func() bool {
		var ss []replay.Status
		return extest.GetJSON(paddr, "/streams", &ss) == nil && len(ss) == 1 && ss[0].LastSeq == 700
	})
	tr = extest.StartIn(t, c, "tracker-1", tracker, trackerDir, trackerArgs...)
	addr = extest.Addr(t, c, tr, "tracker", "tracker-1")
	wait(t, addr, 700)
	if got := extest.Metric(t, addr, "svckit_replay_received_messages_total"); got < 200 {
		t.Errorf("svckit_replay_received_messages_total = %v; want the 200 values published while the tracker was away", got)
	}
}

// wait waits until the tracker has every value 1..n of stream t1, then
// checks its state: n messages, their bytes, nothing applied twice.
func wait(t *testing.T, addr string, n uint64) {
	t.Helper()
	testenv.WaitFor(t, extest.Timeout, fmt.Sprintf("the tracker to complete t1 up to %d", n), func() bool {
		var ss []replay.StreamStatus
		return extest.GetJSON(addr, "/streams", &ss) == nil && len(ss) == 1 && ss[0].LastContiguous == n && len(ss[0].Gaps) == 0
	})
	var state map[string]Counts
	if err := extest.GetJSON(addr, "/state", &state); err != nil {
		t.Fatal(err)
	}
	if got, want := state["t1"], (Counts{Messages: n, Bytes: bytesOf(1, n)}); got != want {
		t.Errorf("the tracker's state of t1: %+v; want %+v", got, want)
	}
}
