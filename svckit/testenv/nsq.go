package testenv

import (
	"testing"

	"github.com/svckit/svckit/internal/localstack"
)

// NSQLookupd is a running nsqlookupd.
type NSQLookupd struct {
	TCPAddr, HTTPAddr string // 127.0.0.1:<port>
	TCPPort, HTTPPort int
	Proc              *Process
}

func lookupdOf(l *localstack.NSQLookupd) *NSQLookupd {
	return &NSQLookupd{TCPAddr: l.TCPAddr, HTTPAddr: l.HTTPAddr, TCPPort: l.TCPPort, HTTPPort: l.HTTPPort, Proc: wrap(l.Proc)}
}

// core returns the localstack view of l's fields (tests also build an
// NSQLookupd by hand around a process they started).
func (l *NSQLookupd) core() *localstack.NSQLookupd {
	return &localstack.NSQLookupd{TCPAddr: l.TCPAddr, HTTPAddr: l.HTTPAddr, TCPPort: l.TCPPort, HTTPPort: l.HTTPPort, Proc: l.Proc.core()}
}

// StartNSQLookupd starts nsqlookupd on free loopback ports and waits until
// GET /ping answers OK.
func StartNSQLookupd(t testing.TB) *NSQLookupd {
	t.Helper()
	l, err := group(t).StartNSQLookupd()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return lookupdOf(l)
}

// Ready reports whether this nsqlookupd answers /ping.
func (l *NSQLookupd) Ready() bool { return l.core().Ready() }

// Stop stops nsqlookupd with SIGTERM and returns its exit error.
func (l *NSQLookupd) Stop() error { return l.Proc.Stop() }

// Kill kills nsqlookupd with SIGKILL.
func (l *NSQLookupd) Kill() { l.Proc.Kill() }

// Start starts a stopped nsqlookupd again on the same ports and waits for /ping.
func (l *NSQLookupd) Start(t testing.TB) {
	t.Helper()
	if err := l.core().Start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Restart stops nsqlookupd and starts it again on the same ports.
func (l *NSQLookupd) Restart(t testing.TB) {
	t.Helper()
	_ = l.Stop()
	l.Start(t)
}

// Producers returns the TCP addresses (127.0.0.1:<port>) of the nsqd
// instances registered with this lookupd (GET /nodes).
func (l *NSQLookupd) Producers() ([]string, error) { return l.core().Producers() }

// WaitProducer waits until the nsqd at tcpAddr is registered with l.
func (l *NSQLookupd) WaitProducer(t testing.TB, tcpAddr string) {
	t.Helper()
	if err := l.core().WaitProducer(tcpAddr); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// NSQDOptions configures StartNSQD. The zero value is ready to use: an
// nsqd that registers with no lookupd.
type NSQDOptions struct {
	// LookupdTCPAddrs are the nsqlookupd TCP addresses nsqd registers with.
	LookupdTCPAddrs []string
	// MemQueueSize is nsqd's --mem-queue-size: 0 leaves nsqd's default
	// (10000); a negative value passes 0, which in nsqd 1.3 means no memory
	// queue at all (every message goes to the disk queue; ephemeral
	// topics/channels keep a memory queue regardless).
	MemQueueSize int
	// DataDir is nsqd's --data-path; "" means a new t.TempDir().
	DataDir string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// NSQD is a running nsqd.
type NSQD struct {
	TCPAddr, HTTPAddr string // 127.0.0.1:<port>
	TCPPort, HTTPPort int
	DataDir           string
	Proc              *Process
}

func nsqdOf(n *localstack.NSQD) *NSQD {
	return &NSQD{TCPAddr: n.TCPAddr, HTTPAddr: n.HTTPAddr, TCPPort: n.TCPPort, HTTPPort: n.HTTPPort, DataDir: n.DataDir, Proc: wrap(n.Proc)}
}

// core returns the localstack view of n's fields (tests also build an NSQD
// by hand around a process they started).
func (n *NSQD) core() *localstack.NSQD {
	return &localstack.NSQD{TCPAddr: n.TCPAddr, HTTPAddr: n.HTTPAddr, TCPPort: n.TCPPort, HTTPPort: n.HTTPPort, DataDir: n.DataDir, Proc: n.Proc.core()}
}

// StartNSQD starts nsqd on free loopback ports and waits until GET /ping
// answers OK.
func StartNSQD(t testing.TB, o NSQDOptions) *NSQD {
	t.Helper()
	n, err := group(t).StartNSQD(localstack.NSQDOptions(o))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return nsqdOf(n)
}

// Ready reports whether this nsqd answers /ping with OK (nsqd answers 500
// when it is unhealthy, e.g. its disk queue failed).
func (n *NSQD) Ready() bool { return n.core().Ready() }

// Stop stops nsqd with SIGTERM (it flushes its memory queues to the data dir)
// and returns its exit error.
func (n *NSQD) Stop() error { return n.Proc.Stop() }

// Kill kills nsqd with SIGKILL: what was in its memory queues is lost.
func (n *NSQD) Kill() { n.Proc.Kill() }

// Start starts a stopped or killed nsqd again with the same ports and data
// dir and waits for /ping.
func (n *NSQD) Start(t testing.TB) {
	t.Helper()
	if err := n.core().Start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Restart stops nsqd (SIGTERM) and starts it again on the same ports and data
// dir.
func (n *NSQD) Restart(t testing.TB) {
	t.Helper()
	_ = n.Stop()
	n.Start(t)
}

// Publish publishes body to topic through nsqd's HTTP /pub.
func (n *NSQD) Publish(t testing.TB, topic string, body []byte) {
	t.Helper()
	if err := n.core().Publish(topic, body); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// DeleteTopic deletes topic (its channels and messages) through nsqd's HTTP
// /topic/delete.
func (n *NSQD) DeleteTopic(t testing.TB, topic string) {
	t.Helper()
	if err := n.core().DeleteTopic(topic); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// NSQDStats is the part of nsqd's /stats svckit tests look at.
type NSQDStats struct {
	Health string `json:"health"`
	Topics []struct {
		TopicName    string `json:"topic_name"`
		Depth        int64  `json:"depth"`
		BackendDepth int64  `json:"backend_depth"`
		MessageCount uint64 `json:"message_count"`
		Channels     []struct {
			ChannelName   string `json:"channel_name"`
			Depth         int64  `json:"depth"`
			BackendDepth  int64  `json:"backend_depth"`
			InFlightCount int    `json:"in_flight_count"`
			DeferredCount int    `json:"deferred_count"`
			MessageCount  uint64 `json:"message_count"`
			RequeueCount  uint64 `json:"requeue_count"`
			TimeoutCount  uint64 `json:"timeout_count"`
			ClientCount   int    `json:"client_count"`
		} `json:"channels"`
	} `json:"topics"`
}

// Stats returns nsqd's GET /stats?format=json.
func (n *NSQD) Stats() (*NSQDStats, error) {
	s, err := n.core().Stats()
	return (*NSQDStats)(s), err
}

// TopicDepth returns the depth (memory + disk) and message count of topic,
// with ok false if nsqd does not have the topic.
func (s *NSQDStats) TopicDepth(topic string) (depth int64, messages uint64, ok bool) {
	return (*localstack.NSQDStats)(s).TopicDepth(topic)
}
