package sharedsecret

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const secret = "open sesame"

// signed is a GET of uri signed with secret, and its nonce.
func signed(t *testing.T, method, uri, secret string) (*http.Request, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://owner.invalid"+uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	nonce, err := Sign(req, secret)
	if err != nil {
		t.Fatal(err)
	}
	return req, nonce
}

// arrived is the server's view of req sent as method uri (the headers as
// sent): a request the test can alter on the way.
func arrived(req *http.Request, method, uri string) *http.Request {
	r := httptest.NewRequest(method, uri, nil)
	r.Header = req.Header.Clone()
	return r
}

// params splits a signed request's Authorization into its parameters.
func params(t *testing.T, req *http.Request) map[string]string {
	t.Helper()
	scheme, rest, _ := strings.Cut(req.Header.Get("Authorization"), " ")
	if scheme != Scheme {
		t.Fatalf("scheme %q, want %s", scheme, Scheme)
	}
	m := map[string]string{}
	for p := range strings.SplitSeq(rest, ",") {
		k, v, _ := strings.Cut(p, "=")
		m[k] = v
	}
	return m
}

// setParam replaces one parameter of req's signature.
func setParam(t *testing.T, req *http.Request, key, val string) {
	t.Helper()
	m := params(t, req)
	m[key] = val
	req.Header.Set("Authorization", fmt.Sprintf("%s ts=%s,nonce=%s,mac=%s", Scheme, m["ts"], m["nonce"], m["mac"]))
}

func TestRoundTrip(t *testing.T) {
	const uri = "/replay?from=1&stream=sensor-1&to=500"
	req, nonce := signed(t, http.MethodGet, uri, secret)
	auth := req.Header.Get("Authorization")
	if strings.Contains(auth, secret) || !strings.HasPrefix(auth, Scheme+" ts=") {
		t.Fatalf("Authorization %q", auth)
	}
	if p := params(t, req); p["nonce"] != nonce || len(nonce) != 22 {
		t.Fatalf("nonce %q, header's %q", nonce, p["nonce"])
	}
	v := NewVerifier(secret)
	got, err := v.Verify(arrived(req, http.MethodGet, uri))
	if err != nil || got != nonce {
		t.Fatalf("Verify = %q, %v; want %q", got, err, nonce)
	}
	if _, err := CheckAnswer(answered(nonce, secret, 200, "x"), nonce, secret); err != nil {
		t.Fatalf("CheckAnswer: %v", err)
	}
	// Two signatures of the same request differ: a fresh nonce each.
	req2, nonce2 := signed(t, http.MethodGet, uri, secret)
	if nonce2 == nonce || req2.Header.Get("Authorization") == auth {
		t.Fatal("two signatures of the same request are equal")
	}
}

// TestRoundTripOverHTTP: the URI the client signs is the one the server
// sees, escapes included.
func TestRoundTripOverHTTP(t *testing.T) {
	v := NewVerifier(secret)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce, err := v.Verify(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		a := NewAnswer(w, nonce, secret)
		a.WriteHeader(http.StatusNoContent)
		a.Finish()
	}))
	defer srv.Close()
	u := url.URL{Scheme: "http", Host: strings.TrimPrefix(srv.URL, "http://"), Path: "/deadletters/a b/ü%x",
		RawQuery: url.Values{"topic": {"a&b c"}, "x": {"é/?"}}.Encode()}
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		req, _ := http.NewRequest(method, u.String(), nil)
		nonce, err := Sign(req, secret)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("%s %s: HTTP %d", method, u.String(), resp.StatusCode)
		}
		if _, err := CheckAnswer(resp, nonce, secret); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		resp.Body.Close()
	}
}

func TestTamperedRefused(t *testing.T) {
	const uri = "/replay?from=1&stream=s&to=5"
	cases := []struct {
		name   string
		method string
		uri    string
		alter  func(t *testing.T, req *http.Request)
	}{
		{"path", http.MethodGet, "/snapshot?from=1&stream=s&to=5", nil},
		{"query", http.MethodGet, "/replay?from=1&stream=s&to=6", nil},
		{"query order", http.MethodGet, "/replay?stream=s&from=1&to=5", nil},
		{"method", http.MethodDelete, uri, nil},
		{"ts", http.MethodGet, uri, func(t *testing.T, req *http.Request) {
			ts, _ := strconv.ParseInt(params(t, req)["ts"], 10, 64)
			setParam(t, req, "ts", strconv.FormatInt(ts-1, 10))
		}},
		{"nonce", http.MethodGet, uri, func(t *testing.T, req *http.Request) {
			_, other := signed(t, http.MethodGet, uri, secret)
			setParam(t, req, "nonce", other)
		}},
		{"mac", http.MethodGet, uri, func(t *testing.T, req *http.Request) {
			mac := []byte(params(t, req)["mac"])
			if mac[3] == 'A' { // another base64url digit
				mac[3] = 'B'
			} else {
				mac[3] = 'A'
			}
			setParam(t, req, "mac", string(mac))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := signed(t, http.MethodGet, uri, secret)
			if c.alter != nil {
				c.alter(t, req)
			}
			if _, err := NewVerifier(secret).Verify(arrived(req, c.method, c.uri)); !errors.Is(err, ErrWrongSecret) {
				t.Fatalf("Verify = %v, want ErrWrongSecret", err)
			}
		})
	}
}

func TestWrongSecretRefused(t *testing.T) {
	req, _ := signed(t, http.MethodGet, "/streams", "not the secret")
	if _, err := NewVerifier(secret).Verify(arrived(req, http.MethodGet, "/streams")); !errors.Is(err, ErrWrongSecret) {
		t.Fatalf("Verify = %v, want ErrWrongSecret", err)
	}
	// A verifier without a secret refuses everything, even a request
	// signed with "" by hand.
	if _, err := NewVerifier("").Verify(arrived(req, http.MethodGet, "/streams")); err == nil {
		t.Fatal("a verifier without a secret accepted a request")
	}
	if _, err := Sign(req, ""); err == nil {
		t.Fatal("Sign with no secret succeeded")
	}
}

func TestTimestampWindow(t *testing.T) {
	for _, c := range []struct {
		name  string
		shift time.Duration // of the server's clock
		ok    bool
	}{
		{"stale", Window + 2*time.Second, false},
		{"future", -Window - 2*time.Second, false},
		{"late within", Window - 2*time.Second, true},
		{"early within", -Window + 2*time.Second, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := signed(t, http.MethodGet, "/streams", secret)
			v := NewVerifier(secret)
			v.Now = func() time.Time { return time.Now().Add(c.shift) }
			_, err := v.Verify(arrived(req, http.MethodGet, "/streams"))
			if c.ok && err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if !c.ok && !errors.Is(err, ErrStale) {
				t.Fatalf("Verify = %v, want ErrStale", err)
			}
		})
	}
}

func TestReusedNonceRefused(t *testing.T) {
	v := NewVerifier(secret)
	req, _ := signed(t, http.MethodGet, "/streams", secret)
	if _, err := v.Verify(arrived(req, http.MethodGet, "/streams")); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(arrived(req, http.MethodGet, "/streams")); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second Verify = %v, want ErrReplayed", err)
	}
}

func TestBearer(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/streams", nil)
	r.Header.Set("Authorization", "Bearer "+secret)
	// Refused unless allowed: it sends the secret in clear.
	if _, err := NewVerifier(secret).Verify(r); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "Bearer is refused") {
		t.Fatalf("Verify(Bearer) by default: %v, want it refused", err)
	}
	v := NewVerifier(secret)
	v.AllowBearer = true
	if nonce, err := v.Verify(r); err != nil || nonce != "" {
		t.Fatalf("Verify(Bearer) = %q, %v; want \"\", nil", nonce, err)
	}
	// Used again: a Bearer request has no nonce to remember.
	if _, err := v.Verify(r); err != nil {
		t.Fatalf("Verify(Bearer) again: %v", err)
	}
	w := httptest.NewRecorder()
	v.Protect("t", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })).ServeHTTP(w, r)
	if got := w.Header().Get(ProofHeader); w.Code != 200 || got != "" {
		t.Fatalf("a Bearer request's answer: HTTP %d, proof %q; want 200 without a proof", w.Code, got)
	}
	for _, auth := range []string{"Bearer wrong", "Bearer " + secret + "x", "Bearer", "Bearer  " + secret, "Basic " + secret, secret} {
		r.Header.Set("Authorization", auth)
		if _, err := v.Verify(r); err == nil {
			t.Errorf("Verify(%q) accepted", auth)
		}
	}
	r.Header.Del("Authorization")
	if _, err := v.Verify(r); !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("no Authorization: %v, want ErrNoCredentials", err)
	}
}

func TestMalformedRefused(t *testing.T) {
	req, _ := signed(t, http.MethodGet, "/streams", secret)
	p := params(t, req)
	for _, auth := range []string{
		Scheme,
		Scheme + " ",
		Scheme + " ts=" + p["ts"] + ",nonce=" + p["nonce"],
		Scheme + " ts=" + p["ts"] + ",nonce=" + p["nonce"] + ",mac=" + p["mac"] + ",mac=" + p["mac"],
		Scheme + " ts=" + p["ts"] + ",nonce=" + p["nonce"] + ",mac=" + p["mac"] + ",extra=1",
		Scheme + " ts=" + p["ts"] + ",nonce=" + p["nonce"] + "AAAA,mac=" + p["mac"],
		Scheme + " ts=" + p["ts"] + ",nonce=" + p["nonce"] + ",mac=***",
	} {
		r := arrived(req, http.MethodGet, "/streams")
		r.Header.Set("Authorization", auth)
		if _, err := NewVerifier(secret).Verify(r); !errors.Is(err, ErrMalformed) {
			t.Errorf("Verify(%q) = %v, want ErrMalformed", auth, err)
		}
	}
	// Parameters in another order, with spaces, are fine.
	r := arrived(req, http.MethodGet, "/streams")
	r.Header.Set("Authorization", Scheme+" mac="+p["mac"]+", nonce="+p["nonce"]+", ts="+p["ts"])
	if _, err := NewVerifier(secret).Verify(r); err != nil {
		t.Fatalf("reordered: %v", err)
	}
}

// answered is the answer an Answer makes of status and body, to the
// request that carried nonce.
func answered(nonce, secret string, status int, body string) *http.Response {
	w := httptest.NewRecorder()
	a := NewAnswer(w, nonce, secret)
	a.WriteHeader(status)
	a.Write([]byte(body))
	a.Finish()
	return w.Result()
}

// TestCheckAnswerRefuses: a proof made for another secret, nonce, status
// or body, or none, is refused; only the right one passes.
func TestCheckAnswerRefuses(t *testing.T) {
	_, nonce := signed(t, http.MethodGet, "/streams", secret)
	answer := func(proof string) *http.Response {
		resp := answered(nonce, secret, 200, "x")
		resp.Header.Del(ProofHeader)
		if proof != "" {
			resp.Header.Set(ProofHeader, proof)
		}
		return resp
	}
	right := answered(nonce, secret, 200, "x").Header.Get(ProofHeader)
	_, nonce2 := signed(t, http.MethodGet, "/streams", secret)
	for name, proof := range map[string]string{
		"missing":          "",
		"wrong secret":     answered(nonce, "not the secret", 200, "x").Header.Get(ProofHeader),
		"another nonce's":  answered(nonce2, secret, 200, "x").Header.Get(ProofHeader),
		"another status's": answered(nonce, secret, 410, "x").Header.Get(ProofHeader),
		"not base64":       "!!!",
		"truncated":        right[:len(right)-2],
		"the nonce":        nonce,
	} {
		_, err := CheckAnswer(answer(proof), nonce, secret)
		if !errors.Is(err, ErrUnproven) || !strings.Contains(err.Error(), "does not know the shared secret") {
			t.Errorf("%s proof: %v, want ErrUnproven", name, err)
		}
	}
	// The body's proof (the trailer) of another body, or none: refused.
	for name, trailer := range map[string]string{
		"another body's": answered(nonce, secret, 200, "y").Trailer.Get(BodyProofTrailer),
		"none":           "",
	} {
		resp := answer(right)
		resp.Trailer.Del(BodyProofTrailer)
		if trailer != "" {
			resp.Trailer.Set(BodyProofTrailer, trailer)
		}
		if _, err := CheckAnswer(resp, nonce, secret); !errors.Is(err, ErrUnproven) {
			t.Errorf("%s body proof: %v, want ErrUnproven", name, err)
		}
	}
	resp := answer(right)
	if _, err := CheckAnswer(resp, nonce, secret); err != nil {
		t.Fatalf("right proof: %v", err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "x" {
		t.Fatalf("the proven body reads %q", b)
	}
	if _, err := CheckAnswer(answer(right), "", secret); err == nil {
		t.Fatal("CheckAnswer without a nonce succeeded")
	}
}

// TestFrames: every frame of a stream carries its tag; a frame altered,
// dropped, repeated or reordered fails its check.
func TestFrames(t *testing.T) {
	_, nonce := signed(t, http.MethodGet, "/replay", secret)
	w := httptest.NewRecorder()
	a := NewAnswer(w, nonce, secret)
	tags := StreamOf(a)
	if tags == nil {
		t.Fatal("StreamOf an Answer is nil")
	}
	frames := [][]byte{[]byte("one"), []byte("two"), []byte("three")}
	var sent [][]byte
	for _, f := range frames {
		a.Write(f)
		sent = append(sent, bytes.Clone(tags.Tag(f)))
	}
	a.Finish()
	resp := w.Result()
	check, err := CheckAnswer(resp, nonce, secret)
	if err != nil || check == nil {
		t.Fatalf("CheckAnswer of a stream: %v, %v", check, err)
	}
	for i, f := range frames {
		if err := check.Check(f, sent[i]); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	for name, order := range map[string][]int{"reordered": {1, 0, 2}, "dropped": {0, 2}, "repeated": {0, 0, 1}} {
		check := newFrames(secret, nonce)
		var err error
		for _, i := range order {
			if err = check.Check(frames[i], sent[i]); err != nil {
				break
			}
		}
		if !errors.Is(err, ErrUnproven) {
			t.Errorf("%s frames: %v, want ErrUnproven", name, err)
		}
	}
	if err := newFrames(secret, nonce).Check([]byte("oNe"), sent[0]); !errors.Is(err, ErrUnproven) {
		t.Errorf("an altered frame: %v, want ErrUnproven", err)
	}
	// The stream's mark is in the proof: stripped, the answer is refused.
	resp = w.Result()
	resp.Header.Del(FramesHeader)
	if _, err := CheckAnswer(resp, nonce, secret); !errors.Is(err, ErrUnproven) {
		t.Errorf("a stream passed off as a body: %v, want ErrUnproven", err)
	}
	// Not an Answer (no secret, a Bearer request): no tags.
	if StreamOf(httptest.NewRecorder()) != nil {
		t.Error("StreamOf a plain ResponseWriter is not nil")
	}
}

// TestConcurrentVerify (run with -race): every signed request is accepted
// once, whichever goroutine sees it, and its copy is refused.
func TestConcurrentVerify(t *testing.T) {
	v := NewVerifier(secret)
	const workers, each = 8, 200
	reqs := make([]*http.Request, workers*each)
	for i := range reqs {
		reqs[i], _ = signed(t, http.MethodGet, "/replay?stream=s&from="+strconv.Itoa(i+1)+"&to=9999", secret)
	}
	var accepted, replayed sync.Map
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range reqs {
				// Each request reaches two workers: one accepts it.
				if i%workers != w && (i+1)%workers != w {
					continue
				}
				r := arrived(reqs[i], http.MethodGet, reqs[i].URL.RequestURI())
				nonce, err := v.Verify(r)
				switch {
				case err == nil:
					if _, dup := accepted.LoadOrStore(nonce, true); dup {
						t.Errorf("nonce %s accepted twice", nonce)
					}
				case errors.Is(err, ErrReplayed):
					replayed.Store(i, true)
				default:
					t.Errorf("request %d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
	var na, nr int
	accepted.Range(func(any, any) bool { na++; return true })
	replayed.Range(func(any, any) bool { nr++; return true })
	if na != len(reqs) || nr != len(reqs) {
		t.Fatalf("accepted %d, refused as replayed %d; want %d each", na, nr, len(reqs))
	}
}

// signedAt is a GET of uri signed with secret as if at ts.
func signedAt(t *testing.T, uri string, ts time.Time) *http.Request {
	t.Helper()
	req, _ := signed(t, http.MethodGet, uri, secret)
	p := params(t, req)
	sec := strconv.FormatInt(ts.Unix(), 10)
	setParam(t, req, "ts", sec)
	setParam(t, req, "mac", b64.EncodeToString(requestMAC(secret, http.MethodGet, uri, sec, p["nonce"], req.Header)))
	return req
}

// TestNonceCap: at the cap new requests are refused (a live nonce is never
// forgotten early), and once the window passes the expired nonces go.
func TestNonceCap(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	now := t0
	v := NewVerifier(secret)
	v.MaxNonces = 3
	v.Now = func() time.Time { return now }
	verify := func(req *http.Request) error {
		_, err := v.Verify(arrived(req, http.MethodGet, "/streams"))
		return err
	}
	remembered := func() int {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.seen)
	}
	first := signedAt(t, "/streams", t0)
	if err := verify(first); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := verify(signedAt(t, "/streams", t0)); err != nil {
			t.Fatal(err)
		}
	}
	err := verify(signedAt(t, "/streams", t0))
	if !errors.Is(err, ErrTooManyNonces) {
		t.Fatalf("over the cap: %v, want ErrTooManyNonces", err)
	}
	// The first request is still refused as replayed: not forgotten.
	if err := verify(first); !errors.Is(err, ErrReplayed) {
		t.Fatalf("first request again at the cap: %v, want ErrReplayed", err)
	}
	// Just before their window ends, they are still live.
	now = t0.Add(Window)
	if err := verify(signedAt(t, "/streams", now)); !errors.Is(err, ErrTooManyNonces) {
		t.Fatalf("at the window's end: %v, want ErrTooManyNonces", err)
	}
	// Past the window, the old nonces are dropped: room again, and the
	// first request is refused as stale instead.
	now = t0.Add(Window + time.Second)
	if err := verify(signedAt(t, "/streams", now)); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if n := remembered(); n != 1 {
		t.Fatalf("after the window, %d nonces remembered, want 1 (the expired ones dropped)", n)
	}
	if err := verify(first); !errors.Is(err, ErrStale) {
		t.Fatalf("first request after the window: %v, want ErrStale", err)
	}
}

// TestSignedHeadersAndAudience: the Svckit-* headers are signed (none can
// be added, changed or stripped), and a server refuses a request signed
// for another service.
func TestSignedHeadersAndAudience(t *testing.T) {
	const uri = "/snapshot?stream=s"
	req, _ := http.NewRequest(http.MethodGet, "http://x"+uri, nil)
	req.Header.Set(AudienceHeader, "worker")
	req.Header.Set("Svckit-Accept-Damaged", "1")
	if _, err := Sign(req, secret); err != nil {
		t.Fatal(err)
	}
	worker := NewVerifier(secret)
	worker.Audience = "worker"
	if _, err := worker.Verify(arrived(req, http.MethodGet, uri)); err != nil {
		t.Fatalf("the worker refused a request for it: %v", err)
	}
	sensor := NewVerifier(secret)
	sensor.Audience = "sensor"
	if _, err := sensor.Verify(arrived(req, http.MethodGet, uri)); !errors.Is(err, ErrWrongAudience) {
		t.Fatalf("the sensor, given the worker's request: %v, want ErrWrongAudience", err)
	}
	for name, change := range map[string]func(h http.Header){
		"audience changed": func(h http.Header) { h.Set(AudienceHeader, "sensor") },
		"audience removed": func(h http.Header) { h.Del(AudienceHeader) },
		"a header removed": func(h http.Header) { h.Del("Svckit-Accept-Damaged") },
		"a header added":   func(h http.Header) { h.Set("Svckit-Other", "1") },
	} {
		r := arrived(req, http.MethodGet, uri)
		change(r.Header)
		if _, err := NewVerifier(secret).Verify(r); !errors.Is(err, ErrWrongSecret) {
			t.Errorf("%s: %v, want ErrWrongSecret", name, err)
		}
	}
}
