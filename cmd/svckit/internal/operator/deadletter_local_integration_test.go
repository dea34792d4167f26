package operator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
	"github.com/urfave/cli/v2"
)

// serviceConfig is a service's Config from its flags' defaults (the
// environment ignored) with args laid over them.
func serviceConfig(t *testing.T, name string, args ...string) config.Config {
	t.Helper()
	flags := config.Flags()
	for _, f := range flags {
		// The environment of the test must not configure the service.
		switch f := f.(type) {
		case *cli.StringFlag:
			f.EnvVars = nil
		case *cli.StringSliceFlag:
			f.EnvVars = nil
		case *cli.IntFlag:
			f.EnvVars = nil
		case *cli.Int64Flag:
			f.EnvVars = nil
		case *cli.BoolFlag:
			f.EnvVars = nil
		case *cli.DurationFlag:
			f.EnvVars = nil
		}
	}
	var cfg config.Config
	var cfgErr error
	app := &cli.App{Name: name, Flags: flags, Writer: io.Discard, ErrWriter: io.Discard,
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			cfg, cfgErr = config.FromCLI(c, name, "test")
			return nil
		}}
	if err := app.Run(append([]string{name}, args...)); err != nil || cfgErr != nil {
		t.Fatalf("service flags: %v %v", err, cfgErr)
	}
	return cfg
}

// collect consumes topic straight from nsqd and returns what arrived.
func collect(t *testing.T, nsqdTCP, topic string) func() [][]byte {
	t.Helper()
	var mu sync.Mutex
	var got [][]byte
	c, err := nsq.NewConsumer(topic, "check", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLogger(nil, nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		mu.Lock()
		got = append(got, bytes.Clone(m.Body))
		mu.Unlock()
		return nil
	}))
	if err := c.ConnectToNSQD(nsqdTCP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop(); <-c.StopChan })
	return func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return append([][]byte(nil), got...)
	}
}

// `svckit deadletter ls --json` lists a topic's dead letters wherever they
// are kept: in <topic>.dead (stored "nsqd") and in the local store of the
// service that made one nsqd would not take (stored "local"), found through
// Consul. `requeue` publishes both back, finishes the one in nsqd and
// deletes the local one, each only after nsqd acknowledged the publish.
func TestDeadLetterCLIListsAndRequeuesLocalAndNSQD(t *testing.T) {
	st := testenv.StartStack(t)
	const topic, channel, back = "invoices", "svc", "invoices-back"
	cfg := serviceConfig(t, "dlsvc", "--consul-addr="+st.Consul.HTTPAddr, "--data-dir="+t.TempDir(),
		"--check-interval=1s", "--nsq-lookupd-poll-interval=1s", "--shutdown-timeout=10s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := service.New(ctx, cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	testenv.HTTPPost("http://"+st.NSQD.HTTPAddr+"/topic/create?topic="+topic, "", nil)
	if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: topic, Channel: channel},
		pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil })); err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.Run(ctx, nil) }()
	defer func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("service Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("service did not stop")
		}
	}()
	testenv.WaitPassing(t, st.Consul, "dlsvc", 1)

	small := []byte("small garbage")
	big := bytes.Repeat([]byte{0xfe, 'z'}, (cfg.NSQ.MaxMsgSize-100)/2) // its dead letter is above --max-msg-size
	testenv.WaitFor(t, 60*time.Second, "the consumer on "+topic, func() bool {
		return s.HTTP.Ready().Checks["consumer "+topic+"/"+channel].OK
	})
	st.NSQD.Publish(t, topic, small)
	st.NSQD.Publish(t, topic, big)
	testenv.WaitFor(t, 60*time.Second, "one dead letter in nsqd and one kept locally", func() bool {
		l, _ := s.DeadLetterStore().List(topic)
		return topicDepth(t, st.NSQD.HTTPAddr, pubsub.DeadLetterTopic(topic)) == 1 && len(l) == 1
	})

	consul := "--consul-addr=" + st.Consul.HTTPAddr
	code, out, errOut := runCLI(t, consul, "deadletter", "ls", "--topic", topic, "--json", "--wait", "500ms")
	if code != 0 {
		t.Fatalf("deadletter ls --json: exit %d: %s", code, errOut)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("ls --json line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	byStored := map[string]map[string]any{}
	for _, m := range lines {
		byStored[m["stored"].(string)] = m
		for _, k := range []string{"topic", "reason", "time", "size", "stored", "id"} {
			if _, ok := m[k]; !ok {
				t.Errorf("ls --json line without %q: %v", k, m)
			}
		}
		if m["topic"] != topic || !strings.HasPrefix(m["reason"].(string), "decode") {
			t.Errorf("ls --json line %v", m)
		}
		if tm, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil || time.Since(tm) > 10*time.Minute {
			t.Errorf("ls --json time %v: %v", m["time"], err)
		}
	}
	if len(lines) != 2 || byStored["nsqd"] == nil || byStored["local"] == nil {
		t.Fatalf("ls --json: want one nsqd and one local dead letter, got:\n%s", out)
	}
	if byStored["nsqd"]["size"] != float64(len(small)) || byStored["local"]["size"] != float64(len(big)) {
		t.Errorf("sizes: nsqd %v (want %d), local %v (want %d)", byStored["nsqd"]["size"], len(small), byStored["local"]["size"], len(big))
	}
	if byStored["local"]["instance"] != s.Config.InstanceID {
		t.Errorf("local dead letter's instance %v, want %s", byStored["local"]["instance"], s.Config.InstanceID)
	}
	// The table says where each one is.
	code, out, errOut = runCLI(t, consul, "deadletter", "ls", "--topic", topic, "--wait", "500ms")
	if code != 0 || !strings.Contains(out, "STORED") || !strings.Contains(out, " local ") || !strings.Contains(out, " nsqd ") ||
		!strings.Contains(out, "2 dead letter(s)") || !strings.Contains(out, "small garbage") {
		t.Fatalf("deadletter ls: exit %d %s\n%s", code, errOut, out)
	}
	// Listing consumed nothing.
	testenv.WaitFor(t, 30*time.Second, "the nsqd dead letter back in its queue after ls", func() bool {
		return topicDepth(t, st.NSQD.HTTPAddr, pubsub.DeadLetterTopic(topic)) == 1
	})

	received := collect(t, st.NSQD.TCPAddr, back)
	code, out, errOut = runCLI(t, consul, "deadletter", "requeue", "--topic", topic, "--to", back, "--wait", "500ms")
	if code != 0 || !strings.Contains(out, "requeued 2 dead letter(s)") || !strings.Contains(out, "1 from nsqd, 1 kept locally") {
		t.Fatalf("deadletter requeue: exit %d: %s %s", code, out, errOut)
	}
	testenv.WaitFor(t, 60*time.Second, "both originals in "+back, func() bool { return len(received()) == 2 })
	var gotSmall, gotBig bool
	for _, b := range received() {
		gotSmall = gotSmall || bytes.Equal(b, small)
		gotBig = gotBig || bytes.Equal(b, big)
	}
	if !gotSmall || !gotBig {
		t.Errorf("requeued bodies: small %v, big %v; want both byte for byte", gotSmall, gotBig)
	}
	testenv.WaitFor(t, 30*time.Second, "nothing left in "+pubsub.DeadLetterTopic(topic), func() bool {
		return topicDepth(t, st.NSQD.HTTPAddr, pubsub.DeadLetterTopic(topic)) == 0
	})
	if l, err := s.DeadLetterStore().List(topic); err != nil || len(l) != 0 {
		t.Errorf("local store after requeue: %v %v; want it empty", l, err)
	}
	if code, out, _ := runCLI(t, consul, "deadletter", "ls", "--topic", topic, "--json", "--wait", "500ms"); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("ls --json after requeue: exit %d\n%s", code, out)
	}
}
