package otlp

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/svckit/svckit/svckit/testenv"
)

func TestDefaultConfig(t *testing.T) {
	for _, c := range []struct {
		name     string
		env      map[string]string
		enabled  bool
		protocol string
		err      string
	}{
		{name: "nothing set: off", protocol: ProtocolHTTP},
		{name: "an endpoint: on", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, enabled: true, protocol: ProtocolHTTP},
		{name: "a traces endpoint: on", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, enabled: true, protocol: ProtocolHTTP},
		{name: "grpc", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, enabled: true, protocol: ProtocolGRPC},
		{name: "traces protocol wins", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, enabled: true, protocol: ProtocolGRPC},
		{name: "SDK disabled", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, protocol: ProtocolHTTP},
		{name: "exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, protocol: ProtocolHTTP},
		{name: "http/json", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, err: `OTEL_EXPORTER_OTLP_PROTOCOL="http/json"`},
		{name: "zipkin with an endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "zipkin"}, err: `OTEL_TRACES_EXPORTER="zipkin"`},
		{name: "zipkin, no endpoint: off, no error", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, protocol: ProtocolHTTP},
		{name: "http/json, no endpoint: off, no error", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, protocol: ProtocolHTTP},
		{name: "an unknown sampler", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_ratio"}, err: `OTEL_TRACES_SAMPLER="parentbased_ratio"`},
		{name: "a list with otlp", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp, console"}, enabled: true, protocol: ProtocolHTTP},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := DefaultConfig("worker", func(k string) string { return c.env[k] })
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one naming %s", err, c.err)
				}
				return
			}
			if err != nil || got.Enabled != c.enabled || got.Protocol != c.protocol || got.ServiceName != "worker" {
				t.Fatalf("DefaultConfig = %+v, %v; want enabled %v, protocol %s", got, err, c.enabled, c.protocol)
			}
		})
	}
}

// Off makes no provider: nothing runs, nothing is exported.
func TestNewOff(t *testing.T) {
	p, err := New(context.Background(), Config{}, nil)
	if p != nil || err != nil {
		t.Fatalf("New(off) = %v, %v", p, err)
	}
	if p.Tracer() != nil || p.Shutdown(context.Background()) != nil {
		t.Fatal("a nil Provider is not off")
	}
}

type failingExporter struct {
	sdktrace.SpanExporter
	err error
}

func (f *failingExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return f.err }
func (f *failingExporter) Shutdown(context.Context) error                             { return nil }

// A failed export is logged through the service's logger, once per
// distinct error, and not handed to the SDK's process-wide handler (the
// exporter reports success); the first success after it says so.
func TestFailedExportsLoggedOnce(t *testing.T) {
	var buf bytes.Buffer
	f := &failingExporter{err: errors.New("connection refused")}
	e := &loggingExporter{SpanExporter: f, log: slog.New(slog.NewTextHandler(&buf, nil))}
	for range 3 {
		if err := e.ExportSpans(context.Background(), nil); err != nil {
			t.Fatalf("ExportSpans = %v, want nil (logged here)", err)
		}
	}
	if err := e.Shutdown(context.Background()); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Shutdown after failed exports = %v, want the failure", err)
	}
	f.err = nil
	_ = e.ExportSpans(context.Background(), nil)
	out := buf.String()
	if strings.Count(out, "exporting spans failed") != 1 || !strings.Contains(out, "connection refused") || !strings.Contains(out, "exporting spans again") {
		t.Fatalf("log:\n%s", out)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown after a successful export = %v", err)
	}
}

// The sampler is the SDK's, from OTEL_TRACES_SAMPLER: always_off makes
// spans that do not record; the default records.
func TestSamplerFromEnvironment(t *testing.T) {
	// Free a moment ago: nothing listens there, and the export fails.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+testenv.Addr(testenv.FreePort(t)))
	for sampler, records := range map[string]bool{"": true, "always_off": false, "parentbased_always_off": false} {
		t.Setenv("OTEL_TRACES_SAMPLER", sampler)
		c, err := DefaultConfig("svc", nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(context.Background(), c, nil)
		if err != nil || p == nil {
			t.Fatalf("New: %v, %v", p, err)
		}
		_, span := p.Tracer().Topic("readings", "").Send(context.Background())
		tc := span.Context()
		span.End(nil)
		if sampled := tc.Flags&1 != 0; sampled != records {
			t.Errorf("OTEL_TRACES_SAMPLER=%q: sampled %v, want %v", sampler, sampled, records)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_ = p.Shutdown(ctx) // nothing listens: the export fails, logged nowhere
		cancel()
	}
}
