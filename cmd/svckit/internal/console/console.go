// Package console is `svckit console`: a live console of the pipeline, run
// as a svckit service (registered in Consul as "console", with /health,
// /ready and /metrics). Every second it reads, concurrently and with
// timeouts of at most a second, what Consul and nsqd already say and what
// the services already serve on their existing GET endpoints:
//
//   - Consul's catalog and health checks: the services, their instances,
//     and from their tags who publishes and consumes what (publishes=,
//     consumes=), which instance owns which stream (stream=), the stages
//     (replay-relay) and the tracking consumers (replay-tracker);
//   - every nsqd's GET /stats: topics and channels, depth, in flight,
//     rates, and the dead-letter topics' depth;
//   - the owners' and the tracking consumers' GET /streams, signed with the
//     replay secret when one is configured (the console's own
//     --replay-secret or --replay-secret-file);
//   - the services' local dead-letter stores (GET /deadletters).
//
// It serves the result as one JSON document (GET /api/state), as
// server-sent events (GET /api/events, a "state" event at least every
// second) and as a page that draws it (GET /, embedded: no CDN, no
// external font or script). POST /api/deadletters/requeue sends dead
// letters back with the code of `svckit deadletter requeue`; it needs the
// operator's token (--operator-token-file) in an Authorization header and
// refuses cross-site requests.
//
// Reading the state needs the operator's token too, unless --open-read:
// the state shows what the services serve only to holders of the replay
// secret (positions, dead letters' first bytes). The laptop's Procfile
// gives --open-read, its port being on loopback; there a request whose
// Host is a name other than localhost is refused (a page of another site
// whose name was made to point at 127.0.0.1 — DNS rebinding — would
// otherwise read the state as the console's own origin). In the
// datacenters the console serves HTTPS and reading needs the token.
//
// The console cannot import package operator, which registers it and
// whose dead-letter code it reuses: operator hands that code in as a
// DeadLetterAccess (see Spec).
package console

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/service"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// ServiceName is the console's name in Consul.
const ServiceName = "console"

// Settings are the console's own flags (config.Config has those of every
// service: the replay secret, the NSQ secret, the HTTP address).
type Settings struct {
	// OperatorToken authorizes the requests that change something (a
	// requeue). Without one, the console only reads.
	OperatorToken string `flag:"operator-token" file:"file holding the operator's token (instead of --operator-token)" usage:"the operator's token: reading the state and POST /api/deadletters/requeue need it as Authorization: Bearer <token> (none: the console only reads, and only with --open-read)"`
	// OpenRead serves the state (GET /api/state, /api/events) to whoever
	// reaches the console's port, without the token. It is for the
	// laptop, where that port is on loopback; a datacenter's console
	// shows what only holders of the replay secret may read, so there
	// reading needs the token too (the default).
	// NSQDStatsSecret signs the requests to svckit nsqd-stats (nsqd's
	// statistics in the datacenters, meta stats_port): its own secret,
	// not the replay secret, which nsqd-stats does not hold.
	NSQDStatsSecret string `flag:"nsqd-stats-secret" file:"file holding it, instead of --nsqd-stats-secret (a datacenter's nsqdstats.secret)" usage:"what requests to svckit nsqd-stats are signed with (none: the replay secret)"`
	OpenRead        bool   `flag:"open-read" usage:"serve the state to anyone who reaches --http-addr, without the operator's token (the laptop's loopback only: the state shows what the services serve only to holders of the replay secret)"`
	// ForgetAfter bounds how long a tracking consumer, or a stream's
	// owner, that left Consul stays in the state (marked down, its lag
	// rising) before the console forgets it.
	ForgetAfter time.Duration `flag:"forget-after" min:"1m" usage:"how long a tracking consumer or stream owner gone from Consul stays in the state, marked down"`
	// TraceURL is where a reading's trace is found: a trace search's URL
	// with {id} standing for the reading's messaging.message.id,
	// <stream>/<seq> (svckit/tracing). Each stream's card then opens the
	// trace of any of its readings.
	TraceURL string `flag:"trace-url" usage:"a trace search's URL with {id} for a reading's messaging.message.id (<stream>/<seq>), e.g. Jaeger's http://jaeger:16686/search?service=sensor&tags=%7B%22messaging.message.id%22%3A%22{id}%22%7D: each stream's card opens a reading's trace"`
}

// DefaultSettings is the value of each of the console's flags when
// neither the command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{ForgetAfter: time.Hour}
}

// Timing of the collection.
const (
	// Interval is how often the console collects the state.
	Interval = time.Second
	// RequestTimeout bounds every request the console makes in a
	// collection (to Consul, nsqd, a service).
	RequestTimeout = 900 * time.Millisecond
	// RateWindow is the span rates are computed over.
	RateWindow = 5 * time.Second
	// HistoryWindow is how much lag history each consumer keeps.
	HistoryWindow = 5 * time.Minute
	// MaxLetters is how many dead letters per topic the state lists.
	MaxLetters = 20
	// NSQDRelist is how often the nsqd dead letters of a topic are read
	// again while their count does not change (reading them holds them in
	// flight for a moment, so not every second).
	NSQDRelist = 30 * time.Second
	// NSQDListWait is how long a reading of <topic>.dead waits for more
	// letters when fewer than its limit came.
	NSQDListWait = 300 * time.Millisecond
)

// DeadLetterEnv is what DeadLetterAccess needs from the console: its
// Consul client, its nsqds (passing, from its discovery), its NSQ
// configuration (the operator's NSQ secret: --nsq-auth-secret-file) and
// its replay secret (for the services' stores).
type DeadLetterEnv struct {
	Consul       *api.Client
	NSQDs        *discovery.Watcher
	NSQ          *nsq.Config
	ReplaySecret string
}

// DeadLetterAccess lists and requeues dead letters: the code of
// `svckit deadletter` (package operator provides it). Every call takes a
// context that bounds it.
type DeadLetterAccess interface {
	// ListNSQD reads up to limit of topic's dead letters in <topic>.dead
	// without consuming them (as `svckit deadletter ls` does), waiting at
	// most wait for more when fewer came.
	ListNSQD(ctx context.Context, topic string, limit int, wait time.Duration) ([]DeadLetter, error)
	// ListLocal lists the dead letters of topic ("" = every topic) that
	// one instance keeps in its local store.
	ListLocal(ctx context.Context, in discovery.Instance, topic string) ([]DeadLetter, error)
	// Requeue publishes topic's dead letters (only the one with id, if id
	// is not "") back to their topic and removes each once nsqd
	// acknowledged it, as `svckit deadletter requeue` does. ErrNoSuchLetter
	// when id names none.
	Requeue(ctx context.Context, topic, id string) (RequeueResult, error)
}

// ErrNoSuchLetter is Requeue's answer for an id it did not find.
var ErrNoSuchLetter = errors.New("no such dead letter")

// RequeueResult is what a requeue did.
type RequeueResult struct {
	Requeued  int      `json:"requeued"`
	FromNSQD  int      `json:"from_nsqd"`
	FromLocal int      `json:"from_local"`
	Problems  []string `json:"problems"`
}

// Spec is the console for service.Main; deadLetters makes the
// DeadLetterAccess from what the service has (package operator gives its
// own).
func Spec(version string, deadLetters func(DeadLetterEnv) DeadLetterAccess) service.Spec {
	return service.Spec{
		Name:    ServiceName,
		Usage:   "a live console of the pipeline: services, topics, streams, consumers' lag and dead letters, in a browser (GET /) and as JSON (GET /api/state)",
		Version: version,
		Flags:   config.FlagsOf(DefaultSettings()),
		Setup: func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
			return setup(c, s, deadLetters)
		},
	}
}

// checkTraceURL refuses a --trace-url the page could not use: not an
// absolute http(s) URL, or without {id}.
func checkTraceURL(u string) error {
	if u == "" {
		return nil
	}
	const mark = "svckit-trace-id"
	p, err := url.Parse(strings.ReplaceAll(u, "{id}", mark))
	switch {
	case err != nil:
		return fmt.Errorf("--trace-url %q: %w", u, err)
	case p.Scheme != "http" && p.Scheme != "https" || p.Host == "":
		return fmt.Errorf("--trace-url %q: not an http or https URL", u)
	case p.User != nil:
		// Every reader of the state would get them.
		return fmt.Errorf("--trace-url %q: credentials in the URL", u)
	case !strings.Contains(u, "{id}"):
		return fmt.Errorf("--trace-url %q: no {id} in it, where the reading's id goes", u)
	case strings.Contains(p.Host, mark):
		return fmt.Errorf("--trace-url %q: {id} in the host; it belongs in the path or the query", u)
	}
	return nil
}

func setup(c *cli.Context, s *service.Service, deadLetters func(DeadLetterEnv) DeadLetterAccess) (func(context.Context) error, error) {
	set := DefaultSettings()
	if err := config.Load(c, &set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	if err := config.CheckMin(set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	if deadLetters == nil {
		return nil, fmt.Errorf("console: no dead-letter access given")
	}
	if err := checkTraceURL(set.TraceURL); err != nil {
		return nil, service.UsageError{Err: err}
	}
	if set.OperatorToken == "" && !set.OpenRead {
		return nil, service.UsageError{Err: errors.New("no one could read the console: give the operator's token (--operator-token-file, SVCKIT_OPERATOR_TOKEN_FILE), or --open-read where only the operator reaches --http-addr (loopback)")}
	}
	nsqCfg, err := s.NSQConfig()
	if err != nil {
		return nil, service.UsageError{Err: err}
	}
	nsqds := s.Discovery.Watch(service.NSQDService)
	access := deadLetters(DeadLetterEnv{Consul: s.Consul, NSQDs: nsqds, NSQ: nsqCfg, ReplaySecret: s.Config.ReplaySecret})
	col := newCollector(collectorOptions{
		Consul: s.Consul, Secret: s.Config.ReplaySecret, StatsSecret: set.NSQDStatsSecret, DeadLetters: access, ForgetAfter: set.ForgetAfter,
		Instance: s.Config.InstanceID, Version: s.Config.Version, Log: s.Log,
		RequeueEnabled: set.OperatorToken != "", TraceURL: set.TraceURL,
	})
	srv := newServer(col, access, set.OperatorToken, set.OpenRead, s.Log)
	srv.register(s.HTTP)
	// Where the operator finds the page, and the token a requeue needs
	// (goreman's output, on the laptop).
	requeue := "off (no --operator-token-file)"
	switch f := c.String("operator-token-file"); {
	case f != "":
		requeue = "needs the operator token in " + f
	case set.OperatorToken != "":
		requeue = "needs the operator token given by --operator-token"
	}
	scheme, read := "http", "open to whoever reaches the port (--open-read)"
	if s.Config.HTTPTLSCert != "" {
		scheme = "https"
	}
	if !set.OpenRead {
		read = "needs the operator token"
	}
	s.Log.Info("console page", "url", scheme+"://"+net.JoinHostPort(s.Advertise, strconv.Itoa(s.Port))+"/", "read", read, "requeue", requeue)
	s.HTTP.AddCheck("console", col.Healthy)
	// The collection runs in the background; its context ends at
	// shutdown, which also ends the server-sent event streams (the HTTP
	// server's shutdown waits for open requests).
	s.Go(func(ctx context.Context) {
		defer srv.close()
		col.Run(ctx)
	})
	return nil, nil
}
