package worker_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/pipeline/worker"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/stage"
)

type ackAll struct{}

func (ackAll) PublishAsync(_ context.Context, _ []byte, done func(error)) { done(nil) }
func (ackAll) Close(context.Context) error                                { return nil }

type nopOut struct{}

func (nopOut) PublishEnvelopeAsync(context.Context, envelope.Envelope, func(error))    {}
func (nopOut) PublishEnvelopesAsync(context.Context, []envelope.Envelope, func(error)) {}

type upstream []discovery.Instance

func (u upstream) Instances() []discovery.Instance { return u }
func (u upstream) Service() string                 { return "sensor" }

func serve(b *testing.B, h http.Handler, tags ...string) discovery.Instance {
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: srv.URL, Address: host, Port: p, Tags: tags}
}

// BenchmarkRelay replays the sensor's readings (its content type and
// fold) over loopback HTTP into a tracker, directly from the owner and
// through the worker's relay (its transform), in one process: svckit
// bench's replay rounds without nsqd and Consul around them. msgs/s is
// what reaches the tracker; run with -cpuprofile to see the relay's cost.
func BenchmarkRelay(b *testing.B) {
	const n = 100_000
	lo := retainlog.DefaultOptions("")
	lo.Fsync = retainlog.FsyncNever // written once, before the timer
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: b.TempDir(), Log: lo, ContentType: pipeline.ReadingType, Fold: &pipeline.ReadingFold{}}, ackAll{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close(context.Background())
	ctx := context.Background()
	batch := make([][]byte, 0, 1000)
	for v := int64(1); v <= n; v++ {
		batch = append(batch, pipeline.MarshalReading(pipeline.Reading{Value: v % 1000}))
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
	st, err := stage.New(stage.Options{Name: "worker", Append: worker.AppendTransform(3), Out: nopOut{}, Upstream: upstream{owner}})
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
