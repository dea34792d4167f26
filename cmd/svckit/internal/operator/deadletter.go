package operator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// DeadLetterChannel is the channel the CLI reads "<topic>.dead" through.
// nsqd keeps a topic's messages until its first channel exists, so dead
// letters published before anyone looked are all there.
const DeadLetterChannel = "svckit-deadletter"

func deadletterCommand() *cli.Command {
	// Each subcommand gets a slice of its own (append to a shared one
	// could write both into the same array).
	common := func(more ...cli.Flag) []cli.Flag {
		return append(append([]cli.Flag{
			&cli.StringFlag{Name: "topic", Usage: "the topic whose dead letters to read (<topic>.dead in nsqd, and the services' local stores)", EnvVars: config.Env("topic")},
			&cli.IntFlag{Name: "limit", Value: 1000, Usage: "at most this many dead letters", EnvVars: config.Env("deadletter-limit")},
			&cli.DurationFlag{Name: "wait", Value: 2 * time.Second, Usage: "stop reading nsqd after this long without a new dead letter", EnvVars: config.Env("deadletter-wait")},
		}, replaySecretFlags("the services' replay secret (their --replay-secret), for their local dead letters")...), more...)
	}
	return &cli.Command{
		Name:  "deadletter",
		Usage: "inspect and requeue dead letters (in <topic>.dead, and kept locally by services when nsqd refused them)",
		Description: `Dead letters are in nsqd (topic <topic>.dead) or, when nsqd would not take
them (above its --max-msg-size, or not acknowledged in time), in the data
directory of the service that made them, which serves them over its HTTP
port. Services that do are found in Consul by their meta ` + deadletter.MetaKey + `.`,
		Subcommands: []*cli.Command{
			{
				Name:  "ls",
				Usage: "list dead letters (time, where, reason, size, preview) without consuming them",
				Flags: common(
					&cli.BoolFlag{Name: "json", Usage: "one JSON object per line instead of a table", EnvVars: config.Env("deadletter-json")}),
				Action: func(c *cli.Context) error { return runDeadletter(c, false) },
			},
			{
				Name:  "requeue",
				Usage: "publish dead letters back to their topic (or --to) and remove each once nsqd acknowledged it",
				Flags: common(
					&cli.StringFlag{Name: "to", Usage: "publish to this topic instead of the original", EnvVars: config.Env("deadletter-to")}),
				Action: func(c *cli.Context) error { return runDeadletter(c, true) },
			},
		},
	}
}

// deadMsg is one dead letter wherever it is kept.
type deadMsg struct {
	info deadletter.Info
	ok   bool // a dead letter (a body in <topic>.dead may be anything)

	// in nsqd
	nm *nsq.Message
	dl deadletter.Letter

	// in a service's local store
	instance string // Consul service id
	service  string // its Consul service name (the requests' audience)
	addr     string // its HTTP address
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
	nsqCfg, err := nsqConfig(c)
	if err != nil {
		return err
	}
	secret, err := replaySecret(c)
	if err != nil {
		return err
	}
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
	var problems []string
	// nsqd's first: what it holds is read through a channel, without
	// finishing, and put back (or finished after a requeue) at the end.
	var fromNSQD *nsqdReader
	if len(nsqds.Instances()) == 0 {
		if requeue {
			return fmt.Errorf("no passing nsqd in Consul")
		}
		problems = append(problems, "no passing nsqd in Consul: the dead letters in "+pubsub.DeadLetterTopic(topic)+" are not listed")
	} else {
		fromNSQD, err = readNSQD(ctx, nsqCfg, nsqds.Instances(), topic, limit, c.Duration("wait"))
		if err != nil {
			return err
		}
		defer fromNSQD.close()
	}
	var msgs []deadMsg
	if fromNSQD != nil {
		msgs = fromNSQD.msgs
	}
	client := deadletter.Client{Secret: secret, HTTP: serviceHTTP}
	local, lp := listLocal(ctx, consul, client, topic, limit-len(msgs))
	problems = append(problems, lp...)
	msgs = append(msgs, local...)
	// Oldest first, wherever kept.
	sort.SliceStable(msgs, func(i, j int) bool { return msgs[i].info.Time.Before(msgs[j].info.Time) })

	if requeue {
		p := pubsub.NewProducer(nsqds, pubsub.ProducerOptions{NSQ: nsqCfg})
		defer p.Stop()
		n, fromN, fromL, rp := requeueAll(ctx, p, nsqCfg.AuthSecret != "", client, fromNSQD, msgs, to)
		problems = append(problems, rp...)
		fmt.Fprintf(c.App.Writer, "requeued %d dead letter(s) of %s (%d from nsqd, %d kept locally)\n", n, topic, fromN, fromL)
	} else if c.Bool("json") {
		if err := printDeadLettersJSON(c.App.Writer, msgs); err != nil {
			return err
		}
	} else {
		printDeadLetters(c.App.Writer, msgs)
	}
	switch len(problems) {
	case 0:
		return nil
	case 1:
		return errors.New(problems[0]) // one line
	default:
		return fmt.Errorf("%d problem(s):\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
}

// nsqdReader holds the messages of "<topic>.dead" it received, unanswered,
// so that listing consumes nothing and requeueing finishes only what was
// published again.
type nsqdReader struct {
	nc     *nsq.Consumer
	mu     sync.Mutex
	msgs   []deadMsg              // complete once readNSQD returned
	closed bool                   // readNSQD returned: later deliveries go back at once
	done   map[nsq.MessageID]bool // finished
}

func readNSQD(ctx context.Context, base *nsq.Config, nsqds []discovery.Instance, topic string, limit int, wait time.Duration) (*nsqdReader, error) {
	cfg := nsq.NewConfig()
	// The operator's identity and TLS, from the global flags.
	cfg.AuthSecret, cfg.TlsV1, cfg.TlsConfig = base.AuthSecret, base.TlsV1, base.TlsConfig
	cfg.MaxInFlight = limit
	cfg.MaxAttempts = 0
	nc, err := nsq.NewConsumer(pubsub.DeadLetterTopic(topic), DeadLetterChannel, cfg)
	if err != nil {
		return nil, fmt.Errorf("creating consumer: %w", err)
	}
	refused := &refusals{}
	nc.SetLogger(refused, nsq.LogLevelError)
	r := &nsqdReader{nc: nc, done: map[nsq.MessageID]bool{}}
	seen := map[nsq.MessageID]bool{}
	arrived := make(chan struct{}, 1)
	nc.AddHandler(nsq.HandlerFunc(func(nm *nsq.Message) error {
		nm.DisableAutoResponse()
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed || seen[nm.ID] || len(r.msgs) >= limit {
			nm.RequeueWithoutBackoff(0)
			return nil
		}
		seen[nm.ID] = true
		m := deadMsg{nm: nm}
		m.info = deadletter.Info{ID: string(nm.ID[:]), Size: len(nm.Body), Stored: deadletter.StoredNSQD}
		if dl, err := deadletter.Decode(nm.Body); err == nil && dl.Topic != topic {
			// A letter names its topic itself, and whoever may write to
			// <topic>.dead could name another: requeueing it there would
			// publish with the operator's identity where the writer may
			// not. Only the topic it was read for is a destination.
			m.info.Topic = topic
			m.info.Reason = fmt.Sprintf("(names topic %q, but was in %s: not requeued)", dl.Topic, deadletter.Topic(topic))
		} else if err == nil {
			m.ok, m.dl = true, dl
			m.info.Meta, m.info.Size = dl.Meta, len(dl.Original)
			if m.info.Stream == "" {
				// Written before dead letters named the envelope.
				if env, err := envelope.Decode(dl.Original); err == nil {
					m.info.Stream, m.info.Seq = env.Stream, env.Seq
				}
			}
		} else {
			m.info.Topic, m.info.Reason = topic, "(not a dead letter)"
		}
		r.msgs = append(r.msgs, m)
		select {
		case arrived <- struct{}{}:
		default:
		}
		return nil
	}))
	var addrs []string
	for _, in := range nsqds {
		addrs = append(addrs, in.Addr())
	}
	if err := nc.ConnectToNSQDs(addrs); err != nil {
		nc.Stop()
		return nil, fmt.Errorf("connecting to nsqd %v: %w", addrs, nsqRefusal(err, cfg.AuthSecret != ""))
	}
	idle := time.NewTimer(wait)
	defer idle.Stop()
collect:
	for {
		select {
		case <-ctx.Done():
			break collect
		case <-arrived:
			r.mu.Lock()
			full := len(r.msgs) >= limit
			r.mu.Unlock()
			if full {
				break collect
			}
			idle.Reset(wait)
		case <-idle.C:
			break collect
		}
	}
	nc.ChangeMaxInFlight(0) // no more deliveries while we answer
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	if why := refused.first(); why != "" {
		// nsqd answers SUB after the connection is made: a subscription
		// its auth server refused would otherwise list nothing and exit 0.
		r.close()
		return nil, fmt.Errorf("nsqd refused reading %s/%s: %w", pubsub.DeadLetterTopic(topic), DeadLetterChannel, nsqRefusal(errors.New(why), cfg.AuthSecret != ""))
	}
	return r, nil
}

// refusals is go-nsq's logger for readNSQD: it keeps the first error nsqd
// sent about the subscription (E_UNAUTHORIZED, E_AUTH_FAILED, …).
type refusals struct {
	mu  sync.Mutex
	msg string
}

func (l *refusals) Output(_ int, s string) error {
	if i := strings.Index(s, "E_"); i >= 0 && strings.Contains(s, "protocol error") {
		l.mu.Lock()
		if l.msg == "" {
			l.msg = strings.TrimSpace(s[i:])
		}
		l.mu.Unlock()
	}
	return nil
}

func (l *refusals) first() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msg
}

func (r *nsqdReader) finish(nm *nsq.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done[nm.ID] = true
	nm.Finish()
}

// close puts back every message not finished and disconnects.
func (r *nsqdReader) close() {
	r.mu.Lock()
	for _, m := range r.msgs {
		if !r.done[m.nm.ID] {
			m.nm.RequeueWithoutBackoff(0)
		}
	}
	r.mu.Unlock()
	r.nc.Stop()
	select {
	case <-r.nc.StopChan:
	case <-time.After(10 * time.Second):
	}
}

// deadLetterInstances are the instances, in Consul, of every service that
// serves its local dead-letter store (meta deadletter.MetaKey). Instances
// whose check fails are included: a running one still answers, and one
// that does not is reported rather than silently skipped.
func deadLetterInstances(ctx context.Context, consul *api.Client) ([]discovery.Instance, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	services, _, err := consul.Catalog().Services(q)
	if err != nil {
		return nil, fmt.Errorf("asking Consul for its services: %w", err)
	}
	names := make([]string, 0, len(services))
	for n := range services {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []discovery.Instance
	for _, name := range names {
		entries, _, err := consul.Health().Service(name, "", false, q)
		if err != nil {
			return nil, fmt.Errorf("asking Consul for the instances of %s: %w", name, err)
		}
		for _, e := range entries {
			if e.Service.Meta[deadletter.MetaKey] == "" {
				continue
			}
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			out = append(out, discovery.Instance{ID: e.Service.ID, Service: name, Node: e.Node.Node, Address: addr, Port: e.Service.Port, Meta: e.Service.Meta})
		}
	}
	return out, nil
}

// listLocal lists topic's dead letters in the local store of every
// instance that serves one, up to limit; an instance that does not answer
// is a problem, not a failure of the whole listing.
func listLocal(ctx context.Context, consul *api.Client, client deadletter.Client, topic string, limit int) ([]deadMsg, []string) {
	ins, err := deadLetterInstances(ctx, consul)
	if err != nil {
		return nil, []string{err.Error() + ": dead letters kept by services are not listed"}
	}
	var out []deadMsg
	var problems []string
	for _, in := range ins {
		if in.Meta[deadletter.MetaKey] != deadletter.MetaValue {
			problems = append(problems, fmt.Sprintf("instance %s serves dead letters in version %q, this CLI speaks %q: not listed", in.ID, in.Meta[deadletter.MetaKey], deadletter.MetaValue))
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		ic := client
		ic.Audience = in.Service
		list, err := ic.List(lctx, in.Addr(), topic)
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("instance %s (%s): its local dead letters are not listed: %v", in.ID, in.Addr(), replayRefusal(err, client.Secret != "")))
			continue
		}
		for _, info := range list {
			if len(out) >= limit {
				return out, problems
			}
			// The same for a service's store: only letters of the topic
			// asked for may be sent back to it.
			ok := info.Topic == topic
			if !ok {
				info.Reason = fmt.Sprintf("(names topic %q, listed for %s: not requeued)", info.Topic, topic)
				info.Topic = topic
			}
			out = append(out, deadMsg{info: info, ok: ok, instance: in.ID, service: in.Service, addr: in.Addr()})
		}
	}
	return out, problems
}

// requeueAll publishes every dead letter's original to its topic (or to)
// and removes the letter once nsqd acknowledged the publish. nsqSecret:
// the producer has an NSQ secret.
func requeueAll(ctx context.Context, p *pubsub.Producer, nsqSecret bool, client deadletter.Client, r *nsqdReader, msgs []deadMsg, to string) (n, fromNSQD, fromLocal int, problems []string) {
	for _, m := range msgs {
		if !m.ok {
			problems = append(problems, fmt.Sprintf("message %s %s: left in place", m.info.ID, m.info.Reason))
			continue
		}
		var orig []byte
		dest := m.info.Topic
		if m.nm != nil {
			orig = m.dl.Original
		} else {
			gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			ic := client
			ic.Audience = m.service
			l, err := ic.Get(gctx, m.addr, m.info.Topic, m.info.ID)
			cancel()
			if err != nil {
				problems = append(problems, fmt.Sprintf("reading local dead letter %s of %s (left in place): %v", m.info.ID, m.instance, replayRefusal(err, client.Secret != "")))
				continue
			}
			orig, dest = l.Original, l.Topic
		}
		if to != "" {
			dest = to
		}
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.Publish(pctx, dest, orig)
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("requeueing %s (%s) to %s (left in place): %v", m.info.ID, m.info.Stored, dest, nsqRefusal(err, nsqSecret)))
			continue
		}
		if m.nm != nil {
			r.finish(m.nm)
			fromNSQD++
		} else {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			ic := client
			ic.Audience = m.service
			err := ic.Delete(dctx, m.addr, m.info.Topic, m.info.ID)
			cancel()
			if err != nil {
				problems = append(problems, fmt.Sprintf("local dead letter %s of %s was requeued to %s but not deleted, and requeueing again would publish it twice: %v", m.info.ID, m.instance, dest, replayRefusal(err, client.Secret != "")))
			}
			fromLocal++
		}
		n++
	}
	return n, fromNSQD, fromLocal, problems
}

func printDeadLetters(w io.Writer, msgs []deadMsg) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSTORED\tCHANNEL\tATTEMPTS\tSIZE\tREASON\tPREVIEW")
	for _, m := range msgs {
		if !m.ok {
			fmt.Fprintf(tw, "-\t%s\t-\t-\t%d\t%s\t%s\n", m.info.Stored, m.info.Size, m.info.Reason, m.preview())
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", m.info.Time.Format(time.RFC3339), m.info.Stored, m.info.Channel, m.info.Attempts,
			m.info.Size, oneLine(m.info.Reason, 60), m.preview())
	}
	tw.Flush()
	fmt.Fprintf(w, "%d dead letter(s)\n", len(msgs))
}

// deadLetterLine is one line of `ls --json`.
type deadLetterLine struct {
	Topic    string    `json:"topic"`
	Channel  string    `json:"channel"`
	Reason   string    `json:"reason"`
	Attempts uint16    `json:"attempts"`
	Time     time.Time `json:"time"`
	Size     int       `json:"size"`
	Stored   string    `json:"stored"`
	ID       string    `json:"id"`
	Instance string    `json:"instance,omitempty"` // the service instance keeping a local one
	NSQID    string    `json:"nsq_id,omitempty"`   // of the original message
	Stream   string    `json:"stream,omitempty"`
	Seq      uint64    `json:"seq,omitempty"`
	Preview  string    `json:"preview"`
}

func printDeadLettersJSON(w io.Writer, msgs []deadMsg) error {
	enc := json.NewEncoder(w)
	for _, m := range msgs {
		i := m.info
		if err := enc.Encode(deadLetterLine{Topic: i.Topic, Channel: i.Channel, Reason: i.Reason, Attempts: i.Attempts, Time: i.Time,
			Size: i.Size, Stored: string(i.Stored), ID: i.ID, Instance: m.instance, NSQID: i.NSQID, Stream: i.Stream, Seq: i.Seq,
			Preview: m.preview()}); err != nil {
			return err
		}
	}
	return nil
}

// preview shows an envelope's identity, or the first printable bytes.
func (m deadMsg) preview() string {
	switch {
	case m.nm != nil && m.ok:
		return preview(m.dl.Original)
	case m.nm != nil:
		return preview(m.nm.Body)
	case m.info.Stream != "":
		return fmt.Sprintf("envelope stream=%s seq=%d", m.info.Stream, m.info.Seq)
	default:
		return preview(m.info.Head)
	}
}

func preview(b []byte) string {
	if env, err := envelope.Decode(b); err == nil {
		return fmt.Sprintf("envelope stream=%s seq=%d type=%s payload=%dB", env.Stream, env.Seq, env.ContentType, len(env.Payload))
	}
	s := []rune(string(bytes.ToValidUTF8(b[:min(len(b), 40)], []byte("."))))
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
