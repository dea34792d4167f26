package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	svcmetrics "github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// This file is the hop, whole: examples/hop/hop.go is the same code (its
// declarations and imports; TestHopIsTheExamplesHop compares them), built
// by the examples module as an importer builds svckit. `svckit bench`
// compares the two builds (importer_hop_ratio), so what differs between
// them must be the build alone: change both files together.

// HopOptions configures Hop.
type HopOptions struct {
	// Lookupds and NSQDs are the nsqlookupd and nsqd instances found in
	// Consul (watchers of the services "nsqlookupd" and "nsqd").
	Lookupds, NSQDs *discovery.Watcher
	Topic           string
	Messages        int
	// Group is how many envelopes are handed to the Batcher at once
	// (PublishEnvelopesAsync); 1 hands each on its own
	// (PublishEnvelopeAsync, as a worker publishes each result).
	Group int
}

// HopResult is what one hop measured.
type HopResult struct {
	Messages   int     `json:"messages"`
	Seconds    float64 `json:"seconds"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	// MsgsPerMPUB is the mean number of messages per MPUB command.
	MsgsPerMPUB float64 `json:"msgs_per_mpub"`
}

// Hop is the svckit side of the bench's hop: Messages envelopes with a
// stream, a sequence and a creation time, published through a Batcher
// (MPUBs of 100, up to 4 in flight) Group at a time, consumed from Topic
// by a svckit Consumer (4 handlers) and deduplicated by a replay.Tracker.
// It returns once every message was consumed, with the rate from the
// first publish to the last message handled.
//
// `svckit bench` runs it in its own process (the svckit side of the hop)
// and as a program: HopSpec, which `svckit bench hop` runs as the
// repository's build, and bin/hop (examples/hop, a module of its own that
// imports svckit, with a copy of this file) runs as an importer's build.
// The same code in both programs, so that what differs between them is
// the build alone.
func Hop(ctx context.Context, o HopOptions) (HopResult, error) {
	n, group := o.Messages, o.Group
	if n <= 0 || group <= 0 {
		return HopResult{}, fmt.Errorf("hop: Messages (%d) and Group (%d) must be positive", n, group)
	}
	var got atomic.Int64
	done := make(chan struct{})
	tr, err := replay.NewTracker(nopApplier{}, replay.TrackerOptions{})
	if err != nil {
		return HopResult{}, fmt.Errorf("tracker: %w", err)
	}
	h := pubsub.HandlerFunc(func(hctx context.Context, m *pubsub.Message) error {
		if _, err := tr.Deliver(hctx, m.Envelope); err != nil {
			return err
		}
		if got.Add(1) == int64(n) {
			close(done)
		}
		return nil
	})
	c, err := pubsub.NewConsumer(o.Lookupds, o.NSQDs, h, pubsub.ConsumerOptions{
		Topic: o.Topic, Channel: "bench", NSQ: hopConfig(), Concurrency: 4, Logger: logging.Discard(),
	})
	if err != nil {
		return HopResult{}, fmt.Errorf("svckit consumer: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return HopResult{}, fmt.Errorf("svckit consumer start: %w", err)
	}
	defer c.Stop(context.Background())
	// The clock starts once the consumer is connected to nsqd, as the raw
	// sides' does (they connect to nsqd directly, before their clock). The
	// svckit consumer finds nsqd through nsqlookupd: when its first query
	// races the new topic's registration there, the next comes a poll
	// interval later, and timing that wait would measure the race.
	if err := waitConnected(ctx, c); err != nil {
		return HopResult{}, err
	}
	pm := svcmetrics.Nop()
	prod := pubsub.NewProducer(o.NSQDs, pubsub.ProducerOptions{Logger: logging.Discard(), Metrics: pm})
	defer prod.Stop()
	b := prod.NewBatcher(o.Topic, pubsub.BatcherOptions{MaxBatch: hopGroup})
	payload := make([]byte, payloadSize)
	var failed atomic.Value
	onDone := func(err error) {
		if err != nil {
			failed.Store(err)
		}
	}
	start := time.Now()
	// Groups are reused once acknowledged, as a producer would reuse its
	// buffers: a fresh slice per group would be 120 bytes of garbage per
	// message that the raw sides do not make.
	const groups = 8
	free := make(chan []envelope.Envelope, groups)
	for range groups {
		free <- make([]envelope.Envelope, 0, hopGroup)
	}
	for i := 1; i <= n; i += hopGroup {
		// One clock read per 100 messages, as replay.Owner's PublishBatch
		// stamps what it publishes at once (a clock read is 30-50 ns here,
		// 1 % of a message's cost); no message id, as the Owner sends
		// none: (stream, seq) identifies the message.
		now := time.Now()
		if group == 1 {
			for k := range min(hopGroup, n-i+1) {
				b.PublishEnvelopeAsync(ctx, envelope.Envelope{Stream: "bench-hop", Seq: uint64(i + k), Created: now,
					ContentType: "application/octet-stream", Payload: payload}, onDone)
			}
			continue
		}
		envs := (<-free)[:0]
		for k := range min(hopGroup, n-i+1) {
			envs = append(envs, envelope.Envelope{Stream: "bench-hop", Seq: uint64(i + k), Created: now,
				ContentType: "application/octet-stream", Payload: payload})
		}
		b.PublishEnvelopesAsync(ctx, envs, func(err error) {
			onDone(err)
			free <- envs
		})
	}
	if err := b.Close(ctx); err != nil {
		return HopResult{}, fmt.Errorf("svckit batcher: %w", err)
	}
	if err, _ := failed.Load().(error); err != nil {
		return HopResult{}, fmt.Errorf("svckit publish: %w", err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return HopResult{}, fmt.Errorf("svckit hop: %d of %d consumed: %w", got.Load(), n, ctx.Err())
	case <-time.After(5 * time.Minute):
		return HopResult{}, fmt.Errorf("svckit hop: %d of %d consumed after 5 minutes", got.Load(), n)
	}
	secs := time.Since(start).Seconds()
	return HopResult{Messages: n, Seconds: secs, MsgsPerSec: float64(n) / secs,
		MsgsPerMPUB: counterValue(pm.Published.WithLabelValues(o.Topic)) / counterValue(pm.PublishCmds.WithLabelValues(o.Topic))}, nil
}

// waitConnected polls the consumer until it has an nsqd connection.
func waitConnected(ctx context.Context, c *pubsub.Consumer) error {
	deadline := time.Now().Add(time.Minute)
	for c.Ready() != nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("svckit consumer: not connected to nsqd after a minute: %v", c.Ready())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// HopSpec is Hop as a service for service.Main: it registers in Consul
// like any svckit service, finds nsqd and nsqlookupd there, runs one hop,
// prints the result as one JSON line on stdout (and to --json), and exits.
func HopSpec(version string) service.Spec {
	return service.Spec{
		Name:    "hop",
		Usage:   "one hop through svckit (Batcher → nsqd → Consumer → Tracker), as `svckit bench` measures it",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "topic", Value: "hop", Usage: "topic to hop through (channel bench)", EnvVars: config.Env("hop-topic")},
			&cli.IntFlag{Name: "count", Value: 300_000, Usage: "messages to hop", EnvVars: config.Env("hop-count")},
			&cli.IntFlag{Name: "group", Value: hopGroup, Usage: "envelopes handed to the Batcher at once (1 = one PublishEnvelopeAsync each)", EnvVars: config.Env("hop-group")},
			&cli.StringFlag{Name: "json", Usage: "also write the result to this file", EnvVars: config.Env("hop-json")},
		},
		Setup: func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
			if c.Int("count") <= 0 || c.Int("group") <= 0 {
				return nil, service.UsageError{Err: errors.New("--count and --group must be positive")}
			}
			o := HopOptions{
				Lookupds: s.Discovery.Watch(service.NSQLookupdService), NSQDs: s.Discovery.Watch(service.NSQDService),
				Topic: c.String("topic"), Messages: c.Int("count"), Group: c.Int("group"),
			}
			out, path := c.App.Writer, c.String("json")
			// The service's loop: when it returns, the service shuts down
			// and Main returns (0 if the hop succeeded).
			return func(ctx context.Context) error {
				res, err := Hop(ctx, o)
				if err != nil {
					return err
				}
				b, _ := json.Marshal(res)
				fmt.Fprintf(out, "%s\n", b)
				if path != "" {
					if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
						return fmt.Errorf("--json: %w", err)
					}
				}
				return nil
			}, nil
		},
	}
}

// payloadSize is the size of every message's payload (body) in the hops.
const payloadSize = 200

// hopGroup is how many messages the raw sides put in each MPUB, and how
// many the svckit side hands its Batcher at once.
const hopGroup = 100

// hopConfig is the go-nsq configuration of both hop consumers: a 16 KiB
// output buffer, as svckit's, flushed within 1 ms, the shortest time
// IDENTIFY can ask for (svckit's services flush within nsqd's own 100µs;
// at full speed the buffer fills long before either timer). With go-nsq's
// 250 ms flush timer a run's last messages wait for the timer and its
// duration comes out in steps of 250 ms.
func hopConfig() *nsq.Config {
	c := nsq.NewConfig()
	c.MaxInFlight = 2500
	c.LookupdPollInterval = time.Second
	c.OutputBufferSize = 16384
	c.OutputBufferTimeout = time.Millisecond
	return c
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// nopApplier applies nothing: the hop measures the Tracker's
// deduplication, not an application's work.
type nopApplier struct{}

func (nopApplier) Apply(string, envelope.Envelope) error      { return nil }
func (nopApplier) ApplySnapshot(string, uint64, []byte) error { return nil }
func (nopApplier) ExportState(string) ([]byte, error)         { return nil, nil }
func (nopApplier) ImportState(string, []byte) error           { return nil }
