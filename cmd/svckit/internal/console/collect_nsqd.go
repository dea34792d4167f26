package console

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
)

// nsqdStats is the part of nsqd's GET /stats?format=json (v1.3.0) the
// console reads.
type nsqdStats struct {
	Version string `json:"version"`
	Health  string `json:"health"`
	Topics  []struct {
		TopicName    string `json:"topic_name"`
		Depth        int64  `json:"depth"`
		MessageCount uint64 `json:"message_count"`
		Paused       bool   `json:"paused"`
		Channels     []struct {
			ChannelName   string `json:"channel_name"`
			Depth         int64  `json:"depth"`
			InFlightCount int    `json:"in_flight_count"`
			DeferredCount int    `json:"deferred_count"`
			MessageCount  uint64 `json:"message_count"`
			RequeueCount  uint64 `json:"requeue_count"`
			TimeoutCount  uint64 `json:"timeout_count"`
			ClientCount   int    `json:"client_count"`
			Paused        bool   `json:"paused"`
			Clients       []struct {
				UserAgent string `json:"user_agent"`
			} `json:"clients"`
		} `json:"channels"`
	} `json:"topics"`
}

// nsqdAnswer is one nsqd's answer in a collection.
type nsqdAnswer struct {
	in       discovery.Instance
	httpAddr string // nsqd's own HTTP API (meta http_port)
	// statsAddr is svckit nsqd-stats' beside it (meta stats_port).
	statsAddr string
	stats     *nsqdStats
	err       error
}

// nsqdMemory is what the console remembers of an nsqd between
// collections: since when it does not answer.
type nsqdMemory struct {
	downSince, lastOK time.Time
}

// askNSQDs asks every nsqd in Consul for its /stats, concurrently; the
// answers are complete once wg is done. Where nsqd registered the meta
// http_port (the laptop), its own HTTP API is asked. The datacenters keep
// that API on nsqd's loopback (NSQ's auth does not cover it) and register
// the meta stats_port instead: svckit nsqd-stats, beside nsqd, serves its
// /stats to requests signed with the replay secret.
func (c *collector) askNSQDs(ctx context.Context, wg *sync.WaitGroup, view consulView) []nsqdAnswer {
	ins := view.tagged(func(in discovery.Instance) bool { return in.Service == service.NSQDService })
	out := make([]nsqdAnswer, len(ins))
	for i, in := range ins {
		out[i].in = in
		read := c.readStats
		addr, ok := in.MetaAddr("http_port")
		if !ok {
			if addr, ok = in.MetaAddr("stats_port"); ok {
				read = c.readSignedStats
				out[i].statsAddr = addr
			}
		} else {
			out[i].httpAddr = addr
		}
		if !ok {
			out[i].err = fmt.Errorf("registered with neither the meta http_port nor stats_port: its /stats cannot be read")
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].stats, out[i].err = read(ctx, addr)
		}()
	}
	return out
}

// readStats is one nsqd's GET /stats, without its memory statistics
// (nsqd reads them by stopping the world).
func (c *collector) readStats(ctx context.Context, addr string) (*nsqdStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stats?format=json&include_mem=false", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET /stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return nil, fmt.Errorf("GET /stats: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var st nsqdStats
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /stats: decoding: %w", err)
	}
	return &st, nil
}

// readSignedStats is one nsqd's /stats from the svckit nsqd-stats beside
// it: signed with the statistics' secret for "nsqd", its answer proven.
func (c *collector) readSignedStats(ctx context.Context, addr string) (*nsqdStats, error) {
	var st nsqdStats
	secret := c.o.StatsSecret
	if secret == "" {
		secret = c.o.Secret
	}
	client := replay.Client{Secret: secret, Audience: service.NSQDService, HTTP: c.http}
	if err := getJSON(ctx, client, addr, "/stats", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// buildTopics fills st's nsqds and topics from the answers and the
// Consul tags, and returns what each topic's "<topic>.dead" holds in nsqd.
func (c *collector) buildTopics(st *State, view consulView, answers []nsqdAnswer, now time.Time) map[string]int64 {
	topics := map[string]*Topic{}
	topic := func(name string) *Topic {
		t := topics[name]
		if t == nil {
			t = &Topic{Name: name, Publishers: []string{}, Consumers: []string{}, Channels: []Channel{}}
			topics[name] = t
		}
		return t
	}
	dead := map[string]int64{}
	st.NSQDs = []NSQD{}
	seen := map[string]bool{}
	for _, a := range answers {
		seen[a.in.ID] = true
		m := c.nsqds[a.in.ID]
		if m == nil {
			m = &nsqdMemory{}
			c.nsqds[a.in.ID] = m
		}
		n := NSQD{ID: a.in.ID, Node: a.in.Node, Address: a.in.Addr(), HTTPAddress: a.httpAddr, StatsAddress: a.statsAddr, Health: view.health[a.in.ID]}
		if a.err != nil {
			if m.downSince.IsZero() {
				m.downSince = now
			}
			n.Error = a.err.Error()
			st.NSQDDown = true
		} else {
			m.downSince, m.lastOK = time.Time{}, now
			n.Up, n.Version, n.NSQDHealth = true, a.stats.Version, a.stats.Health
		}
		n.DownSince, n.LastOK = since(m.downSince), since(m.lastOK)
		st.NSQDs = append(st.NSQDs, n)
		if a.stats == nil {
			continue
		}
		for _, ts := range a.stats.Topics {
			if base, ok := strings.CutSuffix(ts.TopicName, deadletter.Topic("")); ok && base != "" {
				// Dead letters wait in the topic until its first channel
				// exists, then in its channels (svckit deadletter reads
				// through one): the most any channel holds, in its queue,
				// in flight or deferred, plus what the topic still holds.
				var most int64
				for _, ch := range ts.Channels {
					most = max(most, ch.Depth+int64(ch.InFlightCount)+int64(ch.DeferredCount))
				}
				dead[base] += ts.Depth + most
				continue
			}
			t := topic(ts.TopicName)
			t.InNSQD++
			t.Depth += ts.Depth
			t.MessageCount += ts.MessageCount
			t.Paused = t.Paused || ts.Paused
			t.Rate += c.rates.add("topic\x00"+a.in.ID+"\x00"+ts.TopicName, now, ts.MessageCount)
			for _, cs := range ts.Channels {
				i := sort.Search(len(t.Channels), func(i int) bool { return t.Channels[i].Name >= cs.ChannelName })
				if i == len(t.Channels) || t.Channels[i].Name != cs.ChannelName {
					t.Channels = append(t.Channels, Channel{})
					copy(t.Channels[i+1:], t.Channels[i:])
					t.Channels[i] = Channel{Name: cs.ChannelName, Ephemeral: strings.HasSuffix(cs.ChannelName, "#ephemeral"), Consumers: []string{}}
				}
				ch := &t.Channels[i]
				ch.Depth += cs.Depth
				ch.InFlight += cs.InFlightCount
				ch.Deferred += cs.DeferredCount
				ch.MessageCount += cs.MessageCount
				ch.Requeued += cs.RequeueCount
				ch.TimedOut += cs.TimeoutCount
				ch.Clients += cs.ClientCount
				ch.Paused = ch.Paused || cs.Paused
				ch.Rate += c.rates.add("channel\x00"+a.in.ID+"\x00"+ts.TopicName+"\x00"+cs.ChannelName, now, cs.MessageCount)
				for _, cl := range cs.Clients {
					if name, ok := svckitService(cl.UserAgent); ok {
						ch.Consumers = union(ch.Consumers, name)
					}
				}
			}
		}
	}
	for id := range c.nsqds {
		if !seen[id] {
			delete(c.nsqds, id)
		}
	}
	if len(answers) == 0 {
		st.NSQDDown = true
		st.Problems = append(st.Problems, "no nsqd is registered in Consul (service "+service.NSQDService+")")
	}
	// Who publishes and consumes what, from the tags: topics nobody
	// created in nsqd yet are drawn too.
	for _, svc := range view.services {
		for _, p := range svc.Publishes {
			topic(p).Publishers = union(topic(p).Publishers, svc.Name)
		}
		for _, cn := range svc.Consumes {
			topic(cn).Consumers = union(topic(cn).Consumers, svc.Name)
		}
	}
	st.Topics = make([]Topic, 0, len(topics))
	for _, name := range sortedKeys(topics) {
		t := topics[name]
		t.Stale = st.NSQDDown
		st.Topics = append(st.Topics, *t)
	}
	return dead
}

// svckitService is the service name in a svckit consumer's user agent
// (svckit-<service>/<version>, see service.NSQConfig).
func svckitService(ua string) (string, bool) {
	rest, ok := strings.CutPrefix(ua, "svckit-")
	if !ok {
		return "", false
	}
	name, _, _ := strings.Cut(rest, "/")
	return name, name != ""
}
