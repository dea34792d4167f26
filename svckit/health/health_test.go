package health

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Linking svckit must not put profiling handlers on http.DefaultServeMux
// (net/http/pprof's init does that), and --pprof mounts them on the
// service's own mux only.
func TestPprofOnlyWhenAskedAndNeverOnDefaultMux(t *testing.T) {
	req := httptest.NewRequest(http.MethodGet, "/debug/pprof/heap", nil)
	if _, pattern := http.DefaultServeMux.Handler(req); pattern != "" {
		t.Fatalf("http.DefaultServeMux serves %q: something registered profiling handlers globally", pattern)
	}
	for _, on := range []bool{false, true} {
		s := New(Options{Pprof: on})
		rec := httptest.NewRecorder()
		s.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/heap", nil))
		if got := rec.Code == http.StatusOK; got != on {
			t.Fatalf("Pprof=%v: GET /debug/pprof/heap answered %d", on, rec.Code)
		}
		rec = httptest.NewRecorder()
		s.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/goroutine?debug=1", nil))
		body, _ := io.ReadAll(rec.Body)
		if on && !strings.Contains(string(body), "goroutine profile") {
			t.Fatalf("goroutine profile (debug=1): %d %.100s", rec.Code, body)
		}
	}
}

// A detail shows in /ready without making the service unready; an empty one
// is left out.
func TestReadyDetail(t *testing.T) {
	s := New(Options{})
	s.AddCheck("log", func() error { return nil })
	s.AddDetail("log", func() string { return "2 damaged records" })
	s.AddDetail("quiet", func() string { return "" })
	r := s.Ready()
	if !r.Ready || r.Checks["log"] != (CheckState{OK: true, Detail: "2 damaged records"}) {
		t.Fatalf("Ready() = %+v", r)
	}
	if _, ok := r.Checks["quiet"]; ok {
		t.Fatalf("an empty detail is listed: %+v", r)
	}
}

// With a metrics token, /metrics answers only a request bearing it;
// /health stays open (Consul's and Docker's checks carry no token).
func TestMetricsToken(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "svckit_test_total", Help: "a test counter"}))
	s := New(Options{Registry: reg, MetricsToken: "the-metrics-token"})
	for _, c := range []struct {
		path, auth string
		want       int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "Bearer wrong", http.StatusUnauthorized},
		{"/metrics", "Basic the-metrics-token", http.StatusUnauthorized},
		{"/metrics", "Bearer the-metrics-token", http.StatusOK},
		{"/health", "", http.StatusOK},
	} {
		r := httptest.NewRequest(http.MethodGet, c.path, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		w := httptest.NewRecorder()
		s.mux.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("GET %s with %q: HTTP %d, want %d", c.path, c.auth, w.Code, c.want)
		}
		if w.Code == http.StatusOK && c.path == "/metrics" && !strings.Contains(w.Body.String(), "svckit_test_total") {
			t.Errorf("GET /metrics with the token: no metric in %q", w.Body.String())
		}
	}
}
