package console

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// HistoryBucket is the span of one point of GET /api/lag-history.
const HistoryBucket = 10 * time.Second

const historyBuckets = int(HistoryWindow / HistoryBucket)

// The lag history is not in the state: with a point per second it was
// 96% of a state of 100 streams followed by 16 trackers (15 MB, encoded
// every second: 13-16% of a core, BenchmarkConsoleCost). Each consumer
// keeps instead one bucket per HistoryBucket, the highest lag in it, in
// a fixed ring written in place; GET /api/lag-history serves them to a
// page that has just connected, and the page keeps its own history from
// the states that follow.

// lagBucket is the highest lag seen in one HistoryBucket.
type lagBucket struct {
	start    int64 // unix milliseconds, a multiple of HistoryBucket
	messages uint64
	seconds  float64
}

// lagHistory is a consumer's lag over the last HistoryWindow.
type lagHistory struct {
	ring [historyBuckets]lagBucket
	n    int // buckets in use
	next int // where the next bucket goes
}

// add records a lag seen at now.
func (h *lagHistory) add(now time.Time, messages uint64, seconds float64) {
	ms := now.UnixMilli()
	start := ms - ms%HistoryBucket.Milliseconds()
	if h.n > 0 {
		last := &h.ring[(h.next+historyBuckets-1)%historyBuckets]
		if last.start == start {
			last.messages = max(last.messages, messages)
			last.seconds = max(last.seconds, seconds)
			return
		}
	}
	h.ring[h.next] = lagBucket{start: start, messages: messages, seconds: seconds}
	h.next = (h.next + 1) % historyBuckets
	h.n = min(h.n+1, historyBuckets)
}

// appendPoints appends the buckets newer than cut (unix milliseconds) as
// [[unix ms, lag messages, lag seconds], …], oldest first.
func (h *lagHistory) appendPoints(b []byte, cut int64) []byte {
	b = append(b, '[')
	first := true
	for i := 0; i < h.n; i++ {
		p := h.ring[(h.next-h.n+i+2*historyBuckets)%historyBuckets]
		if p.start < cut {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '[')
		b = strconv.AppendInt(b, p.start, 10)
		b = append(b, ',')
		b = strconv.AppendUint(b, p.messages, 10)
		b = append(b, ',')
		b = strconv.AppendFloat(b, math.Round(p.seconds*1000)/1000, 'f', -1, 64)
		b = append(b, ']')
	}
	return append(b, ']')
}

// publishHistory encodes every consumer's history for GET
// /api/lag-history, at most once per HistoryBucket.
func (c *collector) publishHistory(now time.Time) {
	c.mu.Lock()
	fresh := c.history != nil && now.Sub(c.historyAt) < HistoryBucket
	c.mu.Unlock()
	if fresh {
		return
	}
	cut := now.Add(-HistoryWindow).UnixMilli()
	b := make([]byte, 0, 64+len(c.consumers)*(80+historyBuckets*24))
	b = append(b, `{"version":1,"bucket_ms":`...)
	b = strconv.AppendInt(b, HistoryBucket.Milliseconds(), 10)
	b = append(b, `,"window_ms":`...)
	b = strconv.AppendInt(b, HistoryWindow.Milliseconds(), 10)
	b = append(b, `,"consumers":[`...)
	first := true
	for k, m := range c.consumers {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, `{"kind":`...)
		b = appendJSONString(b, k.kind)
		b = append(b, `,"consumer":`...)
		b = appendJSONString(b, k.instance)
		b = append(b, `,"stream":`...)
		b = appendJSONString(b, k.stream)
		b = append(b, `,"points":`...)
		b = m.history.appendPoints(b, cut)
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	c.mu.Lock()
	c.history, c.historyAt = b, now
	c.mu.Unlock()
}

// lagHistory is the latest GET /api/lag-history (nil before the first
// collection).
func (c *collector) lagHistory() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.history
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}
