package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// The page: plain HTML, CSS and JavaScript, embedded in the binary. It
// loads nothing from anywhere else (no CDN, no font, no script), which
// its Content-Security-Policy enforces too.
//
//go:embed web/index.html web/console.css web/console.js
var web embed.FS

// maxEventStreams bounds the open GET /api/events streams: each costs a
// goroutine and a write per second, and a page opens one.
const maxEventStreams = 64

// requeueTimeout bounds a requeue (reading nsqd, publishing, removing).
const requeueTimeout = 2 * time.Minute

// server is the console's HTTP side, on the service's own HTTP server.
type server struct {
	col    *collector
	access DeadLetterAccess
	token  string // the operator's; "" = requeueing is off
	// openRead: the state is served without the token (--open-read).
	openRead bool
	log      *slog.Logger

	streams   atomic.Int64
	done      chan struct{} // closed at shutdown: the event streams end
	closeOnce sync.Once
}

func newServer(col *collector, access DeadLetterAccess, token string, openRead bool, log *slog.Logger) *server {
	return &server{col: col, access: access, token: token, openRead: openRead, log: log, done: make(chan struct{})}
}

// Mux is where the routes go (the service's *health.Server).
type Mux interface {
	Handle(pattern string, h http.Handler)
}

func (s *server) register(mux Mux) {
	mux.Handle("GET /{$}", asset("web/index.html"))
	mux.Handle("GET /console.css", asset("web/console.css"))
	mux.Handle("GET /console.js", asset("web/console.js"))
	mux.Handle("GET /api/state", s.reader(s.serveState))
	mux.Handle("GET /api/events", s.reader(s.serveEvents))
	mux.Handle("GET /api/lag-history", s.reader(s.serveLagHistory))
	mux.Handle("POST /api/deadletters/requeue", http.HandlerFunc(s.serveRequeue))
}

// close ends the event streams (the HTTP server's shutdown waits for
// them otherwise).
func (s *server) close() { s.closeOnce.Do(func() { close(s.done) }) }

// pageHeaders are the page's: nothing from elsewhere, not in a frame.
func pageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

func asset(name string) http.Handler {
	b, err := web.ReadFile(name)
	if err != nil {
		panic(err) // the embed directive names it: a build mistake
	}
	ctype := mime.TypeByExtension(name[strings.LastIndexByte(name, '.'):])
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		pageHeaders(w.Header())
		w.Header().Set("Content-Type", ctype)
		_, _ = w.Write(b)
	})
}

// reader admits the requests that may read the state: with the
// operator's token (Authorization: Bearer, never a cookie or the query
// string), or, with --open-read, any request whose Host is an address or
// localhost. The page and its assets hold no data and are served to
// anyone; the page asks for the token when the state is refused.
func (s *server) reader(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if why := crossSite(r); why != "" {
			refuse(w, http.StatusForbidden, why)
			return
		}
		if s.openRead {
			if why := rebound(r.Host); why != "" {
				refuse(w, http.StatusForbidden, why)
				return
			}
			h(w, r)
			return
		}
		if why := s.authorized(r); why != "" {
			refuse(w, http.StatusUnauthorized, why)
			return
		}
		h(w, r)
	})
}

// authorized says why r does not carry the operator's token ("" when it
// does).
func (s *server) authorized(r *http.Request) string {
	if r.URL.RawQuery != "" {
		return "nothing is taken from the query string: send the token as Authorization: Bearer <token>"
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return "the operator's token is required: Authorization: Bearer <token> (the console's --operator-token-file)"
	}
	if !sameSecret(tok, s.token) {
		return "wrong operator token"
	}
	return ""
}

// rebound says why a Host header is not one the open console answers
// ("" when it is): an IP address, or localhost. Any other name is
// refused, so that a page of another site, whose name its owner made
// resolve to the console's address (DNS rebinding), cannot read the
// state as if it were the console's own origin.
func rebound(host string) string {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if h == "" || net.ParseIP(h) != nil || strings.EqualFold(h, "localhost") {
		return ""
	}
	return "Host " + oneLine(host) + " refused: the open console (--open-read) answers requests to an address or localhost only"
}

// serveState is GET /api/state: the latest state.
func (s *server) serveState(w http.ResponseWriter, _ *http.Request) {
	b, _ := s.col.latest()
	serveJSON(w, b)
}

// serveJSON writes b, JSON encoded once by the collector; nil (nothing
// collected yet) is a 503.
func serveJSON(w http.ResponseWriter, b []byte) {
	if b == nil {
		http.Error(w, "no state collected yet", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}

// serveLagHistory is GET /api/lag-history: every consumer's lag over the
// last HistoryWindow, one point per HistoryBucket (its highest lag), for
// a page that has just connected; the page keeps the rest itself from the
// states that follow.
func (s *server) serveLagHistory(w http.ResponseWriter, _ *http.Request) {
	serveJSON(w, s.col.lagHistory())
}

// serveEvents is GET /api/events: server-sent events, a "state" event
// with the latest state whenever one is collected, and at least every
// Interval an event: the state, or, when a collection is late and there
// is nothing newer, "alive".
func (s *server) serveEvents(w http.ResponseWriter, r *http.Request) {
	if s.streams.Add(1) > maxEventStreams {
		s.streams.Add(-1)
		http.Error(w, "too many event streams open", http.StatusServiceUnavailable)
		return
	}
	defer s.streams.Add(-1)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// A reader that stopped reading must not hold the goroutine for ever.
	write := func(parts ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 2000\n\n")) {
		return
	}
	tick := time.NewTimer(Interval)
	defer tick.Stop()
	var sent []byte
	for {
		b, changed := s.col.latest()
		switch {
		case b == nil:
		case len(sent) > 0 && &sent[0] == &b[0]:
			// Nothing newer (a collection is late): a page is told the
			// console is alive rather than sent the same state again.
			if !write([]byte("event: alive\ndata: {}\n\n")) {
				return
			}
		default:
			if !write([]byte("event: state\ndata: "), b, []byte("\n\n")) {
				return
			}
			sent = b
		}
		tick.Reset(Interval)
		select {
		case <-changed:
		case <-tick.C:
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}

// requeueRequest is POST /api/deadletters/requeue's body.
type requeueRequest struct {
	Topic string `json:"topic"`
	// ID is a letter's id (as the state lists it), or "all" for every
	// dead letter of Topic ("" is refused).
	ID string `json:"id"`
}

// serveRequeue is POST /api/deadletters/requeue: it changes what nsqd
// and the services hold, so it needs the operator's token, given only in
// the Authorization header (never a cookie, which a browser would send
// from any site, nor the query string, which ends up in logs and
// history), and it refuses requests from another origin.
func (s *server) serveRequeue(w http.ResponseWriter, r *http.Request) {
	if why := crossSite(r); why != "" {
		refuse(w, http.StatusForbidden, why)
		return
	}
	if s.token == "" {
		refuse(w, http.StatusForbidden, "requeueing is off: the console was started without --operator-token-file (or --operator-token)")
		return
	}
	if why := s.authorized(r); why != "" {
		refuse(w, http.StatusUnauthorized, why)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		refuse(w, http.StatusUnsupportedMediaType, "want Content-Type: application/json")
		return
	}
	var req requeueRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		refuse(w, http.StatusBadRequest, "the body: want {\"topic\": T, \"id\": ID or \"all\"}: "+err.Error())
		return
	}
	if !nsq.IsValidTopicName(req.Topic) || !nsq.IsValidTopicName(deadletter.Topic(req.Topic)) {
		refuse(w, http.StatusBadRequest, fmt.Sprintf("topic %q: not a valid NSQ topic name (its .dead topic must fit 64 characters)", req.Topic))
		return
	}
	switch req.ID {
	case "":
		// Every letter of a topic is a deliberate choice: a body that
		// only forgot the id does not make it.
		refuse(w, http.StatusBadRequest, "the body names no letter: want {\"topic\": T, \"id\": a letter's id, or \"all\" for every dead letter of T}")
		return
	case "all":
		req.ID = ""
	}
	// Not the request's context: a requeue that published must go on to
	// delete what it sent back even if the browser went away, or the next
	// one would send it twice.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), requeueTimeout)
	defer cancel()
	res, err := s.requeue(ctx, req)
	switch {
	case errors.Is(err, ErrNoSuchLetter):
		refuse(w, http.StatusNotFound, fmt.Sprintf("topic %s has no dead letter %q (requeued or gone already?)", req.Topic, req.ID))
		return
	case err != nil:
		s.log.Warn("console: requeue failed", "topic", req.Topic, "id", req.ID, "err", err)
		refuse(w, http.StatusBadGateway, "requeue failed: "+oneLine(err.Error()))
		return
	}
	if res.Problems == nil {
		res.Problems = []string{}
	}
	s.log.Info("console: requeued dead letters", "topic", req.Topic, "id", req.ID, "requeued", res.Requeued,
		"from_nsqd", res.FromNSQD, "from_local", res.FromLocal, "problems", len(res.Problems))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(res)
}

// requeue runs one requeue, never while the collector reads the same
// letters in nsqd, and has the next collection read them again.
func (s *server) requeue(ctx context.Context, req requeueRequest) (RequeueResult, error) {
	if !s.col.dl.lock(ctx) {
		return RequeueResult{}, fmt.Errorf("waiting for the console's reading of %s: %w", deadletter.Topic(req.Topic), ctx.Err())
	}
	defer s.col.dl.unlock()
	defer s.col.forgetListing(req.Topic)
	return s.access.Requeue(ctx, req.Topic, req.ID)
}

// crossSite says why r comes from another site ("" when it does not): an
// Origin other than the console's own (scheme and host as the request
// reached it), or a browser's own word for it.
func crossSite(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return "cross-site request refused (Sec-Fetch-Site: " + site + ")"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return "" // not a browser's cross-origin request; the token decides
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != scheme || !strings.EqualFold(u.Host, r.Host) || u.Path != "" {
		return "cross-site request refused: Origin " + oneLine(origin) + " is not this console's (" + scheme + "://" + r.Host + ")"
	}
	return ""
}

// sameSecret compares in constant time, whatever the lengths.
func sameSecret(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// refuse answers with a status and a one-line reason.
func refuse(w http.ResponseWriter, status int, why string) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, oneLine(why)+"\n")
}

func oneLine(s string) string {
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\r", " "), "\n", " ")
	if len(s) > 500 {
		s = s[:499] + "…"
	}
	return s
}
