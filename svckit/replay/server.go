package replay

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/retainlog"
)

// FramesContentType is the media type of a replay response: a sequence of
// frames, each u32 big-endian length then that many bytes of envelope.
const FramesContentType = "application/x-svckit-frames"

// Server serves the owner side of the replay protocol for a set of owners.
type Server struct {
	mu      sync.RWMutex
	owners  map[string]*Owner
	secret  string
	metrics *Metrics
}

// NewServer serves owners; a non-empty secret is required from every client
// as "Authorization: Bearer <secret>".
func NewServer(secret string, m *Metrics, owners ...*Owner) *Server {
	s := &Server{owners: map[string]*Owner{}, secret: secret, metrics: m}
	for _, o := range owners {
		s.owners[o.Stream()] = o
	}
	return s
}

// Add serves another owner's stream.
func (s *Server) Add(o *Owner) {
	s.mu.Lock()
	s.owners[o.Stream()] = o
	s.mu.Unlock()
}

func (s *Server) owner(stream string) (*Owner, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.owners[stream]
	return o, ok
}

// Router is where Server adds its routes (health.Server, http.ServeMux).
type Router interface {
	Handle(pattern string, h http.Handler)
}

// Register adds GET /streams, /replay and /snapshot to r.
func (s *Server) Register(r Router) {
	r.Handle("GET /streams", s.auth(s.serveStreams))
	r.Handle("GET /replay", s.auth(s.serveReplay))
	r.Handle("GET /snapshot", s.auth(s.serveSnapshot))
}

func (s *Server) auth(h http.HandlerFunc) http.Handler {
	if s.secret == "" {
		return h
	}
	want := []byte("Bearer " + s.secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			http.Error(w, "replay: missing or wrong shared secret", http.StatusUnauthorized)
			return
		}
		h(w, r)
	})
}

func (s *Server) serveStreams(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	out := make([]Status, 0, len(s.owners))
	for _, o := range s.owners {
		out = append(out, o.Status())
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b Status) int {
		if a.Stream < b.Stream {
			return -1
		}
		if a.Stream > b.Stream {
			return 1
		}
		return 0
	})
	writeJSON(w, out)
}

func (s *Server) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("stream")
	o, ok := s.owner(id)
	if !ok {
		http.Error(w, fmt.Sprintf("replay: unknown stream %q", id), http.StatusNotFound)
		return
	}
	seq, state, ok := o.Snapshot()
	if !ok {
		http.Error(w, fmt.Sprintf("replay: stream %q offers no snapshot", id), http.StatusNotFound)
		return
	}
	writeJSON(w, snapshotFile{Stream: id, Seq: seq, State: state})
}

func (s *Server) serveReplay(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := q.Get("stream")
	o, ok := s.owner(id)
	if !ok {
		http.Error(w, fmt.Sprintf("replay: unknown stream %q", id), http.StatusNotFound)
		return
	}
	log := o.Log()
	var from, to uint64
	var err1, err2 error
	if since := q.Get("since"); since != "" {
		// "since" a time: the first retained record at or after it, to the end.
		t, err := time.Parse(time.RFC3339Nano, since)
		if err != nil {
			http.Error(w, "replay: since: want an RFC 3339 time", http.StatusBadRequest)
			return
		}
		if from, err = firstSince(r.Context(), log, t); err != nil {
			http.Error(w, "replay: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if from == 0 {
			w.Header().Set("X-Svckit-Last-Seq", strconv.FormatUint(o.Status().LastSeq, 10))
			w.Header().Set("Content-Type", FramesContentType)
			return // nothing retained since then
		}
		to = o.Status().LastSeq
	} else {
		from, err1 = strconv.ParseUint(q.Get("from"), 10, 64)
		to, err2 = strconv.ParseUint(q.Get("to"), 10, 64)
	}
	if err1 != nil || err2 != nil || from == 0 || to < from {
		http.Error(w, "replay: want from and to with 1 <= from <= to, or since=<RFC 3339 time>", http.StatusBadRequest)
		return
	}
	last := o.Status().LastSeq
	w.Header().Set("X-Svckit-Last-Seq", strconv.FormatUint(last, 10))
	w.Header().Set("X-Svckit-Retained-First", strconv.FormatUint(log.FirstSeq(), 10))
	switch {
	case from > last:
		http.Error(w, fmt.Sprintf("replay: stream %q has no sequence %d (last is %d)", id, from, last), http.StatusRequestedRangeNotSatisfiable)
		return
	case log.LastSeq() == 0 || from < log.FirstSeq():
		http.Error(w, fmt.Sprintf("replay: stream %q no longer retains sequence %d (retained from %d): use a snapshot", id, from, log.FirstSeq()), http.StatusGone)
		return
	}
	// Only what is durable (Status.LastSeq): a record a consumer applied
	// must survive a power loss, or its sequence number would be handed
	// out again.
	to = min(to, last)
	w.Header().Set("Content-Type", FramesContentType)
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [4]byte
	var n, bytes uint64
	started := false
	err := log.Read(r.Context(), from, to, func(rec retainlog.Record) error {
		started = true
		binary.BigEndian.PutUint32(hdr[:], uint32(len(rec.Data)))
		if _, err := bw.Write(hdr[:]); err != nil {
			return err
		}
		_, err := bw.Write(rec.Data)
		n++
		bytes += uint64(len(rec.Data)) + 4
		return err
	})
	if err == nil {
		err = bw.Flush()
	}
	s.metrics.ServedMessages.Add(float64(n))
	s.metrics.ServedBytes.Add(float64(bytes))
	if err != nil && !started {
		code := http.StatusInternalServerError
		if errors.Is(err, retainlog.ErrTrimmed) {
			code = http.StatusGone // retention ran between the check and the read
		}
		http.Error(w, "replay: "+err.Error(), code)
		return
	}
	if err != nil {
		// Mid-stream failure: abort the connection so the client sees a
		// truncated response instead of a short one that looks complete.
		panic(http.ErrAbortHandler)
	}
}

// firstSince finds the first retained sequence whose record time is at or
// after t (0 if none). A linear scan: operator requests are rare and the log
// reads at well over a million records a second.
func firstSince(ctx context.Context, log *retainlog.Log, t time.Time) (uint64, error) {
	if log.LastSeq() == 0 {
		return 0, nil
	}
	var found uint64
	stop := errors.New("found")
	err := log.Read(ctx, log.FirstSeq(), log.LastSeq(), func(r retainlog.Record) error {
		if !r.Time.Before(t) {
			found = r.Seq
			return stop
		}
		return nil
	})
	if err != nil && !errors.Is(err, stop) {
		return 0, err
	}
	return found, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
