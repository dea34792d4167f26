package localstack

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// servesHTTP reports whether the HTTP server at httpAddr is p itself: nsqd and
// nsqlookupd serve /debug/pprof/cmdline, which must be p's exact command line.
// This tells p from another program that took the port while p failed to
// bind it.
func (p *Process) servesHTTP(httpAddr string) bool {
	code, body, err := HTTPGet("http://" + httpAddr + "/debug/pprof/cmdline")
	want := strings.Join(append([]string{p.o.Bin}, p.o.Args...), "\x00")
	return err == nil && code == http.StatusOK && body == want
}

// NSQLookupd is a running nsqlookupd.
type NSQLookupd struct {
	TCPAddr, HTTPAddr string // 127.0.0.1:<port>
	TCPPort, HTTPPort int
	Proc              *Process
}

// StartNSQLookupd starts nsqlookupd on free loopback ports and waits until
// GET /ping answers OK (3 attempts on new ports if a port was taken).
func (g *Group) StartNSQLookupd() (*NSQLookupd, error) {
	bin, err := g.Bin("nsqlookupd")
	if err != nil {
		return nil, err
	}
	l := &NSQLookupd{}
	err = g.startWithRetry(3,
		func(int) (*Process, error) {
			ps, err := freePorts(2)
			if err != nil {
				return nil, fmt.Errorf("nsqlookupd: %w", err)
			}
			l.TCPPort, l.HTTPPort = ps[0], ps[1]
			l.TCPAddr, l.HTTPAddr = Addr(l.TCPPort), Addr(l.HTTPPort)
			p, err := g.StartProcess("nsqlookupd", bin, []string{
				"--tcp-address=" + l.TCPAddr,
				"--http-address=" + l.HTTPAddr,
				"--broadcast-address=127.0.0.1",
			}, nil)
			if p != nil {
				l.Proc = p
			}
			return p, err
		},
		func(p *Process) error { return p.AwaitReady(NSQReadyTimeout, l.Ready) })
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Ready reports whether this nsqlookupd answers /ping.
func (l *NSQLookupd) Ready() bool { return pingOK(l.HTTPAddr) && l.Proc.servesHTTP(l.HTTPAddr) }

// Stop stops nsqlookupd with SIGTERM and returns its exit error.
func (l *NSQLookupd) Stop() error { return l.Proc.Stop() }

// Kill kills nsqlookupd with SIGKILL.
func (l *NSQLookupd) Kill() { l.Proc.Kill() }

// Start starts a stopped nsqlookupd again on the same ports and waits for /ping.
func (l *NSQLookupd) Start() error {
	return restartSamePorts(l.Proc, NSQReadyTimeout, l.Ready)
}

// Restart stops nsqlookupd and starts it again on the same ports.
func (l *NSQLookupd) Restart() error {
	_ = l.Stop()
	return l.Start()
}

// Producers returns the TCP addresses (127.0.0.1:<port>) of the nsqd
// instances registered with this lookupd (GET /nodes).
func (l *NSQLookupd) Producers() ([]string, error) {
	code, body, err := HTTPGet("http://" + l.HTTPAddr + "/nodes")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("nsqlookupd /nodes: %d %s", code, body)
	}
	var resp struct {
		Producers []struct {
			BroadcastAddress string `json:"broadcast_address"`
			TCPPort          int    `json:"tcp_port"`
		} `json:"producers"`
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		return nil, fmt.Errorf("nsqlookupd /nodes: %w", err)
	}
	var out []string
	for _, p := range resp.Producers {
		out = append(out, fmt.Sprintf("%s:%d", p.BroadcastAddress, p.TCPPort))
	}
	return out, nil
}

// WaitProducer waits (up to NSQReadyTimeout) until the nsqd at tcpAddr is
// registered with l.
func (l *NSQLookupd) WaitProducer(tcpAddr string) error {
	return WaitFor(NSQReadyTimeout, "nsqd "+tcpAddr+" to register with nsqlookupd "+l.TCPAddr, func() bool {
		ps, err := l.Producers()
		if err != nil {
			return false
		}
		for _, p := range ps {
			if p == tcpAddr {
				return true
			}
		}
		return false
	})
}

// NSQDOptions configures StartNSQD.
type NSQDOptions struct {
	// LookupdTCPAddrs are the nsqlookupd TCP addresses nsqd registers with.
	LookupdTCPAddrs []string
	// MemQueueSize is nsqd's --mem-queue-size: 0 leaves nsqd's default
	// (10000); a negative value passes 0, which in nsqd 1.3 means no memory
	// queue at all (every message goes to the disk queue; ephemeral
	// topics/channels keep a memory queue regardless).
	MemQueueSize int
	// DataDir is nsqd's --data-path; "" means a new directory (Group.NewDir).
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

// StartNSQD starts nsqd on free loopback ports and waits until GET /ping
// answers OK (3 attempts on new ports if a port was taken).
func (g *Group) StartNSQD(o NSQDOptions) (*NSQD, error) {
	bin, err := g.Bin("nsqd")
	if err != nil {
		return nil, err
	}
	n := &NSQD{DataDir: o.DataDir}
	if n.DataDir == "" {
		if n.DataDir, err = g.NewDir(); err != nil {
			return nil, fmt.Errorf("nsqd data dir: %w", err)
		}
	} else if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("nsqd data dir: %w", err)
	}
	err = g.startWithRetry(3,
		func(int) (*Process, error) {
			ps, err := freePorts(2)
			if err != nil {
				return nil, fmt.Errorf("nsqd: %w", err)
			}
			n.TCPPort, n.HTTPPort = ps[0], ps[1]
			n.TCPAddr, n.HTTPAddr = Addr(n.TCPPort), Addr(n.HTTPPort)
			args := []string{
				"--tcp-address=" + n.TCPAddr,
				"--http-address=" + n.HTTPAddr,
				"--broadcast-address=127.0.0.1",
				"--data-path=" + n.DataDir,
				// Differs between the nsqds of a stack (nsqd derives its
				// default from the hostname), stable across restarts.
				"--node-id=" + strconv.Itoa(n.TCPPort%1024),
				// svckit consumers flush within nsqd's own
				// --output-buffer-timeout by default (100us, below what
				// IDENTIFY can ask for: see --nsq-output-buffer-timeout);
				// go-nsq consumers here ask for 1ms, and stock nsqd allows
				// 25ms at least.
				"--min-output-buffer-timeout=1ms",
				"--output-buffer-timeout=100us",
			}
			for _, a := range o.LookupdTCPAddrs {
				args = append(args, "--lookupd-tcp-address="+a)
			}
			switch {
			case o.MemQueueSize > 0:
				args = append(args, "--mem-queue-size="+strconv.Itoa(o.MemQueueSize))
			case o.MemQueueSize < 0:
				args = append(args, "--mem-queue-size=0")
			}
			args = append(args, o.ExtraArgs...)
			p, err := g.StartProcess("nsqd", bin, args, nil)
			if p != nil {
				n.Proc = p
			}
			return p, err
		},
		func(p *Process) error { return p.AwaitReady(NSQReadyTimeout, n.Ready) })
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Ready reports whether this nsqd answers /ping with OK (nsqd answers 500
// when it is unhealthy, e.g. its disk queue failed).
func (n *NSQD) Ready() bool { return pingOK(n.HTTPAddr) && n.Proc.servesHTTP(n.HTTPAddr) }

// Stop stops nsqd with SIGTERM (it flushes its memory queues to the data dir)
// and returns its exit error.
func (n *NSQD) Stop() error { return n.Proc.Stop() }

// Kill kills nsqd with SIGKILL: what was in its memory queues is lost.
func (n *NSQD) Kill() { n.Proc.Kill() }

// Start starts a stopped or killed nsqd again with the same ports and data
// dir and waits for /ping.
func (n *NSQD) Start() error {
	return restartSamePorts(n.Proc, NSQReadyTimeout, n.Ready)
}

// Restart stops nsqd (SIGTERM) and starts it again on the same ports and data
// dir.
func (n *NSQD) Restart() error {
	_ = n.Stop()
	return n.Start()
}

// Publish publishes body to topic through nsqd's HTTP /pub.
func (n *NSQD) Publish(topic string, body []byte) error {
	code, resp, err := HTTPPost("http://"+n.HTTPAddr+"/pub?topic="+topic, "application/octet-stream", body)
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("nsqd %s /pub?topic=%s: %d %q %v", n.HTTPAddr, topic, code, resp, err)
	}
	return nil
}

// DeleteTopic deletes topic (its channels and messages) through nsqd's HTTP
// /topic/delete.
func (n *NSQD) DeleteTopic(topic string) error {
	code, resp, err := HTTPPost("http://"+n.HTTPAddr+"/topic/delete?topic="+topic, "", nil)
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("nsqd %s /topic/delete?topic=%s: %d %q %v", n.HTTPAddr, topic, code, resp, err)
	}
	return nil
}

// NSQDStats is the part of nsqd's /stats svckit looks at.
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
	code, body, err := HTTPGet("http://" + n.HTTPAddr + "/stats?format=json")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("nsqd /stats: %d %s", code, body)
	}
	var s NSQDStats
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		return nil, fmt.Errorf("nsqd /stats: %w", err)
	}
	return &s, nil
}

// TopicDepth returns the depth (memory + disk) and message count of topic,
// with ok false if nsqd does not have the topic.
func (s *NSQDStats) TopicDepth(topic string) (depth int64, messages uint64, ok bool) {
	for _, tp := range s.Topics {
		if tp.TopicName == topic {
			return tp.Depth, tp.MessageCount, true
		}
	}
	return 0, 0, false
}
