package operator

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/testenv"
)

// svckit nsqd-stats in front of a real nsqd: its /stats only to requests
// signed with the replay secret for "nsqd", the answer proven; nothing
// else of nsqd's API through it; /health follows nsqd's /ping.
func TestNSQDStatsServesOnlySignedStats(t *testing.T) {
	nsqd := testenv.StartNSQD(t, testenv.NSQDOptions{})
	// A topic, so that the stats have something of nsqd's own.
	resp, err := http.Post("http://"+nsqd.HTTPAddr+"/topic/create?topic=stats-probe", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	const secret = "nsqd-stats-test-secret"
	srv := httptest.NewServer(nsqdStatsHandler(nsqd.HTTPAddr, secret))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	signed := replay.Client{Secret: secret, Audience: NSQDStatsAudience}
	r, err := signed.Get(ctx, addr, "/stats", nil)
	if err != nil {
		t.Fatalf("signed GET /stats: %v", err)
	}
	var st struct {
		Topics []struct {
			TopicName string `json:"topic_name"`
		} `json:"topics"`
	}
	err = json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	if err != nil || r.StatusCode != 200 || len(st.Topics) != 1 || st.Topics[0].TopicName != "stats-probe" {
		t.Fatalf("signed GET /stats: HTTP %d %v %+v", r.StatusCode, err, st)
	}

	get := func(c replay.Client, path string) int {
		t.Helper()
		r, err := c.Get(ctx, addr, path, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode
	}
	for _, c := range []struct {
		what   string
		client replay.Client
		path   string
		want   int
	}{
		{"unsigned", replay.Client{}, "/stats", 401},
		{"signed with a wrong secret", replay.Client{Secret: "wrong", Audience: NSQDStatsAudience}, "/stats", 401},
		{"signed for another service", replay.Client{Secret: secret, Audience: "app"}, "/stats", 401},
		{"nsqd's /pub", replay.Client{}, "/pub?topic=stats-probe", 404},
		{"nsqd's /topic/delete", replay.Client{}, "/topic/delete?topic=stats-probe", 404},
		{"health", replay.Client{}, "/health", 200},
	} {
		if got := get(c.client, c.path); got != c.want {
			t.Errorf("%s: GET %s: HTTP %d, want %d", c.what, c.path, got, c.want)
		}
	}
	if err := nsqd.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := get(replay.Client{}, "/health"); got != http.StatusBadGateway {
		t.Errorf("health with nsqd stopped: HTTP %d, want 502", got)
	}
	// Left beside an nsqd that no longer answers (in the namespace of
	// one that restarted), it gives up, to be started again.
	if err := watchNSQD(ctx, nsqd.HTTPAddr, time.Second); err == nil || !strings.Contains(err.Error(), "has not answered /ping") {
		t.Errorf("watching a stopped nsqd: %v, want an error", err)
	}
}
