package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/svckit/svckit/internal/localstack"
)

// JetStream beside svckit (`svckit bench --peer jetstream`): one hop with
// file storage through a nats-server the bench starts (bin/nats-server,
// pinned in tools/go.mod like consul and nsqd), once with JetStream's
// default sync interval (its file store is flushed every 2 minutes: what
// was acknowledged before a power loss can be lost) and once with
// sync_interval: always (flushed before the publish is acknowledged:
// svckit's durability). Its clients are nats.go's, in this process: an
// async publisher and one durable pull consumer with explicit acks, one
// ack per message, messages of payloadSize bytes as in svckit's hops.

// PeerJetStream is the value of Options.Peer that measures JetStream.
const PeerJetStream = "jetstream"

// natsPublishMaxPending bounds the publishes awaiting JetStream's
// acknowledgement, as replay.OwnerOptions.MaxInFlight's default (4096)
// bounds the owner's messages awaiting nsqd's.
const natsPublishMaxPending = 4096

// natsServer is a nats-server with JetStream, and a connection to it.
type natsServer struct {
	proc *localstack.Process
	nc   *nats.Conn
	js   jetstream.JetStream
	// pubErr is the first publish JetStream refused (or that timed out),
	// from the client's callback; the run fails on it.
	pubErr atomic.Pointer[error]
}

// startNATS starts bin/nats-server with JetStream on a free loopback port
// (the server picks it: port -1, and says which in its ports file, so no
// port is guessed and none can be taken meanwhile), its store in a new
// directory under the run's data directory, and connects to it.
// syncAlways sets sync_interval: always; otherwise the default stands.
func (r *runner) startNATS(ctx context.Context, name string, syncAlways bool) *natsServer {
	dir := r.env.TempDir()
	store, ports := filepath.Join(dir, "store"), filepath.Join(dir, "ports")
	for _, d := range []string{store, ports} {
		if err := os.Mkdir(d, 0o700); err != nil {
			r.fail("%s: %v", name, err)
		}
	}
	sync := "" // JetStream's default: 2 minutes
	if syncAlways {
		sync = "  sync_interval: always\n"
	}
	conf := fmt.Sprintf("host: \"127.0.0.1\"\nport: -1\nports_file_dir: %s\njetstream {\n  store_dir: %s\n%s}\n",
		strconv.Quote(ports), strconv.Quote(store), sync)
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		r.fail("%s: writing its configuration: %v", name, err)
	}
	p := r.env.StartProcess(name, filepath.Join(r.bins, "nats-server"), []string{"-js", "-c", confPath})
	r.procs = append(r.procs, p)
	var url string
	r.env.WaitFor(30*time.Second, name+"'s ports file", func() bool {
		url = natsURL(ports)
		return url != "" || !p.Running()
	})
	if url == "" {
		r.fail("%s exited before it listened:\n%s", name, tail(p.Log(), 20))
	}
	nc, err := nats.Connect(url, nats.Name("svckit-bench"), nats.MaxReconnects(0))
	if err != nil {
		r.fail("%s: connecting to %s: %v", name, url, err)
	}
	s := &natsServer{proc: p, nc: nc}
	s.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(natsPublishMaxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			s.pubErr.CompareAndSwap(nil, &err)
		}))
	if err != nil {
		nc.Close()
		r.fail("%s: %v", name, err)
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.js.AccountInfo(actx); err != nil {
		nc.Close()
		r.fail("%s: JetStream is not answering: %v", name, err)
	}
	return s
}

// natsURL is the client URL in the ports file nats-server wrote in dir,
// or "" while there is none (it writes the file once it listens).
func natsURL(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.ports"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var ports struct {
			Nats []string `json:"nats"`
		}
		if json.Unmarshal(b, &ports) == nil && len(ports.Nats) > 0 {
			return ports.Nats[0]
		}
	}
	return ""
}

// stop closes the connection and stops nats-server (SIGTERM: it flushes
// its store and exits).
func (s *natsServer) stop() {
	s.nc.Close()
	_ = s.proc.Stop()
}

// jsHop is one stream with file storage on subject and one durable pull
// consumer of it with explicit acks, consuming: handle is called with
// every message (on one goroutine) before its ack.
type jsHop struct {
	s       *natsServer
	stream  string
	subject string
	cons    jetstream.Consumer
	cc      jetstream.ConsumeContext
}

func (r *runner) openJSHop(ctx context.Context, s *natsServer, name string, handle func(jetstream.Msg)) *jsHop {
	h := &jsHop{s: s, stream: "BENCH_" + name, subject: "bench." + name}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.js.CreateStream(cctx, jetstream.StreamConfig{Name: h.stream, Subjects: []string{h.subject},
		Storage: jetstream.FileStorage, Replicas: 1}); err != nil {
		r.fail("jetstream: creating stream %s: %v", h.stream, err)
	}
	cons, err := s.js.CreateOrUpdateConsumer(cctx, h.stream, jetstream.ConsumerConfig{Durable: "bench",
		AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		r.fail("jetstream: creating the consumer of %s: %v", h.stream, err)
	}
	h.cons = cons
	h.cc, err = cons.Consume(func(m jetstream.Msg) {
		handle(m)
		_ = m.Ack() // one ack per message, not waited for (an error shows as a missing ack at the end)
	})
	if err != nil {
		r.fail("jetstream: consuming %s: %v", h.stream, err)
	}
	return h
}

// publish publishes body asynchronously; a publish JetStream refuses
// later is kept (natsServer.pubErr) and reported by waitAcked. The stall
// wait is long: with sync_interval: always a full window of pending
// publishes waits for the disk, and the client's default (200 ms) would
// fail the publish instead of measuring that wait.
func (h *jsHop) publish(body []byte) error {
	if _, err := h.s.js.PublishAsync(h.subject, body, jetstream.WithStallWait(time.Minute)); err != nil {
		return fmt.Errorf("publishing to %s: %w", h.subject, err)
	}
	return nil
}

// waitAcked waits until every publish was acknowledged by JetStream and
// the consumer's acks reached the server for n messages (its ack floor).
func (r *runner) waitAcked(ctx context.Context, h *jsHop, n int) {
	select {
	case <-h.s.js.PublishAsyncComplete():
	case <-ctx.Done():
		r.fail("jetstream: interrupted")
	case <-time.After(5 * time.Minute):
		r.fail("jetstream: publishes to %s unanswered after 5 minutes", h.subject)
	}
	if p := h.s.pubErr.Load(); p != nil {
		r.fail("jetstream: publishing to %s: %v", h.subject, *p)
	}
	r.env.WaitFor(time.Minute, "JetStream's ack floor of "+h.stream+" to reach "+strconv.Itoa(n), func() bool {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		info, err := h.cons.Info(ictx)
		return err == nil && info.AckFloor.Stream >= uint64(n) && info.NumAckPending == 0
	})
}

func (h *jsHop) close() {
	h.cc.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = h.s.js.DeleteStream(ctx, h.stream)
}

// jsThroughput publishes n messages asynchronously as fast as the client
// takes them (at most natsPublishMaxPending unacknowledged) and returns
// the rate from the first publish to the last message consumed and its
// ack in the consumer's ack floor.
func (r *runner) jsThroughput(ctx context.Context, s *natsServer, name string, n int) float64 {
	var got atomic.Int64
	done := make(chan struct{})
	h := r.openJSHop(ctx, s, name, func(jetstream.Msg) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	defer h.close()
	body := make([]byte, payloadSize)
	start := time.Now()
	for range n {
		if err := h.publish(body); err != nil {
			r.fail("jetstream: %v", err)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		r.fail("jetstream: interrupted")
	case <-time.After(5 * time.Minute):
		r.fail("jetstream: %d of %d consumed from %s after 5 minutes", got.Load(), n, h.stream)
	}
	r.waitAcked(ctx, h, n)
	return float64(n) / time.Since(start).Seconds()
}

// jsLatency publishes at rate messages per second for a warm-up second
// and then d, paced as svckit's sides are, each carrying the time of its
// publish, and returns the latency from that to the consumer's callback,
// over the messages published after the warm-up.
func (r *runner) jsLatency(ctx context.Context, s *natsServer, name string, rate int, d time.Duration) *latencies {
	lat := newLatencies()
	h := r.openJSHop(ctx, s, name, func(m jetstream.Msg) {
		now := time.Now()
		if b := m.Data(); len(b) >= 8 {
			lat.add(time.Unix(0, int64(binary.BigEndian.Uint64(b))), now)
		}
	})
	defer h.close()
	published := 0
	lat.countFrom(time.Now().Add(time.Second))
	err := paced(ctx, rate, time.Second+d, func(n int) error {
		for range n {
			// A body of its own per message: the client may still hold
			// the last one in its buffer.
			body := make([]byte, payloadSize)
			binary.BigEndian.PutUint64(body, uint64(time.Now().UnixNano()))
			if err := h.publish(body); err != nil {
				return err
			}
			published++
		}
		return nil
	})
	if err != nil {
		r.fail("jetstream at %d/s: %v", rate, err)
	}
	r.waitAcked(ctx, h, published)
	if got := lat.received(); got < int64(published) {
		r.fail("jetstream at %d/s: %d of %d received", rate, got, published)
	}
	return lat
}
