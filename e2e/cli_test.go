package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// readLines decodes the JSON lines `svckit replay --out` wrote and checks they
// are readings of stream with sequences from..to in order.
func readLines(t *testing.T, path, stream string, from, to uint64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	want := from
	for sc.Scan() {
		var m struct {
			Stream      string `json:"stream"`
			Seq         uint64 `json:"seq"`
			ContentType string `json:"content_type"`
			Payload     string `json:"payload"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: line %d: %v: %s", path, want-from+1, err, sc.Text())
		}
		if m.Stream != stream || m.Seq != want || m.ContentType != pipeline.ReadingType {
			t.Fatalf("%s: line %d is %s seq %d (%s), want %s seq %d", path, want-from+1, m.Stream, m.Seq, m.ContentType, stream, want)
		}
		b, err := base64.StdEncoding.DecodeString(m.Payload)
		if err != nil {
			t.Fatalf("%s: seq %d: payload: %v", path, m.Seq, err)
		}
		if _, err := pipeline.UnmarshalReading(b); err != nil {
			t.Fatalf("%s: seq %d: %v", path, m.Seq, err)
		}
		want++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if want != to+1 {
		t.Fatalf("%s holds sequences %d..%d, want %d..%d", path, from, want-1, from, to)
	}
}

// `svckit replay` by hand: finds the owner in consul, writes JSON lines, and
// fails clearly on what the owner cannot serve.
func TestCLIReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sensor := e.sensor("sensor-1", "s1", "--rate", "0", "--count", "300")
	waitSensorLast(t, sensor.Addr(), "s1", 300)
	out := t.TempDir()
	cli := func(t *testing.T, name string, args ...string) (int, string) {
		t.Helper()
		return e.runCLI(t, name, append([]string{"--consul-addr", e.st.Consul.HTTPAddr, "replay", "--quiet"}, args...)...)
	}

	t.Run("range", func(t *testing.T) {
		f := filepath.Join(out, "range.jsonl")
		if code, log := cli(t, "replay-range", "--stream", "s1", "--from", "1", "--to", "100", "--out", f); code != 0 {
			t.Fatalf("exit code %d:\n%s", code, log)
		}
		readLines(t, f, "s1", 1, 100)
	})
	t.Run("to-default-last", func(t *testing.T) {
		f := filepath.Join(out, "tail.jsonl")
		if code, log := cli(t, "replay-tail", "--stream", "s1", "--from", "250", "--out", f); code != 0 {
			t.Fatalf("exit code %d:\n%s", code, log)
		}
		readLines(t, f, "s1", 250, 300)
	})
	t.Run("since", func(t *testing.T) {
		f := filepath.Join(out, "since.jsonl")
		if code, log := cli(t, "replay-since", "--stream", "s1", "--since", "1h", "--out", f); code != 0 {
			t.Fatalf("exit code %d:\n%s", code, log)
		}
		readLines(t, f, "s1", 1, 300)
	})
	// failing runs the CLI, expects a non-zero exit and a message holding
	// every one of wants.
	failing := func(t *testing.T, name string, wants []string, args ...string) {
		t.Helper()
		code, log := cli(t, name, append([]string{"--out", filepath.Join(out, name+".jsonl")}, args...)...)
		if code == 0 {
			t.Fatalf("exit code 0, want non-zero:\n%s", log)
		}
		for _, w := range wants {
			if !strings.Contains(log, w) {
				t.Fatalf("exit code %d, but the output does not say %q:\n%s", code, w, log)
			}
		}
		t.Logf("exit code %d: %s", code, lastLine(log))
	}
	t.Run("beyond-last", func(t *testing.T) {
		failing(t, "replay-beyond", []string{"301", "last is 300"}, "--stream", "s1", "--from", "301", "--to", "400")
	})
	t.Run("beyond-last-open-ended", func(t *testing.T) {
		failing(t, "replay-beyond-open", []string{"301", "last is 300"}, "--stream", "s1", "--from", "301")
	})
	t.Run("partly-beyond-last", func(t *testing.T) {
		failing(t, "replay-partly", []string{"11 of 21"}, "--stream", "s1", "--from", "290", "--to", "310")
	})
	t.Run("unknown-stream", func(t *testing.T) {
		failing(t, "replay-unknown", []string{"nope"}, "--stream", "nope", "--from", "1", "--to", "10")
	})
}

// lastLine returns the last non-empty line of a program's output, without
// testenv's exit marker.
func lastLine(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && !strings.HasPrefix(l, "=== testenv") {
			return l
		}
	}
	return ""
}

// `svckit replay --publish T` publishes what T carries: for results, the
// sensor's readings taken through a worker (it relays and computes), not
// the raw readings. The app skips every one as a duplicate, stays exact,
// and nothing lands in results.dead. A topic nobody publishes is refused
// with one line.
func TestCLIReplayPublishThroughStages(t *testing.T) {
	t.Parallel()
	const n = 300
	e := newEnv(t)
	_, _, app := e.pipelineUp("app-1")
	sensor := e.sensor("sensor-1", "s1", "--rate", "0", "--count", "300")
	sensorAddr := sensor.Addr()
	finish(t, app.addr, sensorAddr, "s1", n)
	code, log := e.runCLI(t, "replay-publish", "--consul-addr", e.st.Consul.HTTPAddr, "replay", "--quiet",
		"--stream", "s1", "--since", "10m", "--publish", pipeline.ResultsTopic)
	if code != 0 {
		t.Fatalf("svckit replay --publish results: exit %d:\n%s", code, log)
	}
	testenv.WaitFor(t, stepTimeout, "the app to skip the republished results", func() bool {
		st, err := pipetest.AppStreamOf(app.addr, "s1")
		return err == nil && st.Duplicates >= n
	})
	finish(t, app.addr, sensorAddr, "s1", n)
	if got := e.topicMessages(pipeline.ResultsTopic + ".dead"); got != 0 {
		t.Fatalf("%d dead letters in %s.dead after the replay", got, pipeline.ResultsTopic)
	}
	code, log = e.runCLI(t, "replay-publish-nobody", "--consul-addr", e.st.Consul.HTTPAddr, "replay", "--quiet",
		"--stream", "s1", "--since", "10m", "--publish", "nobody-publishes-this")
	if code == 0 || !strings.Contains(lastLine(log), "no passing service in Consul publishes topic") {
		t.Fatalf("replay --publish to a topic nobody publishes: exit %d, want a refusal:\n%s", code, log)
	}
}
