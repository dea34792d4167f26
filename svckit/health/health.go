// Package health serves a service's operational HTTP endpoints on the port the
// service registers in Consul: /health (liveness, what Consul's check calls),
// /ready (readiness, JSON with the state of each dependency) and /metrics.
// Services add their own routes (e.g. /streams, /replay) to the same server.
package health

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configures a Server. The zero value serves on a free port of
// every interface, without /metrics.
type Options struct {
	Addr     string               // listen address; "127.0.0.1:0" picks a free port
	Registry *prometheus.Registry // nil = no /metrics
	Logger   *slog.Logger
	// Pprof serves runtime profiles under /debug/pprof/ (off by default: it
	// exposes internals to whoever reaches the port).
	Pprof bool
	// TLSCertFile and TLSKeyFile, when set, make Serve serve TLS.
	TLSCertFile, TLSKeyFile string
	// MetricsToken, when set, is what /metrics asks for, as
	// Authorization: Bearer; "" = /metrics is open.
	MetricsToken string
}

// CheckFunc reports a dependency's state: nil means OK.
type CheckFunc func() error

// Server is the HTTP server of one service.
type Server struct {
	opts    Options
	mux     *http.ServeMux
	srv     *http.Server
	ln      net.Listener
	mu      sync.RWMutex
	checks  map[string]CheckFunc
	details map[string]DetailFunc
}

// DetailFunc reports something an operator should know that does not make
// the service unready (damaged records it kept, say): "" when there is
// nothing to say.
type DetailFunc func() string

// New creates a server; call Listen then Serve.
func New(o Options) *Server {
	s := &Server{opts: o, mux: http.NewServeMux(), checks: map[string]CheckFunc{}, details: map[string]DetailFunc{}}
	s.mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("OK\n"))
	})
	s.mux.HandleFunc("GET /ready", s.serveReady)
	if o.Registry != nil {
		s.mux.Handle("GET /metrics", requireBearer(o.MetricsToken, promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{Registry: o.Registry})))
	}
	if o.Pprof {
		s.mountPprof()
	}
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

// AddCheck adds (or replaces) a named readiness check.
func (s *Server) AddCheck(name string, fn CheckFunc) {
	s.mu.Lock()
	s.checks[name] = fn
	s.mu.Unlock()
}

// AddDetail adds (or replaces) a named detail of the /ready answer: shown
// with its check of the same name (or alone, ok), never failing readiness.
func (s *Server) AddDetail(name string, fn DetailFunc) {
	s.mu.Lock()
	s.details[name] = fn
	s.mu.Unlock()
}

// Handle adds a route (Go 1.22 pattern syntax, e.g. "GET /streams").
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Listen binds the listener now, so the actual port is known before the
// service registers itself in Consul.
func (s *Server) Listen() (*net.TCPAddr, error) {
	if s.opts.TLSCertFile != "" {
		// Now, so that a missing or bad file stops the start with its name.
		if _, err := tls.LoadX509KeyPair(s.opts.TLSCertFile, s.opts.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("loading the HTTP server's certificate %s and key %s: %w", s.opts.TLSCertFile, s.opts.TLSKeyFile, err)
		}
	}
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening for HTTP on %s: %w", s.opts.Addr, err)
	}
	s.ln = ln
	return ln.Addr().(*net.TCPAddr), nil
}

// Serve serves until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve() error {
	if s.ln == nil {
		if _, err := s.Listen(); err != nil {
			return err
		}
	}
	var err error
	if s.opts.TLSCertFile != "" {
		err = s.srv.ServeTLS(s.ln, s.opts.TLSCertFile, s.opts.TLSKeyFile)
	} else {
		err = s.srv.Serve(s.ln)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving HTTP: %w", err)
	}
	return nil
}

// TLS reports whether Serve serves TLS.
func (s *Server) TLS() bool { return s.opts.TLSCertFile != "" }

// Shutdown stops accepting requests and waits for active ones (bounded by ctx).
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listener of a server that Listen bound and Serve never
// served (Shutdown stops a serving one).
func (s *Server) Close() error {
	if s.ln == nil {
		return nil
	}
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// CheckState is one dependency's entry in the /ready answer.
type CheckState struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Readiness is the /ready answer.
type Readiness struct {
	Ready  bool                  `json:"ready"`
	Checks map[string]CheckState `json:"checks"`
}

// Ready evaluates every check.
func (s *Server) Ready() Readiness {
	s.mu.RLock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	sort.Strings(names)
	fns := make([]CheckFunc, len(names))
	for i, n := range names {
		fns[i] = s.checks[n]
	}
	details := make(map[string]DetailFunc, len(s.details))
	for n, fn := range s.details {
		details[n] = fn
	}
	s.mu.RUnlock()
	r := Readiness{Ready: true, Checks: make(map[string]CheckState, len(names))}
	for i, n := range names {
		st := CheckState{OK: true}
		if err := fns[i](); err != nil {
			st = CheckState{OK: false, Error: err.Error()}
			r.Ready = false
		}
		r.Checks[n] = st
	}
	for n, fn := range details {
		d := fn()
		if d == "" {
			continue
		}
		st, ok := r.Checks[n]
		if !ok {
			st.OK = true
		}
		st.Detail = d
		r.Checks[n] = st
	}
	return r
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	r := s.Ready()
	w.Header().Set("Content-Type", "application/json")
	if !r.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(r)
}

// requireBearer answers only requests carrying token as Authorization:
// Bearer (compared in constant time); "" leaves h open.
func requireBearer(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "GET /metrics needs Authorization: Bearer <the metrics token> (--metrics-token-file)", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
