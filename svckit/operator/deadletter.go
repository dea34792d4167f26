package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/pubsub"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// DeadLetterChannel is the channel the CLI reads "<topic>.dead" through.
// nsqd keeps a topic's messages until its first channel exists, so dead
// letters published before anyone looked are all there.
const DeadLetterChannel = "svckit-deadletter"

func deadletterCommand() *cli.Command {
	common := []cli.Flag{
		&cli.StringFlag{Name: "topic", Usage: "the topic whose dead letters (<topic>.dead) to read", EnvVars: config.Env("topic")},
		&cli.IntFlag{Name: "limit", Value: 1000, Usage: "at most this many dead letters", EnvVars: config.Env("deadletter-limit")},
		&cli.DurationFlag{Name: "wait", Value: 2 * time.Second, Usage: "stop after this long without a new dead letter", EnvVars: config.Env("deadletter-wait")},
	}
	return &cli.Command{
		Name:  "deadletter",
		Usage: "inspect and requeue dead letters (<topic>.dead)",
		Subcommands: []*cli.Command{
			{
				Name:   "ls",
				Usage:  "list dead letters (reason, time, size, preview) without consuming them",
				Flags:  common,
				Action: func(c *cli.Context) error { return runDeadletter(c, false) },
			},
			{
				Name:  "requeue",
				Usage: "publish dead letters back to their topic (or --to) and remove them",
				Flags: append(common,
					&cli.StringFlag{Name: "to", Usage: "publish to this topic instead of the original", EnvVars: config.Env("deadletter-to")}),
				Action: func(c *cli.Context) error { return runDeadletter(c, true) },
			},
		},
	}
}

type deadMsg struct {
	nm *nsq.Message
	dl pubsub.DeadLetter
	ok bool // body decoded as a DeadLetter
}

func runDeadletter(c *cli.Context, requeue bool) error {
	topic := c.String("topic")
	if topic == "" {
		return usagef("--topic is required")
	}
	if !nsq.IsValidTopicName(topic) || !nsq.IsValidTopicName(pubsub.DeadLetterTopic(topic)) {
		return usagef("--topic %q: invalid NSQ topic name (its .dead topic must fit 64 characters)", topic)
	}
	limit := c.Int("limit")
	if limit < 1 || limit > 100000 {
		return usagef("--limit %d: want 1..100000", limit)
	}
	to := c.String("to")
	if to != "" && !nsq.IsValidTopicName(to) {
		return usagef("--to %q: invalid NSQ topic name", to)
	}
	ctx := c.Context
	consul, err := consulClient(c)
	if err != nil {
		return err
	}
	d := discovery.New(consul, discovery.Options{})
	defer d.Stop()
	nsqds := d.Watch("nsqd")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = nsqds.WaitReady(wctx)
	cancel()
	if err != nil {
		return err
	}
	if len(nsqds.Instances()) == 0 {
		return fmt.Errorf("no passing nsqd in Consul")
	}
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = limit
	cfg.MaxAttempts = 0
	nc, err := nsq.NewConsumer(pubsub.DeadLetterTopic(topic), DeadLetterChannel, cfg)
	if err != nil {
		return fmt.Errorf("creating consumer: %w", err)
	}
	nc.SetLogger(logging.NSQLogger{L: logging.Discard()}, nsq.LogLevelError)
	var mu sync.Mutex
	var msgs []deadMsg
	seen := map[nsq.MessageID]bool{}
	arrived := make(chan struct{}, 1)
	nc.AddHandler(nsq.HandlerFunc(func(nm *nsq.Message) error {
		nm.DisableAutoResponse()
		mu.Lock()
		defer mu.Unlock()
		if seen[nm.ID] || len(msgs) >= limit {
			nm.RequeueWithoutBackoff(0)
			return nil
		}
		seen[nm.ID] = true
		m := deadMsg{nm: nm}
		m.ok = json.Unmarshal(nm.Body, &m.dl) == nil && m.dl.Topic != ""
		msgs = append(msgs, m)
		select {
		case arrived <- struct{}{}:
		default:
		}
		return nil
	}))
	var addrs []string
	for _, in := range nsqds.Instances() {
		addrs = append(addrs, in.Addr())
	}
	if err := nc.ConnectToNSQDs(addrs); err != nil {
		return fmt.Errorf("connecting to nsqd %v: %w", addrs, err)
	}
	idle := time.NewTimer(c.Duration("wait"))
collect:
	for {
		select {
		case <-ctx.Done():
			break collect
		case <-arrived:
			mu.Lock()
			full := len(msgs) >= limit
			mu.Unlock()
			if full {
				break collect
			}
			idle.Reset(c.Duration("wait"))
		case <-idle.C:
			break collect
		}
	}
	nc.ChangeMaxInFlight(0) // no more deliveries while we answer
	mu.Lock()
	defer mu.Unlock()
	var errs []string
	if requeue {
		p := pubsub.NewProducer(nsqds, pubsub.ProducerOptions{})
		defer p.Stop()
		n := 0
		for _, m := range msgs {
			if !m.ok {
				errs = append(errs, fmt.Sprintf("message %s is not a dead letter; left in place", m.nm.ID[:]))
				m.nm.RequeueWithoutBackoff(0)
				continue
			}
			dest := m.dl.Topic
			if to != "" {
				dest = to
			}
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := p.Publish(pctx, dest, m.dl.Original)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Sprintf("requeueing %s to %s: %v (left in place)", m.nm.ID[:], dest, err))
				m.nm.RequeueWithoutBackoff(0)
				continue
			}
			m.nm.Finish()
			n++
		}
		fmt.Fprintf(c.App.Writer, "requeued %d dead letter(s) of %s\n", n, topic)
	} else {
		printDeadLetters(c.App.Writer, msgs)
		for _, m := range msgs {
			m.nm.RequeueWithoutBackoff(0)
		}
	}
	nc.Stop()
	select {
	case <-nc.StopChan:
	case <-time.After(10 * time.Second):
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d problem(s):\n  %s", len(errs), strings.Join(errs, "\n  "))
	}
	return nil
}

func printDeadLetters(w io.Writer, msgs []deadMsg) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tCHANNEL\tATTEMPTS\tSIZE\tREASON\tPREVIEW")
	for _, m := range msgs {
		if !m.ok {
			fmt.Fprintf(tw, "-\t-\t-\t%d\t(not a dead letter)\t%s\n", len(m.nm.Body), preview(m.nm.Body))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", m.dl.Time.Format(time.RFC3339), m.dl.Channel, m.dl.Attempts,
			len(m.dl.Original), oneLine(m.dl.Reason, 60), preview(m.dl.Original))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d dead letter(s)\n", len(msgs))
}

// preview shows an envelope's identity, or the first printable bytes.
func preview(b []byte) string {
	if env, err := envelope.Decode(b); err == nil {
		return fmt.Sprintf("envelope stream=%s seq=%d type=%s payload=%dB", env.Stream, env.Seq, env.ContentType, len(env.Payload))
	}
	s := []rune(string(b[:min(len(b), 40)]))
	for i, r := range s {
		if !unicode.IsPrint(r) {
			s[i] = '.'
		}
	}
	return fmt.Sprintf("%q", string(s))
}

func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		s = s[:n-1] + "…"
	}
	return s
}
