package console

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/replay"
)

type collectorOptions struct {
	Consul *api.Client
	Secret string // the replay secret: signs requests to /streams
	// StatsSecret signs requests to svckit nsqd-stats ("" = Secret).
	StatsSecret string
	DeadLetters DeadLetterAccess
	ForgetAfter time.Duration
	Instance    string // the console's own
	Version     string
	Log         *slog.Logger
	// RequeueEnabled: an operator token is configured.
	RequeueEnabled bool
	// TraceURL is --trace-url, passed on to the page.
	TraceURL string
}

// collector builds a State every Interval and keeps the latest, encoded
// once for every reader. What it remembers between collections (the last
// good answers, rates' samples, lag histories, consumers gone away) is
// touched by Run's goroutine only; the latest state and the nsqd
// dead-letter listings, shared with the HTTP handlers and the listing
// goroutine, have their own locks.
type collector struct {
	o    collectorOptions
	http *http.Client // to nsqd and the services: contexts bound every request

	// Run's alone.
	consul    consulMemory
	nsqds     map[string]*nsqdMemory // by Consul service id
	rates     rates
	owners    map[string]*ownerMemory         // by stream
	consumers map[consumerKey]*consumerMemory // by (instance, stream)
	bg        sync.WaitGroup                  // nsqd dead-letter readings

	mu      sync.Mutex
	encoded []byte
	changed chan struct{} // closed when a new state is published
	at      time.Time     // when the last state was published
	// history is GET /api/lag-history's answer, made at historyAt.
	history   []byte
	historyAt time.Time

	dl dlListings
}

func newCollector(o collectorOptions) *collector {
	return &collector{
		o: o,
		// Keep-alive connections to the few hosts asked every second:
		// no new connection per request, for them or for us.
		http: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     30 * time.Second,
		}},
		nsqds:     map[string]*nsqdMemory{},
		rates:     rates{windows: map[string]*rateWindow{}},
		owners:    map[string]*ownerMemory{},
		consumers: map[consumerKey]*consumerMemory{},
		changed:   make(chan struct{}),
		dl:        dlListings{op: make(chan struct{}, 1), byTopic: map[string]*nsqdListing{}, running: map[string]bool{}},
	}
}

// Run collects every Interval until ctx ends.
func (c *collector) Run(ctx context.Context) {
	defer c.bg.Wait()
	defer c.http.CloseIdleConnections()
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		c.collect(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// collect reads Consul, then everything Consul named at once, and
// publishes the state they make.
func (c *collector) collect(ctx context.Context) {
	now := time.Now()
	st := &State{Version: StateVersion, GeneratedAt: now.UTC(), IntervalMS: Interval.Milliseconds(),
		Console:  ConsoleInfo{Instance: c.o.Instance, Version: c.o.Version},
		Problems: []string{}}
	st.Requeue.Enabled = c.o.RequeueEnabled
	st.TraceURL = c.o.TraceURL
	if !st.Requeue.Enabled {
		st.Requeue.Why = "the console was started without --operator-token or --operator-token-file: it only reads"
	}

	// Consul first: it names everything else.
	view := c.readConsul(ctx, now)
	st.Consul = c.consul.source()
	st.Services = view.services

	// Then, concurrently, every nsqd's stats, every owner's and tracking
	// consumer's /streams and every local dead-letter store, each bounded
	// by RequestTimeout.
	rctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	var wg sync.WaitGroup
	nsqdAnswers := c.askNSQDs(rctx, &wg, view)
	ownerAnswers := c.askOwners(rctx, &wg, view)
	trackerAnswers := c.askTrackers(rctx, &wg, view)
	localAnswers := c.askLocalDeadLetters(rctx, &wg, view)
	wg.Wait()
	if ctx.Err() != nil {
		return // stopping: answers cut short are not news
	}

	now = time.Now()
	c.rates.begin()
	deadInNSQD := c.buildTopics(st, view, nsqdAnswers, now)
	c.buildStreams(st, view, ownerAnswers, trackerAnswers, now)
	c.buildDeadLetters(ctx, st, deadInNSQD, localAnswers, now)
	c.rates.end()
	c.publish(st)
	c.publishHistory(now)
}

// publish makes st the latest state and wakes the event streams.
func (c *collector) publish(st *State) {
	b, err := json.Marshal(st)
	if err != nil {
		// Every field is plain data: this would be a bug, said once per
		// collection rather than hidden.
		c.o.Log.Error("console: encoding the state", "err", err)
		return
	}
	c.mu.Lock()
	c.encoded, c.at = b, time.Now()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// latest is the latest state's JSON (nil before the first collection)
// and a channel closed when a newer one is published.
func (c *collector) latest() ([]byte, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.encoded, c.changed
}

// Healthy is a readiness check: the state is being collected.
func (c *collector) Healthy() error {
	c.mu.Lock()
	at := c.at
	c.mu.Unlock()
	switch {
	case at.IsZero():
		return fmt.Errorf("no state collected yet")
	case time.Since(at) > 5*Interval:
		return fmt.Errorf("no state collected since %s", at.Format(time.RFC3339))
	}
	return nil
}

// streamsClient is the replay client for one service's /streams: signed
// with the replay secret for that service (its Consul name), its answer
// proven, as every svckit client asks.
func (c *collector) streamsClient(service string) replay.Client {
	return replay.Client{Secret: c.o.Secret, Audience: service, HTTP: c.http}
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// since is a *time.Time for the JSON, nil for the zero time.
func since(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
