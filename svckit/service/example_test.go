package service_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/stage"
	"github.com/urfave/cli/v2"
)

// A service's main is one call: Main parses the common flags (Consul,
// HTTP, data directory, NSQ; each with an environment variable) and the
// Spec's own, connects to Consul, calls Setup, registers the service,
// runs it until SIGINT or SIGTERM and shuts it down in order. It returns
// the exit code: 0, 1 (a failure), 2 (a bad flag: one line names it) or 3
// (no Consul agent within --consul-start-timeout).
//
// (Not run here: it needs a Consul agent. examples/ in the repository has
// whole programs, each with a test against the real Consul and NSQ.)
func ExampleMain() {
	spec := service.Spec{
		Name:    "greeter", // its name in Consul
		Usage:   "say hello over HTTP, and log a line now and then",
		Version: "1.0.0",
		Flags: []cli.Flag{
			// Give every flag an environment variable: SVCKIT_EVERY here.
			&cli.DurationFlag{Name: "every", Value: 10 * time.Second, Usage: "how often to log", EnvVars: config.Env("every")},
		},
		Setup: func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
			every := c.Duration("every")
			if every <= 0 {
				// A UsageError: exit code 2 and one line, before the
				// service registers.
				return nil, service.UsageError{Err: fmt.Errorf("--every %s: must be positive", every)}
			}
			// Routes go on the service's HTTP server, next to /health,
			// /ready and /metrics, on the port registered in Consul.
			s.HTTP.Handle("GET /hello", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintln(w, "hello from", s.Config.InstanceID)
			}))
			// The returned loop runs until ctx ends (SIGTERM); return nil
			// for a service that only reacts to messages.
			return func(ctx context.Context) error {
				t := time.NewTicker(every)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return nil
					case <-t.C:
						s.Log.Info("still here")
					}
				}
			}, nil
		},
	}
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, spec))
}

// A bad flag is refused before anything starts: one line naming it, and
// exit code 2.
func ExampleMain_usageError() {
	spec := service.Spec{
		Name: "greeter",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "every", Value: 10 * time.Second, EnvVars: config.Env("every")},
		},
		Setup: func(*cli.Context, *service.Service) (func(context.Context) error, error) { return nil, nil },
	}
	code := service.Main([]string{"greeter", "--every=often"}, os.Stdout, os.Stdout, spec)
	fmt.Println("exit code", code)
	// Output:
	// greeter: invalid value "often" for flag -every: parse error
	// exit code 2
}

// counter is a replay.Fold: what GET /snapshot serves of the stream.
type counter struct{ n int }

func (c *counter) Apply(uint64, []byte) error { c.n++; return nil }
func (c *counter) State() []byte              { return fmt.Appendf(nil, `{"count":%d}`, c.n) }
func (c *counter) Restore(b []byte) error {
	_, err := fmt.Sscanf(string(b), `{"count":%d}`, &c.n)
	return err
}

// OpenStream makes the service the one owner of a replayable stream (a
// claim in Consul: a second process claiming it exits 2). What it
// publishes gets contiguous sequence numbers, is kept in a retained log
// under --data-dir, and is replayed to consumers that missed it.
// examples/producer is a whole program.
func ExampleService_OpenStream() {
	setup := func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
		owner, err := s.OpenStream(c.Context, service.StreamOptions{
			Stream: c.String("stream-id"), // stable across restarts
			Topic:  "ticks",
			Owner: replay.OwnerOptions{
				Log:         retainlog.DefaultOptions(""),
				ContentType: "text/plain",
				Fold:        &counter{}, // optional: snapshots for consumers the log no longer reaches
			},
		})
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case now := <-t.C:
					// Durable when Publish returns; the owner gets it to nsqd.
					if _, err := owner.Publish(ctx, []byte(now.Format(time.RFC3339)), ""); err != nil && ctx.Err() == nil {
						return err
					}
				}
			}
		}, nil
	}
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, service.Spec{
		Name:  "ticker",
		Flags: []cli.Flag{&cli.StringFlag{Name: "stream-id", Value: "ticker-1", EnvVars: config.Env("stream-id")}},
		Setup: setup,
	}))
}

// Consumer consumes a topic with the service's NSQ settings: nsqlookupd
// and nsqd are found in Consul, messages are decoded envelopes, and a
// message that fails --nsq-max-attempts times, or is rejected, becomes a
// dead letter (<topic>.dead, else the data directory). It starts when the
// service runs and drains at shutdown. For exactly-once per (stream, seq)
// put a replay.Tracker behind it: examples/tracker is a whole program.
func ExampleService_Consumer() {
	setup := func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
		h := pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
			if m.Envelope.ContentType != "text/plain" {
				return pubsub.Reject(errors.New("not text")) // dead-lettered at once
			}
			s.Log.Info("tick", "stream", m.Envelope.Stream, "seq", m.Envelope.Seq, "at", string(m.Envelope.Payload))
			return nil // finished; another error would requeue it
		})
		_, err := s.Consumer(pubsub.ConsumerOptions{
			Topic: "ticks",
			// A channel per instance, ephemeral: every instance sees every
			// message. A shared durable channel ("printers") would spread
			// them among the instances instead.
			Channel:   pubsub.InstanceChannel("printer", s.Config.InstanceID),
			Ephemeral: true,
		}, h)
		return nil, err
	}
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, service.Spec{Name: "printer", Setup: setup}))
}

// Stage runs a stage.Transform between two topics: it consumes the input
// on a channel its instances share, publishes the outputs, finishes the
// input once nsqd has them all, and serves the replay protocol for its
// outputs by relaying to its upstream (so consumers downstream recover
// what they missed from it). examples/splitter is a whole program.
func ExampleService_Stage() {
	upper := func(_ context.Context, in envelope.Envelope) ([]stage.Output, error) {
		return []stage.Output{{ContentType: in.ContentType, Payload: []byte(fmt.Sprintf("%s!", in.Payload))}}, nil
	}
	setup := func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
		_, err := s.Stage(service.StageOptions{
			InTopic: "ticks", Channel: "shouters", OutTopic: "shouts",
			Upstream:  "ticker", // the Consul service publishing "ticks"
			Transform: upper,
			// Snapshot: a stage.SnapshotMapper, if consumers downstream
			// need snapshots of the upstream's stream in their own terms.
		})
		return nil, err
	}
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, service.Spec{Name: "shouter", Setup: setup}))
}
