package health

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
