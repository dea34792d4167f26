// Package sharedsecrettest is for tests of what package sharedsecret
// protects (the replay and dead-letter clients): a man in the middle.
package sharedsecrettest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Relay starts a server that passes every request on to real (a base URL)
// unchanged, signed as the client signed it, and answers with the real
// answer's headers, proof included, over the body alterBody makes of the
// real one (nil: unchanged) and the trailer alterTrailer makes of the real
// one (nil: unchanged; addTrailer names trailers it may add): what a man
// in the middle, or a stale catalog address someone else now serves, can
// do without the secret. It returns the relay's host:port.
func Relay(t testing.TB, real string, alterBody func(path string, body []byte) []byte, alterTrailer func(http.Header), addTrailer ...string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequest(r.Method, real+r.URL.RequestURI(), nil)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for k, v := range resp.Header {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		if resp.Trailer == nil {
			resp.Trailer = http.Header{}
		}
		for _, k := range addTrailer {
			if _, ok := resp.Trailer[k]; !ok {
				resp.Trailer[k] = nil
			}
		}
		for k := range resp.Trailer { // passed on too, after the body
			w.Header().Add("Trailer", k)
		}
		w.WriteHeader(resp.StatusCode)
		if alterBody != nil {
			body = alterBody(r.URL.Path, body)
		}
		w.Write(body)
		if alterTrailer != nil {
			alterTrailer(resp.Trailer)
		}
		for k, v := range resp.Trailer {
			w.Header()[k] = v
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}
