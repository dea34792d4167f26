package console

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
)

// Dead letters are in two places (see `svckit deadletter`): in nsqd, in
// "<topic>.dead", and in the local store of the service that made one
// nsqd would not take. Their counts in nsqd come with every nsqd's
// /stats; the local stores are listed every collection (one GET
// /deadletters per instance that serves one, for every topic at once).
// Reading what nsqd holds means subscribing to "<topic>.dead" and holding
// the letters in flight for a moment, so the console does it only when
// the count changed, or every NSQDRelist, and one topic at a time: never
// while a requeue reads the same letters.

// localAnswer is one instance's local store.
type localAnswer struct {
	in      discovery.Instance
	letters []DeadLetter
	err     error
}

// nsqdListing is the last reading of a topic's letters in nsqd.
type nsqdListing struct {
	count   int64 // what nsqd held when they were read
	at      time.Time
	letters []DeadLetter
	err     string
}

// dlListings are the nsqd listings, written by the listing goroutine and
// read by the collection. op (a semaphore of one, so that waiting for it
// ends with a context) serializes every reading of "<topic>.dead",
// listing or requeue: two readers would each see only part of it.
type dlListings struct {
	op      chan struct{}
	mu      sync.Mutex
	byTopic map[string]*nsqdListing
	running map[string]bool // topics a reading runs for now
}

// lock takes op, or gives up when ctx ends.
func (d *dlListings) lock(ctx context.Context) bool {
	select {
	case d.op <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (d *dlListings) unlock() { <-d.op }

func (d *dlListings) get(topic string) *nsqdListing {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byTopic[topic]
}

func (d *dlListings) set(topic string, l *nsqdListing) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l == nil {
		delete(d.byTopic, topic)
		return
	}
	d.byTopic[topic] = l
}

// askLocalDeadLetters lists the store of every instance that serves one
// (Consul meta svckit_deadletters), concurrently.
func (c *collector) askLocalDeadLetters(ctx context.Context, wg *sync.WaitGroup, view consulView) []localAnswer {
	ins := view.tagged(func(in discovery.Instance) bool { return in.Meta[deadletter.MetaKey] != "" })
	out := make([]localAnswer, len(ins))
	for i, in := range ins {
		out[i].in = in
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].letters, out[i].err = c.o.DeadLetters.ListLocal(ctx, in, "")
		}()
	}
	return out
}

// buildDeadLetters fills st's dead letters: per topic (every topic of the
// state, and every one that has dead letters), the counts in nsqd and in
// the local stores, the reasons and the newest letters. It starts a
// reading of nsqd's letters for the topics whose count changed.
func (c *collector) buildDeadLetters(ctx context.Context, st *State, inNSQD map[string]int64, local []localAnswer, now time.Time) {
	byTopic := map[string]*DeadLetterTopic{}
	topic := func(name string) *DeadLetterTopic {
		t := byTopic[name]
		if t == nil {
			t = &DeadLetterTopic{Topic: name, Reasons: []ReasonCount{}, Letters: []DeadLetter{}, Problems: []string{}}
			byTopic[name] = t
		}
		return t
	}
	for _, t := range st.Topics {
		topic(t.Name)
	}
	letters := map[string][]DeadLetter{}
	for _, a := range local {
		if a.err != nil {
			st.Problems = append(st.Problems, fmt.Sprintf("instance %s (%s): its local dead letters are not listed: %v", a.in.ID, a.in.Addr(), a.err))
			continue
		}
		for _, l := range a.letters {
			t := topic(l.Topic)
			t.Local++
			letters[l.Topic] = append(letters[l.Topic], l)
		}
	}
	var relist []string
	for name, n := range inNSQD {
		t := topic(name)
		t.NSQD = n
	}
	for name, t := range byTopic {
		l := c.dl.get(name)
		switch {
		case t.NSQD == 0 && !st.NSQDDown:
			c.dl.set(name, nil) // none left: nothing to show
		case l != nil:
			if l.err != "" {
				t.Problems = append(t.Problems, "reading "+deadletter.Topic(name)+" in nsqd: "+l.err)
			}
			letters[name] = append(letters[name], l.letters...)
			t.NSQDListedAt = since(l.at)
		}
		if t.NSQD > 0 && (l == nil || l.count != t.NSQD || now.Sub(l.at) > NSQDRelist) {
			relist = append(relist, name)
		}
	}
	sort.Strings(relist)
	c.startListing(ctx, relist, inNSQD)

	st.DeadLetters = make([]DeadLetterTopic, 0, len(byTopic))
	for _, name := range sortedKeys(byTopic) {
		t := byTopic[name]
		t.Count = t.NSQD + t.Local
		t.NSQDUnknown = st.NSQDDown
		ls := letters[name]
		reasons := map[string]int{}
		for _, l := range ls {
			reasons[l.Reason]++
		}
		for r, n := range reasons {
			t.Reasons = append(t.Reasons, ReasonCount{Reason: r, Count: n})
		}
		sort.Slice(t.Reasons, func(i, j int) bool {
			if t.Reasons[i].Count != t.Reasons[j].Count {
				return t.Reasons[i].Count > t.Reasons[j].Count
			}
			return t.Reasons[i].Reason < t.Reasons[j].Reason
		})
		// Newest first.
		sort.SliceStable(ls, func(i, j int) bool { return ls[i].Time.After(ls[j].Time) })
		if len(ls) > MaxLetters {
			ls = ls[:MaxLetters]
		}
		t.Letters = append(t.Letters, ls...)
		st.DeadLetters = append(st.DeadLetters, *t)
	}
}

// startListing reads the nsqd letters of topics in the background, one
// topic at a time, skipping those a reading already runs for.
func (c *collector) startListing(ctx context.Context, topics []string, counts map[string]int64) {
	var todo []string
	c.dl.mu.Lock()
	for _, t := range topics {
		if !c.dl.running[t] {
			c.dl.running[t] = true
			todo = append(todo, t)
		}
	}
	c.dl.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		for _, t := range todo {
			c.listNSQD(ctx, t, counts[t])
			c.dl.mu.Lock()
			delete(c.dl.running, t)
			c.dl.mu.Unlock()
		}
	}()
}

// listNSQD reads topic's letters in nsqd (at most MaxLetters) and keeps
// them as the topic's listing.
func (c *collector) listNSQD(ctx context.Context, topic string, count int64) {
	if !c.dl.lock(ctx) {
		return
	}
	defer c.dl.unlock()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	at := time.Now()
	ls, err := c.o.DeadLetters.ListNSQD(lctx, topic, int(min(count, MaxLetters)), NSQDListWait)
	if ctx.Err() != nil {
		return
	}
	l := &nsqdListing{count: count, at: at, letters: ls}
	if err != nil {
		l.err = err.Error()
	}
	c.dl.set(topic, l)
}

// forgetListing drops the listing of topic, so that the next collection reads
// nsqd again (after a requeue).
func (c *collector) forgetListing(topic string) { c.dl.set(topic, nil) }
