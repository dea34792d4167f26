package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
)

// A stage's lag, per stream it has seen, measured as a tracking consumer's
// is (replay's StreamStatus), exported on the same metrics
// (svckit_stream_lag_messages, svckit_stream_lag_seconds) and served on
// GET /stage (StatusPath).
//
// A stage takes its inputs out of order (concurrent handlers), and its
// instances share one channel, so no instance sees a stream's every
// input. What an instance does know is which of the inputs it took are
// not finished yet: those bound how far the stage is. Its position in a
// stream is therefore just before the lowest input it holds unfinished
// (one whose transform hangs, whose outputs nsqd has not acknowledged, or
// whose attempt failed and is waiting for its retry), and, while it holds
// none, the highest input it finished. Everything at or below the
// position was finished, here or by another instance.
//
// An instance that holds nothing of a stream may report an old position
// (the stream's recent inputs went to the other instances): the stage as
// a whole is at the lowest position among its instances that hold an
// input, else the highest among all (the console combines them so; see
// StreamLag.InFlight).

// StatusPath is the path of a stage's GET endpoint of its streams' lag
// (StreamLag), served by Service.Stage behind the replay secret.
const StatusPath = "/stage"

// StreamLag is one stream's entry in a stage's GET /stage.
type StreamLag struct {
	Stream string `json:"stream"`
	// Position: every input up to it was finished (its outputs all
	// acknowledged by nsqd), as far as this instance knows. It is just
	// before the lowest input this instance holds unfinished (InFlight >
	// 0), else the highest input it finished; before any, just before the
	// lowest input that arrived. When the upstream's last sequence goes
	// down (the stream restarted), the position goes down to it.
	Position uint64 `json:"position"`
	// UpstreamLast is the last sequence the upstream reported (its
	// /streams, asked every TailInterval): its latest answer, which may
	// be lower than an earlier one (the stream restarted); 0 before it
	// answered.
	UpstreamLast uint64 `json:"upstream_last"`
	// LagMessages is how many sequences the position is behind the
	// highest known to exist (UpstreamLast, or an input that arrived
	// here), as a tracking consumer's: never negative. LagSeconds, while
	// LagMessages is not 0, how long ago the input after the position was
	// created: exactly, while an input is in flight (it is the lowest
	// one); else the position's own input's age, an upper bound by at
	// most the time between two inputs.
	LagMessages uint64  `json:"lag_messages"`
	LagSeconds  float64 `json:"lag_seconds"`
	// InFlight is how many of the stream's inputs this instance holds
	// unfinished: arrived and not finished, counted once however often
	// nsqd delivered them, including one whose attempt failed, until its
	// retry is due (and a while more; then it may have gone to another
	// instance, or to the dead letters). While it is 0 the position is
	// the highest input finished here, which need not be the stage's.
	InFlight int `json:"in_flight"`
	// LastError is why the stream's last sequence could not be asked of
	// the upstream at the last try ("" when it was): UpstreamLast is then
	// the last one known.
	LastError string `json:"last_error"`
}

// lagBook keeps the positions of the streams a stage has seen and what
// its upstream last said of them. An input only touches its stream, when
// it arrives and when it is finished: each time a lock-free lookup and a
// short lock, no allocation (save the first input of a stream, and its
// in-flight table growing to its largest), nothing that waits for the
// network.
type lagBook struct {
	m *replay.Metrics

	mu      sync.Mutex
	streams map[string]*stageStream
	// byID is a copy of streams read without a lock, replaced when a
	// stream is added or dropped: every input looks its stream up twice,
	// from every handler goroutine, and a shared lock would be a cache
	// line they all write to (the Tracker does the same).
	byID atomic.Pointer[map[string]*stageStream]
	// upstream is the upstream's last sequence of every stream it
	// reported at the last refresh, and, for a stream seen here that the
	// last refresh could not learn (its owner failed, or nobody reports
	// it), the last value known.
	upstream map[string]uint64
	// upErr is why the last refresh could not learn a stream's last
	// sequence, by stream ("" key: the whole upstream failed).
	upErr map[string]string
}

// stageStream is one stream's position.
type stageStream struct {
	id string
	mu sync.Mutex
	// gone: dropped from the book (lagBook.learn). An input that found it
	// before it was dropped looks the stream up again, or its arrival
	// would be kept where nobody reads it.
	gone bool
	// done: an input of the stream was finished. Until then last is an
	// estimate, just before the lowest input that arrived, which an input
	// arriving lower lowers (the first to arrive need not be the lowest).
	done bool
	// last is the highest input finished (the position while nothing is
	// in flight), or the upstream's last sequence if that went down below
	// it since (restarted), and at when it was created (its envelope's
	// time, in Unix nanoseconds; when the envelope has none, when the
	// stage saw it).
	last uint64
	at   int64
	// flight are the inputs that arrived and are not finished.
	flight flightSet
	// unreported counts the refreshes in a row whose upstream answered
	// without this stream (under lagBook.mu).
	unreported int
	// The stream's gauges, looked up once (WithLabelValues hashes).
	lagN, lagS prometheus.Gauge
}

// inFlight is an input that arrived and is not finished.
type inFlight struct {
	seq     uint64
	created int64 // Unix nanoseconds, as stageStream.at
	// running is how many deliveries of it are being handled: nsqd
	// delivers it again when its timeout passes while a transform hangs,
	// and it is one input still.
	running int32
	// retryBy, once no delivery is running (the last one failed), is when
	// it stops counting (Unix nanoseconds) unless it arrives again: see
	// retryHold.
	retryBy int64
}

func newLagBook(m *replay.Metrics) *lagBook {
	return &lagBook{m: m, streams: map[string]*stageStream{}, upstream: map[string]uint64{}, upErr: map[string]string{}}
}

// An input is known to the book by its envelope's stream, sequence and
// creation time, passed as values: a closure that kept the whole envelope
// for them would move it to the heap for every input.

// tracked says whether an input counts for a stream's position:
// unsequenced envelopes belong to no stream.
func tracked(stream string, seq uint64) bool { return stream != "" && seq != 0 }

// createdAt is an input's creation time in Unix nanoseconds, or now's when
// it has none (an envelope from a publisher that did not stamp it).
func createdAt(created time.Time) int64 {
	if created.IsZero() {
		return time.Now().UnixNano()
	}
	return created.UnixNano()
}

// locked finds an input's stream, adding it on its first input, and
// returns it locked. Its position starts just before that input (see
// arrived): what came before it was finished before this process started,
// by another instance, or before the channel existed; counting it as
// missing would show a stage that was just deployed, or restarted with its
// channel drained, as behind by the whole history of the stream.
func (b *lagBook) locked(id string, seq uint64, created time.Time) *stageStream {
	if m := b.byID.Load(); m != nil {
		if s := (*m)[id]; s != nil {
			s.mu.Lock()
			if !s.gone {
				return s
			}
			s.mu.Unlock() // dropped meanwhile: the book decides, below
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.streams[id] // added while we waited, or there all along
	if s == nil {
		s = &stageStream{id: id, last: seq - 1, at: createdAt(created),
			lagN: b.m.LagMessages.WithLabelValues(id), lagS: b.m.LagSeconds.WithLabelValues(id)}
		b.streams[id] = s
		b.publishByID()
	}
	// Not gone: streams are dropped under b.mu, and leave b.streams then.
	s.mu.Lock()
	return s
}

// publishByID replaces byID with a copy of streams. Called with b.mu held.
func (b *lagBook) publishByID() {
	byID := maps.Clone(b.streams)
	b.byID.Store(&byID)
}

// arrived notes an input before it is transformed: it is in flight until
// it is finished, and its stream is seen from now on (a stage whose
// transform hangs shows its lag rising). An input that is in flight
// already (nsqd delivered it again) is counted once.
func (b *lagBook) arrived(stream string, seq uint64, created time.Time) {
	if !tracked(stream, seq) {
		return
	}
	at := createdAt(created)
	s := b.locked(stream, seq, created)
	if f := s.flight.find(seq); f != nil {
		f.running++
		f.retryBy = 0
	} else {
		s.flight.add(inFlight{seq: seq, created: at, running: 1})
	}
	// Until one is finished, nothing is known done but what came before
	// the lowest arrival.
	if !s.done && seq-1 < s.last {
		s.last, s.at = seq-1, at
	}
	s.mu.Unlock()
}

// finished notes that an input's outputs were all acknowledged (or, for
// an input the stage dead-lettered, its marker): it is no longer in
// flight, however many deliveries of it are still running (one was
// enough), and the highest finished moves to it if it is past.
func (b *lagBook) finished(stream string, seq uint64, created time.Time) {
	if !tracked(stream, seq) {
		return
	}
	s := b.locked(stream, seq, created)
	s.flight.del(seq)
	// Past the estimate too: the input arrived, which put the estimate
	// below it.
	if seq > s.last {
		s.last, s.at = seq, createdAt(created)
	}
	s.done = true
	s.mu.Unlock()
}

// failed notes that a delivery of an input ended without finishing it:
// nsqd has it again and will deliver it after a delay. It still holds the
// stream back, so it stays in flight while no delivery of it runs, until
// retryHold passes (it may come back here, or go to another instance, or
// to the dead letters, and this instance cannot tell which).
func (b *lagBook) failed(stream string, seq uint64, attempts uint16, now time.Time) {
	if !tracked(stream, seq) {
		return
	}
	m := b.byID.Load()
	if m == nil || (*m)[stream] == nil {
		return // never arrived, or dropped: nothing held
	}
	s := (*m)[stream]
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flight.find(seq)
	if f == nil || s.gone {
		return // another delivery finished it
	}
	if f.running > 1 {
		f.running-- // another delivery of it still runs
	} else {
		f.running, f.retryBy = 0, now.Add(retryHold(attempts)).UnixNano()
	}
}

// retryHold is how long an input whose delivery failed keeps counting as
// in flight: until its next attempt is due under the consumer's default
// retry policy (pubsub.Retry: the attempt's delay, doubling up to
// MaxDelay), plus retryGrace. A stage does not know its consumer's policy
// (a service may set another), nor whether the input comes back to this
// instance; longer, and an input finished by another instance would keep
// this one's position back; shorter, and an input waiting for its retry
// would not count.
func retryHold(attempts uint16) time.Duration {
	d := pubsub.DefaultRetryOptions()
	n := max(attempts, 1)
	return min(d.Delay<<min(n-1, 16), d.MaxDelay) + retryGrace
}

// retryGrace: nsqd delivers a requeued input once its delay passed and a
// consumer has room for it, later than due when the channel is busy.
const retryGrace = 30 * time.Second

// view is a stream's figures at now (Unix nanoseconds): its position, the
// highest sequence seen (arrived or finished), the creation time of the
// input after the position (or of the position's, when none is in flight)
// and how many inputs are in flight. Inputs whose retry is overdue are
// forgotten. Called with s.mu held; costs a pass over the in-flight set,
// on the reading path, never an input's.
func (s *stageStream) view(now int64) (pos, highest uint64, at int64, n int) {
	for s.flight.n > 0 {
		var low, high, overdue uint64
		var lowAt int64
		for i := range s.flight.slots {
			f := &s.flight.slots[i]
			if f.seq == 0 {
				continue
			}
			if f.running == 0 && now > f.retryBy {
				overdue = f.seq
				break
			}
			if low == 0 || f.seq < low {
				low, lowAt = f.seq, f.created
			}
			high = max(high, f.seq)
		}
		if overdue != 0 {
			// Deleting moves other entries: look again (rare: an input
			// whose retry went elsewhere).
			s.flight.del(overdue)
			continue
		}
		return low - 1, max(s.last, high), lowAt, s.flight.n
	}
	return s.last, s.last, s.at, 0
}

// flightSet is a stream's inputs in flight, by sequence: a table with
// open addressing (linear probing from a Fibonacci hash of the sequence;
// a deletion shifts the entries after it back, so no deleted marks pile
// up). A Go map cost an input half as much again (BenchmarkLagBookPerInput:
// 52 ns against 34; it hashes with a seed, and reseeds each time it
// empties, which a quiet stream's does at every input). The table doubles
// when half full and never shrinks: it is at most twice as large as the
// most inputs of the stream in flight at once, which the consumer's
// max-in-flight bounds.
type flightSet struct {
	slots []inFlight // an empty slot's seq is 0 (sequence 0 is not tracked)
	n     int
	shift uint // 64 - log2(len(slots))
}

// home is seq's first slot.
func (t *flightSet) home(seq uint64) int { return int((seq * 0x9E3779B97F4A7C15) >> t.shift) }

// slot is the index of seq's entry, or -1.
func (t *flightSet) slot(seq uint64) int {
	if t.n == 0 {
		return -1
	}
	mask := len(t.slots) - 1
	for i := t.home(seq); ; i = (i + 1) & mask {
		switch t.slots[i].seq {
		case seq:
			return i
		case 0:
			return -1
		}
	}
}

// find is seq's entry, to change in place, or nil.
func (t *flightSet) find(seq uint64) *inFlight {
	if i := t.slot(seq); i >= 0 {
		return &t.slots[i]
	}
	return nil
}

// add puts f in, its seq not in yet.
func (t *flightSet) add(f inFlight) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	mask := len(t.slots) - 1
	i := t.home(f.seq)
	for t.slots[i].seq != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = f
	t.n++
}

// grow doubles the table (8 slots at first) and puts the entries back.
func (t *flightSet) grow() {
	old := t.slots
	size := max(8, 2*len(old))
	t.slots, t.n, t.shift = make([]inFlight, size), 0, uint(64-bits.TrailingZeros(uint(size)))
	for _, f := range old {
		if f.seq != 0 {
			t.add(f)
		}
	}
}

// del takes seq out, if it is in.
func (t *flightSet) del(seq uint64) {
	i := t.slot(seq)
	if i < 0 {
		return
	}
	// Backward shift: an entry after i in the same run moves into the
	// hole unless its home lies (cyclically) after the hole, up to it.
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].seq != 0; j = (j + 1) & mask {
		k := t.home(t.slots[j].seq)
		if i <= j && i < k && k <= j || i > j && (i < k || k <= j) {
			continue // it is where it belongs
		}
		t.slots[i] = t.slots[j]
		i = j
	}
	t.slots[i] = inFlight{}
	t.n--
}

// lagOf is a stream's lag at now, by the tracker's definition: the
// sequences between the position and the highest known to exist (the
// upstream's last, or an input seen here), and while there are any, the
// age of at (the input after the position, or the position's).
func lagOf(pos, highest uint64, at int64, upstreamLast uint64, now time.Time) (uint64, float64) {
	top := max(upstreamLast, highest)
	if top <= pos {
		return 0, 0
	}
	return top - pos, max(now.Sub(time.Unix(0, at)).Seconds(), 0)
}

// status is every seen stream's lag at now, sorted by stream.
func (b *lagBook) status(now time.Time) []StreamLag {
	out := b.each(now, nil)
	slices.SortFunc(out, func(a, b StreamLag) int { return strings.Compare(a.Stream, b.Stream) })
	return out
}

// export sets every seen stream's lag gauges.
func (b *lagBook) export(now time.Time) {
	b.each(now, func(s *stageStream, l StreamLag) {
		s.lagN.Set(float64(l.LagMessages))
		s.lagS.Set(l.LagSeconds)
	})
}

// each computes every seen stream's lag at now, hands it to fn (if not
// nil) and returns them all, in no order.
func (b *lagBook) each(now time.Time, fn func(*stageStream, StreamLag)) []StreamLag {
	b.mu.Lock()
	ss := slices.Collect(maps.Values(b.streams))
	up := make([]uint64, len(ss))
	errs := make([]string, len(ss))
	for i, s := range ss {
		up[i] = b.upstream[s.id]
		if errs[i] = b.upErr[s.id]; errs[i] == "" {
			errs[i] = b.upErr[""]
		}
	}
	b.mu.Unlock()
	out := make([]StreamLag, len(ss))
	for i, s := range ss {
		s.mu.Lock()
		pos, highest, at, n := s.view(now.UnixNano())
		s.mu.Unlock()
		lagN, lagS := lagOf(pos, highest, at, up[i], now)
		out[i] = StreamLag{Stream: s.id, Position: pos, UpstreamLast: up[i], LagMessages: lagN, LagSeconds: lagS,
			InFlight: n, LastError: errs[i]}
		if fn != nil {
			fn(s, out[i])
		}
	}
	return out
}

// upstreamAnswer is one upstream instance's GET /streams.
type upstreamAnswer struct {
	in  string   // its id
	own []string // the streams it is the owner of (its stream= tags)
	st  []replay.Status
	err error
}

// forgetAfterRefreshes is how many refreshes in a row must answer without
// a stream (and nothing of it be in flight) before it is forgotten: one
// could be a flap of its owner's health, or have asked just before the
// stream's first input.
const forgetAfterRefreshes = 2

// learn takes a refresh's answers at now: every stream's last sequence
// becomes the highest any instance reported this time (a fresh answer: a
// stream that restarted lower is lower now), and each seen stream gets the
// reason it could not be learnt, if it could not (its owner failed, or no
// instance answered, or none reports it), keeping its last known value.
// A stream the upstream answered without twice in a row, with nothing in
// flight, is forgotten, its gauges deleted.
func (b *lagBook) learn(service string, answers []upstreamAnswer, now time.Time) {
	reported := map[string]uint64{}
	ownerErr := map[string]error{}
	var errs []error
	for _, a := range answers {
		if a.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.in, a.err))
			for _, id := range a.own {
				ownerErr[id] = a.err
			}
			continue
		}
		for _, x := range a.st {
			reported[x.Stream] = max(reported[x.Stream], x.LastSeq)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, last := range reported {
		if old, ok := b.upstream[id]; ok && last < old {
			b.restarted(id, last, now)
		}
		b.upstream[id] = last
	}
	for id := range b.upstream {
		if _, ok := reported[id]; !ok && b.streams[id] == nil {
			delete(b.upstream, id) // gone upstream, and never seen here
		}
	}
	clear(b.upErr)
	switch {
	case len(answers) == 0:
		b.upErr[""] = fmt.Sprintf("no passing instance of %q to ask for its streams' last sequences", service)
		return
	case len(errs) == len(answers):
		b.upErr[""] = fmt.Sprintf("asking %q for its streams' last sequences: %v", service, errors.Join(errs...))
		return
	}
	dropped := false
	for id, s := range b.streams {
		if _, ok := reported[id]; ok {
			s.unreported = 0
			continue
		}
		if ownerErr[id] != nil {
			b.upErr[id] = "asking the stream's owner for its last sequence: " + ownerErr[id].Error()
			continue
		}
		b.upErr[id] = "no instance of the upstream reports the stream (its owner is not registered, or not passing)"
		if s.unreported++; s.unreported >= forgetAfterRefreshes && b.forget(s, now) {
			dropped = true
		}
	}
	if dropped {
		b.publishByID()
	}
}

// restarted lowers a seen stream's finished position to the upstream's
// new last sequence, lower than its previous one: the stream restarted
// (its owner's log was replaced), and its new inputs, below the old
// position, must move it again. Called with b.mu held.
func (b *lagBook) restarted(id string, last uint64, now time.Time) {
	s := b.streams[id]
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.last > last {
		// When the new position's input was created is not known: the
		// lag in seconds counts from now.
		s.last, s.at = last, now.UnixNano()
	}
	s.mu.Unlock()
}

// forget drops s from the book, and its gauge series, unless an input of
// it is in flight; it says whether it did. Called with b.mu held; the
// caller replaces byID.
func (b *lagBook) forget(s *stageStream, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, _, _, n := s.view(now.UnixNano()); n > 0 {
		return false
	}
	s.gone = true
	delete(b.streams, s.id)
	delete(b.upstream, s.id)
	delete(b.upErr, s.id)
	b.m.LagMessages.DeleteLabelValues(s.id)
	b.m.LagSeconds.DeleteLabelValues(s.id)
	return true
}

// Lag is the stage's lag in every stream it has seen, sorted by stream.
func (s *Stage) Lag() []StreamLag { return s.lag.status(time.Now()) }

// ServeStatus is the stage's GET /stage handler (StatusPath): Lag as
// JSON. Service.Stage serves it behind the replay secret.
func (s *Stage) ServeStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, s.Lag())
}

// Run keeps the stage's lag: it asks the upstream for its streams' last
// sequences at once and every TailInterval (from a goroutine of its own,
// bounded by the per-instance timeout of Streams: inputs never wait for
// it), and sets the lag gauges every second, until ctx ends.
// Service.Stage runs it.
func (s *Stage) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.o.Upstream != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(s.o.TailInterval)
			defer tick.Stop()
			for {
				s.refreshUpstream(ctx)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	tick := time.NewTicker(exportInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.lag.export(time.Now())
		}
	}
}

// exportInterval is how often the lag gauges are set: more often than
// Prometheus scrapes, less than every input.
const exportInterval = time.Second

// refreshUpstream asks the upstream for its streams' last sequences once.
func (s *Stage) refreshUpstream(ctx context.Context) {
	answers := s.askUpstream(ctx)
	if ctx.Err() != nil {
		return // stopping: a cut answer is not news
	}
	s.lag.learn(s.o.Upstream.Service(), answers, time.Now())
	s.lag.export(time.Now())
}

// finishedHook is the OnOutcome layer a stage wraps itself in: an input
// whose outcome is nil had all its outputs acknowledged; one whose
// outcome is an error will be delivered again (the consumer's policy,
// outside this layer, requeues it), or was dead-lettered by the stage,
// which noted it finished already. It sees the outcome of the Async
// completion without a closure per input (the consumer's own layers
// already made the message's hook list; a fourth hook fits in it without
// an allocation).
func (s *Stage) finishedHook(_ context.Context, m *pubsub.Message, err error) error {
	if err == nil {
		s.lag.finished(m.Envelope.Stream, m.Envelope.Seq, m.Envelope.Created)
		return nil
	}
	var attempts uint16
	if m.NSQ != nil {
		attempts = m.Attempts()
	}
	s.lag.failed(m.Envelope.Stream, m.Envelope.Seq, attempts, time.Now())
	return err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	// An error is the client gone mid-answer: nothing to tell it.
	_ = json.NewEncoder(w).Encode(v)
}
