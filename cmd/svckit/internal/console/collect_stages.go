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
// its GET /stage (stage.StatusPath: per stream, its position, the inputs
// it holds in flight, its upstream's last sequence and its lag), in the
// round that asks the trackers, and each stage becomes one row per stream
// its instances report, kept while they do not answer as a tracker's is.
//
// One row per stage service, not per instance: a stage's instances share
// one channel, so each takes only some of a stream's inputs. An instance's
// position is honest about what it holds (just before the lowest input it
// has in flight, else the highest it finished), so the stage is as far as
// its slowest input in flight: the row is the instance with the lowest
// position among those that have an input of the stream in flight. When
// none has, it is the instance with the highest position: an instance
// that got none of the stream's last inputs (they went to the others)
// still reports the position it had then, which is not the stage's.
//
// A stage that answers but whose instances report nothing of a stream
// (restarted, and no input of that stream came since) is up, at its last
// known position: only a stage that does not answer is down.

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

// combineStage is a stage's figures in one stream from its instances'
// (lags, at least one): the position of the instance with the lowest
// position among those with an input in flight, else of the one with the
// highest, whose index it returns too. Its upstream's last is the highest
// any instance was told; its lag in messages runs from the position to
// the highest sequence any instance knows to exist (the tracker's
// definition, as each instance's own); in seconds, and its last error,
// are the chosen instance's; InFlight is the instances' sum.
func combineStage(lags []stage.StreamLag) (stage.StreamLag, int) {
	best := -1
	for i, l := range lags {
		switch {
		case l.InFlight == 0:
		case best < 0:
			best = i
		case l.Position < lags[best].Position ||
			// At the same position, the older input (the larger lag).
			l.Position == lags[best].Position && l.LagSeconds > lags[best].LagSeconds:
			best = i
		}
	}
	if best < 0 {
		best = 0
		for i, l := range lags {
			if b := lags[best]; l.Position > b.Position || l.Position == b.Position && l.LagSeconds < b.LagSeconds {
				best = i
			}
		}
	}
	out := lags[best]
	var top uint64
	out.InFlight = 0
	for _, l := range lags {
		out.UpstreamLast = max(out.UpstreamLast, l.UpstreamLast)
		top = max(top, l.UpstreamLast, l.Position+l.LagMessages)
		out.InFlight += l.InFlight
	}
	out.LagMessages = 0
	if top > out.Position {
		out.LagMessages = top - out.Position
	}
	if out.LagMessages == 0 {
		out.LagSeconds = 0
	}
	return out, best
}

// buildStages updates the stages' memory from the answers of kind
// kindStage: each (stage service, stream) reported by an instance is up,
// its instances combined (combineStage); one that no instance reports is
// up at its last known position while an instance of its stage answers,
// else marked down with the reason, keeping its last answer; those whose
// service has been gone from Consul for ForgetAfter are forgotten.
func (c *collector) buildStages(view consulView, answers []trackerAnswer, now time.Time) {
	registered := map[string]bool{} // stage services in Consul
	for _, in := range stageInstances(view) {
		registered[in.Service] = true
	}
	type reports struct {
		lags      []stage.StreamLag
		addresses []string
		instances []string
	}
	reported := map[consumerKey]*reports{}
	failed := map[string][]error{} // by service: its instances that did not answer
	answered := map[string]bool{}  // by service: one of its instances answered
	for _, a := range answers {
		if a.kind != kindStage {
			continue
		}
		if a.err != nil {
			failed[a.in.Service] = append(failed[a.in.Service], fmt.Errorf("%s: %w", a.in.ID, a.err))
			continue
		}
		answered[a.in.Service] = true
		for _, l := range a.lags {
			k := consumerKey{kindStage, a.in.Service, l.Stream}
			r := reported[k]
			if r == nil {
				r = &reports{}
				reported[k] = r
			}
			r.lags = append(r.lags, l)
			r.addresses = append(r.addresses, a.in.Addr())
			r.instances = append(r.instances, a.in.ID)
		}
	}
	// Up, through another instance: still worth saying.
	notAnswering := func(service string) string {
		if errs := failed[service]; len(errs) > 0 {
			return "instances not answering: " + errors.Join(errs...).Error()
		}
		return ""
	}
	for k, r := range reported {
		m := c.consumers[k]
		if m == nil {
			m = &consumerMemory{}
			c.consumers[k] = m
		}
		l, i := combineStage(r.lags)
		slices.Sort(r.instances)
		m.service, m.address, m.instances = k.instance, r.addresses[i], r.instances
		m.status = replay.StreamStatus{Stream: l.Stream, LastContiguous: l.Position, OwnerLast: l.UpstreamLast, Gaps: [][2]uint64{},
			DeadLettered: [][2]uint64{}, LagMessages: l.LagMessages, LagSeconds: l.LagSeconds, LastError: l.LastError}
		m.up, m.err, m.downSince, m.lastSeen = true, notAnswering(k.instance), time.Time{}, now
	}
	for k, m := range c.consumers {
		if k.kind != kindStage || reported[k] != nil {
			continue
		}
		switch {
		case !registered[k.instance]:
			m.markDown(now, "no instance of the stage is registered in Consul (stopped, or gone)")
		case !answered[k.instance]:
			why := "no instance of the stage answered its GET " + stage.StatusPath
			if errs := failed[k.instance]; len(errs) > 0 {
				why = errors.Join(errs...).Error()
			}
			m.markDown(now, why)
		default:
			// Answering, with nothing of the stream: it has had no input
			// of it since it started (a quiet stream, after a restart).
			// Whatever it finished before is finished: its last known
			// position stands until the stream's next input.
			m.up, m.err, m.downSince, m.lastSeen = true, notAnswering(k.instance), time.Time{}, now
		}
		if !registered[k.instance] && now.Sub(m.lastSeen) > c.o.ForgetAfter {
			delete(c.consumers, k)
		}
	}
}
