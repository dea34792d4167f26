package localstack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
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
	// HTTPSAddr (and HTTPSPort) serve the API over TLS when
	// ConsulOptions.TLS is set; empty otherwise.
	HTTPSAddr string
	HTTPSPort int

	opts ConsulOptions
}

// ConsulOptions adds configuration to an agent.
type ConsulOptions struct {
	// HCL snippets passed as -hcl (e.g. an acl block).
	HCL []string
	// Token is used by Client (the management token when ACLs are on).
	Token string
	// TLS, when its files are set, adds an HTTPS port (HTTPSAddr) serving
	// the API with this certificate; the HTTP port stays, for the harness.
	TLS ConsulTLS
	// Node is the node name (default testenv-<pid>-<port>): a
	// configuration made for a named host (its agent token's policy names
	// the node) needs it.
	Node string
}

// ConsulTLS is an agent's certificate, key and CA (PEM files).
type ConsulTLS struct {
	CAFile, CertFile, KeyFile string
}

// StartConsul starts a dev agent on free loopback ports and waits (up to
// ConsulReadyTimeout) until it has a leader, answers /v1/agent/self and has
// registered itself in the catalog. If the agent fails because a port was
// taken meanwhile, it is started again on new ports (3 attempts).
func (g *Group) StartConsul(o ConsulOptions) (*Consul, error) {
	c, err := g.LaunchConsul(o)
	if err != nil {
		return nil, err
	}
	if err := c.AwaitStart(g); err != nil {
		return nil, err
	}
	return c, nil
}

// LaunchConsul starts the agent without waiting for it: AwaitStart waits.
// Consul takes seconds to boot; something else can start meanwhile.
func (g *Group) LaunchConsul(o ConsulOptions) (*Consul, error) {
	c := &Consul{opts: o}
	if err := c.launch(g); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Consul) launch(g *Group) error {
	if err := c.pickPorts(); err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	bin, err := g.Bin("consul")
	if err != nil {
		return err
	}
	cl, err := newConsulClient(c.HTTPAddr, c.opts.Token)
	if err != nil {
		return err
	}
	c.Client = cl
	p, err := g.StartProcess("consul", bin, c.args(), nil)
	if p != nil {
		c.Proc = p
	}
	return err
}

func (c *Consul) pickPorts() error {
	ps, err := freePorts(4)
	if err != nil {
		return err
	}
	c.HTTPPort, c.SerfLANPort, c.ServerPort = ps[0], ps[1], ps[2]
	if c.opts.TLS.CertFile != "" {
		c.HTTPSPort = ps[3]
		c.HTTPSAddr = Addr(c.HTTPSPort)
	}
	c.HTTPAddr = Addr(c.HTTPPort)
	c.NodeName = fmt.Sprintf("testenv-%d-%d", os.Getpid(), c.HTTPPort)
	if c.opts.Node != "" {
		c.NodeName = c.opts.Node
	}
	return nil
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
	if c.HTTPSPort != 0 {
		t := c.opts.TLS
		args = append(args, "-hcl", fmt.Sprintf(`ports { https = %d }`, c.HTTPSPort),
			"-hcl", fmt.Sprintf(`tls { defaults { ca_file = %q
cert_file = %q
key_file = %q
verify_incoming = false
verify_outgoing = true } }`, t.CAFile, t.CertFile, t.KeyFile))
		// -https-port -1 above would override the HCL port.
		for i := range args {
			if args[i] == "-https-port" {
				args[i+1] = strconv.Itoa(c.HTTPSPort)
			}
		}
	}
	for _, h := range c.opts.HCL {
		args = append(args, "-hcl", h)
	}
	return args
}

// newConsulClient makes an api.Client for addr that ignores the CONSUL_*
// environment of this process (address, token, TLS).
func newConsulClient(addr, token string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.Scheme = "http"
	cfg.Token, cfg.TokenFile = token, ""
	cfg.HttpAuth = nil
	cfg.TLSConfig = api.TLSConfig{}
	cfg.Datacenter, cfg.Namespace, cfg.Partition = "", "", ""
	cl, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return cl, nil
}

// AwaitStart waits for an agent started by LaunchConsul; on a port conflict
// it starts the agent again on new ports (3 attempts in all).
func (c *Consul) AwaitStart(g *Group) error {
	return g.startWithRetry(3,
		func(attempt int) (*Process, error) {
			if attempt > 0 {
				if err := c.launch(g); err != nil {
					return nil, err
				}
			}
			return c.Proc, nil
		},
		func(p *Process) error { return p.AwaitReady(ConsulReadyTimeout, c.Ready) })
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
func (c *Consul) Start() error {
	return restartSamePorts(c.Proc, ConsulReadyTimeout, c.Ready)
}

// Restart stops the agent (SIGTERM) and starts it again on the same ports.
func (c *Consul) Restart() error {
	_ = c.Stop()
	return c.Start()
}

// Env returns the environment that points consul/api clients (and svckit
// services) at this agent.
func (c *Consul) Env() []string {
	return []string{"CONSUL_HTTP_ADDR=" + c.HTTPAddr}
}

// Register registers a service with the agent.
func (c *Consul) Register(reg *api.AgentServiceRegistration) error {
	if err := c.Client.Agent().ServiceRegister(reg); err != nil {
		return fmt.Errorf("register %s in consul %s: %w", reg.ID, c.HTTPAddr, err)
	}
	return nil
}

// Passing returns the passing instances of service (the health API with
// passing only, as svckit's discovery asks).
func (c *Consul) Passing(service string) ([]*api.ServiceEntry, error) {
	entries, _, err := c.Client.Health().Service(service, "", true, nil)
	return entries, err
}

// WaitPassing waits up to timeout until service has exactly n passing
// instances, and returns them. n = 0 waits for the last one to go critical
// or away.
func (c *Consul) WaitPassing(service string, n int, timeout time.Duration) ([]*api.ServiceEntry, error) {
	var got []*api.ServiceEntry
	err := WaitFor(timeout, fmt.Sprintf("%d passing instance(s) of %q in consul %s", n, service, c.HTTPAddr), func() bool {
		entries, err := c.Passing(service)
		got = entries
		return err == nil && len(entries) == n
	})
	return got, err
}
