package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/svckit/svckit/internal/sharedsecret"
)

// A service serves its local store on its HTTP port and says so in Consul,
// so that the CLI, a separate process, finds every instance that keeps
// dead letters:
//
//	GET    /deadletters?topic=T      200, JSON [Info]: T's letters ("" = all)
//	GET    /deadletters/{topic}/{id} 200, the encoded letter (ContentType)
//	DELETE /deadletters/{topic}/{id} 204; 404 if it is not there
//
// With a secret, every request must be signed with it (Client does:
// "Authorization: Svckit-HMAC ...", each signature accepted once, within 5
// minutes of the server's clock; see package internal/sharedsecret), and
// every answer to a signed request proves the server knows the secret
// (header Svckit-Proof), which Client checks: dead letters are the
// service's data, and DELETE destroys them. "Authorization: Bearer
// <secret>" is still accepted, for operators' curl and older clients, but
// it sends the secret in clear.
const (
	// MetaKey is the Consul service meta key of an instance serving its
	// store; its value is MetaValue, the version of the API above.
	MetaKey   = "svckit_deadletters"
	MetaValue = "1"
	// PathPrefix is where the store is served.
	PathPrefix = "/deadletters"
	// ContentType is an encoded letter's.
	ContentType = "application/x-svckit-deadletter"
)

// Mux is where routes are added; *health.Server and *http.ServeMux are.
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// Register serves the store on mux (the routes above).
// With a secret, requests signed for another service than audience (this
// service's Consul name) are refused.
func (s *Store) Register(mux Mux, secret, audience string) {
	auth := func(h http.HandlerFunc) http.Handler { return h }
	if secret != "" {
		// One verifier for every route: a signature is used once. Every
		// answer to a signed request, errors too, is proven: its status
		// and body.
		v := sharedsecret.NewVerifier(secret)
		v.Audience = audience
		auth = func(h http.HandlerFunc) http.Handler { return v.Protect("dead letters", h) }
	}
	mux.Handle("GET "+PathPrefix, auth(s.serveList))
	mux.Handle("GET "+PathPrefix+"/{topic}/{id}", auth(s.serveGet))
	mux.Handle("DELETE "+PathPrefix+"/{topic}/{id}", auth(s.serveDelete))
}

func (s *Store) serveList(w http.ResponseWriter, r *http.Request) {
	list, err := s.List(r.URL.Query().Get("topic"))
	if err != nil {
		httpError(w, err)
		return
	}
	if list == nil {
		list = []Info{}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

func (s *Store) serveGet(w http.ResponseWriter, r *http.Request) {
	b, err := s.Get(r.PathValue("topic"), r.PathValue("id"))
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", ContentType)
	_, _ = w.Write(b)
}

func (s *Store) serveDelete(w http.ResponseWriter, r *http.Request) {
	if err := s.Delete(r.PathValue("topic"), r.PathValue("id")); err != nil {
		httpError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrBadTopic):
		code = http.StatusBadRequest
	}
	http.Error(w, err.Error(), code)
}

// ErrServerUnproven: the service that answered did not prove that it knows
// the shared secret (Client.Secret), so nothing of its answer was taken (a
// list, a letter, or that a DELETE happened): an impostor, or a service
// run without the secret.
var ErrServerUnproven = errors.New("the service did not prove that it knows the shared secret: its answer was not taken")

// Client talks to the store of a running service (the CLI's side).
type Client struct {
	// Secret, if set, signs every request (the secret itself is never
	// sent), and every answer must prove that its server knows it, or
	// the call fails with ErrServerUnproven.
	Secret string
	HTTP   *http.Client // nil = a client with a 30s timeout
	// Audience is the Consul service name of the service asked, signed
	// into the request (a service of another name refuses it).
	Audience string
}

func (c Client) do(ctx context.Context, method, addr, path string, q url.Values) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: addr, Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if c.Audience != "" {
		req.Header.Set(sharedsecret.AudienceHeader, c.Audience)
	}
	var nonce string
	if c.Secret != "" {
		// A signature, not the secret: whoever answers must not learn it.
		if nonce, err = sharedsecret.Sign(req, c.Secret); err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, u.String(), err)
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u.String(), err)
	}
	// Every answer something is taken from must be proven; not a 401
	// (the server refused the request: it has no nonce it accepted to
	// prove), nor a 5xx (a failure, perhaps a proxy's, only reported).
	if nonce != "" && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode < 500 {
		// The status and the whole body (a letter's bytes, which a
		// requeue publishes) come from a holder of the secret.
		if _, err := sharedsecret.CheckAnswer(resp, nonce, c.Secret); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("%w: %s %s answered HTTP %d: %v", ErrServerUnproven, method, u.String(), resp.StatusCode, err)
		}
	}
	return resp, nil
}

func answerError(resp *http.Response) error {
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	err := fmt.Errorf("%s %s: HTTP %d: %s", resp.Request.Method, resp.Request.URL, resp.StatusCode, strings.TrimSpace(string(msg)))
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w (%v)", ErrNotFound, err)
	}
	return err
}

// List returns the letters of topic kept by the service at addr.
func (c Client) List(ctx context.Context, addr, topic string) ([]Info, error) {
	resp, err := c.do(ctx, http.MethodGet, addr, PathPrefix, url.Values{"topic": {topic}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, answerError(resp)
	}
	var list []Info
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, fmt.Errorf("listing dead letters at %s: %w", addr, err)
	}
	return list, nil
}

// Get returns one letter, decoded.
func (c Client) Get(ctx context.Context, addr, topic, id string) (Letter, error) {
	resp, err := c.do(ctx, http.MethodGet, addr, PathPrefix+"/"+topic+"/"+id, nil)
	if err != nil {
		return Letter{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Letter{}, answerError(resp)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Letter{}, fmt.Errorf("reading dead letter %s/%s from %s: %w", topic, id, addr, err)
	}
	l, err := Decode(b)
	if err != nil {
		return Letter{}, fmt.Errorf("dead letter %s/%s from %s: %w", topic, id, addr, err)
	}
	return l, nil
}

// Delete removes one letter; nil means the removal is durable.
func (c Client) Delete(ctx context.Context, addr, topic, id string) error {
	resp, err := c.do(ctx, http.MethodDelete, addr, PathPrefix+"/"+topic+"/"+id, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return answerError(resp)
	}
	return nil
}
