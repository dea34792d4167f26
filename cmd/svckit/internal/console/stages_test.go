package console

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/stage"
)

// A stage's row in a stream is the lowest position among its instances
// with an input in flight (the slowest input holds the stage back), else
// the highest (an idle instance keeps an old position); its lag runs to
// the highest sequence any instance knows of.
func TestCombineStageInstances(t *testing.T) {
	type want struct {
		pos, up, lag uint64
		inFlight     int
		from         int
	}
	for _, c := range []struct {
		name string
		lags []stage.StreamLag
		want want
	}{
		{"one instance", []stage.StreamLag{
			{Position: 5, UpstreamLast: 5},
		}, want{5, 5, 0, 0, 0}},
		{"a stuck input holds the stage back; an idle instance's old position does not count", []stage.StreamLag{
			{Position: 1, UpstreamLast: 5},                              // idle since 1
			{Position: 5, UpstreamLast: 5},                              // finished 4 and 5
			{Position: 2, UpstreamLast: 5, LagMessages: 3, InFlight: 1}, // 3 stuck
		}, want{2, 5, 3, 1, 2}},
		{"the lowest of those in flight", []stage.StreamLag{
			{Position: 7, UpstreamLast: 9, LagMessages: 2, InFlight: 2},
			{Position: 4, UpstreamLast: 9, LagMessages: 5, InFlight: 1},
		}, want{4, 9, 5, 3, 1}},
		{"in flight ahead of an idle instance's old position", []stage.StreamLag{
			{Position: 50, UpstreamLast: 101},
			{Position: 100, UpstreamLast: 101, LagMessages: 1, InFlight: 1},
		}, want{100, 101, 1, 1, 1}},
		{"nothing in flight: the highest", []stage.StreamLag{
			{Position: 3, UpstreamLast: 10, LagMessages: 7},
			{Position: 10, UpstreamLast: 10},
		}, want{10, 10, 0, 0, 1}},
		{"lag to the highest sequence any instance knows", []stage.StreamLag{
			{Position: 10, UpstreamLast: 11, LagMessages: 2, InFlight: 1}, // has seen 12
			{Position: 15, UpstreamLast: 20, LagMessages: 5},              // told 20 since
		}, want{10, 20, 10, 1, 0}},
	} {
		got, from := combineStage(c.lags)
		if g := (want{got.Position, got.UpstreamLast, got.LagMessages, got.InFlight, from}); g != c.want {
			t.Errorf("%s: %+v from %d, want %+v", c.name, got, from, c.want)
		}
	}
}

// A stage's row through its instances' answers: up while one answers,
// with or without the stream (a stage restarted on a quiet stream reports
// nothing of it until its next input: it is not down, and its last known
// position stands); down only when none answers, or none is registered.
func TestStageRowUpWhileAnInstanceAnswers(t *testing.T) {
	c := &collector{o: collectorOptions{ForgetAfter: time.Hour}, consumers: map[consumerKey]*consumerMemory{}}
	a := discovery.Instance{ID: "st-a", Service: "st", Address: "10.0.0.1", Port: 1, Tags: []string{replay.RelayTag}}
	b := discovery.Instance{ID: "st-b", Service: "st", Address: "10.0.0.2", Port: 2, Tags: []string{replay.RelayTag}}
	view := consulView{instances: []discovery.Instance{a, b}}
	key := consumerKey{kindStage, "st", "s"}
	now := time.Now()
	round := func(v consulView, answers ...trackerAnswer) *consumerMemory {
		t.Helper()
		now = now.Add(time.Second)
		for i := range answers {
			answers[i].kind = kindStage
		}
		c.buildStages(v, answers, now)
		m := c.consumers[key]
		if m == nil {
			t.Fatal("the stage's row is gone")
		}
		return m
	}

	m := round(view,
		trackerAnswer{in: a, lags: []stage.StreamLag{{Stream: "s", Position: 2, UpstreamLast: 5, LagMessages: 3, LagSeconds: 4, InFlight: 1}}},
		trackerAnswer{in: b, lags: []stage.StreamLag{{Stream: "s", Position: 5, UpstreamLast: 5}}})
	if !m.up || m.err != "" || m.status.LastContiguous != 2 || m.status.LagMessages != 3 || m.status.LagSeconds != 4 ||
		m.address != a.Addr() || !slices.Equal(m.instances, []string{"st-a", "st-b"}) {
		t.Fatalf("both reporting, a with 3 in flight: %+v", m)
	}
	m = round(view,
		trackerAnswer{in: a, lags: []stage.StreamLag{{Stream: "s", Position: 5, UpstreamLast: 5}}},
		trackerAnswer{in: b, lags: []stage.StreamLag{{Stream: "s", Position: 5, UpstreamLast: 5}}})
	if !m.up || m.status.LastContiguous != 5 || m.status.LagMessages != 0 || m.status.LagSeconds != 0 {
		t.Fatalf("caught up: %+v", m)
	}

	// Restarted, on a quiet stream: both answer [].
	m = round(view, trackerAnswer{in: a, lags: []stage.StreamLag{}}, trackerAnswer{in: b, lags: []stage.StreamLag{}})
	if !m.up || m.err != "" || !m.downSince.IsZero() || m.status.LastContiguous != 5 || m.lastSeen != now {
		t.Fatalf("restarted, the stream quiet: %+v, want up at 5 with no error", m)
	}
	// One of them does not answer: still up, and that is said.
	m = round(view, trackerAnswer{in: a, lags: []stage.StreamLag{}}, trackerAnswer{in: b, err: errors.New("connection refused")})
	if !m.up || !strings.Contains(m.err, "st-b: connection refused") || m.status.LastContiguous != 5 {
		t.Fatalf("a answering without the stream, b not answering: %+v", m)
	}
	// Neither answers: down, with the reasons, the position kept.
	m = round(view, trackerAnswer{in: a, err: errors.New("timeout")}, trackerAnswer{in: b, err: errors.New("connection refused")})
	downSince := now
	if m.up || !strings.Contains(m.err, "st-a: timeout") || !strings.Contains(m.err, "st-b: connection refused") ||
		m.downSince != downSince || m.status.LastContiguous != 5 {
		t.Fatalf("no instance answering: %+v, want down since now, at 5", m)
	}
	// Gone from Consul: down, with that reason, since it first went down.
	m = round(consulView{})
	if m.up || !strings.Contains(m.err, "registered in Consul") || m.downSince != downSince {
		t.Fatalf("no instance registered: %+v", m)
	}
	// Back, answering without the stream: up again.
	m = round(view, trackerAnswer{in: a, lags: []stage.StreamLag{}}, trackerAnswer{in: b, lags: []stage.StreamLag{}})
	if !m.up || m.err != "" || m.status.LastContiguous != 5 {
		t.Fatalf("back, the stream quiet: %+v", m)
	}
}
