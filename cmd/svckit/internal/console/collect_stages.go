package console

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/stage"
)

// The stages' positions: every instance tagged replay-relay is asked for
// its GET /stage (stage.StatusPath: per stream, the highest input it
// finished, its upstream's last sequence and its lag), in the round that
// asks the trackers, and each stage becomes one row per stream it
// reports, kept while it does not answer as a tracker's is.
//
// One row per stage service, not per instance: a stage's instances share
// one channel, so each finishes only some of a stream's inputs, and an
// instance that got none of the last ones is not behind. The stage is as
// far as its furthest instance, whose answer the row shows.

// stageInstances are the registered instances of stages, whatever their
// health, as the trackers are asked: one that answers is worth showing,
// and one that does not is shown down with the reason.
func stageInstances(view consulView) []discovery.Instance {
	return view.tagged(func(in discovery.Instance) bool { return in.HasTag(replay.RelayTag) })
}

// askStages asks each of ins for its GET /stage into out (as long as ins),
// signed with the replay secret for its service, as /streams is.
func (c *collector) askStages(ctx context.Context, wg *sync.WaitGroup, ins []discovery.Instance, out []trackerAnswer) {
	for i, in := range ins {
		out[i].in, out[i].kind = in, kindStage
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].err = getJSON(ctx, c.streamsClient(in.Service), in.Addr(), stage.StatusPath, &out[i].lags)
		}()
	}
}

// buildStages updates the stages' memory from the answers of kind
// kindStage: each (stage service, stream) reported by an instance is up,
// with its furthest instance's answer; the others are marked down with
// the reason, keeping their last answer; those whose service has been
// gone from Consul for ForgetAfter are forgotten.
func (c *collector) buildStages(view consulView, answers []trackerAnswer, now time.Time) {
	registered := map[string]bool{} // stage services in Consul
	for _, in := range stageInstances(view) {
		registered[in.Service] = true
	}
	type best struct {
		lag       stage.StreamLag
		address   string
		instances []string
	}
	reported := map[consumerKey]*best{}
	failed := map[string][]error{} // by service: its instances that did not answer
	asked := map[string]int{}      // by service: instances asked
	for _, a := range answers {
		if a.kind != kindStage {
			continue
		}
		asked[a.in.Service]++
		if a.err != nil {
			failed[a.in.Service] = append(failed[a.in.Service], fmt.Errorf("%s: %w", a.in.ID, a.err))
			continue
		}
		for _, l := range a.lags {
			k := consumerKey{kindStage, a.in.Service, l.Stream}
			b := reported[k]
			if b == nil {
				b = &best{lag: l, address: a.in.Addr()}
				reported[k] = b
			} else if l.Position > b.lag.Position || l.Position == b.lag.Position && l.LagSeconds < b.lag.LagSeconds {
				// Further along: the stage is there.
				up := max(b.lag.UpstreamLast, l.UpstreamLast)
				b.lag, b.address = l, a.in.Addr()
				b.lag.UpstreamLast = up
			} else {
				b.lag.UpstreamLast = max(b.lag.UpstreamLast, l.UpstreamLast)
			}
			b.instances = append(b.instances, a.in.ID)
		}
	}
	for k, b := range reported {
		m := c.consumers[k]
		if m == nil {
			m = &consumerMemory{}
			c.consumers[k] = m
		}
		slices.Sort(b.instances)
		l := b.lag
		m.service, m.address, m.instances = k.instance, b.address, b.instances
		m.status = replay.StreamStatus{Stream: l.Stream, LastContiguous: l.Position, OwnerLast: l.UpstreamLast, Gaps: [][2]uint64{},
			DeadLettered: [][2]uint64{}, LagMessages: l.LagMessages, LagSeconds: l.LagSeconds, LastError: l.LastError}
		m.up, m.err, m.downSince, m.lastSeen = true, "", time.Time{}, now
		if errs := failed[k.instance]; len(errs) > 0 {
			// Up, through another instance: still worth saying.
			m.err = "instances not answering: " + errors.Join(errs...).Error()
		}
	}
	for k, m := range c.consumers {
		if k.kind != kindStage || reported[k] != nil {
			continue
		}
		switch {
		case !registered[k.instance]:
			m.markDown(now, "no instance of the stage is registered in Consul (stopped, or gone)")
		case len(failed[k.instance]) == asked[k.instance]:
			m.markDown(now, errors.Join(failed[k.instance]...).Error())
		default:
			m.markDown(now, "its instances' GET "+stage.StatusPath+" do not report stream "+k.stream)
		}
		if !registered[k.instance] && now.Sub(m.lastSeen) > c.o.ForgetAfter {
			delete(c.consumers, k)
		}
	}
}
