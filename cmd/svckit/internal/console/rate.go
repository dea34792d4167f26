package console

import "time"

// rates turns counters read once per collection (nsqd's message counts,
// an owner's last sequence) into per-second rates over RateWindow: the
// difference between the newest sample and the oldest within the window,
// so that one late poll does not make the rate jump.
type rates struct {
	windows map[string]*rateWindow
	seen    map[string]bool
}

// begin starts a collection; end forgets the counters it did not see
// (a topic deleted, an nsqd gone), so the map does not grow for ever.
func (r *rates) begin() { r.seen = map[string]bool{} }

func (r *rates) end() {
	for k := range r.windows {
		if !r.seen[k] {
			delete(r.windows, k)
		}
	}
}

// add records counter key's value v at t and returns its rate.
func (r *rates) add(key string, t time.Time, v uint64) float64 {
	r.seen[key] = true
	w := r.windows[key]
	if w == nil {
		w = &rateWindow{}
		r.windows[key] = w
	}
	return w.add(t, v)
}

type rateSample struct {
	t time.Time
	v uint64
}

// rateWindow is one counter's samples within RateWindow.
type rateWindow struct{ samples []rateSample }

func (w *rateWindow) add(t time.Time, v uint64) float64 {
	if n := len(w.samples); n > 0 && v < w.samples[n-1].v {
		// The counter went back: nsqd restarted, or the topic was
		// deleted and made again. Start over rather than show nonsense.
		w.samples = w.samples[:0]
	}
	w.samples = append(w.samples, rateSample{t, v})
	cut := t.Add(-RateWindow)
	i := 0
	for i < len(w.samples)-2 && w.samples[i].t.Before(cut) {
		i++
	}
	w.samples = w.samples[i:]
	if len(w.samples) < 2 {
		return 0
	}
	first, last := w.samples[0], w.samples[len(w.samples)-1]
	dt := last.t.Sub(first.t).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(last.v-first.v) / dt
}
