// Package sharedsecret authenticates svckit's HTTP APIs between processes
// that share a secret (the replay protocol, the dead-letter store), both
// ways, without the secret ever crossing the network.
//
// A client signs each request (Sign):
//
//	Authorization: Svckit-HMAC ts=<unix seconds>,nonce=<base64url of 16 random bytes>,mac=<base64url MAC>
//	MAC = HMAC-SHA256(secret, "svckit-request\n" + METHOD + "\n" + request URI + "\n" + ts + "\n" + nonce)
//
// The server (Verifier) recomputes the MAC, accepts a timestamp within
// Window of its clock and each nonce once, and answers with a proof that
// binds the nonce, the status and the body (Answer, Protect; answer.go),
// which the client checks (CheckAnswer) before it takes anything from the
// answer: neither an upstream that does not know the secret nor someone
// on the path can make one, so a consumer never applies what they send.
//
// What this does not give: confidentiality (the bodies still travel in
// clear). The host is not part of the MAC: within Window, a captured
// request can be sent once to each other server that shares the secret.
//
// A Verifier accepts "Authorization: Bearer <secret>" only when told to
// (AllowBearer): it sends the secret in clear, and its answer carries no
// proof.
package sharedsecret

import (
	"container/heap"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// Scheme is the Authorization scheme of a signed request.
	Scheme = "Svckit-HMAC"
	// ProofHeader is the response header by which a server proves it
	// knows the secret.
	ProofHeader = "Svckit-Proof"
	// Window is how far a request's timestamp may be from the server's
	// clock, either way: the hosts' clocks must agree within it (NTP), and
	// a nonce is remembered for as long as its timestamp is acceptable.
	Window = 5 * time.Minute
	// DefaultMaxNonces bounds the nonces a Verifier remembers (a few MB):
	// over 300 signed requests a second, for a whole Window.
	DefaultMaxNonces = 100_000
	// nonceBytes is the size of a nonce before encoding.
	nonceBytes = 16
)

// Why a request is refused (Verify) or an answer not trusted (CheckProof).
var (
	ErrNoCredentials = errors.New("no Authorization header: a shared secret is required")
	ErrMalformed     = errors.New("malformed " + Scheme + " authorization")
	ErrWrongSecret   = errors.New("wrong shared secret, or the request was altered on the way")
	ErrStale         = errors.New("request timestamp outside the allowed window (are the clocks in sync?)")
	ErrReplayed      = errors.New("nonce already used: a replayed request")
	// ErrTooManyNonces: the Verifier remembers MaxNonces nonces still in
	// their window; forgetting one would let its request be replayed, so
	// new requests are refused until some expire.
	ErrTooManyNonces = errors.New("too many signed requests within the window: refusing more until older ones expire")
	// ErrUnproven: the answer does not prove that the server knows the
	// shared secret.
	ErrUnproven = errors.New("the server does not know the shared secret")
)

var b64 = base64.RawURLEncoding

// Sign sets req's Authorization header to a signature of its method and
// request URI by secret, and returns the nonce to check the answer's proof
// against (CheckProof). The secret itself is not sent.
func Sign(req *http.Request, secret string) (nonce string, err error) {
	if secret == "" {
		return "", errors.New("signing a request: no shared secret")
	}
	if req == nil || req.URL == nil {
		return "", errors.New("signing a request: no request URL")
	}
	var raw [nonceBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("signing a request: drawing a nonce: %w", err)
	}
	nonce = b64.EncodeToString(raw[:])
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	mac := requestMAC(secret, req.Method, req.URL.RequestURI(), ts, nonce, req.Header)
	req.Header.Set("Authorization", Scheme+" ts="+ts+",nonce="+nonce+",mac="+b64.EncodeToString(mac))
	return nonce, nil
}

// requestMAC is what a signed request's mac is the encoding of: its
// method, URI, time, nonce and every Svckit-* header (the audience, what
// the client accepts), so that none of them can be added, changed or
// stripped on the way.
func requestMAC(secret, method, uri, ts, nonce string, h http.Header) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("svckit-request\n" + method + "\n" + uri + "\n" + ts + "\n" + nonce))
	var names []string
	for k := range h {
		if strings.HasPrefix(strings.ToLower(k), "svckit-") {
			names = append(names, strings.ToLower(k))
		}
	}
	slices.Sort(names)
	for _, k := range names {
		m.Write([]byte("\n" + k + ":" + strings.Join(h.Values(k), ",")))
	}
	return m.Sum(nil)
}

// AudienceHeader names the service a signed request is for (its Consul
// service name); it is signed with the request, and a Verifier of another
// service refuses it: a request passed on to another holder of the secret
// (a stage's upstream serves the same URIs) gets no answer.
const AudienceHeader = "Svckit-Audience"

// ErrWrongAudience: the request is for another service.
var ErrWrongAudience = errors.New("the request is for another service")

// Verifier checks the requests signed with its secret. It is safe for
// concurrent use; set its fields before the first Verify.
type Verifier struct {
	// Now is the server's clock (nil: time.Now); tests move it.
	Now func() time.Time
	// MaxNonces bounds the nonces remembered (0: DefaultMaxNonces).
	MaxNonces int
	// Audience is this server's service name: a request naming another
	// (AudienceHeader) is refused. Empty: not checked.
	Audience string
	// AllowBearer accepts "Authorization: Bearer <secret>", which sends
	// the secret in clear and gets no proof back (off: svckit probe signs).
	AllowBearer bool

	secret []byte
	bearer [sha256.Size]byte // of "the secret", for a length-blind compare

	mu   sync.Mutex
	seen map[string]struct{}
	byTS expiries // the same nonces, the first to expire on top
}

// NewVerifier checks requests against secret. With an empty secret it
// refuses every request: an unset secret must not mean "anyone".
func NewVerifier(secret string) *Verifier {
	return &Verifier{secret: []byte(secret), bearer: sha256.Sum256([]byte(secret)), seen: map[string]struct{}{}}
}

// Verify checks r's Authorization: a signature by the secret, of this
// method and request URI, with a timestamp within Window and a nonce not
// seen before, whose nonce it returns for Prove; or the legacy "Bearer
// <secret>", for which the nonce is "".
func (v *Verifier) Verify(r *http.Request) (nonce string, err error) {
	if len(v.secret) == 0 {
		return "", errors.New("no shared secret configured: refusing every request")
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return "", ErrNoCredentials
	}
	scheme, params, _ := strings.Cut(auth, " ")
	switch {
	case strings.EqualFold(scheme, "Bearer") && !v.AllowBearer:
		return "", fmt.Errorf("%w: Bearer is refused (it sends the secret in clear): sign the request (svckit probe does)", ErrMalformed)
	case strings.EqualFold(scheme, "Bearer"):
		// Hashed first: the comparison then takes the same time whatever
		// the length of what was sent.
		got := sha256.Sum256([]byte(params))
		if subtle.ConstantTimeCompare(got[:], v.bearer[:]) != 1 {
			return "", fmt.Errorf("bearer: %w", ErrWrongSecret)
		}
		return "", nil
	case !strings.EqualFold(scheme, Scheme):
		return "", fmt.Errorf("%w: unknown scheme %q (want %s or Bearer)", ErrMalformed, scheme, Scheme)
	}
	ts, nonce, mac, err := parseParams(params)
	if err != nil {
		return "", err
	}
	// The MAC first: what follows only ever judges, and remembers,
	// requests from a holder of the secret.
	want := requestMAC(string(v.secret), r.Method, requestURI(r), ts, nonce, r.Header)
	if !hmac.Equal(mac, want) {
		return "", ErrWrongSecret
	}
	if a := r.Header.Get(AudienceHeader); a != "" && v.Audience != "" && a != v.Audience {
		return "", fmt.Errorf("%w: %q, this is %q", ErrWrongAudience, a, v.Audience)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: ts %q is not a number of seconds", ErrMalformed, ts)
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	t := time.Unix(sec, 0)
	if skew := now().Sub(t); skew > Window || skew < -Window {
		return "", fmt.Errorf("%w: %s from the server's clock, allowed ±%s", ErrStale, skew.Round(time.Second), Window)
	}
	if err := v.remember(nonce, t.Add(Window), now()); err != nil {
		return "", err
	}
	return nonce, nil
}

// requestURI is the request target as the client sent, and so signed, it.
// r.RequestURI is the raw one, untouched by handlers that rewrite r.URL
// (http.StripPrefix); r.URL's is the fallback for a request made in
// process, or sent in absolute form through a proxy.
func requestURI(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// parseParams splits "ts=…,nonce=…,mac=…" (any order, each once).
func parseParams(s string) (ts, nonce string, mac []byte, err error) {
	var macText string
	got := map[string]*string{"ts": &ts, "nonce": &nonce, "mac": &macText}
	seen := map[string]bool{}
	for p := range strings.SplitSeq(s, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		dst := got[k]
		if !ok || dst == nil || seen[k] || val == "" {
			return "", "", nil, fmt.Errorf("%w: bad or repeated parameter %q (want ts, nonce and mac once each)", ErrMalformed, p)
		}
		seen[k] = true
		*dst = val
	}
	if len(seen) != len(got) {
		return "", "", nil, fmt.Errorf("%w: want ts, nonce and mac", ErrMalformed)
	}
	// A nonce is exactly what Sign draws: what is remembered of each
	// request stays small.
	if raw, err := b64.DecodeString(nonce); err != nil || len(raw) != nonceBytes {
		return "", "", nil, fmt.Errorf("%w: nonce is not base64url of %d bytes", ErrMalformed, nonceBytes)
	}
	if mac, err = b64.DecodeString(macText); err != nil {
		return "", "", nil, fmt.Errorf("%w: mac is not base64url", ErrMalformed)
	}
	return ts, nonce, mac, nil
}

// remember records nonce, whose request is acceptable until until, unless
// it was seen already.
func (v *Verifier) remember(nonce string, until, now time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	// Forget what expired: its timestamp is out of the window now, so the
	// request would be refused as stale anyway.
	for len(v.byTS) > 0 && v.byTS[0].at.Before(now) {
		delete(v.seen, heap.Pop(&v.byTS).(expiry).nonce)
	}
	if _, ok := v.seen[nonce]; ok {
		return ErrReplayed
	}
	limit := v.MaxNonces
	if limit <= 0 {
		limit = DefaultMaxNonces
	}
	if len(v.seen) >= limit {
		return fmt.Errorf("%w (%d remembered)", ErrTooManyNonces, len(v.seen))
	}
	v.seen[nonce] = struct{}{}
	heap.Push(&v.byTS, expiry{at: until, nonce: nonce})
	return nil
}

// expiry is when a remembered nonce may be forgotten.
type expiry struct {
	at    time.Time
	nonce string
}

// expiries is a min-heap by time (container/heap).
type expiries []expiry

func (h expiries) Len() int           { return len(h) }
func (h expiries) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiries) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiries) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiries) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = expiry{} // the nonce string is not kept alive
	*h = old[:len(old)-1]
	return x
}
