package deadletter

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/svckit/svckit/internal/sharedsecret/sharedsecrettest"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/svckit/svckit/internal/sharedsecret"
)

// httpSecret is distinctive: a test looks for its bytes on the wire.
const httpSecret = "dl-s3cr3t-Sesame-4242"

// exchange is what a server was sent, and its answer's status and headers.
type exchange struct {
	Method, RequestURI, URL string
	Header                  http.Header
	Status                  int
	Answer                  http.Header
}

// wire wraps a handler and keeps every exchange.
type wire struct {
	mu  sync.Mutex
	got []exchange
	h   http.Handler
}

func (wr *wire) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := httptest.NewRecorder()
	wr.h.ServeHTTP(rw, r)
	for k, v := range rw.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rw.Code)
	_, _ = w.Write(rw.Body.Bytes())
	wr.mu.Lock()
	wr.got = append(wr.got, exchange{r.Method, r.RequestURI, r.URL.String(), r.Header.Clone(), rw.Code, rw.Header().Clone()})
	wr.mu.Unlock()
}

func (wr *wire) all() []exchange {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return append([]exchange(nil), wr.got...)
}

func secretOnWire(s string) bool {
	for _, enc := range []string{httpSecret, base64.StdEncoding.EncodeToString([]byte(httpSecret)),
		base64.RawURLEncoding.EncodeToString([]byte(httpSecret)), fmt.Sprintf("%x", httpSecret)} {
		if strings.Contains(s, enc) {
			return true
		}
	}
	return false
}

// TestHTTPClientRefusesImpostor: the CLI's client takes nothing from a
// service that cannot prove it knows the secret: not a list, not a letter,
// not that a DELETE happened; and that service never learns the secret.
func TestHTTPClientRefusesImpostor(t *testing.T) {
	letter, err := sampleLetter([]byte("forged")).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	status := 0 // what the impostor answers everything with, if set
	wr := &wire{h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case status != 0:
			http.Error(w, "whatever", status)
		case r.Method == http.MethodGet && r.URL.Path == PathPrefix:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode([]Info{{ID: "x", Size: 6, Stored: StoredLocal}})
		case r.Method == http.MethodGet:
			w.Header().Set("Content-Type", ContentType)
			_, _ = w.Write(letter)
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		}
	})}
	srv := httptest.NewServer(wr)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	c := Client{Secret: httpSecret}
	if list, err := c.List(ctx, addr, "orders"); !errors.Is(err, ErrServerUnproven) || list != nil {
		t.Errorf("List from an impostor = %+v, %v; want ErrServerUnproven", list, err)
	}
	if l, err := c.Get(ctx, addr, "orders", "x"); !errors.Is(err, ErrServerUnproven) || l.Original != nil {
		t.Errorf("Get from an impostor = %+v, %v; want ErrServerUnproven", l, err)
	}
	if err := c.Delete(ctx, addr, "orders", "x"); !errors.Is(err, ErrServerUnproven) {
		t.Errorf("Delete at an impostor: %v; want ErrServerUnproven", err)
	} else if !strings.Contains(err.Error(), addr) {
		t.Errorf("the error does not name the service %s: %v", addr, err)
	}
	// Nor its verdicts: a 404 would say the letter is gone.
	status = http.StatusNotFound
	if err := c.Delete(ctx, addr, "orders", "x"); !errors.Is(err, ErrServerUnproven) || errors.Is(err, ErrNotFound) {
		t.Errorf("an impostor's 404: %v; want ErrServerUnproven", err)
	}
	status = http.StatusUnauthorized
	if _, err := c.List(ctx, addr, ""); err == nil || errors.Is(err, ErrServerUnproven) || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("a 401: %v; want HTTP 401", err)
	}
	for _, x := range wr.all() {
		if a := x.Header.Get("Authorization"); !strings.HasPrefix(a, sharedsecret.Scheme+" ") || secretOnWire(fmt.Sprint(x)) {
			t.Errorf("the impostor was sent %+v", x)
		}
	}
}

// httpStore serves a store with one letter behind a wire, with secret.
func httpStore(t *testing.T) (*Store, *httptest.Server, *wire, Info) {
	t.Helper()
	st := newStore(t)
	in, err := st.Put(sampleLetter([]byte("original")))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	st.Register(mux, httpSecret, "orders-svc")
	wr := &wire{h: mux}
	srv := httptest.NewServer(wr)
	t.Cleanup(srv.Close)
	return st, srv, wr, in
}

// TestHTTPSecretNotOnTheWire: every request is signed, every answer
// (a 404 too) proven, and the secret is in none of them.
func TestHTTPSecretNotOnTheWire(t *testing.T) {
	_, srv, wr, in := httpStore(t)
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	c := Client{Secret: httpSecret}
	if list, err := c.List(ctx, addr, "orders"); err != nil || len(list) != 1 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if l, err := c.Get(ctx, addr, "orders", in.ID); err != nil || string(l.Original) != "original" {
		t.Fatalf("Get = %+v, %v", l, err)
	}
	if err := c.Delete(ctx, addr, "orders", in.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, addr, "orders", in.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v, want ErrNotFound", err)
	}
	all := wr.all()
	if len(all) != 4 {
		t.Fatalf("%d requests recorded, want 4", len(all))
	}
	for _, x := range all {
		if secretOnWire(fmt.Sprint(x)) {
			t.Errorf("the secret crossed the wire: %+v", x)
		}
		if a := x.Header.Get("Authorization"); !strings.HasPrefix(a, sharedsecret.Scheme+" ts=") {
			t.Errorf("%s %s: Authorization %q, want a signature", x.Method, x.RequestURI, a)
		}
		if x.Answer.Get(sharedsecret.ProofHeader) == "" {
			t.Errorf("%s %s: HTTP %d without a proof", x.Method, x.RequestURI, x.Status)
		}
	}
}

// TestHTTPReplayedRequestRefused: a captured signed request, a DELETE
// above all, is refused when sent again, or sent for another letter.
func TestHTTPReplayedRequestRefused(t *testing.T) {
	st, srv, wr, in := httpStore(t)
	other, err := st.Put(sampleLetter([]byte("another")))
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(srv.URL, "http://")
	if _, err := (Client{Secret: httpSecret}).Get(context.Background(), addr, "orders", in.ID); err != nil {
		t.Fatal(err)
	}
	if err := (Client{Secret: httpSecret}).Delete(context.Background(), addr, "orders", in.ID); err != nil {
		t.Fatal(err)
	}
	get, del := wr.all()[0], wr.all()[1]
	resend := func(x exchange, method, uri string) int {
		req, _ := http.NewRequest(method, srv.URL+uri, nil)
		req.Header = x.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if code := resend(get, http.MethodGet, get.RequestURI); code != http.StatusUnauthorized {
		t.Errorf("the same GET again: HTTP %d, want 401", code)
	}
	otherURI := PathPrefix + "/orders/" + other.ID
	if code := resend(del, http.MethodDelete, otherURI); code != http.StatusUnauthorized {
		t.Errorf("the DELETE's signature for another letter: HTTP %d, want 401", code)
	}
	if code := resend(get, http.MethodDelete, otherURI); code != http.StatusUnauthorized {
		t.Errorf("a GET's signature on a DELETE: HTTP %d, want 401", code)
	}
	if _, err := st.Get("orders", other.ID); err != nil {
		t.Fatalf("the other letter is gone: %v", err)
	}
}

// TestHTTPBearerRefused: a Bearer secret, even the right one, is refused:
// it would cross the network in clear.
func TestHTTPBearerRefused(t *testing.T) {
	_, srv, _, _ := httpStore(t)
	for auth, want := range map[string]int{"Bearer " + httpSecret: http.StatusUnauthorized, "Bearer wrong": http.StatusUnauthorized, "": http.StatusUnauthorized} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+PathPrefix+"?topic=orders", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%q: HTTP %d, want %d", auth, resp.StatusCode, want)
		}
	}
}

// TestHTTPAlteredLetterRefused: someone on the path who passes the signed
// request to the real service and its answer back, proof included, cannot
// change a letter's bytes (which a requeue would publish): the proof binds
// the body.
func TestHTTPAlteredLetterRefused(t *testing.T) {
	_, srv, _, in := httpStore(t)
	alter := true
	addr := sharedsecrettest.Relay(t, srv.URL, func(_ string, b []byte) []byte {
		if alter && len(b) > 0 {
			b[len(b)-1] ^= 1
		}
		return b
	}, nil)
	if l, err := (Client{Secret: httpSecret}).Get(context.Background(), addr, "orders", in.ID); !errors.Is(err, ErrServerUnproven) {
		t.Fatalf("an altered letter: %+v, %v; want ErrServerUnproven", l, err)
	}
	if list, err := (Client{Secret: httpSecret}).List(context.Background(), addr, "orders"); !errors.Is(err, ErrServerUnproven) {
		t.Fatalf("an altered list: %+v, %v; want ErrServerUnproven", list, err)
	}
	alter = false // the same path, faithful: the letter comes through
	if l, err := (Client{Secret: httpSecret}).Get(context.Background(), addr, "orders", in.ID); err != nil || string(l.Original) != "original" {
		t.Fatalf("through a faithful path: %q, %v", l.Original, err)
	}
}
