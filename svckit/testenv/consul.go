package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consul is a single-node `consul agent -dev` listening on loopback ports. A
// dev agent keeps everything in memory: a restart forgets all registrations
// (svckit's registry must notice and register again).
type Consul struct {
	// HTTPAddr is the HTTP API address, 127.0.0.1:<port>.
	HTTPAddr string
	// Client talks to HTTPAddr.
	Client *api.Client
	// Proc is the agent process.
	Proc *Process
	// NodeName is the agent's node name, unique per agent.
	NodeName string

	// Ports, kept so that Start and Restart reuse them. Serf WAN, DNS, gRPC
	// and gRPC-TLS are disabled.
	HTTPPort, SerfLANPort, ServerPort int

	opts ConsulOptions
}

// ConsulOptions adds configuration to a test agent.
type ConsulOptions struct {
	// HCL snippets passed as -hcl (e.g. an acl block).
	HCL []string
	// Token is used by Client (the management token when ACLs are on).
	Token string
}

// StartConsulWith starts an agent with extra configuration (ACLs, …).
func StartConsulWith(t testing.TB, o ConsulOptions) *Consul {
	t.Helper()
	c := &Consul{opts: o}
	c.pickPorts(t)
	c.Proc = StartProcess(t, "consul", Bin(t, "consul"), c.args(), nil)
	c.Client = newConsulClient(t, c.HTTPAddr, o.Token)
	c.awaitStart(t)
	return c
}

// StartConsul starts a dev agent on free loopback ports and waits (up to
// ConsulReadyTimeout) until it has a leader, answers /v1/agent/self and has
// registered itself in the catalog. If the agent fails because a port was
// taken meanwhile, it is started again on new ports (3 attempts).
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	c := launchConsul(t)
	c.awaitStart(t)
	return c
}

// launchConsul starts the agent without waiting for it.
func launchConsul(t testing.TB) *Consul {
	t.Helper()
	c := &Consul{}
	c.pickPorts(t)
	c.Proc = StartProcess(t, "consul", Bin(t, "consul"), c.args(), nil)
	c.Client = newConsulClient(t, c.HTTPAddr, c.opts.Token)
	return c
}

func (c *Consul) pickPorts(t testing.TB) {
	c.HTTPPort, c.SerfLANPort, c.ServerPort = FreePort(t), FreePort(t), FreePort(t)
	c.HTTPAddr = Addr(c.HTTPPort)
	c.NodeName = fmt.Sprintf("testenv-%d-%d", os.Getpid(), c.HTTPPort)
}

func (c *Consul) args() []string {
	args := []string{
		"agent", "-dev",
		"-node", c.NodeName,
		"-bind", "127.0.0.1",
		"-client", "127.0.0.1",
		"-http-port", strconv.Itoa(c.HTTPPort),
		"-serf-lan-port", strconv.Itoa(c.SerfLANPort),
		"-server-port", strconv.Itoa(c.ServerPort),
		// Not needed, and each would be one more port to collide on. Dev
		// servers default gRPC-TLS to the fixed port 8503: it must be off.
		"-serf-wan-port", "-1",
		"-dns-port", "-1",
		"-grpc-port", "-1",
		"-grpc-tls-port", "-1",
		"-https-port", "-1",
		"-log-level", "warn",
		"-hcl", "disable_update_check = true",
	}
	for _, h := range c.opts.HCL {
		args = append(args, "-hcl", h)
	}
	return args
}

// newConsulClient makes an api.Client for addr that ignores the CONSUL_*
// environment of the test process (address, token, TLS).
func newConsulClient(t testing.TB, addr, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.Scheme = "http"
	cfg.Token, cfg.TokenFile = token, ""
	cfg.HttpAuth = nil
	cfg.TLSConfig = api.TLSConfig{}
	cfg.Datacenter, cfg.Namespace, cfg.Partition = "", "", ""
	cl, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("testenv: consul client: %v", err)
	}
	return cl
}

// awaitStart waits for a freshly launched agent; on a port conflict it
// launches again on new ports.
func (c *Consul) awaitStart(t testing.TB) {
	t.Helper()
	startWithRetry(t, 3,
		func(attempt int) (*Process, error) {
			if attempt > 0 {
				c.pickPorts(t)
				c.Proc = StartProcess(t, "consul", Bin(t, "consul"), c.args(), nil)
				c.Client = newConsulClient(t, c.HTTPAddr, c.opts.Token)
			}
			return c.Proc, nil
		},
		func(p *Process) error { return p.awaitReady(ConsulReadyTimeout, c.Ready) })
}

// Ready reports whether the agent has a leader, answers /v1/agent/self as
// this agent (not something else on the port) and is in the catalog.
func (c *Consul) Ready() bool {
	leader, err := c.Client.Status().Leader()
	if err != nil || leader == "" {
		return false
	}
	self, err := c.Client.Agent().Self()
	if err != nil {
		return false
	}
	if name, _ := self["Config"]["NodeName"].(string); name != c.NodeName {
		return false
	}
	node, _, err := c.Client.Catalog().Node(c.NodeName, nil)
	return err == nil && node != nil && node.Node != nil
}

// Stop stops the agent with SIGTERM (SIGKILL after StopTimeout) and returns
// its exit error. A dev agent is a server, and servers do not leave the
// cluster on SIGTERM (leave_on_terminate=false): consul 1.19 logs "Graceful
// shutdown disabled. Exiting", shuts down in milliseconds and exits with
// status 1. Stop therefore reports exit status 1 after its SIGTERM as nil.
func (c *Consul) Stop() error {
	wasRunning := c.Proc.Running()
	err := c.Proc.Stop()
	var ee *exec.ExitError
	if wasRunning && errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil
	}
	return err
}

// Kill kills the agent with SIGKILL.
func (c *Consul) Kill() { c.Proc.Kill() }

// Start starts a stopped or killed agent again on the same ports and waits
// until it is ready. The new agent knows no services.
func (c *Consul) Start(t testing.TB) {
	t.Helper()
	restartSamePorts(t, c.Proc, ConsulReadyTimeout, c.Ready)
}

// Restart stops the agent (SIGTERM) and starts it again on the same ports.
func (c *Consul) Restart(t testing.TB) {
	t.Helper()
	_ = c.Stop()
	c.Start(t)
}

// Env returns the environment that points consul/api clients (and svckit
// services) at this agent.
func (c *Consul) Env() []string {
	return []string{"CONSUL_HTTP_ADDR=" + c.HTTPAddr}
}

// restartSamePorts starts p again and waits for ready. A port of a program
// that just exited can be taken by someone else for a moment (an outgoing
// connection's ephemeral port), so a start that fails on a port in use is
// tried again, for up to timeout in all.
func restartSamePorts(t testing.TB, p *Process, timeout time.Duration, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for attempt := 1; ; attempt++ {
		if err := p.start(); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		err := p.awaitReady(time.Until(deadline), ready)
		if err == nil {
			return
		}
		if !p.portInUse() || time.Until(deadline) <= 0 || attempt >= 20 {
			t.Fatalf("testenv: restart: %v", err)
		}
		// Back off before trying again rather than spinning.
		timer := time.NewTimer(min(500*time.Millisecond, time.Until(deadline)))
		<-timer.C
	}
}
