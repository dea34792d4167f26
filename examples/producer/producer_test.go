package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/svckit/svckit/examples/internal/extest"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

func TestCounterFold(t *testing.T) {
	var f CounterFold
	for v := uint64(1); v <= 4; v++ {
		if err := f.Apply(v, strconv.AppendUint(nil, v, 10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Apply(5, []byte("five")); err == nil {
		t.Error("Apply of a payload that is no number: no error")
	}
	var g CounterFold
	if err := g.Restore(f.State()); err != nil {
		t.Fatal(err)
	}
	if g != (CounterFold{Count: 4, Sum: 10}) {
		t.Errorf("restored fold %+v, want count 4, sum 10", g)
	}
}

// received collects what a plain go-nsq consumer sees on a topic.
type received struct {
	mu   sync.Mutex
	envs map[uint64]envelope.Envelope
	bad  []string
}

func consume(t *testing.T, nsqdTCP, topic string) *received {
	t.Helper()
	r := &received{envs: map[uint64]envelope.Envelope{}}
	c, err := nsq.NewConsumer(topic, "test", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLogger(nil, nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		env, err := envelope.Decode(m.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err != nil {
			r.bad = append(r.bad, err.Error())
			return nil
		}
		env.Payload = append([]byte(nil), env.Payload...)
		r.envs[env.Seq] = env
		return nil
	}))
	if err := c.ConnectToNSQD(nsqdTCP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.StopChan })
	return r
}

// check waits until seqs 1..n arrived and checks each: stream, content
// type, and the counter's value, which is its sequence number.
func (r *received) check(t *testing.T, stream string, n uint64) {
	t.Helper()
	testenv.WaitFor(t, extest.Timeout, fmt.Sprintf("%d messages on the topic", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return uint64(len(r.envs)) >= n
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		t.Errorf("undecodable messages: %v", r.bad)
	}
	for seq := uint64(1); seq <= n; seq++ {
		env, ok := r.envs[seq]
		switch {
		case !ok:
			t.Errorf("seq %d missing", seq)
		case env.Stream != stream || env.ContentType != ContentType || string(env.Payload) != strconv.FormatUint(seq, 10):
			t.Errorf("seq %d: stream %q, content type %q, payload %q; want %q, %q, %q", seq, env.Stream, env.ContentType, env.Payload, stream, ContentType, strconv.FormatUint(seq, 10))
		}
	}
}

func snapshot(t *testing.T, addr, stream string) (uint64, CounterFold) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), extest.Timeout)
	defer cancel()
	seq, state, err := replay.Client{}.Snapshot(ctx, addr, stream)
	if err != nil {
		t.Fatalf("GET /snapshot: %v", err)
	}
	var f CounterFold
	if err := json.Unmarshal(state, &f); err != nil {
		t.Fatalf("snapshot state %s: %v", state, err)
	}
	return seq, f
}

// The producer publishes 1..n as stream p1 (batches and single publishes),
// serves its stream and snapshot, refuses a second owner of the stream,
// and continues the counter and the sequence after a restart.
func TestProducer(t *testing.T) {
	bin := extest.Build(t, ".")
	st := testenv.StartStack(t)
	r := consume(t, st.NSQD.TCPAddr, "ticks-test")
	dataDir := t.TempDir()
	args := []string{"--stream-id=p1", "--topic=ticks-test", "--interval=1ms"}

	p := extest.StartIn(t, st.Consul, "producer-1", bin, dataDir, append(args, "--batch=50", "--count=1000")...)
	addr := extest.Addr(t, st.Consul, p, "producer", "producer-1")
	r.check(t, "p1", 1000)
	testenv.WaitFor(t, extest.Timeout, "the producer's /streams to show 1000", func() bool {
		var ss []replay.Status
		return extest.GetJSON(addr, "/streams", &ss) == nil && len(ss) == 1 && ss[0].Stream == "p1" && ss[0].LastSeq == 1000
	})
	if seq, f := snapshot(t, addr, "p1"); seq != 1000 || f != (CounterFold{Count: 1000, Sum: 1000 * 1001 / 2}) {
		t.Errorf("snapshot at %d: %+v; want at 1000: count 1000, sum %d", seq, f, 1000*1001/2)
	}

	// One owner per stream: a second producer of p1 is refused, exit 2.
	second := extest.Start(t, st.Consul, "producer-2", bin, args...)
	if code := extest.WaitExit(t, second); code != 2 {
		t.Errorf("a second producer of stream p1 exited %d, want 2\n%s", code, second.Log())
	} else if !strings.Contains(second.Log(), "p1") {
		t.Errorf("the refusal does not name the stream:\n%s", second.Log())
	}

	// A restart continues: the counter and the sequence at 1001, one value
	// at a time (Owner.Publish).
	if err := p.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, p.Log())
	}
	p = extest.StartIn(t, st.Consul, "producer-1", bin, dataDir, append(args, "--count=200")...)
	addr = extest.Addr(t, st.Consul, p, "producer", "producer-1")
	r.check(t, "p1", 1200)
	testenv.WaitFor(t, extest.Timeout, "the snapshot to cover 1200", func() bool {
		seq, _ := snapshot(t, addr, "p1")
		return seq == 1200
	})
	if _, f := snapshot(t, addr, "p1"); f != (CounterFold{Count: 1200, Sum: 1200 * 1201 / 2}) {
		t.Errorf("snapshot after the restart: %+v; want count 1200, sum %d", f, 1200*1201/2)
	}

	// Flags are checked before anything starts: exit 2, one line.
	bad := extest.Start(t, st.Consul, "producer-3", bin, "--topic=x")
	if code := extest.WaitExit(t, bad); code != 2 || !strings.Contains(bad.Log(), "--stream-id is required") {
		t.Errorf("no --stream-id: exit %d, want 2 with a message naming --stream-id\n%s", code, bad.Log())
	}
}
