package dockertest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// consoleView is the part of the console's GET /api/state these tests
// read (cmd/svckit/internal/console.State, which is internal there).
type consoleView struct {
	NSQDs []struct {
		ID           string `json:"id"`
		Up           bool   `json:"up"`
		StatsAddress string `json:"stats_address"`
		Error        string `json:"error"`
	} `json:"nsqds"`
	NSQDDown bool `json:"nsqd_down"`
	Topics   []struct {
		Name   string `json:"name"`
		InNSQD int    `json:"in_nsqd"`
		Stale  bool   `json:"stale"`
	} `json:"topics"`
	Streams []struct {
		Stream string `json:"stream"`
		Owner  *struct {
			Up bool `json:"up"`
		} `json:"owner"`
		LastSeq   uint64 `json:"last_seq"`
		Consumers []struct {
			Consumer       string `json:"consumer"`
			Service        string `json:"service"`
			Up             bool   `json:"up"`
			LastContiguous uint64 `json:"last_contiguous"`
			Error          string `json:"error"`
		} `json:"consumers"`
	} `json:"streams"`
	Problems []string `json:"problems"`
}

// checkConsole reads the datacenter's console as its operator does, from
// this machine over HTTPS verified with the datacenter's CA at the port
// the host publishes: the page is served to anyone (it holds no data),
// the state is refused without the operator's token and with a wrong
// one, and with the token it shows every nsqd up (its /stats read
// through nsqd-stats, signed), topic readings, and the stream with its
// owner up and the app following it.
func checkConsole(t *testing.T, c *compose, host string, secrets *dcSecrets, stream, app string) {
	t.Helper()
	base, get := consoleClient(t, c, secrets)
	waitFor(t, 2*time.Minute, func() (bool, string) {
		code, _, err := get("/", "")
		return err == nil && code == 200, fmt.Sprintf("the console's page at %s/: HTTP %d %v", base, code, err)
	})
	for _, tok := range []string{"", "not-the-operator-token"} {
		code, body, err := get("/api/state", tok)
		if err != nil || code != http.StatusUnauthorized {
			t.Fatalf("the console's state with token %q: HTTP %d %v %s; want 401", tok, code, err, firstLine(body))
		}
	}
	token := strings.TrimSpace(secrets.read(t, "operator.token"))
	var v consoleView
	waitFor(t, 2*time.Minute, func() (bool, string) {
		code, body, err := get("/api/state", token)
		if err != nil || code != 200 {
			return false, fmt.Sprintf("the console's state: HTTP %d %v %s", code, err, firstLine(body))
		}
		v = consoleView{}
		if err := json.Unmarshal(body, &v); err != nil {
			return false, err.Error()
		}
		if len(v.NSQDs) == 0 || v.NSQDDown {
			return false, fmt.Sprintf("nsqds %+v", v.NSQDs)
		}
		readings := false
		for _, tp := range v.Topics {
			readings = readings || (tp.Name == "readings" && tp.InNSQD > 0 && !tp.Stale)
		}
		if !readings {
			return false, fmt.Sprintf("topics %+v", v.Topics)
		}
		for _, s := range v.Streams {
			if s.Stream != stream {
				continue
			}
			if s.Owner == nil || !s.Owner.Up || s.LastSeq == 0 {
				return false, fmt.Sprintf("stream %s: %+v", stream, s)
			}
			for _, con := range s.Consumers {
				if con.Service == app && con.Up && con.LastContiguous > 0 {
					return true, ""
				}
			}
			return false, fmt.Sprintf("stream %s's consumers: %+v", stream, s.Consumers)
		}
		return false, fmt.Sprintf("no stream %s; problems %v", stream, v.Problems)
	})
	t.Logf("%s: the console at %s (HTTPS) refuses its state without the operator's token and with a wrong one; with it: %d nsqd(s) up (read through nsqd-stats at %s), stream %s and its %s",
		host, base, len(v.NSQDs), v.NSQDs[0].StatsAddress, stream, app)
}

// consoleClient is the console's base URL, from this machine, and a GET
// of one of its paths with a token ("" for none).
func consoleClient(t *testing.T, c *compose, secrets *dcSecrets) (string, func(path, token string) (int, []byte, error)) {
	t.Helper()
	base := "https://" + c.published("console", "8080")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: secrets.tlsConfig()}}
	return base, func(path, token string) (int, []byte, error) {
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			return 0, nil, err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		return resp.StatusCode, b, err
	}
}

// watchConsoleNSQDDown starts watching the console's state before nsqd
// is made to go away, and returns a func that waits until the watch saw
// an nsqd down (two minutes from the start at most). Watching only after
// `docker-compose restart nsqd` returned missed it under load: nsqd's
// stop can take its whole grace period, nsqd-stats gives up on it in
// that time and is back beside the new nsqd before the command returns.
func watchConsoleNSQDDown(t *testing.T, c *compose, secrets *dcSecrets) (wait func()) {
	t.Helper()
	_, get := consoleClient(t, c, secrets)
	token := strings.TrimSpace(secrets.read(t, "operator.token"))
	seen, stop := make(chan struct{}), make(chan struct{})
	var last atomic.Value
	last.Store("nothing read yet")
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			code, body, err := get("/api/state", token)
			var v consoleView
			switch {
			case err != nil || code != 200 || json.Unmarshal(body, &v) != nil:
				last.Store(fmt.Sprintf("the console's state: HTTP %d %v", code, err))
			case v.NSQDDown:
				close(seen)
				return
			default:
				last.Store(fmt.Sprintf("nsqds %+v", v.NSQDs))
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	deadline := time.After(2 * time.Minute)
	return func() {
		t.Helper()
		defer close(stop)
		select {
		case <-seen:
		case <-deadline:
			t.Fatalf("the console never showed nsqd down in two minutes: %v", last.Load())
		}
	}
}
