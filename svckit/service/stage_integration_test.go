package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/stage"
	"github.com/svckit/svckit/svckit/testenv"
)

// gaugeValue is the gauge name{stream} in reg's gathering, and whether it
// is there.
func gaugeValue(t *testing.T, s *service.Service, name, stream string) (float64, bool) {
	t.Helper()
	mfs, err := s.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "stream" && l.GetValue() == stream {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// A stage's lag against real consul and nsqd: an owner publishes, the
// stage's transform is held, and its lag in the stream (GET /stage, signed
// with the replay secret, and svckit_stream_lag_messages) rises with what
// the owner publishes; let go, the stage catches up and its lag is 0. One
// input stuck while those after it are finished holds the position just
// before it, until it is finished too.
func TestStageLagRisesWhileHeldAndReturnsToZero(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	const secret = "stage-lag-test-replay-secret-0123456789"
	const stream, in, out = "stagelag-s1", "stagelag-in", "stagelag-out"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	createTopic(t, stack.NSQD, in)
	createTopic(t, stack.NSQD, out)

	ocfg := testConfig(t, "stagelagowner", stack.Consul.HTTPAddr)
	ocfg.ReplaySecret = secret
	osvc, err := service.New(ctx, ocfg, testLogger(t))
	if err != nil {
		t.Fatalf("New owner: %v", err)
	}
	owner, err := osvc.OpenStream(ctx, service.StreamOptions{Stream: stream, Topic: in, Owner: replay.OwnerOptions{Log: retainlog.DefaultOptions(""), ContentType: "text/plain"}})
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	ownerRun := run(osvc, ctx, nil)

	scfg := testConfig(t, "stagelag", stack.Consul.HTTPAddr)
	scfg.ReplaySecret = secret
	ss, err := service.New(ctx, scfg, testLogger(t))
	if err != nil {
		t.Fatalf("New stage: %v", err)
	}
	gate := make(chan struct{}) // closed: the transform lets its inputs through
	const stuckSeq = 18         // held until stuck is closed
	stuck := make(chan struct{})
	wait := func(ctx context.Context, c chan struct{}) error {
		select {
		case <-c:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	held := func(ctx context.Context, e envelope.Envelope) ([]stage.Output, error) {
		if err := wait(ctx, gate); err != nil {
			return nil, err
		}
		if e.Seq == stuckSeq {
			if err := wait(ctx, stuck); err != nil {
				return nil, err
			}
		}
		return []stage.Output{{ContentType: "text/plain", Payload: e.Payload}}, nil
	}
	if _, err := ss.Stage(service.StageOptions{InTopic: in, Channel: "stage", OutTopic: out, Upstream: "stagelagowner",
		Transform: held, TailInterval: 200 * time.Millisecond}); err != nil {
		t.Fatalf("Stage: %v", err)
	}
	// A second stage in one service is refused, not a panic.
	if _, err := ss.Stage(service.StageOptions{InTopic: in, Channel: "stage2", OutTopic: out, Upstream: "stagelagowner", Transform: held}); err == nil {
		t.Fatal("a second stage in the same service was accepted")
	}
	stageRun := run(ss, ctx, nil)
	testenv.WaitPassing(t, stack.Consul, "stagelagowner", 1)
	testenv.WaitPassing(t, stack.Consul, "stagelag", 1)
	testenv.WaitFor(t, waitLong, "the stage's consumer to connect", func() bool {
		return channelState(stack.NSQD, in, "stage").clients == 1
	})

	addr := "127.0.0.1:" + strconv.Itoa(ss.Port)
	signed := replay.Client{Secret: secret, Audience: "stagelag"}
	lagOf := func() (stage.StreamLag, string) {
		resp, err := signed.Get(ctx, addr, stage.StatusPath, nil)
		if err != nil {
			return stage.StreamLag{}, err.Error()
		}
		defer resp.Body.Close()
		var all []stage.StreamLag
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return stage.StreamLag{}, fmt.Sprintf("HTTP %d %s", resp.StatusCode, b)
		}
		if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
			return stage.StreamLag{}, err.Error()
		}
		for _, l := range all {
			if l.Stream == stream {
				return l, ""
			}
		}
		return stage.StreamLag{}, fmt.Sprintf("stream %s not in %+v", stream, all)
	}
	// Unsigned, GET /stage is refused: it shows the pipeline's data.
	if code, body := get(t, "http://"+addr+stage.StatusPath); code != http.StatusUnauthorized {
		t.Errorf("unsigned GET /stage: HTTP %d %s, want 401", code, body)
	}

	publish := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := owner.Publish(ctx, []byte("m"+strconv.Itoa(i)), ""); err != nil {
				t.Fatalf("publish: %v", err)
			}
		}
	}
	// Held: the stream is seen as soon as its first input arrives, and its
	// lag is what the owner published.
	publish(5)
	var l stage.StreamLag
	var why string
	waitLag := func(what string, cond func() bool) {
		t.Helper()
		if !testenv.Eventually(waitLong, func() bool { l, why = lagOf(); return why == "" && cond() }) {
			t.Fatalf("waiting %s for %s: last %+v %s", waitLong, what, l, why)
		}
	}
	waitLag("the held stage's lag at 5", func() bool {
		return l.UpstreamLast == 5 && l.Position == 0 && l.LagMessages == 5 && l.LagSeconds > 0 && l.LastError == ""
	})
	// Rising as the owner goes on.
	publish(10)
	waitLag("the held stage's lag rising to 15", func() bool { return l.UpstreamLast == 15 && l.LagMessages == 15 })
	testenv.WaitFor(t, waitLong, "svckit_stream_lag_messages at 15", func() bool {
		v, ok := gaugeValue(t, ss, "svckit_stream_lag_messages", stream)
		return ok && v == 15
	})
	if v, ok := gaugeValue(t, ss, "svckit_stream_lag_seconds", stream); !ok || v <= 0 {
		t.Errorf("svckit_stream_lag_seconds = %v (%v) while 15 behind", v, ok)
	}
	t.Logf("held: %+v", l)

	// Let go: it catches up.
	close(gate)
	waitLag("the stage caught up (lag 0)", func() bool {
		return l.Position == 15 && l.UpstreamLast == 15 && l.LagMessages == 0 && l.LagSeconds == 0
	})
	testenv.WaitFor(t, waitLong, "svckit_stream_lag_messages back to 0", func() bool {
		v, ok := gaugeValue(t, ss, "svckit_stream_lag_messages", stream)
		s, _ := gaugeValue(t, ss, "svckit_stream_lag_seconds", stream)
		return ok && v == 0 && s == 0
	})

	// 16 to 20, 18 stuck (the stage's other handlers finish the rest): the
	// stage is at 17, 3 behind, 18 in flight; not at 20.
	publish(5)
	waitLag("the position held before the stuck input", func() bool {
		return l.Position == stuckSeq-1 && l.InFlight == 1 && l.UpstreamLast == 20 && l.LagMessages == 3 && l.LagSeconds > 0
	})
	testenv.WaitFor(t, waitLong, "svckit_stream_lag_messages at 3 with one input stuck", func() bool {
		v, ok := gaugeValue(t, ss, "svckit_stream_lag_messages", stream)
		return ok && v == 3
	})
	t.Logf("stuck: %+v", l)
	close(stuck)
	waitLag("the stage at 20 once the stuck input finished", func() bool {
		return l.Position == 20 && l.InFlight == 0 && l.LagMessages == 0 && l.LagSeconds == 0
	})

	cancel()
	if err := waitRun(t, stageRun); err != nil {
		t.Errorf("stage Run: %v", err)
	}
	if err := waitRun(t, ownerRun); err != nil {
		t.Errorf("owner Run: %v", err)
	}
}
