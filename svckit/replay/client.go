package replay

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/svckit/svckit/internal/sharedsecret"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// Errors of a replay request, by the owner's answer.
var (
	ErrGone         = errors.New("range no longer retained by the owner (410): recover from a snapshot")
	ErrNeverHad     = errors.New("the owner never had this sequence (416)")
	ErrUnknown      = errors.New("the owner does not know this stream (404)")
	ErrUnauthorized = errors.New("the owner refused the shared secret (401)")
	// ErrUpstreamUnproven: the server that answered did not prove that it
	// knows the shared secret (Client.Secret), so nothing of its answer
	// was taken: an impostor, or a server run without the secret. Like an
	// unreachable upstream, it is worth asking again later (a Tracker
	// logs it and backs off), and nothing it sent was applied.
	ErrUpstreamUnproven = errors.New("the upstream did not prove that it knows the shared secret: its answer was not taken")
)

// Request is one replay request: [From, To], or everything since Since.
type Request struct {
	Stream string
	From   uint64
	To     uint64
	Since  time.Time // if set, From and To are ignored
}

// Client speaks the consumer side of the replay protocol.
type Client struct {
	HTTP *http.Client // nil = http.DefaultClient
	// Secret, if set, signs every request (the secret itself is never
	// sent), and every answer must prove that its server knows it, or the
	// call fails with ErrUpstreamUnproven before anything is read from it.
	Secret string
	// Audience is the Consul service name of the servers asked, signed
	// into every request: a server of another name refuses it (a stage
	// and its upstream serve the same paths).
	Audience string
}

// Replay streams the requested range from the owner at addr (host:port of
// its HTTP server) and calls fn for each envelope with its frame size. The
// envelope's payload is only valid during fn. It returns the number of
// frames, and a *DamagedError (after every frame) when the owner could not
// serve some sequences of the range because its disk damaged them.
func (c Client) Replay(ctx context.Context, addr string, r Request, fn func(envelope.Envelope, int) error) (uint64, error) {
	return c.ReplayFrames(ctx, addr, r, func(env envelope.Envelope, frame []byte) error { return fn(env, len(frame)+4) })
}

// ReplayFrames is Replay handing fn each frame's bytes (the encoded
// envelope, only valid during fn) instead of its size.
func (c Client) ReplayFrames(ctx context.Context, addr string, r Request, fn func(envelope.Envelope, []byte) error) (uint64, error) {
	q := url.Values{"stream": {r.Stream}}
	if !r.Since.IsZero() {
		q.Set("since", r.Since.UTC().Format(time.RFC3339Nano))
	} else {
		q.Set("from", strconv.FormatUint(r.From, 10))
		q.Set("to", strconv.FormatUint(r.To, 10))
	}
	resp, tags, err := c.get(ctx, addr, "/replay", q, http.Header{AcceptDamagedHeader: {"1"}})
	if err != nil {
		return 0, err
	}
	if c.Secret != "" && tags == nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		return 0, fmt.Errorf("%w: %s answered /replay without tagged frames", ErrUpstreamUnproven, addr)
	}
	var tag [sharedsecret.TagSize]byte
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return 0, fmt.Errorf("replay of %s: %w", r.Stream, err)
	}
	br := bufio.NewReaderSize(resp.Body, 256<<10)
	var hdr [4]byte
	buf := make([]byte, 0, 4096)
	var n uint64
	// One stream: its id (and the few content types) interned, not a new
	// string per frame. A cache per replay, so bounded small: each string
	// it takes copies its map.
	dec := envelope.Decoder{Strings: &envelope.StringCache{Max: 16}}
	var endTag []byte // the end record's, once read
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) {
				return n, fmt.Errorf("replay of %s: reading frame: %w", r.Stream, err)
			}
			if tags != nil {
				// Only the server's end record says the stream is whole,
				// and vouches for the damage its trailer reports.
				if endTag == nil {
					return n, fmt.Errorf("%w: %s: replay of %s cut short (no end record)", ErrUpstreamUnproven, addr, r.Stream)
				}
				if err := tags.CheckEnd(resp.Trailer.Get(DamagedTrailer), endTag); err != nil {
					return n, fmt.Errorf("%w: %s: replay of %s: %v", ErrUpstreamUnproven, addr, r.Stream, err)
				}
			}
			return n, damagedTrailer(r.Stream, resp)
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size == 0 && tags != nil && endTag == nil {
			endTag = make([]byte, sharedsecret.TagSize)
			if _, err := io.ReadFull(br, endTag); err != nil {
				return n, fmt.Errorf("replay of %s: reading the end record: %w", r.Stream, err)
			}
			continue
		}
		if endTag != nil {
			return n, fmt.Errorf("%w: %s: replay of %s: a frame after the end record", ErrUpstreamUnproven, addr, r.Stream)
		}
		if size > 64<<20 {
			return n, fmt.Errorf("replay of %s: frame of %d bytes", r.Stream, size)
		}
		if cap(buf) < int(size) {
			buf = make([]byte, size)
		}
		buf = buf[:size]
		if _, err := io.ReadFull(br, buf); err != nil {
			return n, fmt.Errorf("replay of %s: reading frame: %w", r.Stream, err)
		}
		if tags != nil {
			// Nothing of a frame is used before its tag is checked.
			if _, err := io.ReadFull(br, tag[:]); err != nil {
				return n, fmt.Errorf("replay of %s: reading frame's tag: %w", r.Stream, err)
			}
			if err := tags.Check(buf, tag[:]); err != nil {
				return n, fmt.Errorf("%w: %s: replay of %s: %v", ErrUpstreamUnproven, addr, r.Stream, err)
			}
		}
		env, err := dec.Decode(buf)
		if err != nil {
			return n, fmt.Errorf("replay of %s: %w", r.Stream, err)
		}
		if env.Stream != r.Stream || (r.Since.IsZero() && (env.Seq < r.From || env.Seq > r.To)) {
			return n, fmt.Errorf("replay of %s: got (%s, %d) outside the request", r.Stream, env.Stream, env.Seq)
		}
		if err := fn(env, buf); err != nil {
			return n, err
		}
		n++
	}
}

// damagedTrailer reads the trailer of a replay response read to its end.
func damagedTrailer(stream string, resp *http.Response) error {
	v := resp.Trailer.Get(DamagedTrailer)
	if v == "" {
		return nil
	}
	ranges, err := retainlog.ParseRanges(v)
	if err != nil {
		return fmt.Errorf("replay of %s: %s trailer: %w", stream, DamagedTrailer, err)
	}
	return &DamagedError{Stream: stream, Ranges: ranges}
}

// Get performs an authenticated GET on the owner: signed with the secret,
// and its answer proven to come from a holder of it (else
// ErrUpstreamUnproven).
func (c Client) Get(ctx context.Context, addr, path string, q url.Values) (*http.Response, error) {
	resp, tags, err := c.get(ctx, addr, path, q, nil)
	if err == nil && tags != nil {
		// A stream of tagged frames: only ReplayFrames reads those.
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s from %s: a stream of frames (use ReplayFrames)", path, addr)
	}
	return resp, err
}

// get performs the request; with a secret, it signs it and checks the
// answer (mustProve): a whole body is read and proven before it is
// returned, a stream of frames comes with the Frames that checks each.
func (c Client) get(ctx context.Context, addr, path string, q url.Values, h http.Header) (*http.Response, *sharedsecret.Frames, error) {
	u := "http://" + addr + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if c.Audience != "" {
		req.Header.Set(sharedsecret.AudienceHeader, c.Audience)
	}
	var nonce string
	if c.Secret != "" {
		// A signature, not the secret: whoever answers must not learn it.
		if nonce, err = sharedsecret.Sign(req, c.Secret); err != nil {
			return nil, nil, fmt.Errorf("GET %s from %s: %w", path, addr, err)
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil || nonce == "" || !mustProve(resp.StatusCode) {
		return resp, nil, err
	}
	tags, err := sharedsecret.CheckAnswer(resp, nonce, c.Secret)
	if err != nil {
		// Nothing of it is read: not a frame, a snapshot, a position,
		// nor a verdict such as 410 (which would send a tracker to a
		// snapshot).
		resp.Body.Close()
		return nil, nil, fmt.Errorf("%w: %s answered GET %s with HTTP %d: %v", ErrUpstreamUnproven, addr, path, resp.StatusCode, err)
	}
	return resp, tags, nil
}

// mustProve reports whether an answer with this status must prove the
// secret before the client takes it: every answer something is taken
// from, a body or a verdict statusError turns into a sentinel callers act
// on (410 sends a tracker to a snapshot, 501 has it stop asking for one).
// Not 401: the server refused the request, so it has no nonce it accepted
// to prove, and an impostor's 401 only makes the caller try again later.
// Nor the other 5xx: failures (a proxy's, perhaps) the caller only
// reports, as it would an unreachable upstream.
func mustProve(status int) bool {
	return status != http.StatusUnauthorized && (status < 500 || status == http.StatusNotImplemented)
}

func statusError(resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	var base error
	switch resp.StatusCode {
	case http.StatusGone:
		base = ErrGone
	case http.StatusRequestedRangeNotSatisfiable:
		base = ErrNeverHad
	case http.StatusNotFound:
		base = ErrUnknown
	case http.StatusUnauthorized:
		base = ErrUnauthorized
	case http.StatusNotImplemented:
		base = ErrNoSnapshot
	default:
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, msg)
	}
	return fmt.Errorf("%w: %s", base, msg)
}

// Streams asks the replay server at addr for the streams it serves.
func (c Client) Streams(ctx context.Context, addr string) ([]Status, error) {
	var st []Status
	if err := c.getJSON(ctx, addr, "/streams", nil, &st); err != nil {
		return nil, err
	}
	return st, nil
}

// Snapshot asks the replay server at addr for its snapshot of stream: the
// fold over 1..seq (ErrNoSnapshot when it offers none).
func (c Client) Snapshot(ctx context.Context, addr, stream string) (uint64, []byte, error) {
	var snap snapshotFile
	if err := c.getJSON(ctx, addr, "/snapshot", url.Values{"stream": {stream}}, &snap); err != nil {
		return 0, nil, err
	}
	return snap.Seq, snap.State, nil
}

func (c Client) getJSON(ctx context.Context, addr, path string, q url.Values, v any) error {
	resp, err := c.Get(ctx, addr, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: decoding the answer: %w", path, err)
	}
	return nil
}
