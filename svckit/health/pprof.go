package health

import (
	"fmt"
	"net/http"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// The profiling endpoints are written here on runtime/pprof rather than
// taken from net/http/pprof: importing that package registers its handlers
// on http.DefaultServeMux in an init function, in every program that links
// svckit, whatever --pprof says. These serve the same profiles, in the
// same formats `go tool pprof` reads, on this server's mux only.

// mountPprof adds /debug/pprof/ (an index), /debug/pprof/profile (CPU,
// ?seconds=N, default 30) and /debug/pprof/<name> for every runtime
// profile (heap, allocs, goroutine, block, mutex, threadcreate; ?debug=N).
func (s *Server) mountPprof() {
	s.mux.HandleFunc("GET /debug/pprof/", servePprofNamed)
	s.mux.HandleFunc("GET /debug/pprof/profile", servePprofCPU)
}

func servePprofNamed(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/debug/pprof/")
	if name == "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "profiles: profile (CPU, ?seconds=N)")
		for _, p := range pprof.Profiles() {
			fmt.Fprintf(w, "  %s (%d)\n", p.Name(), p.Count())
		}
		return
	}
	p := pprof.Lookup(name)
	if p == nil {
		http.Error(w, fmt.Sprintf("pprof: unknown profile %q", name), http.StatusNotFound)
		return
	}
	debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s"`, name))
	}
	_ = p.WriteTo(w, debug)
}

func servePprofCPU(w http.ResponseWriter, r *http.Request) {
	secs, err := strconv.Atoi(r.URL.Query().Get("seconds"))
	if err != nil || secs <= 0 {
		secs = 30
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="profile"`)
	if err := pprof.StartCPUProfile(w); err != nil {
		w.Header().Del("Content-Disposition")
		http.Error(w, "pprof: "+err.Error(), http.StatusInternalServerError)
		return
	}
	t := time.NewTimer(time.Duration(secs) * time.Second)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}
	pprof.StopCPUProfile()
}
