package replay

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/svckit/svckit/internal/sharedsecret"
	"github.com/svckit/svckit/svckit/retainlog"
)

// FramesContentType is the media type of a replay response: a sequence of
// frames, each u32 big-endian length then that many bytes of envelope.
const FramesContentType = "application/x-svckit-frames"

// DamagedTrailer is the HTTP trailer of a replay response that could not
// serve some sequences of the range because the disk damaged them
// ("first-last,first-last"): every other frame was sent.
const DamagedTrailer = "Svckit-Damaged"

// AcceptDamagedHeader is the request header ("1") by which a replay client
// says it reads DamagedTrailer. A client that does not send it (one from
// before damage was reported) gets 410 Gone for a range with known damage,
// which it answers with a snapshot, as for a trimmed range.
const AcceptDamagedHeader = "Svckit-Accept-Damaged"

// ErrDamaged: some sequences asked for were damaged on the owner's disk
// (see DamagedError). They are not coming back: recover through a snapshot.
var ErrDamaged = errors.New("damaged on the owner's disk: recover from a snapshot")

// DamagedError is a replay that delivered every frame it could; the
// sequences in Ranges ([first, last]) were damaged on the owner's disk.
// errors.Is(err, ErrDamaged) holds.
type DamagedError struct {
	Stream string
	Ranges [][2]uint64
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("stream %s: sequences %s: %v", e.Stream, retainlog.FormatRanges(e.Ranges), ErrDamaged)
}

func (e *DamagedError) Unwrap() error { return ErrDamaged }

// Source is what a Server serves the replay protocol from: an Owner (its
// own stream) or a stage's relay (every stream its upstream has, through
// the stage's transform).
type Source interface {
	// Streams lists the streams served and their positions.
	Streams(ctx context.Context) ([]Status, error)
	// Replay emits stream's frames (encoded envelopes) in sequence order:
	// [from, to], or from the first at or after since (when not zero) to
	// the end. It fails with ErrUnknown, ErrNeverHad or ErrGone before it
	// emits anything when the range cannot be served, and returns a
	// *DamagedError after every other frame when some were damaged.
	Replay(ctx context.Context, stream string, from, to uint64, since time.Time, emit func(frame []byte) error) error
	// Snapshot is the stream's fold over 1..seq (ErrNoSnapshot if the
	// source offers none, ErrUnknown for a stream it does not serve).
	Snapshot(ctx context.Context, stream string) (seq uint64, state []byte, err error)
}

// ErrNoSnapshot: the source offers no snapshot of the stream (HTTP 501).
var ErrNoSnapshot = errors.New("no snapshot offered (501)")

// Server serves the replay protocol: GET /streams, /replay, /snapshot, for
// the owners added to it and, for every other stream, its relay if it has
// one.
type Server struct {
	mu      sync.RWMutex
	owners  map[string]*Owner
	relay   Source
	secret  string
	verify  *sharedsecret.Verifier // nil without a secret
	metrics *Metrics
	// relayed is the damage relayed replays reported, per stream (a few
	// ranges each): a client that cannot read the trailer gets 410 for it.
	relayed map[string][][2]uint64
}

// NewServer serves owners. With a non-empty secret every request must be
// signed with it (Client does: "Authorization: Svckit-HMAC ...", each
// signature accepted once, within 5 minutes of this host's clock), and
// every answer to a signed request proves that it comes from this server,
// status and body (Svckit-Proof, and a replay's frames each tagged), which
// Client checks. "Authorization: Bearer <secret>" is refused: it would
// send the secret in clear. See package internal/sharedsecret.
func NewServer(secret string, m *Metrics, owners ...*Owner) *Server {
	s := &Server{owners: map[string]*Owner{}, secret: secret, metrics: m, relayed: map[string][][2]uint64{}}
	if secret != "" {
		s.verify = sharedsecret.NewVerifier(secret)
	}
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

// SetRelay serves every stream no owner of this server has from r (a
// stage's relay).
func (s *Server) SetRelay(r Source) {
	s.mu.Lock()
	s.relay = r
	s.mu.Unlock()
}

// source is what serves stream.
func (s *Server) source(stream string) Source {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if o, ok := s.owners[stream]; ok {
		return ownerSource{o}
	}
	if s.relay != nil {
		return s.relay
	}
	return ownerSource{}
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

// auth admits the requests signed with the secret (or carrying it as a
// Bearer token) and proves the secret to the signed ones' clients.
func (s *Server) auth(h http.HandlerFunc) http.Handler {
	if s.verify == nil {
		return h
	}
	return s.verify.Protect("replay", h)
}

// RequireSecret is middleware for a service's own endpoints that show its
// streams' data (a tracker's /streams, an application's state): with a
// non-empty secret, h answers only requests signed with it (as Client and
// svckit probe sign them) and not meant for another service than audience
// (the service's Consul name), and proves its answers to their clients,
// exactly as Server's endpoints do. An empty secret returns h unchanged.
func RequireSecret(secret, audience string, h http.Handler) http.Handler {
	if secret == "" {
		return h
	}
	v := sharedsecret.NewVerifier(secret)
	v.Audience = audience
	return v.Protect("unauthorized", h)
}

// SetAudience makes the server refuse requests signed for another service
// than name (its Consul service name): a request passed on to it from
// another holder of the secret gets no answer. Call it before serving.
func (s *Server) SetAudience(name string) {
	if s.verify != nil {
		s.verify.Audience = name
	}
}

func (s *Server) serveStreams(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	out := make([]Status, 0, len(s.owners))
	for _, o := range s.owners {
		out = append(out, o.Status())
	}
	relay := s.relay
	s.mu.RUnlock()
	if relay != nil {
		more, err := relay.Streams(r.Context())
		if err != nil {
			http.Error(w, "replay: "+err.Error(), http.StatusBadGateway)
			return
		}
		out = append(out, more...)
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Stream, b.Stream) })
	writeJSON(w, out)
}

// httpError answers err with the protocol's status for it.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrUnknown):
		code = http.StatusNotFound
	case errors.Is(err, ErrNeverHad):
		code = http.StatusRequestedRangeNotSatisfiable
	case errors.Is(err, ErrGone):
		code = http.StatusGone
	case errors.Is(err, ErrNoSnapshot):
		code = http.StatusNotImplemented
	case errors.Is(err, ErrUnauthorized):
		code = http.StatusBadGateway // the upstream refused this relay's secret
	case errors.Is(err, ErrUpstreamUnproven):
		code = http.StatusBadGateway // this relay's upstream is not one
	}
	http.Error(w, "replay: "+err.Error(), code)
}

func (s *Server) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("stream")
	seq, state, err := s.source(id).Snapshot(r.Context(), id)
	if err != nil {
		httpError(w, err)
		return
	}
	writeJSON(w, snapshotFile{Stream: id, Seq: seq, State: state})
}

func (s *Server) serveReplay(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := q.Get("stream")
	var from, to uint64
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			http.Error(w, "replay: since: want an RFC 3339 time", http.StatusBadRequest)
			return
		}
		since = t
	} else {
		var err1, err2 error
		from, err1 = strconv.ParseUint(q.Get("from"), 10, 64)
		to, err2 = strconv.ParseUint(q.Get("to"), 10, 64)
		if err1 != nil || err2 != nil || from == 0 || to < from {
			http.Error(w, "replay: want from and to with 1 <= from <= to, or since=<RFC 3339 time>", http.StatusBadRequest)
			return
		}
	}
	legacy := r.Header.Get(AcceptDamagedHeader) == ""
	if legacy && since.IsZero() {
		if rs := s.knownDamage(id, from, to); len(rs) > 0 {
			httpError(w, fmt.Errorf("%w: sequences %s were damaged on the owner's disk", ErrGone, retainlog.FormatRanges(rs)))
			return
		}
	}
	// Declared before the body: a damaged range is named after it.
	w.Header().Set("Trailer", DamagedTrailer)
	// To a signed request: every frame followed by its tag (a stream
	// cannot be held and proven whole).
	tags := sharedsecret.StreamOf(w)
	bw := bufio.NewWriterSize(w, 256<<10)
	var hdr [4]byte
	var n, bytes uint64
	started := false
	err := s.source(id).Replay(r.Context(), id, from, to, since, func(frame []byte) error {
		if !started {
			started = true
			w.Header().Set("Content-Type", FramesContentType)
		}
		binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))
		if _, err := bw.Write(hdr[:]); err != nil {
			return err
		}
		_, err := bw.Write(frame)
		n++
		bytes += uint64(len(frame)) + 4
		if err == nil && tags != nil {
			_, err = bw.Write(tags.Tag(frame))
			bytes += sharedsecret.TagSize
		}
		return err
	})
	var damaged *DamagedError
	if errors.As(err, &damaged) {
		s.learnDamage(id, damaged.Ranges)
	}
	if damaged != nil && legacy {
		// Damage found during this replay, for a client that cannot read
		// the trailer: 410 while nothing reached the wire yet, else the
		// response is cut, as before, and asked again, it gets 410 above.
		if flushed := bytes - uint64(bw.Buffered()); !started || flushed == 0 {
			httpError(w, fmt.Errorf("%w: %v", ErrGone, err))
			return
		}
		panic(http.ErrAbortHandler)
	}
	reported := ""
	if errors.As(err, &damaged) {
		// Every frame that could be served was: name what could not.
		reported = retainlog.FormatRanges(damaged.Ranges)
		w.Header().Set(DamagedTrailer, reported)
		err = nil
	}
	if err == nil {
		if !started {
			w.Header().Set("Content-Type", FramesContentType)
		}
		if tags != nil {
			// The end record: the stream is whole, and the damage it
			// reports is the server's.
			var end [4]byte
			if _, err = bw.Write(end[:]); err == nil {
				_, err = bw.Write(tags.EndTag(reported))
			}
		}
		if err == nil {
			err = bw.Flush()
		}
	}
	s.metrics.ServedMessages.Add(float64(n))
	s.metrics.ServedBytes.Add(float64(bytes))
	if err != nil && !started {
		httpError(w, err)
		return
	}
	if err != nil {
		// Mid-stream failure: abort the connection so the client sees a
		// truncated response instead of a short one that looks complete.
		panic(http.ErrAbortHandler)
	}
}

// maxRelayedDamage bounds the relayed damage remembered: ranges per stream,
// and streams.
const maxRelayedDamage = 64

// learnDamage remembers damage a relayed replay of stream reported.
func (s *Server) learnDamage(stream string, ranges [][2]uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, known := s.relayed[stream]
	if _, own := s.owners[stream]; own || (!known && len(s.relayed) >= maxRelayedDamage) {
		return // the owner's log knows it; or many streams: a legacy client retries
	}
	for _, r := range ranges {
		if !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	s.relayed[stream] = rs[max(0, len(rs)-maxRelayedDamage):]
}

// knownDamage is the damage this server knows in stream within [from,
// to]: its owner's log's, or what relayed replays reported.
func (s *Server) knownDamage(stream string, from, to uint64) [][2]uint64 {
	s.mu.RLock()
	o := s.owners[stream]
	rs := slices.Clone(s.relayed[stream])
	s.mu.RUnlock()
	if o != nil {
		rs = o.Log().DamagedRanges()
	}
	var out [][2]uint64
	for _, r := range rs {
		if r[1] >= from && r[0] <= to {
			out = append(out, [2]uint64{max(r[0], from), min(r[1], to)})
		}
	}
	return out
}

// ownerSource serves an Owner's stream (nil: a stream nobody here has).
type ownerSource struct{ o *Owner }

func (s ownerSource) Streams(context.Context) ([]Status, error) {
	if s.o == nil {
		return nil, nil
	}
	return []Status{s.o.Status()}, nil
}

func (s ownerSource) Snapshot(_ context.Context, stream string) (uint64, []byte, error) {
	if s.o == nil {
		return 0, nil, fmt.Errorf("%w: %q", ErrUnknown, stream)
	}
	return s.o.Snapshot()
}

func (s ownerSource) Replay(ctx context.Context, stream string, from, to uint64, since time.Time, emit func([]byte) error) error {
	if s.o == nil {
		return fmt.Errorf("%w: %q", ErrUnknown, stream)
	}
	log := s.o.Log()
	// Only what is durable (Status.LastSeq): a record a consumer applied
	// must survive a power loss, or its sequence number would be handed
	// out again.
	last := s.o.Status().LastSeq
	if !since.IsZero() {
		first, err := firstSince(ctx, log, since)
		if err != nil || first == 0 || first > last {
			return err // nothing retained since then
		}
		from, to = first, last
	}
	switch {
	case from > last:
		return fmt.Errorf("%w: stream %q has no sequence %d (last is %d)", ErrNeverHad, stream, from, last)
	case log.LastSeq() == 0 || from < log.FirstSeq():
		return fmt.Errorf("%w: stream %q no longer retains sequence %d (retained from %d): use a snapshot", ErrGone, stream, from, log.FirstSeq())
	}
	err := log.Read(ctx, from, min(to, last), func(rec retainlog.Record) error { return emit(rec.Data) })
	var damaged *retainlog.DamagedError
	switch {
	case errors.Is(err, retainlog.ErrTrimmed):
		return fmt.Errorf("%w: %v", ErrGone, err) // retention ran between the check and the read
	case errors.As(err, &damaged):
		return &DamagedError{Stream: stream, Ranges: damaged.Ranges}
	}
	return err
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
	var damaged *retainlog.DamagedError
	if err != nil && !errors.Is(err, stop) && !errors.As(err, &damaged) {
		return 0, err
	}
	return found, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
