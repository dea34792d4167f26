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
// on to a real holder of the secret (someone on the path, a stale address
// in the catalog) could copy the real answer's proof onto a body of its
// own. The header
//
//	Svckit-Proof = HMAC-SHA256(secret, "svckit-response\n" + nonce + "\n" + status + "\n" + mode)
//
// proves the status and how the body is proven (mode). A body ("body"
// mode) is streamed and its SHA-256 proven in the trailer,
//
//	Svckit-Body-Proof = HMAC-SHA256(secret, "svckit-body\n" + nonce + "\n" + hex digest)
//
// which the client checks, having read the body whole, before it takes
// anything of it. A replay ("frames" mode) is used frame by frame instead:
// every frame is followed by its tag,
//
//	HMAC-SHA256(K, index ‖ frame)[:TagSize], K = HMAC-SHA256(secret, "svckit-frames\n" + nonce)
//
// (index: the frame's number from 0, 8 bytes big-endian), checked before
// the frame is handed on, and the stream ends with an end record (a frame
// length of 0 and the tag of index ‖ "end" ‖ the Svckit-Damaged trailer's
// value): no frame can be changed, dropped, reordered or added, a stream
// cut short is seen as such, and the damage the server reports is its own.
const (
	// FramesHeader marks a streamed answer whose frames carry tags; the
	// proof covers it (a stream cannot pass for a body).
	FramesHeader = "Svckit-Frames"
	// BodyProofTrailer carries the proof of a body's bytes.
	BodyProofTrailer = "Svckit-Body-Proof"
	// TagSize is the size of a frame's tag.
	TagSize = 16
	// MaxBody bounds a body a client holds to prove it whole.
	MaxBody = 1 << 30
)

func answerMAC(secret, nonce string, status int, mode string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-response\n" + nonce + "\n" + strconv.Itoa(status) + "\n" + mode))
	return m.Sum(nil)
}

func bodyMAC(secret, nonce string, digest []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-body\n" + nonce + "\n" + hex.EncodeToString(digest)))
	return m.Sum(nil)
}

func framesKey(secret, nonce string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-frames\n" + nonce))
	return m.Sum(nil)
}

// Frames tags (server) or checks (client) the frames of one answer, in
// order, and its end.
type Frames struct {
	mac hash.Hash
	n   uint64
	buf [sha256.Size]byte
}

func newFrames(secret, nonce string) *Frames {
	return &Frames{mac: hmac.New(sha256.New, framesKey(secret, nonce))}
}

func (f *Frames) sum(parts ...[]byte) []byte {
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], f.n)
	f.n++
	f.mac.Reset()
	f.mac.Write(idx[:])
	for _, p := range parts {
		f.mac.Write(p)
	}
	return f.mac.Sum(f.buf[:0])[:TagSize]
}

// Tag is the tag to send after frame (the next one of the answer).
func (f *Frames) Tag(frame []byte) []byte { return f.sum(frame) }

// Check checks the tag that followed frame (the next one of the answer).
func (f *Frames) Check(frame, tag []byte) error {
	if !hmac.Equal(f.sum(frame), tag) {
		return fmt.Errorf("%w: frame %d's tag is wrong (altered, reordered or not from the server)", ErrUnproven, f.n-1)
	}
	return nil
}

var endMark = []byte("\xffend\n")

// EndTag is the tag of the end record, after the last frame, for the
// damage the answer reports (its Svckit-Damaged trailer, "" for none).
func (f *Frames) EndTag(damaged string) []byte { return f.sum(endMark, []byte(damaged)) }

// CheckEnd checks the end record's tag against the damage reported.
func (f *Frames) CheckEnd(damaged string, tag []byte) error {
	if !hmac.Equal(f.sum(endMark, []byte(damaged)), tag) {
		return fmt.Errorf("%w: the end of the stream (or the damage it reports) is not the server's", ErrUnproven)
	}
	return nil
}

// Answer is the ResponseWriter a protected handler writes its answer to a
// signed request through: it proves the status as it goes out and the
// body's bytes in a trailer, or, after Stream, proves the status and
// leaves tagging the frames to the caller.
type Answer struct {
	w      http.ResponseWriter
	secret string
	nonce  string
	frames *Frames // after Stream
	sent   bool    // the header went out
	status int
	digest hash.Hash
}

// bodyAllowed reports whether an answer with status may have a body (and
// so a trailer).
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// NewAnswer wraps w for the answer to the request that carried nonce.
func NewAnswer(w http.ResponseWriter, nonce, secret string) *Answer {
	return &Answer{w: w, secret: secret, nonce: nonce, digest: sha256.New()}
}

func (a *Answer) Header() http.Header { return a.w.Header() }

func (a *Answer) WriteHeader(status int) {
	if a.sent {
		return
	}
	a.sent, a.status = true, status
	h := a.w.Header()
	mode := "body"
	switch {
	case a.frames != nil:
		mode = "frames"
		h.Set(FramesHeader, "tagged")
	case !bodyAllowed(status):
		// No body, so no trailer: the status is all there is to prove.
		mode = "empty"
	default:
		// A trailer needs a chunked body: no length given up front.
		h.Del("Content-Length")
		h.Add("Trailer", BodyProofTrailer)
	}
	h.Set(ProofHeader, b64.EncodeToString(answerMAC(a.secret, a.nonce, status, mode)))
	a.w.WriteHeader(status)
}

func (a *Answer) Write(b []byte) (int, error) {
	if !a.sent {
		a.WriteHeader(http.StatusOK)
	}
	if a.frames == nil {
		a.digest.Write(b)
	}
	return a.w.Write(b)
}

// Stream makes the answer a stream of frames, before anything is written:
// the status is proven as it goes out, and the caller sends after every
// frame the tag the returned Frames gives it, and an end record last.
func (a *Answer) Stream() *Frames {
	if a.frames == nil && !a.sent {
		a.frames = newFrames(a.secret, a.nonce)
	}
	return a.frames
}

// Flush sends what was written so far.
func (a *Answer) Flush() {
	if f, ok := a.w.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap is the underlying writer (http.ResponseController).
func (a *Answer) Unwrap() http.ResponseWriter { return a.w }

// Finish ends the answer, once the handler returned: a body's proof goes
// in the trailer.
func (a *Answer) Finish() {
	if !a.sent {
		a.WriteHeader(http.StatusOK)
	}
	if a.frames == nil && bodyAllowed(a.status) {
		a.w.Header().Set(BodyProofTrailer, b64.EncodeToString(bodyMAC(a.secret, a.nonce, a.digest.Sum(nil))))
	}
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
// nonce, comes from a holder of secret, status and body: a body is read
// whole (at most MaxBody) and checked against its trailer, and resp.Body
// then reads it from memory; a stream of frames gets the Frames that
// checks each frame's tag and the end record. The error wraps ErrUnproven.
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
	mode := "body"
	switch {
	case resp.Header.Get(FramesHeader) == "tagged":
		mode = "frames"
	case !bodyAllowed(resp.StatusCode):
		mode = "empty"
	}
	if !hmac.Equal(mac, answerMAC(secret, nonce, resp.StatusCode, mode)) {
		return nil, fmt.Errorf("%w: wrong %s", ErrUnproven, ProofHeader)
	}
	switch mode {
	case "frames":
		return newFrames(secret, nonce), nil
	case "empty":
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the answer to prove it: %w", err)
	}
	if len(body) > MaxBody {
		return nil, fmt.Errorf("%w: answer larger than %d bytes", ErrUnproven, MaxBody)
	}
	proof, err := b64.DecodeString(resp.Trailer.Get(BodyProofTrailer))
	if err != nil || len(proof) == 0 {
		return nil, fmt.Errorf("%w: the body has no (or a malformed) %s trailer: cut short, or not the server's", ErrUnproven, BodyProofTrailer)
	}
	sum := sha256.Sum256(body)
	if !hmac.Equal(proof, bodyMAC(secret, nonce, sum[:])) {
		return nil, fmt.Errorf("%w: wrong %s for this body", ErrUnproven, BodyProofTrailer)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return nil, nil
}

// Protect admits to h the requests v verifies and proves h's answers to
// the signed ones (through an Answer). A request v refuses gets 401 (503
// when it is authentic but cannot be remembered); what names the API in
// the refusal. A Bearer request (AllowBearer) gets h's answer, unproven.
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
