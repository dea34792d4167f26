package operator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// topicDepth is the number of messages of topic held in nsqd (topic queue
// plus every channel's queue and in-flight).
func topicDepth(t *testing.T, httpAddr, topic string) int {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/stats?format=json&topic=" + topic)
	if err != nil {
		t.Fatalf("nsqd stats: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		Topics []struct {
			Name     string `json:"topic_name"`
			Depth    int    `json:"depth"`
			Channels []struct {
				Depth    int `json:"depth"`
				InFlight int `json:"in_flight_count"`
				Deferred int `json:"deferred_count"`
			} `json:"channels"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("decoding nsqd stats: %v", err)
	}
	n := 0
	for _, tp := range st.Topics {
		if tp.Name != topic {
			continue
		}
		n += tp.Depth
		for _, c := range tp.Channels {
			n += c.Depth + c.InFlight + c.Deferred
		}
	}
	return n
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(append([]string{"svckit"}, args...), strings.NewReader(""), &out, &errb, "test")
	return code, out.String(), errb.String()
}

func TestDeadLetterListAndRequeue(t *testing.T) {
	st := testenv.StartStack(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := discovery.New(st.Consul.Client, discovery.Options{})
	defer d.Stop()
	p := pubsub.NewProducer(d.Watch("nsqd"), pubsub.ProducerOptions{})
	defer p.Stop()

	// A consumer dead-letters undecodable bodies to "orders.dead".
	cfg := nsq.NewConfig()
	cfg.LookupdPollInterval = time.Second
	c, err := pubsub.NewConsumer(d.Watch("nsqlookupd"), d.Watch("nsqd"),
		pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }),
		pubsub.ConsumerOptions{Topic: "orders", Channel: "svc", NSQ: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Stop(context.Background())
	for i := 0; i < 3; i++ {
		if err := p.Publish(ctx, "orders", []byte(fmt.Sprintf("garbage-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	nsqdHTTP := st.NSQD.HTTPAddr
	testenv.WaitFor(t, 30*time.Second, "3 dead letters in orders.dead", func() bool {
		return topicDepth(t, nsqdHTTP, "orders.dead") == 3
	})

	consul := "--consul-addr=" + st.Consul.HTTPAddr
	code, out, errOut := runCLI(t, consul, "deadletter", "ls", "--topic", "orders", "--wait", "500ms")
	if code != 0 {
		t.Fatalf("deadletter ls exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "3 dead letter(s)") || !strings.Contains(out, "decode: envelope") || !strings.Contains(out, "garbage-1") {
		t.Fatalf("deadletter ls output:\n%s", out)
	}
	// Listing consumed nothing for good: all three are back in the queue.
	testenv.WaitFor(t, 30*time.Second, "dead letters still queued after ls", func() bool {
		return topicDepth(t, nsqdHTTP, "orders.dead") == 3
	})
	// ls twice shows the same three.
	if code, out, _ := runCLI(t, consul, "deadletter", "ls", "--topic", "orders", "--wait", "500ms"); code != 0 || !strings.Contains(out, "3 dead letter(s)") {
		t.Fatalf("second ls: exit %d\n%s", code, out)
	}

	// Requeue to another topic: the dead topic empties, the target holds 3.
	code, out, errOut = runCLI(t, consul, "deadletter", "requeue", "--topic", "orders", "--to", "orders-retry", "--wait", "500ms")
	if code != 0 || !strings.Contains(out, "requeued 3") {
		t.Fatalf("deadletter requeue exit %d: %s %s", code, out, errOut)
	}
	testenv.WaitFor(t, 30*time.Second, "dead topic empty and 3 in orders-retry", func() bool {
		return topicDepth(t, nsqdHTTP, "orders.dead") == 0 && topicDepth(t, nsqdHTTP, "orders-retry") == 3
	})

	// A letter in orders.dead that names another topic (whoever may write
	// to orders.dead could forge one) is not sent there: requeueing it
	// would publish with the operator's identity where its writer may not.
	forged, err := deadletter.Letter{Meta: deadletter.Meta{Topic: "payments", Channel: "svc", Reason: "forged"}, Original: []byte("forged-body")}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(ctx, "orders.dead", forged); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the forged letter in orders.dead", func() bool { return topicDepth(t, nsqdHTTP, "orders.dead") == 1 })
	code, out, errOut = runCLI(t, consul, "deadletter", "requeue", "--topic", "orders", "--wait", "500ms")
	if code == 0 || !strings.Contains(out+errOut, `names topic "payments"`) {
		t.Fatalf("requeue of a letter naming another topic: exit %d, want a refusal naming it: %s %s", code, out, errOut)
	}
	testenv.WaitFor(t, 30*time.Second, "the forged letter left in place", func() bool { return topicDepth(t, nsqdHTTP, "orders.dead") == 1 })
	if d := topicDepth(t, nsqdHTTP, "payments"); d != 0 {
		t.Fatalf("payments holds %d messages after the requeue: the forged letter was sent there", d)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"deadletter", "ls", "--topic", "bad topic!"},
		{"deadletter", "ls"},
		{"replay", "--stream", "s"},
		{"replay", "--stream", "s", "--from", "5", "--to", "2"},
		{"replay", "--stream", "s", "--since", "yesterday"},
		{"--bogus"},
	} {
		code, _, errOut := runCLI(t, args...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, code, ExitUsage, errOut)
		}
		if lines := strings.Count(strings.TrimSpace(errOut), "\n") + 1; lines != 1 || !strings.HasPrefix(errOut, "svckit: ") {
			t.Errorf("%v: want one line on stderr, got %q", args, errOut)
		}
	}
}
