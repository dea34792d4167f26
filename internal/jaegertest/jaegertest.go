// Package jaegertest runs a real Jaeger (bin/jaeger, v2: the OpenTelemetry
// Collector distribution, built by ./build.sh from tools/jaeger) on free
// loopback ports, with in-memory storage, as the OTLP receiver of the
// tracing tests, and reads traces back through its query API.
package jaegertest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/testenv"
)

// Jaeger is a running Jaeger.
type Jaeger struct {
	Proc *testenv.Process
	// OTLPHTTP and OTLPGRPC are the receiver's addresses (host:port);
	// Query is the query API's.
	OTLPHTTP, OTLPGRPC, Query string
}

// config is the whole of Jaeger's configuration: OTLP in, memory storage,
// the query API, and nothing on a fixed port.
const config = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: %[1]s
    grpc:
      endpoint: %[2]s
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[3]s
      http:
        endpoint: %[4]s
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// Start starts Jaeger and waits until its query API answers. A port taken
// between choosing it and Jaeger binding it makes Jaeger exit: it is then
// started again on other ports.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := testenv.Bin(t, "jaeger")
	for attempt := 1; ; attempt++ {
		j := &Jaeger{Query: testenv.Addr(testenv.FreePort(t)), OTLPGRPC: testenv.Addr(testenv.FreePort(t)),
			OTLPHTTP: testenv.Addr(testenv.FreePort(t))}
		queryGRPC := testenv.Addr(testenv.FreePort(t))
		path := filepath.Join(t.TempDir(), "jaeger.yaml")
		if err := os.WriteFile(path, fmt.Appendf(nil, config, j.Query, queryGRPC, j.OTLPGRPC, j.OTLPHTTP), 0o600); err != nil {
			t.Fatal(err)
		}
		j.Proc = testenv.StartProcess(t, fmt.Sprintf("jaeger.%d", attempt), bin, []string{"--config", "file:" + path}, nil)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) && j.Proc.Running() {
			if _, err := j.get("/api/services"); err == nil {
				return j
			}
			select {
			case <-j.Proc.Exited():
			case <-time.After(100 * time.Millisecond):
			}
		}
		if j.Proc.Running() {
			t.Fatalf("jaeger's query API at %s did not answer within 60s", j.Query)
		}
		if attempt == 3 {
			t.Fatalf("jaeger exited at start three times (log: %s)", j.Proc.LogPath())
		}
	}
}

// OTLPEndpoint is the OTEL_EXPORTER_OTLP_ENDPOINT for protocol
// "http/protobuf" or "grpc".
func (j *Jaeger) OTLPEndpoint(protocol string) string {
	if protocol == "grpc" {
		return "http://" + j.OTLPGRPC
	}
	return "http://" + j.OTLPHTTP
}

// Trace is one trace as the query API returns it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	StartTime     int64       `json:"startTime"` // µs since the epoch
	Duration      int64       `json:"duration"`  // µs
	Tags          []Tag       `json:"tags"`
	ProcessID     string      `json:"processID"`
}

// Reference is a parent (CHILD_OF) or a link (FOLLOWS_FROM).
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Tag is a span attribute.
type Tag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

// Process names the service a span came from.
type Process struct {
	ServiceName string `json:"serviceName"`
}

// Tag is the value of the span's attribute key, as text ("" if absent).
func (s Span) Tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

// Parent is the span's CHILD_OF reference, if any.
func (s Span) Parent() (Reference, bool) {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r, true
		}
	}
	return Reference{}, false
}

// LinksTo reports whether the span has a reference of any kind to spanID.
func (s Span) LinksTo(kind, spanID string) bool {
	for _, r := range s.References {
		if r.RefType == kind && r.SpanID == spanID {
			return true
		}
	}
	return false
}

// Service is the name of the service that made s in t.
func (t Trace) Service(s Span) string { return t.Processes[s.ProcessID].ServiceName }

// Find returns the traces of service with spans having every tag given.
func (j *Jaeger) Find(service string, tags map[string]string) ([]Trace, error) {
	tj, err := json.Marshal(tags)
	if err != nil {
		return nil, err
	}
	q := url.Values{"service": {service}, "tags": {string(tj)}, "limit": {"100"}, "lookback": {"1h"}}
	return j.get("/api/traces?" + q.Encode())
}

// Trace returns the trace with id (32 hex digits).
func (j *Jaeger) Trace(id string) (Trace, error) {
	ts, err := j.get("/api/traces/" + id)
	if err != nil {
		return Trace{}, err
	}
	if len(ts) != 1 {
		return Trace{}, fmt.Errorf("trace %s: %d traces in the answer", id, len(ts))
	}
	return ts[0], nil
}

func (j *Jaeger) get(path string) ([]Trace, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + j.Query + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Msg string `json:"msg"`
		} `json:"errors"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("GET %s: %s: %w", path, resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		msgs := make([]string, 0, len(body.Errors))
		for _, e := range body.Errors {
			msgs = append(msgs, e.Msg)
		}
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.Join(msgs, "; "))
	}
	if strings.HasPrefix(path, "/api/services") {
		return nil, nil
	}
	var ts []Trace
	if err := json.Unmarshal(body.Data, &ts); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return ts, nil
}
