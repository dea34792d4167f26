package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

// ContentType of the counter's payloads: the value in decimal.
const ContentType = "text/plain"

// Settings are the producer's own flags (config.Config has those of every
// service): each is declared once, here, its flag in the tags and its
// default in DefaultSettings (see config.FlagsOf).
type Settings struct {
	StreamID string        `flag:"stream-id" usage:"the stream's id: the same across restarts, one process at a time (required)"`
	Topic    string        `flag:"topic" usage:"NSQ topic to publish to"`
	Interval time.Duration `flag:"interval" min:"1ns" usage:"how often to publish"`
	Batch    int           `flag:"batch" min:"1" usage:"values published each time (1: Owner.Publish; more: Owner.PublishBatch, one log write for all)"`
	Count    uint64        `flag:"count" usage:"stop publishing after this many values in this run (0 = never)"`
}

// DefaultSettings is the value of each of the producer's flags when
// neither the command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{Topic: "ticks", Interval: 100 * time.Millisecond, Batch: 1}
}

// Spec is the producer for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "producer",
		Usage:   "publish a counter as a replayable stream",
		Version: version,
		// Every flag has an environment variable (SVCKIT_<FLAG>), so the
		// same binary runs from a Procfile (flags) or a compose file
		// (environment).
		Flags: config.FlagsOf(DefaultSettings()),
		Setup: setup,
	}
}

func setup(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	// Bad flag values are UsageErrors: exit code 2 and one line naming
	// the flag, before anything is registered anywhere.
	set := DefaultSettings()
	if err := config.Load(c, &set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	if set.StreamID == "" {
		return nil, service.UsageError{Err: errors.New("--stream-id is required: a stream keeps its id across restarts, so it cannot be made up at start")}
	}
	// --interval and --batch have min tags: CheckMin names the flag below
	// its bound.
	if err := config.CheckMin(set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	fold := &CounterFold{}
	// OpenStream makes this process the stream's only owner (a claim in
	// Consul: a second producer with the same --stream-id exits 2), opens
	// <data-dir>/streams/<id> (the retained log, the fold's snapshot),
	// serves /streams, /replay and /snapshot for consumers that missed
	// something, and tags the instance stream=<id> in Consul so that they
	// find it. The fold given here is restored from the data directory.
	owner, err := s.OpenStream(c.Context, service.StreamOptions{
		Stream: set.StreamID, Topic: set.Topic,
		Owner: replay.OwnerOptions{
			// The retained log's defaults: fsync before a message is
			// published, keep at least 1M messages or 1 GiB.
			Log:         retainlog.DefaultOptions(""),
			ContentType: ContentType,
			Fold:        fold,
		},
	})
	if err != nil {
		return nil, err
	}
	// The counter continues where the stream stopped: the fold was
	// restored from the snapshot and the log, so it counts every value
	// this stream ever published. (Read before the loop publishes: the
	// owner applies the fold under its own lock while publishing.)
	next := fold.Count + 1
	s.Log.Info("producing", "stream", set.StreamID, "next", next)
	return func(ctx context.Context) error {
		return produce(ctx, owner, next, set.Batch, set.Interval, set.Count)
	}, nil
}

// produce publishes next, next+1, … every interval, batch at a time, until
// ctx ends or count values were published (0: no end).
func produce(ctx context.Context, owner *replay.Owner, next uint64, batch int, interval time.Duration, count uint64) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var sent uint64
	for count == 0 || sent < count {
		k := uint64(batch)
		if count > 0 {
			k = min(k, count-sent)
		}
		var err error
		if k == 1 {
			// Publish returns the sequence number once the message is in
			// the retained log (durable): from then on it reaches nsqd
			// even if nsqd is down now, or this process dies.
			_, err = owner.Publish(ctx, strconv.AppendUint(nil, next, 10), "")
		} else {
			// PublishBatch: contiguous sequence numbers, one log write.
			payloads := make([][]byte, k)
			for i := range payloads {
				payloads[i] = strconv.AppendUint(nil, next+uint64(i), 10)
			}
			_, err = owner.PublishBatch(ctx, payloads)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopping
			}
			return err
		}
		next, sent = next+k, sent+k
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	<-ctx.Done() // done publishing; keep serving replays until stopped
	return nil
}

// CounterFold is the stream's snapshot (a replay.Fold): how many values
// were published and their sum. A consumer that fell behind further than
// the retained log reaches starts again from it.
type CounterFold struct {
	Count uint64 `json:"count"`
	Sum   uint64 `json:"sum"`
}

// Apply folds in one published value. The owner calls it for every
// message it publishes, and again for the log's messages after the last
// saved snapshot when it starts.
func (f *CounterFold) Apply(_ uint64, payload []byte) error {
	v, err := strconv.ParseUint(string(payload), 10, 64)
	if err != nil {
		return fmt.Errorf("counter value %q: %w", payload, err)
	}
	f.Count++
	f.Sum += v
	return nil
}

// State encodes the fold (it is what GET /snapshot serves).
func (f *CounterFold) State() []byte { b, _ := json.Marshal(f); return b }

// Restore replaces the fold with a state State encoded.
func (f *CounterFold) Restore(b []byte) error { return json.Unmarshal(b, f) }
