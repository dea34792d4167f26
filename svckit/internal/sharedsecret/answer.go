package sharedsecret

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
)

// An answer's proof binds what the client takes from it, not only the
// nonce: otherwise anything a client dials that can pass its signed request
// on to a real holder of the secret (a man in the middle, a stale address
// in the catalog) could copy the real answer's proof onto a body of its
// own. The proof is
//
//	HMAC-SHA256(secret, "svckit-response\n" + nonce + "\n" + status + "\n" + mode + "\n" + digest)
//
// where, for an answer held until complete (mode "body"), digest is the
// hex SHA-256 of the whole body; for a stream of frames (mode "frames",
// the replay), digest is empty and every frame is followed by its tag,
//
//	HMAC-SHA256(HMAC-SHA256(secret, "svckit-frames\n" + nonce), index ‖ frame)[:TagSize]
//
// (index: the frame's number from 0, 8 bytes big-endian), so that no frame
// can be changed, dropped from the middle, reordered or added. A stream cut
// short is a shorter answer, which the client sees as such.
const (
	// FramesHeader marks a streamed answer whose frames carry tags; the
	// proof covers it (a stream cannot pass for a whole body).
	FramesHeader = "Svckit-Frames"
	// TagSize is the size of a frame's tag.
	TagSize = 16
	// MaxBody bounds an answer held in memory to be proven whole.
	MaxBody = 64 << 20
)

func answerMAC(secret, nonce string, status int, mode, digest string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-response\n" + nonce + "\n" + strconv.Itoa(status) + "\n" + mode + "\n" + digest))
	return m.Sum(nil)
}

func framesKey(secret, nonce string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-frames\n" + nonce))
	return m.Sum(nil)
}

// Frames tags (server) or checks (client) the frames of one answer, in
// order.
type Frames struct {
	mac hash.Hash
	n   uint64
	buf [sha256.Size]byte
}

func newFrames(secret, nonce string) *Frames {
	return &Frames{mac: hmac.New(sha256.New, framesKey(secret, nonce))}
}

func (f *Frames) tag(frame []byte) []byte {
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], f.n)
	f.n++
	f.mac.Reset()
	f.mac.Write(idx[:])
	f.mac.Write(frame)
	return f.mac.Sum(f.buf[:0])[:TagSize]
}

// Tag is the tag to send after frame (the next one of the answer).
func (f *Frames) Tag(frame []byte) []byte { return f.tag(frame) }

// Check checks the tag that followed frame (the next one of the answer).
func (f *Frames) Check(frame, tag []byte) error {
	if !hmac.Equal(f.tag(frame), tag) {
		return fmt.Errorf("%w: frame %d's tag is wrong (altered, reordered or not from the server)", ErrUnproven, f.n-1)
	}
	return nil
}

// Answer is the ResponseWriter a protected handler writes its answer to a
// signed request through: it holds the body until the handler returns and
// then sends it with its proof, or, after Stream, proves the status and
// tags each frame.
type Answer struct {
	w      http.ResponseWriter
	secret string
	nonce  string
	status int
	body   bytes.Buffer
	frames *Frames // after Stream
	sent   bool    // the header went out
	err    error   // the body grew beyond MaxBody
}

// NewAnswer wraps w for the answer to the request that carried nonce.
func NewAnswer(w http.ResponseWriter, nonce, secret string) *Answer {
	return &Answer{w: w, secret: secret, nonce: nonce}
}

func (a *Answer) Header() http.Header { return a.w.Header() }

func (a *Answer) WriteHeader(status int) {
	if a.status != 0 {
		return
	}
	a.status = status
	if a.frames != nil {
		a.sendHeader("frames", "")
	}
}

func (a *Answer) Write(b []byte) (int, error) {
	if a.status == 0 {
		a.WriteHeader(http.StatusOK)
	}
	if a.frames != nil {
		return a.w.Write(b)
	}
	if a.body.Len()+len(b) > MaxBody {
		a.err = fmt.Errorf("answer larger than %d bytes cannot be proven whole", MaxBody)
		return 0, a.err
	}
	return a.body.Write(b)
}

func (a *Answer) sendHeader(mode, digest string) {
	a.sent = true
	if mode == "frames" {
		a.w.Header().Set(FramesHeader, "tagged")
	}
	a.w.Header().Set(ProofHeader, b64.EncodeToString(answerMAC(a.secret, a.nonce, a.status, mode, digest)))
	a.w.WriteHeader(a.status)
}

// Stream makes the answer a stream of frames, before anything is written:
// the status is proven as it goes out, and the caller sends after every
// frame the tag the returned Frames gives it. The answer's Flush then
// flushes what was written.
func (a *Answer) Stream() *Frames {
	if a.frames == nil && a.status == 0 {
		a.frames = newFrames(a.secret, a.nonce)
	}
	return a.frames
}

// Flush sends what a stream has written so far (a held body waits for
// Finish).
func (a *Answer) Flush() {
	if a.frames != nil && a.sent {
		if f, ok := a.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// Unwrap is the underlying writer (http.ResponseController).
func (a *Answer) Unwrap() http.ResponseWriter { return a.w }

// Finish sends a held body with its proof; the handler has returned.
func (a *Answer) Finish() {
	if a.sent {
		return
	}
	if a.status == 0 {
		a.status = http.StatusOK
	}
	if a.err != nil {
		a.status = http.StatusInternalServerError
		a.body.Reset()
		a.body.WriteString(a.err.Error() + "\n")
		a.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	if a.frames != nil {
		a.sendHeader("frames", "")
		return
	}
	sum := sha256.Sum256(a.body.Bytes())
	a.w.Header().Set("Content-Length", strconv.Itoa(a.body.Len()))
	a.sendHeader("body", hex.EncodeToString(sum[:]))
	_, _ = a.w.Write(a.body.Bytes())
}

// StreamOf is the Frames of w when w is the Answer to a signed request
// (nil otherwise: no secret, or a Bearer request, whose answer has no
// proof).
func StreamOf(w http.ResponseWriter) *Frames {
	if a, ok := w.(*Answer); ok {
		return a.Stream()
	}
	return nil
}

// CheckAnswer checks that resp, the answer to a request Sign signed with
// nonce, comes from a holder of secret, status and body: a whole body is
// read (at most MaxBody) and checked, and resp.Body then reads it from
// memory; a stream of frames gets the Frames that checks each frame's tag.
// The error wraps ErrUnproven.
func CheckAnswer(resp *http.Response, nonce, secret string) (*Frames, error) {
	if nonce == "" {
		return nil, errors.New("checking the answer's proof: the request was not signed (no nonce)")
	}
	got := resp.Header.Get(ProofHeader)
	if got == "" {
		return nil, fmt.Errorf("%w: the answer has no %s header", ErrUnproven, ProofHeader)
	}
	mac, err := b64.DecodeString(got)
	if err != nil {
		return nil, fmt.Errorf("%w: malformed %s", ErrUnproven, ProofHeader)
	}
	if resp.Header.Get(FramesHeader) == "tagged" {
		if !hmac.Equal(mac, answerMAC(secret, nonce, resp.StatusCode, "frames", "")) {
			return nil, fmt.Errorf("%w: wrong %s", ErrUnproven, ProofHeader)
		}
		return newFrames(secret, nonce), nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the answer to prove it: %w", err)
	}
	if len(body) > MaxBody {
		return nil, fmt.Errorf("%w: answer larger than %d bytes", ErrUnproven, MaxBody)
	}
	sum := sha256.Sum256(body)
	if !hmac.Equal(mac, answerMAC(secret, nonce, resp.StatusCode, "body", hex.EncodeToString(sum[:]))) {
		return nil, fmt.Errorf("%w: wrong %s for this status and body", ErrUnproven, ProofHeader)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return nil, nil
}

// Protect admits to h the requests v verifies and proves h's answers to
// the signed ones (through an Answer). A request v refuses gets 401 (503
// when it is authentic but cannot be remembered); what names the API in
// the refusal. A Bearer request's answer is h's, unproven.
func (v *Verifier) Protect(what string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce, err := v.Verify(r)
		if errors.Is(err, ErrTooManyNonces) {
			// Authentic, but it cannot be remembered: come back later.
			w.Header().Set("Retry-After", "5")
			http.Error(w, what+": "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err != nil {
			http.Error(w, what+": unauthorized: "+err.Error(), http.StatusUnauthorized)
			return
		}
		if nonce == "" {
			h.ServeHTTP(w, r)
			return
		}
		a := NewAnswer(w, nonce, string(v.secret))
		h.ServeHTTP(a, r)
		a.Finish()
	})
}
