package nsqauth

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/logging"
)

// Server answers nsqd's auth requests from the latest Table it was given.
// Until it has one it answers 503, and nsqd asks its next auth server.
type Server struct {
	table   atomic.Pointer[Table]
	log     *slog.Logger
	answers *prometheus.CounterVec

	mu        sync.Mutex
	sourceErr error     // the policy source's last error (nil: up to date)
	lastLog   time.Time // refusals are logged at most once a second
	muted     int       // refusals not logged since lastLog
}

// ServerOptions configures a Server. The zero value is ready to use.
type ServerOptions struct {
	Logger *slog.Logger // nil = discard
	// Registry, if set, gets svckit_nsqauth_answers_total{identity,result}.
	Registry prometheus.Registerer
}

// NewServer creates a server without a table.
func NewServer(o ServerOptions) *Server {
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	s := &Server{log: o.Logger}
	s.answers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "svckit", Subsystem: "nsqauth", Name: "answers_total",
		Help: "Answers to nsqd's auth requests: result granted (identity named), unknown (secret not known) or tls_required.",
	}, []string{"identity", "result"})
	if o.Registry != nil {
		o.Registry.MustRegister(s.answers)
	}
	return s
}

// SetTable replaces the table (a new policy or new issued secrets). nsqd
// sees the change on new connections at once, on existing ones when their
// ttl has passed.
func (s *Server) SetTable(t *Table) {
	old := s.table.Swap(t)
	for _, w := range t.Warnings {
		s.log.Warn("nsqauth policy", "warning", w)
	}
	if old == nil {
		s.log.Info("nsqauth policy loaded", "identities", len(t.answers), "secrets", len(t.byHash), "ttl", t.ttl)
	} else {
		s.log.Info("nsqauth policy updated", "identities", len(t.answers), "secrets", len(t.byHash), "ttl", t.ttl)
	}
}

// Table returns the current table (nil before the first).
func (s *Server) Table() *Table { return s.table.Load() }

// SetSourceError records the policy source's state: an error keeps the
// last table in use and shows in Ready.
func (s *Server) SetSourceError(err error) {
	s.mu.Lock()
	s.sourceErr = err
	s.mu.Unlock()
}

// Ready is nil once a table is loaded and the source is up to date.
func (s *Server) Ready() error {
	if s.table.Load() == nil {
		return errors.New("no policy loaded yet")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sourceErr
}

// Register adds GET /auth (nsqd's) and GET /identities (what each identity
// may do and how many secrets it has; no secret or hash) to mux.
func (s *Server) Register(handle func(pattern string, h http.Handler)) {
	handle("GET /auth", http.HandlerFunc(s.ServeAuth))
	handle("GET /identities", http.HandlerFunc(s.ServeIdentities))
}

// ServeAuth answers GET /auth?remote_ip=&tls=&secret=&common_name=. A known
// secret gets its identity's authorizations; an unknown one (or one that
// needs TLS and came without it) gets none, with the table's ttl: nsqd
// then refuses the client (E_UNAUTHORIZED) and closes its connection.
func (s *Server) ServeAuth(w http.ResponseWriter, r *http.Request) {
	t := s.table.Load()
	if t == nil {
		http.Error(w, "no policy loaded yet", http.StatusServiceUnavailable)
		return
	}
	q := r.URL.Query()
	tls := q.Get("tls") == "true"
	a, refused := t.Lookup(q.Get("secret"), tls)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if refused != "" {
		result := "unknown"
		if refused == RefusedNoTLS {
			result = "tls_required"
		}
		s.answers.WithLabelValues(a.Identity, result).Inc()
		s.logRefusal(refused, a.Identity, q.Get("remote_ip"), tls)
		_ = json.NewEncoder(w).Encode(Answer{TTL: t.ttl, Authorizations: []Authorization{}})
		return
	}
	s.answers.WithLabelValues(a.Identity, "granted").Inc()
	s.log.Debug("nsqauth granted", "identity", a.Identity, "remote_ip", q.Get("remote_ip"), "tls", tls)
	_ = json.NewEncoder(w).Encode(a)
}

// logRefusal logs a refusal, at most one line a second (a client retrying
// a wrong secret must not flood the log); the line says how many were not
// logged since the last.
func (s *Server) logRefusal(why Refusal, identity, remoteIP string, tls bool) {
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.lastLog) < time.Second {
		s.muted++
		s.mu.Unlock()
		return
	}
	muted := s.muted
	s.lastLog, s.muted = now, 0
	s.mu.Unlock()
	args := []any{"reason", string(why), "remote_ip", remoteIP, "tls", tls}
	if identity != "" {
		args = append(args, "identity", identity)
	}
	if muted > 0 {
		args = append(args, "not_logged_since", muted)
	}
	s.log.Warn("nsqauth refused", args...)
}

// ServeIdentities answers GET /identities.
func (s *Server) ServeIdentities(w http.ResponseWriter, _ *http.Request) {
	t := s.table.Load()
	if t == nil {
		http.Error(w, "no policy loaded yet", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(t.Identities())
}
