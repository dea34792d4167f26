// Package otlp makes the OpenTelemetry SDK's tracer provider that exports
// svckit's spans over OTLP, configured as every OpenTelemetry SDK is: by
// the standard environment variables.
//
//   - OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT):
//     setting one turns tracing on. Unset, tracing is off and costs nothing.
//   - OTEL_EXPORTER_OTLP_PROTOCOL (or ..._TRACES_PROTOCOL): "http/protobuf"
//     (the default) or "grpc".
//   - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG: the sampler (default
//     parentbased_always_on), read by the SDK.
//   - OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none: off, whatever
//     the endpoint.
//   - OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES: the resource; the
//     service name defaults to svckit's service name.
//   - The exporters read the rest themselves: headers, TLS certificates,
//     timeouts, compression (OTEL_EXPORTER_OTLP_HEADERS, ..._CERTIFICATE,
//     ..._INSECURE, ...).
package otlp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/tracing"
)

// Protocols the exporter speaks.
const (
	ProtocolHTTP = "http/protobuf"
	ProtocolGRPC = "grpc"
)

// Config says whether and how to export spans. DefaultConfig reads it from
// the environment.
type Config struct {
	// Enabled is true when an endpoint is set and the SDK is not disabled.
	Enabled bool
	// Protocol is ProtocolHTTP or ProtocolGRPC.
	Protocol string
	// ServiceName is the resource's service.name unless OTEL_SERVICE_NAME
	// sets it.
	ServiceName string
}

// DefaultConfig reads the OTEL_* environment variables (see the package
// comment) through getenv; nil is os.Getenv. The exporter's own settings
// are checked only when tracing is on: a shared environment that names
// an exporter or protocol svckit does not speak does not stop a service
// that does not trace.
func DefaultConfig(serviceName string, getenv func(string) string) (Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	c := Config{ServiceName: serviceName, Protocol: ProtocolHTTP}
	first := func(keys ...string) string {
		for _, k := range keys {
			if v := strings.TrimSpace(getenv(k)); v != "" {
				return v
			}
		}
		return ""
	}
	endpoint := first("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
	exporters := strings.Split(strings.ToLower(first("OTEL_TRACES_EXPORTER")), ",")
	for i := range exporters {
		exporters[i] = strings.TrimSpace(exporters[i])
	}
	if endpoint == "" || strings.EqualFold(first("OTEL_SDK_DISABLED"), "true") || slices.Contains(exporters, "none") {
		return c, nil // off
	}
	if exporters[0] != "" && !slices.Contains(exporters, "otlp") {
		return c, fmt.Errorf("OTEL_TRACES_EXPORTER=%q with an OTLP endpoint set: svckit exports traces over otlp only (or none)", first("OTEL_TRACES_EXPORTER"))
	}
	// The SDK reads the sampler itself, and falls back to its default on a
	// name it does not know, saying so only to stderr: refuse it here.
	switch smp := first("OTEL_TRACES_SAMPLER"); smp {
	case "", "always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio":
	default:
		return c, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio or parentbased_ one of them", smp)
	}
	for _, key := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		p := first(key)
		if p == "" {
			continue
		}
		switch p {
		case ProtocolHTTP, ProtocolGRPC:
			c.Protocol = p
		default:
			return c, fmt.Errorf("%s=%q: want %q or %q", key, p, ProtocolHTTP, ProtocolGRPC)
		}
		break
	}
	c.Enabled = true
	return c, nil
}

// Provider exports svckit's spans. A nil *Provider is tracing off.
type Provider struct {
	tp *sdktrace.TracerProvider
	tr *tracing.Tracer
}

// Tracer is what makes svckit's spans; nil (off) for a nil Provider.
func (p *Provider) Tracer() *tracing.Tracer {
	if p == nil {
		return nil
	}
	return p.tr
}

// Shutdown exports the spans still held, within ctx, and stops.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil {
		return nil
	}
	return p.tp.Shutdown(ctx)
}

// New makes the provider c asks for, or returns nil (tracing off) when c
// is not Enabled. Shut it down to flush what it holds. Failed exports are
// logged to log (nil: discarded) as loggingExporter says, not to the
// OpenTelemetry SDK's process-wide handler (the standard log package).
func New(ctx context.Context, c Config, log *slog.Logger) (*Provider, error) {
	if !c.Enabled {
		return nil, nil
	}
	var exp *otlptrace.Exporter
	var err error
	// The exporters take their endpoint, headers, TLS and timeouts from
	// the environment themselves.
	switch c.Protocol {
	case ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx)
	case ProtocolHTTP, "":
		exp, err = otlptracehttp.New(ctx)
	default:
		err = fmt.Errorf("unknown protocol %q", c.Protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("making the OTLP trace exporter (%s): %w", c.Protocol, err)
	}
	// Later detectors win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// (WithFromEnv) over the service's own name.
	res, err := resource.New(ctx, resource.WithAttributes(attribute.String("service.name", c.ServiceName)),
		resource.WithTelemetrySDK(), resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("making the trace resource: %w", err)
	}
	// The sampler comes from OTEL_TRACES_SAMPLER (the SDK reads it). The
	// batching processor drops spans when its queue is full: a collector
	// away never holds a message up.
	if log == nil {
		log = logging.Discard()
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(&loggingExporter{SpanExporter: exp, log: log}),
		sdktrace.WithResource(res))
	return &Provider{tp: tp, tr: tracing.New(tp)}, nil
}

// loggingExporter logs failed exports itself and tells the SDK they went
// well: the SDK would hand each error to its process-wide handler, which
// prints every one to stderr with the standard log package, outside the
// service's structured log. The spans of a failed export are dropped
// either way (the batching processor does not retry). While exports fail
// it logs the first error, then at most once a minute with the spans
// dropped so far, and once when they succeed again; Shutdown reports a
// failure of the last export (the final flush's included).
type loggingExporter struct {
	sdktrace.SpanExporter
	log *slog.Logger

	mu       sync.Mutex
	failing  error     // the last export's error, nil once one succeeded
	dropped  int       // spans dropped since exports began failing
	loggedAt time.Time // when the failure was last logged
}

// exportLogEvery bounds how often a lasting failure is logged.
const exportLogEvery = time.Minute

func (e *loggingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case err != nil:
		first := e.failing == nil
		e.failing = err
		e.dropped += len(spans) // at most: a partial success is an error too
		if first || time.Since(e.loggedAt) >= exportLogEvery {
			e.loggedAt = time.Now()
			e.log.Warn("exporting spans failed; they are dropped", "dropped_so_far", e.dropped, "err", err)
		}
	case e.failing != nil:
		e.log.Info("exporting spans again", "dropped", e.dropped)
		e.failing, e.dropped = nil, 0
	}
	return nil
}

// Shutdown stops the exporter and reports a last export that failed,
// which the flush at shutdown would otherwise not say.
func (e *loggingExporter) Shutdown(ctx context.Context) error {
	err := e.SpanExporter.Shutdown(ctx)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failing != nil {
		err = errors.Join(err, fmt.Errorf("the last export failed, %d spans dropped: %w", e.dropped, e.failing))
	}
	return err
}
