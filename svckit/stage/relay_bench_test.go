package stage

import (
	"context"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
)

// BenchmarkReplay replays an owner's log of 100k 8-byte readings over
// loopback HTTP into a tracker, directly and through one relay stage (a
// transform of one output per input, as the reference worker's, passing the payload), in one
// process: svckit bench's relay_ratio without nsqd and Consul around it.
// The figure is messages per second (msgs/s).
func BenchmarkReplay(b *testing.B) {
	const n = 100_000
	lo := retainlog.DefaultOptions("")
	lo.Fsync = retainlog.FsyncNever // the log is written once, before the timer
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: b.TempDir(), Log: lo, Fold: &sumFold{}}, ackAll{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close(context.Background())
	ctx := context.Background()
	batch := make([][]byte, 0, 1000)
	for v := uint64(1); v <= n; v++ {
		batch = append(batch, value(v))
		if len(batch) == cap(batch) {
			if _, err := o.PublishBatch(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	mux := http.NewServeMux()
	replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()), o).Register(mux)
	owner := serve(b, mux, replay.OwnerTag("s"))

	pass := func(_ context.Context, in envelope.Envelope) ([]Output, error) {
		return []Output{{ContentType: "x", Payload: in.Payload}}, nil
	}
	st, err := New(Options{Name: "relay", Transform: pass, Out: nopOut{}, Upstream: staticUpstream{owner}})
	if err != nil {
		b.Fatal(err)
	}
	m := http.NewServeMux()
	srv := replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()))
	srv.SetRelay(st)
	srv.Register(m)
	relay := serve(b, m, replay.RelayTag)

	for _, side := range []struct{ name, addr string }{{"direct", owner.Addr()}, {"relayed", relay.Addr()}} {
		b.Run(side.name, func(b *testing.B) {
			for b.Loop() {
				tr, _ := replay.NewTracker(nopApplier{}, replay.TrackerOptions{})
				got, err := replay.Client{}.Replay(ctx, side.addr, replay.Request{Stream: "s", From: 1, To: n}, func(env envelope.Envelope, _ int) error {
					_, err := tr.Deliver(ctx, env)
					return err
				})
				if err != nil || got != n {
					b.Fatalf("%d of %d: %v", got, n, err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

type nopApplier struct{}

func (nopApplier) Apply(string, envelope.Envelope) error      { return nil }
func (nopApplier) ApplySnapshot(string, uint64, []byte) error { return nil }
func (nopApplier) ExportState(string) ([]byte, error)         { return nil, nil }
func (nopApplier) ImportState(string, []byte) error           { return nil }
