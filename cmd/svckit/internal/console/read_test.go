package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Who may read the state: with the token (the default), or anyone whose
// request names an address or localhost (--open-read). The page's own
// assets are not behind this: they hold no data.
func TestReadingTheState(t *testing.T) {
	const tok = "the-operator-token"
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("state")) }
	cases := []struct {
		name     string
		open     bool
		host     string
		target   string
		header   map[string]string
		want     int
		wantBody string
	}{
		{"no token", false, "127.0.0.1:4185", "/api/state", nil, 401, "the operator's token is required"},
		{"wrong token", false, "127.0.0.1:4185", "/api/state", map[string]string{"Authorization": "Bearer nope"}, 401, "wrong operator token"},
		{"token", false, "console:8080", "/api/state", map[string]string{"Authorization": "Bearer " + tok}, 200, "state"},
		{"token in a cookie", false, "console:8080", "/api/state", map[string]string{"Cookie": "token=" + tok}, 401, "required"},
		{"token in the query", false, "console:8080", "/api/state?token=" + tok, nil, 401, "query string"},
		{"basic auth", false, "console:8080", "/api/state", map[string]string{"Authorization": "Basic " + tok}, 401, "required"},
		{"cross-site with token", false, "console:8080", "/api/state", map[string]string{"Authorization": "Bearer " + tok, "Origin": "https://evil.example"}, 403, "cross-site"},
		{"open, loopback", true, "127.0.0.1:4185", "/api/state", nil, 200, "state"},
		{"open, localhost", true, "localhost:4185", "/api/state", nil, 200, "state"},
		{"open, IPv6", true, "[::1]:4185", "/api/state", nil, 200, "state"},
		{"open, a rebound name", true, "evil.example:4185", "/api/state", nil, 403, "Host evil.example:4185 refused"},
		{"open, cross-site fetch", true, "127.0.0.1:4185", "/api/state", map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &server{token: tok, openRead: c.open}
			r := httptest.NewRequest(http.MethodGet, "http://"+c.host+c.target, nil)
			for k, v := range c.header {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			s.reader(ok).ServeHTTP(w, r)
			if w.Code != c.want || !strings.Contains(w.Body.String(), c.wantBody) {
				t.Fatalf("HTTP %d %q; want %d with %q", w.Code, w.Body.String(), c.want, c.wantBody)
			}
			if w.Code != 200 && w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("a refusal without nosniff")
			}
		})
	}
}

// A requeue names what it sends back: a letter's id, or "all"; a body
// that names neither is refused before anything is read.
func TestRequeueNamesItsLetters(t *testing.T) {
	const tok = "the-operator-token"
	s := &server{token: tok}
	r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:4185/api/deadletters/requeue", strings.NewReader(`{"topic":"orders"}`))
	r.Header.Set("Authorization", "Bearer "+tok)
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	s.serveRequeue(w, r)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `"all"`) {
		t.Fatalf("a requeue without an id: HTTP %d %q; want 400 naming \"all\"", w.Code, w.Body.String())
	}
}

// Every route of the console's under /api/ is behind the token when
// reading needs it: the routes are taken from what register registers, so
// a route added without reader() fails here. The page and its assets hold
// no data and are served to anyone.
func TestEveryDataRouteNeedsTheToken(t *testing.T) {
	s := newServer(nil, nil, "the-operator-token", false, nil)
	routes := routeList{}
	s.register(routes)
	api := 0
	for pattern, h := range routes {
		method, path, _ := strings.Cut(pattern, " ")
		path = strings.TrimSuffix(path, "{$}")
		want := http.StatusOK
		if strings.HasPrefix(path, "/api/") {
			want = http.StatusUnauthorized
			api++
		}
		r := httptest.NewRequest(method, "http://console:8080"+path, nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("%s without the token: HTTP %d, want %d", pattern, w.Code, want)
		}
	}
	if api < 4 {
		t.Errorf("%d routes under /api/ registered, want state, events, lag-history and requeue at least: %v", api, routes)
	}
}

type routeList map[string]http.Handler

func (r routeList) Handle(pattern string, h http.Handler) { r[pattern] = h }
