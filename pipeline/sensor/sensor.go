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

// Settings are the sensor's own flags (config.Config has the common ones),
// each declared once in its tags (see config.FlagsOf).
type Settings struct {
	StreamID string  `flag:"stream-id" usage:"stream id (default: kept in <data-dir>/stream.id, made on first start)"`
	Topic    string  `flag:"topic" usage:"NSQ topic of readings"`
	Rate     float64 `flag:"rate" usage:"readings per second (0 = only publish --count as fast as possible)"`
	Count    uint64  `flag:"count" usage:"stop publishing after this many readings in this run (0 = never)"`
	MaxValue int64   `flag:"max-value" usage:"readings are uniform in [0, max-value)"`

	RetainMessages   uint64        `flag:"retain-messages" usage:"retained log keeps at least this many messages (0 = no count limit)"`
	RetainBytes      int64         `flag:"retain-bytes" usage:"retained log keeps at least this many bytes (0 = no byte limit)"`
	RetainAge        time.Duration `flag:"retain-age" usage:"retained log drops segments older than this (0 = no age limit)"`
	LogSegmentBytes  int64         `flag:"log-segment-bytes" min:"4096" usage:"retained log segment size (retention deletes whole segments)"`
	LogFsync         string        `flag:"log-fsync" usage:"retained log fsync policy: always (fsync as soon as a reading is due to be published; concurrent ones share it), interval (fsync every --log-fsync-interval: fewer fsyncs, readings wait for it) or never (no fsync: a power loss can take back published readings and reuse their sequence numbers)"`
	LogFsyncInterval time.Duration `flag:"log-fsync-interval" usage:"fsync period of the interval policy"`
	LogScrubRate     int64         `flag:"log-scrub-rate" usage:"bytes per second the scrubber reads to verify the retained log, at start and every --log-scrub-every (0 = no scrubbing)"`
	LogScrubEvery    time.Duration `flag:"log-scrub-every" min:"1ns" usage:"time between the starts of two scrub passes"`
}

// DefaultSettings is the value of each of the sensor's flags when neither
// the command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{
		Topic:            pipeline.ReadingsTopic,
		Rate:             10,
		MaxValue:         1000,
		RetainMessages:   1_000_000,
		RetainBytes:      1 << 30,
		LogSegmentBytes:  64 << 20,
		LogFsync:         "always",
		LogFsyncInterval: 200 * time.Millisecond,
		LogScrubRate:     retainlog.DefaultScrubRate,
		LogScrubEvery:    retainlog.DefaultScrubEvery,
	}
}

// Spec is the sensor service for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "sensor",
		Usage:   "publish random readings to NSQ as a replayable stream",
		Version: version,
		Flags:   config.FlagsOf(DefaultSettings()),
		Setup:   setup,
	}
}

func setup(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	set := DefaultSettings()
	if err := config.Load(c, &set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	if set.Rate < 0 {
		return nil, service.UsageError{Err: fmt.Errorf("--rate %v: must not be negative", set.Rate)}
	}
	if set.Rate == 0 && set.Count == 0 {
		return nil, service.UsageError{Err: errors.New("--rate 0 needs --count (publish a fixed number as fast as possible)")}
	}
	if set.MaxValue <= 0 || set.MaxValue > 3_000_000_000 {
		return nil, service.UsageError{Err: fmt.Errorf("--max-value %d: want 1..3e9 (squares must fit int64 sums)", set.MaxValue)}
	}
	fsync, err := retainlog.ParseFsyncPolicy(set.LogFsync)
	if err != nil {
		return nil, service.UsageError{Err: fmt.Errorf("--log-fsync: %w", err)}
	}
	if set.LogScrubRate < 0 {
		return nil, service.UsageError{Err: fmt.Errorf("--log-scrub-rate %d: must not be negative", set.LogScrubRate)}
	}
	// The other bounds are min tags.
	if err := config.CheckMin(set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	dataDir := s.Config.DataDir
	stream, err := streamID(set.StreamID, dataDir)
	if err != nil {
		return nil, err
	}
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = set.LogSegmentBytes
	lo.RetainMessages = set.RetainMessages
	lo.RetainBytes = set.RetainBytes
	lo.RetainAge = set.RetainAge
	lo.Fsync = fsync
	lo.FsyncInterval = set.LogFsyncInterval
	lo.ScrubRate = set.LogScrubRate
	lo.ScrubEvery = set.LogScrubEvery
	owner, err := s.OpenStream(c.Context, service.StreamOptions{
		Stream: stream, Topic: set.Topic,
		Owner: replay.OwnerOptions{Log: lo, ContentType: pipeline.ReadingType, Fold: &pipeline.ReadingFold{}},
	})
	if err != nil {
		return nil, err
	}
	s.SetMeta("stream", stream)
	s.Log.Info("sensor stream", "stream", stream, "next_seq", owner.Status().LastSeq+1, "retained_first", owner.Status().RetainedFirst)
	return func(ctx context.Context) error {
		return publishLoop(ctx, s.Log, owner, set.Rate, set.Count, set.MaxValue)
	}, nil
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
