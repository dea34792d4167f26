package operator

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/urfave/cli/v2"
)

func replayCommand() *cli.Command {
	return &cli.Command{
		Name:  "replay",
		Usage: "request a replay of a stream from its owner, by hand",
		Description: `Finds the stream's owner in Consul (a passing instance of --owner-service
tagged stream=<id>) and replays [--from, --to] or everything --since a time.
The messages are written as JSON lines to --out, or republished to NSQ with
--publish TOPIC (svckit consumers skip what they already applied).

With --publish TOPIC the messages are what TOPIC carries: they come from the
service that publishes TOPIC (Consul tag publishes=TOPIC): the stream's owner
if it publishes there, else a stage, which relays to its own upstream and
runs the frames through its transform, as it does live. When no passing
service publishes TOPIC, nothing is published: the command says so and fails.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "stream", Usage: "stream id", EnvVars: config.Env("stream")},
			&cli.Uint64Flag{Name: "from", Usage: "first sequence", EnvVars: config.Env("replay-from")},
			&cli.Uint64Flag{Name: "to", Usage: "last sequence (default: the owner's last)", EnvVars: config.Env("replay-to")},
			&cli.StringFlag{Name: "since", Usage: "replay everything since this time: RFC 3339 or a duration ago (e.g. 10m)", EnvVars: config.Env("replay-since")},
			&cli.StringFlag{Name: "owner-service", Value: "sensor", Usage: "Consul service of the stream owners", EnvVars: config.Env("replay-owner-service")},
			&cli.StringFlag{Name: "out", Value: "-", Usage: "write messages as JSON lines here (- = stdout)", EnvVars: config.Env("replay-out")},
			&cli.StringFlag{Name: "publish", Usage: "republish the messages to this NSQ topic instead of writing them", EnvVars: config.Env("replay-publish")},
			&cli.BoolFlag{Name: "quiet", Usage: "no progress output", EnvVars: config.Env("quiet")},
		}, replaySecretFlags("the owners' replay shared secret (their --replay-secret)")...),
		Action: runReplay,
	}
}

func runReplay(c *cli.Context) error {
	ctx := c.Context
	req := replay.Request{Stream: c.String("stream"), From: c.Uint64("from"), To: c.Uint64("to")}
	if req.Stream == "" {
		return usagef("--stream is required")
	}
	if !replay.ValidStreamID(req.Stream) {
		return usagef("--stream %q: want 1-255 of [A-Za-z0-9._-]", req.Stream)
	}
	if s := c.String("since"); s != "" {
		if c.IsSet("from") || c.IsSet("to") {
			return usagef("--since excludes --from and --to")
		}
		t, err := parseSince(s, time.Now())
		if err != nil {
			return usagef("--since %q: %v", s, err)
		}
		req.Since = t
	} else if req.From == 0 {
		return usagef("give --from (>= 1) or --since")
	}
	if req.To != 0 && req.To < req.From {
		return usagef("--to %d is below --from %d", req.To, req.From)
	}
	secret, err := replaySecret(c)
	if err != nil {
		return err
	}
	consul, err := consulClient(c)
	if err != nil {
		return err
	}
	var owner discovery.Instance
	if topic := c.String("publish"); topic != "" {
		owner, err = findPublisher(ctx, consul, topic, req.Stream)
	} else {
		owner, err = findOwner(ctx, consul, c.String("owner-service"), req.Stream)
	}
	if err != nil {
		return err
	}
	client := replay.Client{Secret: secret, Audience: owner.Service, HTTP: serviceHTTP}
	if req.Since.IsZero() && req.To == 0 {
		var st []replay.Status
		if err := getJSON(ctx, client, owner.Addr(), "/streams", &st); err != nil {
			return fmt.Errorf("asking owner %s for its streams: %w", owner.ID, err)
		}
		for _, s := range st {
			if s.Stream == req.Stream {
				req.To = s.LastSeq
			}
		}
		if req.To < req.From {
			return fmt.Errorf("stream %s: owner %s has no sequence %d (last is %d)", req.Stream, owner.ID, req.From, req.To)
		}
	}

	var sink func(env envelope.Envelope, frame []byte) error
	var closeSink func() error
	if topic := c.String("publish"); topic != "" {
		d := discovery.New(consul, discovery.Options{})
		defer d.Stop()
		w := d.Watch("nsqd")
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.WaitReady(wctx)
		cancel()
		if err != nil {
			return err
		}
		nsqCfg, err := nsqConfig(c)
		if err != nil {
			return err
		}
		// The producer would retry a refused secret until publishStall:
		// nsqd's refusal comes first, before anything is replayed.
		var addrs []string
		for _, in := range w.Instances() {
			addrs = append(addrs, in.Addr())
		}
		if err := checkNSQAuth(addrs, nsqCfg); err != nil {
			return fmt.Errorf("republishing to %s: %w", topic, err)
		}
		given := nsqCfg.AuthSecret != ""
		p := pubsub.NewProducer(w, pubsub.ProducerOptions{NSQ: nsqCfg})
		b := p.NewBatcher(topic, pubsub.BatcherOptions{})
		errs := make(chan error, 1)
		// The producer retries for ever (a service waits out an nsqd or
		// an authorization server that is away); the CLI gives up when
		// nsqd acknowledged nothing for publishStall, with the last error
		// (an nsqd refusing the operator's secret: E_UNAUTHORIZED).
		pctx, stall := stallGuard(ctx, publishStall)
		defer stall.stop()
		sink = func(_ envelope.Envelope, frame []byte) error {
			// The frame as the source serves it (markers and parts
			// included): consumers handle it as they handle live ones.
			body := append([]byte(nil), frame...)
			b.PublishAsync(pctx, body, func(err error) {
				if err == nil {
					stall.progress()
					return
				}
				select {
				case errs <- err:
				default:
				}
			})
			select {
			case err := <-errs:
				return fmt.Errorf("republishing to %s: %w", topic, nsqRefusal(err, given))
			default:
				return nil
			}
		}
		closeSink = func() error {
			defer p.Stop()
			if err := b.Close(pctx); err != nil {
				select {
				case perr := <-errs:
					err = perr
				default:
				}
				if cause := context.Cause(pctx); cause != nil && !errors.Is(cause, context.Canceled) {
					return fmt.Errorf("republishing to %s: %v: %w", topic, cause, nsqRefusal(err, given))
				}
				return fmt.Errorf("republishing to %s: %w", topic, nsqRefusal(err, given))
			}
			select {
			case err := <-errs:
				return fmt.Errorf("republishing to %s: %w", topic, nsqRefusal(err, given))
			default:
				return nil
			}
		}
	} else {
		var w io.Writer = c.App.Writer
		var f *os.File
		if out := c.String("out"); out != "-" {
			if f, err = os.Create(out); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			w = f
		}
		bw := bufio.NewWriterSize(w, 256<<10)
		enc := json.NewEncoder(bw)
		sink = func(env envelope.Envelope, _ []byte) error {
			return enc.Encode(jsonEnvelope{ID: idString(env.ID), Stream: env.Stream, Seq: env.Seq, Created: env.Created,
				ContentType: env.ContentType, CorrelationID: env.CorrelationID, Payload: base64.StdEncoding.EncodeToString(env.Payload),
				Part: env.Part, Parts: env.Parts, Marker: env.Marker})
		}
		closeSink = func() error {
			err := bw.Flush()
			if f != nil {
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			return err
		}
	}

	var total uint64
	if req.Since.IsZero() {
		total = req.To - req.From + 1
	}
	prog := newProgress(c.App.ErrWriter, total, c.Bool("quiet"))
	var n uint64
	var last uint64
	_, err = client.ReplayFrames(ctx, owner.Addr(), req, func(env envelope.Envelope, frame []byte) error {
		prog.add(1, len(frame)+4)
		if env.Seq != last { // a stage's parts of one sequence count once
			n, last = n+1, env.Seq
		}
		return sink(env, frame)
	})
	prog.done()
	err = replayRefusal(err, secret != "")
	if cerr := closeSink(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("replaying %s from %s after %d messages: %w", req.Stream, owner.ID, n, err)
	}
	if total > 0 && n < total {
		return fmt.Errorf("replaying %s: owner sent %d of %d messages", req.Stream, n, total)
	}
	return nil
}

func idString(id envelope.ID) string {
	if id == (envelope.ID{}) {
		return ""
	}
	return id.String()
}

type jsonEnvelope struct {
	ID            string    `json:"id,omitempty"` // sequenced messages have none
	Stream        string    `json:"stream"`
	Seq           uint64    `json:"seq"`
	Created       time.Time `json:"created"`
	ContentType   string    `json:"content_type"`
	CorrelationID string    `json:"correlation_id,omitempty"`
	Payload       string    `json:"payload"` // base64
	Part          uint32    `json:"part,omitempty"`
	Parts         uint32    `json:"parts,omitempty"`
	Marker        bool      `json:"marker,omitempty"`
}

func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("duration must be positive")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want RFC 3339 (2026-01-02T15:04:05Z) or a duration (10m)")
	}
	return t, nil
}

func findOwner(ctx context.Context, consul *api.Client, service, stream string) (discovery.Instance, error) {
	entries, _, err := consul.Health().Service(service, replay.OwnerTag(stream), true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return discovery.Instance{}, fmt.Errorf("asking Consul for the owner of %s: %w", stream, err)
	}
	if len(entries) == 0 {
		return discovery.Instance{}, fmt.Errorf("no passing instance of %q owns stream %q (tag %s)", service, stream, replay.OwnerTag(stream))
	}
	return instanceOf(entries[0]), nil
}

// findPublisher finds where to replay stream from so that the messages are
// what topic carries: a passing instance of a service tagged
// publishes=<topic> that owns the stream, or else relays (a stage).
func findPublisher(ctx context.Context, consul *api.Client, topic, stream string) (discovery.Instance, error) {
	services, _, err := consul.Catalog().Services((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return discovery.Instance{}, fmt.Errorf("asking Consul which services publish %s: %w", topic, err)
	}
	tag := replay.PublishesTag(topic)
	var relay *discovery.Instance
	for name, tags := range services {
		if !slices.Contains(tags, tag) {
			continue
		}
		entries, _, err := consul.Health().Service(name, tag, true, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return discovery.Instance{}, fmt.Errorf("asking Consul for the instances of %s: %w", name, err)
		}
		for _, e := range entries {
			in := instanceOf(e)
			switch {
			case in.HasTag(replay.OwnerTag(stream)):
				return in, nil
			case relay == nil && in.HasTag(replay.RelayTag):
				relay = &in
			}
		}
	}
	if relay != nil {
		return *relay, nil
	}
	return discovery.Instance{}, fmt.Errorf("no passing service in Consul publishes topic %q for stream %q (tag %s, as the stream's owner or a stage): refusing to publish there what it does not carry", topic, stream, tag)
}

func instanceOf(e *api.ServiceEntry) discovery.Instance {
	addr := e.Service.Address
	if addr == "" {
		addr = e.Node.Address
	}
	return discovery.Instance{ID: e.Service.ID, Service: e.Service.Service, Address: addr, Port: e.Service.Port, Tags: e.Service.Tags, Node: e.Node.Node}
}

func getJSON(ctx context.Context, c replay.Client, addr, path string, v any) error {
	resp, err := c.Get(ctx, addr, path, nil)
	if err != nil {
		return replayRefusal(err, c.Secret != "")
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// publishStall is how long replay --publish waits for nsqd to acknowledge
// anything before it gives up.
const publishStall = 30 * time.Second

// stall cancels a context when progress was not reported for a while.
type stall struct {
	last   atomic.Int64 // unix nanoseconds of the last progress
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// stallGuard returns a context that ends, with a cause saying so, when
// progress was not reported for max.
func stallGuard(ctx context.Context, max time.Duration) (context.Context, *stall) {
	cctx, cancel := context.WithCancelCause(ctx)
	s := &stall{cancel: cancel, done: make(chan struct{})}
	s.progress()
	go func() {
		t := time.NewTicker(max / 10)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-cctx.Done():
				return
			case <-t.C:
				if time.Since(time.Unix(0, s.last.Load())) > max {
					cancel(fmt.Errorf("nsqd acknowledged nothing for %s", max))
					return
				}
			}
		}
	}()
	return cctx, s
}

func (s *stall) progress() { s.last.Store(time.Now().UnixNano()) }

func (s *stall) stop() {
	close(s.done)
	s.cancel(nil)
}
