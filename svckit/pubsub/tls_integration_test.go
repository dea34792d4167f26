package pubsub_test

import (
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// With TLS asked for (tls_v1), an nsqd that does not offer it is refused:
// the client never goes on in clear text, where the AUTH secret and the
// messages would cross the network readable (upstream go-nsq falls back
// silently; see third_party/go-nsq/PATCHED.md). Against a real nsqd
// without TLS.
func TestTLSRequiredRefusesClearNSQD(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	cfg := nsq.NewConfig()
	if err := cfg.Set("tls_v1", true); err != nil {
		t.Fatal(err)
	}
	cfg.AuthSecret = "must-never-be-sent-in-clear"
	p, err := nsq.NewProducer(stack.NSQD.TCPAddr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	err = p.Publish("tls-required", []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "did not negotiate TLS") {
		t.Fatalf("publishing with tls_v1 to an nsqd without TLS: %v, want a refusal", err)
	}
	// Without tls_v1 the same nsqd takes it: the refusal is the TLS rule.
	plain, err := nsq.NewProducer(stack.NSQD.TCPAddr, nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Stop()
	if err := plain.Publish("tls-required", []byte("x")); err != nil {
		t.Fatalf("publishing in clear to the same nsqd: %v", err)
	}
}
