package operator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/svckit/svckit/cmd/svckit/internal/console"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

func consoleCommand() *cli.Command {
	return &cli.Command{
		Name:      "console",
		Usage:     "run the live console of the pipeline (a svckit service: a page on its HTTP port, GET /api/state, GET /api/events; --help lists its flags)",
		ArgsUsage: "[flags]",
		Description: `Every second it reads Consul (services, health, who publishes and consumes
what), every nsqd's /stats, the stream owners' and tracking consumers'
/streams and the services' local dead letters, and serves them as a page
(GET /), as JSON (GET /api/state) and as server-sent events (GET
/api/events). It registers in Consul as "console". Reading the state and
requeueing dead letters need the operator's token (--operator-token-file),
which the page asks for; --open-read serves the state without it, for a
console whose --http-addr only the operator reaches (the laptop's
loopback).`,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			code := service.Main(append([]string{"svckit console"}, c.Args().Slice()...), c.App.Writer, c.App.ErrWriter, ConsoleSpec(c.App.Version))
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
}

// ConsoleSpec is `svckit console` as a service.Spec: package console,
// given this package's dead-letter code (the console cannot import it).
func ConsoleSpec(version string) service.Spec {
	return console.Spec(version, func(env console.DeadLetterEnv) console.DeadLetterAccess {
		return consoleDeadLetters{env: env, client: deadletter.Client{Secret: env.ReplaySecret, HTTP: serviceHTTP}}
	})
}

// consoleDeadLetters is `svckit deadletter`'s code for the console:
// readNSQD, listLocal, requeueAll and the previews, with the console's own
// Consul client, nsqds, NSQ secret and replay secret.
type consoleDeadLetters struct {
	env    console.DeadLetterEnv
	client deadletter.Client
}

// consoleRequeueLimit is how many dead letters one requeue from the
// console reads (deadletter requeue's default --limit).
const consoleRequeueLimit = 1000

// consoleRequeueWait is how long a requeue waits for more letters from
// nsqd (the console has just seen their count: they are there).
const consoleRequeueWait = 500 * time.Millisecond

func (d consoleDeadLetters) ListNSQD(ctx context.Context, topic string, limit int, wait time.Duration) ([]console.DeadLetter, error) {
	nsqds := d.env.NSQDs.Instances()
	if len(nsqds) == 0 {
		return nil, errors.New("no passing nsqd in Consul")
	}
	r, err := readNSQD(ctx, d.env.NSQ, nsqds, topic, max(limit, 1), wait)
	if err != nil {
		return nil, err
	}
	defer r.close() // puts every letter back
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]console.DeadLetter, 0, len(r.msgs))
	for _, m := range r.msgs {
		out = append(out, consoleLetter(m))
	}
	return out, nil
}

func (d consoleDeadLetters) ListLocal(ctx context.Context, in discovery.Instance, topic string) ([]console.DeadLetter, error) {
	if in.Meta[deadletter.MetaKey] != deadletter.MetaValue {
		return nil, fmt.Errorf("it serves dead letters in version %q, the console speaks %q", in.Meta[deadletter.MetaKey], deadletter.MetaValue)
	}
	ic := d.client
	ic.Audience = in.Service
	list, err := ic.List(ctx, in.Addr(), topic)
	if err != nil {
		return nil, replayRefusal(err, d.client.Secret != "")
	}
	out := make([]console.DeadLetter, 0, len(list))
	for _, info := range list {
		out = append(out, consoleLetter(deadMsg{info: info, ok: info.Topic != "", instance: in.ID, service: in.Service, addr: in.Addr()}))
	}
	return out, nil
}

// Requeue is runDeadletter's requeue: every letter of topic in nsqd and
// in the services' stores (or only the one with id), oldest first,
// through requeueAll.
func (d consoleDeadLetters) Requeue(ctx context.Context, topic, id string) (console.RequeueResult, error) {
	nsqds := d.env.NSQDs.Instances()
	if len(nsqds) == 0 {
		return console.RequeueResult{}, errors.New("no passing nsqd in Consul")
	}
	fromNSQD, err := readNSQD(ctx, d.env.NSQ, nsqds, topic, consoleRequeueLimit, consoleRequeueWait)
	if err != nil {
		return console.RequeueResult{}, err
	}
	defer fromNSQD.close()
	fromNSQD.mu.Lock()
	msgs := append([]deadMsg(nil), fromNSQD.msgs...)
	fromNSQD.mu.Unlock()
	local, problems := listLocal(ctx, d.env.Consul, d.client, topic, consoleRequeueLimit-len(msgs))
	msgs = append(msgs, local...)
	sort.SliceStable(msgs, func(i, j int) bool { return msgs[i].info.Time.Before(msgs[j].info.Time) })
	if id != "" {
		var one []deadMsg
		for _, m := range msgs {
			if m.info.ID == id {
				one = append(one, m)
			}
		}
		if len(one) == 0 {
			return console.RequeueResult{}, console.ErrNoSuchLetter
		}
		msgs = one
	}
	p := pubsub.NewProducer(d.env.NSQDs, pubsub.ProducerOptions{NSQ: d.env.NSQ})
	defer p.Stop()
	n, fromN, fromL, rp := requeueAll(ctx, p, d.env.NSQ.AuthSecret != "", d.client, fromNSQD, msgs, "")
	return console.RequeueResult{Requeued: n, FromNSQD: fromN, FromLocal: fromL, Problems: append(problems, rp...)}, nil
}

// cut bounds a letter's text fields: they are whatever the letter's
// writer put there, and the console sends its state every second.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// consoleLetter is a dead letter as the console shows it: the fields of
// `deadletter ls --json`.
func consoleLetter(m deadMsg) console.DeadLetter {
	i := m.info
	return console.DeadLetter{ID: i.ID, Topic: i.Topic, Stored: string(i.Stored), Instance: m.instance, Channel: cut(i.Channel, 100),
		Reason: cut(i.Reason, 300), Attempts: i.Attempts, Time: i.Time, Size: i.Size, Stream: i.Stream, Seq: i.Seq, Preview: m.preview()}
}
