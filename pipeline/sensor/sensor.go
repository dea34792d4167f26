// Package sensor is the reference pipeline's sensor: it publishes random
// readings at a fixed rate through a replayable publisher (replay.Owner), so
// every reading has a stream, a contiguous sequence number and a place in the
// retained log.
package sensor

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

// Spec is the sensor service for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "sensor",
		Usage:   "publish random readings to NSQ as a replayable stream",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "stream-id", Usage: "stream id (default: kept in <data-dir>/stream.id, made on first start)", EnvVars: config.Env("stream-id")},
			&cli.StringFlag{Name: "topic", Value: pipeline.ReadingsTopic, Usage: "NSQ topic of readings", EnvVars: config.Env("topic")},
			&cli.Float64Flag{Name: "rate", Value: 10, Usage: "readings per second (0 = only publish --count as fast as possible)", EnvVars: config.Env("rate")},
			&cli.Uint64Flag{Name: "count", Value: 0, Usage: "stop publishing after this many readings in this run (0 = never)", EnvVars: config.Env("count")},
			&cli.Int64Flag{Name: "max-value", Value: 1000, Usage: "readings are uniform in [0, max-value)", EnvVars: config.Env("max-value")},
			&cli.Uint64Flag{Name: "retain-messages", Value: 1_000_000, Usage: "retained log keeps at least this many messages (0 = no count limit)", EnvVars: config.Env("retain-messages")},
			&cli.Int64Flag{Name: "retain-bytes", Value: 1 << 30, Usage: "retained log keeps at least this many bytes (0 = no byte limit)", EnvVars: config.Env("retain-bytes")},
			&cli.DurationFlag{Name: "retain-age", Value: 0, Usage: "retained log drops segments older than this (0 = no age limit)", EnvVars: config.Env("retain-age")},
			&cli.Int64Flag{Name: "log-segment-bytes", Value: 64 << 20, Usage: "retained log segment size (retention deletes whole segments)", EnvVars: config.Env("log-segment-bytes")},
			&cli.StringFlag{Name: "log-fsync", Value: "always", Usage: "retained log fsync policy: always (fsync as soon as a reading is due to be published; concurrent ones share it), interval (fsync every --log-fsync-interval: fewer fsyncs, readings wait for it) or never (no fsync: a power loss can take back published readings and reuse their sequence numbers)", EnvVars: config.Env("log-fsync")},
			&cli.DurationFlag{Name: "log-fsync-interval", Value: 200 * time.Millisecond, Usage: "fsync period of the interval policy", EnvVars: config.Env("log-fsync-interval")},
			&cli.Int64Flag{Name: "log-scrub-rate", Value: retainlog.DefaultScrubRate, Usage: "bytes per second the scrubber reads to verify the retained log, at start and every --log-scrub-every (0 = no scrubbing)", EnvVars: config.Env("log-scrub-rate")},
			&cli.DurationFlag{Name: "log-scrub-every", Value: retainlog.DefaultScrubEvery, Usage: "time between the starts of two scrub passes", EnvVars: config.Env("log-scrub-every")},
		},
		Setup: setup,
	}
}

func setup(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	rate := c.Float64("rate")
	count := c.Uint64("count")
	if rate < 0 {
		return nil, service.UsageError{Err: fmt.Errorf("--rate %v: must not be negative", rate)}
	}
	if rate == 0 && count == 0 {
		return nil, service.UsageError{Err: errors.New("--rate 0 needs --count (publish a fixed number as fast as possible)")}
	}
	maxValue := c.Int64("max-value")
	if maxValue <= 0 || maxValue > 3_000_000_000 {
		return nil, service.UsageError{Err: fmt.Errorf("--max-value %d: want 1..3e9 (squares must fit int64 sums)", maxValue)}
	}
	fsync, err := retainlog.ParseFsyncPolicy(c.String("log-fsync"))
	if err != nil {
		return nil, service.UsageError{Err: fmt.Errorf("--log-fsync: %w", err)}
	}
	if c.Int64("log-segment-bytes") < 4096 {
		return nil, service.UsageError{Err: fmt.Errorf("--log-segment-bytes %d: at least 4096", c.Int64("log-segment-bytes"))}
	}
	dataDir := s.Config.DataDir
	stream, err := streamID(c.String("stream-id"), dataDir)
	if err != nil {
		return nil, err
	}
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = c.Int64("log-segment-bytes")
	lo.RetainMessages = c.Uint64("retain-messages")
	lo.RetainBytes = c.Int64("retain-bytes")
	lo.RetainAge = c.Duration("retain-age")
	lo.Fsync = fsync
	lo.FsyncInterval = c.Duration("log-fsync-interval")
	if lo.ScrubRate = c.Int64("log-scrub-rate"); lo.ScrubRate < 0 {
		return nil, service.UsageError{Err: fmt.Errorf("--log-scrub-rate %d: must not be negative", lo.ScrubRate)}
	}
	if lo.ScrubEvery = c.Duration("log-scrub-every"); lo.ScrubEvery <= 0 {
		return nil, service.UsageError{Err: fmt.Errorf("--log-scrub-every %s: must be positive", lo.ScrubEvery)}
	}
	owner, err := s.OpenStream(c.Context, service.StreamOptions{
		Stream: stream, Topic: c.String("topic"),
		Owner: replay.OwnerOptions{Log: lo, ContentType: pipeline.ReadingType, Fold: &pipeline.ReadingFold{}},
	})
	if err != nil {
		return nil, err
	}
	s.SetMeta("stream", stream)
	s.Log.Info("sensor stream", "stream", stream, "next_seq", owner.Status().LastSeq+1, "retained_first", owner.Status().RetainedFirst)
	return func(ctx context.Context) error { return publishLoop(ctx, s.Log, owner, rate, count, maxValue) }, nil
}

// publishBatchMax bounds one PublishBatch: what is due is published with
// one log write, and one wait for its fsync, per batch instead of per
// reading. Readings fall due while a batch waits for its fsync, so the
// next batch is larger: the fsync is paid per batch, not per reading.
const publishBatchMax = 1000

// publishLoop publishes at rate (per second) until ctx ends or count readings
// were published. It paces by elapsed time, so a slow tick catches up instead
// of drifting, but never bursts more than 100 ms worth at once.
func publishLoop(ctx context.Context, log *slog.Logger, owner *replay.Owner, rate float64, count uint64, maxValue int64) error {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	var sent uint64
	batch := make([][]byte, 0, publishBatchMax)
	// publish publishes n readings (n >= 1) in batches.
	publish := func(n uint64) error {
		for n > 0 {
			k := min(n, publishBatchMax)
			batch = batch[:0]
			for range k {
				batch = append(batch, pipeline.MarshalReading(pipeline.Reading{Value: rng.Int64N(maxValue)}))
			}
			if _, err := owner.PublishBatch(ctx, batch); err != nil {
				if ctx.Err() != nil {
					return nil // stopping: the wait for a fence or an fsync ended
				}
				if errors.Is(err, replay.ErrNotAccepting) {
					// The log cannot be written (a full disk): pause
					// until it can, rather than exit and crash-loop;
					// what fell due meanwhile is skipped by the pacing,
					// not burst.
					taken, err := waitAccepting(ctx, log, owner, batch)
					if taken {
						sent += k
					}
					return err
				}
				return err
			}
			sent += k
			n -= k
		}
		return nil
	}
	if rate == 0 {
		for sent < count && ctx.Err() == nil {
			if err := publish(min(count-sent, publishBatchMax)); err != nil {
				return err
			}
		}
		<-ctx.Done()
		return nil
	}
	period := max(time.Duration(float64(time.Second)/rate), time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	start := time.Now()
	var skipped uint64 // readings skipped after a stall: pacing only, not counted
	for {
		due := uint64(time.Since(start).Seconds()*rate) + 1 - skipped
		if burst := uint64(rate/10) + 1; due > sent+burst {
			// Fell behind (stalled): skip rather than flood. --count still
			// counts only readings actually published.
			skipped += due - sent - burst
			due = sent + burst
		}
		if count > 0 {
			due = min(due, count)
		}
		if due > sent {
			if err := publish(due - sent); err != nil {
				return err
			}
		}
		if count > 0 && sent >= count {
			<-ctx.Done()
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// waitAccepting retries the batch the owner refused because its log cannot
// be written, with backoff, until it is taken (true) or ctx ends.
func waitAccepting(ctx context.Context, log *slog.Logger, owner *replay.Owner, batch [][]byte) (bool, error) {
	start := time.Now()
	log.Warn("readings paused: the retained log cannot be written", "err", owner.Accepting())
	delay := 100 * time.Millisecond
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, nil
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
		_, err := owner.PublishBatch(ctx, batch)
		switch {
		case err == nil:
			log.Info("readings resumed: the retained log can be written again", "paused", time.Since(start).Round(time.Millisecond))
			return true, nil
		case ctx.Err() != nil:
			return false, nil
		case !errors.Is(err, replay.ErrNotAccepting):
			return false, err
		}
	}
}

// streamID returns the configured id, or the one kept in dataDir/stream.id,
// or makes and keeps a new one: a stream's id must survive restarts.
func streamID(flag, dataDir string) (string, error) {
	if flag != "" {
		if !replay.ValidStreamID(flag) {
			return "", service.UsageError{Err: fmt.Errorf("--stream-id %q: want 1-255 of [A-Za-z0-9._-]", flag)}
		}
		return flag, nil
	}
	path := filepath.Join(dataDir, "stream.id")
	if b, err := os.ReadFile(path); err == nil {
		id := strings.TrimSpace(string(b))
		if !replay.ValidStreamID(id) {
			return "", fmt.Errorf("%s holds an invalid stream id %q", path, id)
		}
		return id, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	var rnd [4]byte
	_, _ = crand.Read(rnd[:])
	id := "sensor-" + strings.ReplaceAll(service.Hostname(), ".", "-") + "-" + hex.EncodeToString(rnd[:])
	if len(id) > 64 {
		id = id[:64]
	}
	if err := replay.WriteFileAtomic(path, []byte(id+"\n")); err != nil {
		return "", err
	}
	return id, nil
}
