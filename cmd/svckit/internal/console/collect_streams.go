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

	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/stage"
)

// ownerAnswer is one owner instance's GET /streams.
type ownerAnswer struct {
	in       discovery.Instance
	statuses []replay.Status
	err      error
}

// trackerAnswer is one tracking consumer's GET /streams (kind
// kindTracker), or one stage instance's GET /stage (kindStage, in lags):
// both are asked in the same round (askTrackers).
type trackerAnswer struct {
	in       discovery.Instance
	kind     string
	statuses []replay.StreamStatus
	lags     []stage.StreamLag
	err      error
}

// The kinds of StreamConsumer.
const (
	kindTracker = "tracker"
	kindStage   = "stage"
)

// ownerMemory is a stream's owner as last seen: kept while it does not
// answer, so that the stream's numbers stay (marked down) instead of
// vanishing, and the consumers' lag is computed against them.
type ownerMemory struct {
	instance, service, address, topic string
	status                            replay.Status
	known                             bool // status holds an answer
	up                                bool
	err                               string
	downSince, lastSeen               time.Time
	rate                              rateWindow
}

// consumerKey is one tracking consumer instance's (kind kindTracker,
// instance its id) or one stage's (kindStage, instance its service name:
// a stage is one row per service) position in one stream.
type consumerKey struct{ kind, instance, stream string }

// consumerMemory is a tracking consumer's or a stage's last answer about
// a stream, and its lag history. A stage's answer is in status as a
// tracker's would be (LastContiguous its position, OwnerLast its
// upstream's last).
type consumerMemory struct {
	service, address    string
	instances           []string // a stage's instances that reported the stream
	status              replay.StreamStatus
	up                  bool
	err                 string
	downSince, lastSeen time.Time
	history             lagHistory
}

// askOwners asks every instance tagged stream=<id> for its /streams.
func (c *collector) askOwners(ctx context.Context, wg *sync.WaitGroup, view consulView) []ownerAnswer {
	ins := view.tagged(func(in discovery.Instance) bool {
		for _, t := range in.Tags {
			if strings.HasPrefix(t, replay.OwnerTag("")) {
				return true
			}
		}
		return false
	})
	out := make([]ownerAnswer, len(ins))
	for i, in := range ins {
		out[i].in = in
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].statuses, out[i].err = c.streamsClient(in.Service).Streams(ctx, in.Addr())
		}()
	}
	return out
}

// askTrackers asks every instance tagged replay-tracker for its /streams,
// and every one tagged replay-relay (a stage) for its /stage
// (collect_stages.go): the consumers' positions, in one round, each
// request signed as every /streams request is.
func (c *collector) askTrackers(ctx context.Context, wg *sync.WaitGroup, view consulView) []trackerAnswer {
	trackers := view.tagged(func(in discovery.Instance) bool { return in.HasTag(replay.TrackerTag) })
	stages := stageInstances(view)
	// One slice, made before any goroutine writes to it.
	out := make([]trackerAnswer, len(trackers)+len(stages))
	for i, in := range trackers {
		out[i].in, out[i].kind = in, kindTracker
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].err = getJSON(ctx, c.streamsClient(in.Service), in.Addr(), "/streams", &out[i].statuses)
		}()
	}
	c.askStages(ctx, wg, stages, out[len(trackers):])
	return out
}

// getJSON is a signed GET whose proven answer is decoded into v.
func getJSON(ctx context.Context, client replay.Client, addr, path string, v any) error {
	resp, err := client.Get(ctx, addr, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Errorf("GET %s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decoding: %w", path, err)
	}
	return nil
}

// buildStreams fills st's streams: each owner's positions and publish
// rate, each tracking consumer's position and lag, with their memory.
func (c *collector) buildStreams(st *State, view consulView, owners []ownerAnswer, trackers []trackerAnswer, now time.Time) {
	// Owners. An instance answers for every stream it owns; one tagged
	// for a stream it does not report is not its owner (any more).
	registered := map[string]discovery.Instance{} // stream → its owner in Consul
	for _, in := range view.instances {
		for _, t := range in.Tags {
			if id, ok := strings.CutPrefix(t, replay.OwnerTag("")); ok {
				if prev, dup := registered[id]; !dup || view.health[in.ID] == "passing" && view.health[prev.ID] != "passing" {
					registered[id] = in
				}
			}
		}
	}
	answered := map[string]replay.Status{}
	answerErr := map[string]error{} // owner instance id → why it did not answer
	for _, a := range owners {
		if a.err != nil {
			answerErr[a.in.ID] = a.err
			continue
		}
		for _, s := range a.statuses {
			if in, ok := registered[s.Stream]; ok && in.ID == a.in.ID {
				answered[s.Stream] = s
			}
		}
	}
	for id, in := range registered {
		m := c.owners[id]
		if m == nil {
			m = &ownerMemory{}
			c.owners[id] = m
		}
		m.instance, m.service, m.address = in.ID, in.Service, in.Addr()
		for _, t := range in.Tags {
			if topic, ok := strings.CutPrefix(t, replay.PublishesTag("")); ok {
				m.topic = topic
			}
		}
		s, ok := answered[id]
		switch {
		case ok:
			m.status, m.known, m.up, m.err, m.downSince, m.lastSeen = s, true, true, "", time.Time{}, now
		case answerErr[in.ID] != nil:
			m.markDown(now, answerErr[in.ID].Error())
		default:
			m.markDown(now, "its GET /streams does not report stream "+id)
		}
	}
	for id, m := range c.owners {
		if _, ok := registered[id]; !ok {
			m.markDown(now, "no instance in Consul owns it (tag "+replay.OwnerTag(id)+")")
		}
	}

	// Tracking consumers.
	reported := map[consumerKey]bool{}
	trackerErr := map[string]error{}
	trackerIn := map[string]discovery.Instance{}
	for _, a := range trackers {
		if a.kind != kindTracker {
			continue
		}
		trackerIn[a.in.ID] = a.in
		if a.err != nil {
			trackerErr[a.in.ID] = a.err
			continue
		}
		for _, s := range a.statuses {
			k := consumerKey{kindTracker, a.in.ID, s.Stream}
			reported[k] = true
			m := c.consumers[k]
			if m == nil {
				m = &consumerMemory{}
				c.consumers[k] = m
			}
			m.service, m.address = a.in.Service, a.in.Addr()
			m.status, m.up, m.err, m.downSince, m.lastSeen = s, true, "", time.Time{}, now
		}
	}
	for k, m := range c.consumers {
		if k.kind != kindTracker || reported[k] {
			continue
		}
		switch in, ok := trackerIn[k.instance]; {
		case !ok:
			m.markDown(now, "not registered in Consul (stopped, or gone)")
		case trackerErr[in.ID] != nil:
			m.markDown(now, trackerErr[in.ID].Error())
		default:
			m.markDown(now, "its GET /streams does not report stream "+k.stream)
		}
	}

	// Forget what has been gone from Consul for ForgetAfter.
	for id, m := range c.owners {
		if _, ok := registered[id]; !ok && now.Sub(m.lastSeen) > c.o.ForgetAfter {
			delete(c.owners, id)
		}
	}
	for k, m := range c.consumers {
		if _, ok := trackerIn[k.instance]; k.kind == kindTracker && !ok && now.Sub(m.lastSeen) > c.o.ForgetAfter {
			delete(c.consumers, k)
		}
	}

	// Stages: their memory, as the trackers' (collect_stages.go).
	c.buildStages(view, trackers, now)

	streams := map[string]*Stream{}
	stream := func(id string) *Stream {
		s := streams[id]
		if s == nil {
			s = &Stream{Stream: id, Consumers: []StreamConsumer{}}
			streams[id] = s
		}
		return s
	}
	for id, m := range c.owners {
		s := stream(id)
		s.Owner = &Owner{Instance: m.instance, Service: m.service, Address: m.address, Up: m.up, Error: m.err,
			DownSince: since(m.downSince), LastSeen: since(m.lastSeen)}
		s.Topic = m.topic
		if m.known {
			s.LastSeq, s.RetainedFirst, s.RetainedLast = m.status.LastSeq, m.status.RetainedFirst, m.status.RetainedLast
			s.Damaged, s.NotAccepting = m.status.Damaged, m.status.NotAccepting
		}
		if m.up {
			s.PublishRate = m.rate.add(now, m.status.LastSeq)
		}
	}
	keys := make([]consumerKey, 0, len(c.consumers))
	for k := range c.consumers {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].stream != keys[j].stream {
			return keys[i].stream < keys[j].stream
		}
		if keys[i].kind != keys[j].kind {
			// The stages first: the pipeline's order.
			return keys[i].kind == kindStage
		}
		return keys[i].instance < keys[j].instance
	})
	for _, k := range keys {
		m := c.consumers[k]
		s := stream(k.stream)
		sc := m.position(k, s.LastSeq, now)
		m.history.add(now, sc.LagMessages, sc.LagSeconds)
		s.Consumers = append(s.Consumers, sc)
	}
	st.Streams = make([]Stream, 0, len(streams))
	for _, id := range sortedKeys(streams) {
		st.Streams = append(st.Streams, *streams[id])
	}
}

func (m *ownerMemory) markDown(now time.Time, why string) {
	if m.up || m.downSince.IsZero() {
		m.downSince = now
	}
	m.up, m.err = false, why
}

func (m *consumerMemory) markDown(now time.Time, why string) {
	if m.up || m.downSince.IsZero() {
		m.downSince = now
	}
	m.up, m.err = false, why
}

// position is the consumer's entry in the state. Its lag is the larger
// of its own account and the owner's current last sequence less its
// position; while it does not answer, its last position stays and the
// lag grows with the owner's last sequence (in seconds: what it was,
// plus the time since it was last seen, an upper bound). A stage's is
// computed the same way, from its position.
func (m *consumerMemory) position(k consumerKey, ownerLast uint64, now time.Time) StreamConsumer {
	s := m.status
	sc := StreamConsumer{Kind: k.kind, Consumer: k.instance, Service: m.service, Address: m.address, Instances: m.instances,
		Up: m.up, Error: m.err, DownSince: since(m.downSince), LastSeen: since(m.lastSeen),
		Position: s.LastContiguous, LastContiguous: s.LastContiguous, Applied: s.Applied, Duplicates: s.Duplicates, Gaps: s.Gaps,
		OwnerLast: s.OwnerLast, LagMessages: s.LagMessages, LagSeconds: s.LagSeconds, Replay: s.Replay,
		Snapshots: s.Snapshots, LastError: s.LastError}
	if sc.Gaps == nil {
		sc.Gaps = [][2]uint64{}
	}
	last := max(ownerLast, s.OwnerLast)
	if last > s.LastContiguous {
		sc.LagMessages = max(sc.LagMessages, last-s.LastContiguous)
	}
	if !m.up {
		sc.LagEstimated = true
		sc.Replay = nil // nothing runs in a consumer that does not answer
		if sc.LagMessages > 0 && !m.lastSeen.IsZero() {
			sc.LagSeconds = s.LagSeconds + now.Sub(m.lastSeen).Seconds()
		}
	}
	return sc
}
