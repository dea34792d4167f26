package testenv

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/localstack"
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
	// HTTPSAddr serves the API over TLS when ConsulOptions.TLS is set.
	HTTPSAddr string
}

// ConsulOptions adds configuration to a test agent. The zero value is
// ready to use (StartConsul's).
type ConsulOptions struct {
	// HCL snippets passed as -hcl (e.g. an acl block).
	HCL []string
	// Token is used by Client (the management token when ACLs are on).
	Token string
	// TLS, when its files are set, adds an HTTPS port (HTTPSAddr) serving
	// the API with this certificate; the HTTP port stays, for the test.
	TLS ConsulTLS
	// Node is the node name (default testenv-<pid>-<port>, unique).
	Node string
}

// ConsulTLS is an agent's CA, certificate and key (PEM files).
type ConsulTLS = localstack.ConsulTLS

func consulOf(c *localstack.Consul) *Consul {
	return &Consul{
		HTTPAddr: c.HTTPAddr, Client: c.Client, Proc: wrap(c.Proc), NodeName: c.NodeName,
		HTTPPort: c.HTTPPort, SerfLANPort: c.SerfLANPort, ServerPort: c.ServerPort,
		HTTPSAddr: c.HTTPSAddr,
	}
}

// core returns the localstack view of c's fields.
func (c *Consul) core() *localstack.Consul {
	return &localstack.Consul{
		HTTPAddr: c.HTTPAddr, Client: c.Client, Proc: c.Proc.core(), NodeName: c.NodeName,
		HTTPPort: c.HTTPPort, SerfLANPort: c.SerfLANPort, ServerPort: c.ServerPort,
	}
}

// StartConsulWith starts an agent with extra configuration (ACLs, …).
func StartConsulWith(t testing.TB, o ConsulOptions) *Consul {
	t.Helper()
	c, err := group(t).StartConsul(localstack.ConsulOptions(o))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return consulOf(c)
}

// StartConsul starts a dev agent on free loopback ports and waits (up to
// ConsulReadyTimeout) until it has a leader, answers /v1/agent/self and has
// registered itself in the catalog. If the agent fails because a port was
// taken meanwhile, it is started again on new ports (3 attempts).
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	return StartConsulWith(t, ConsulOptions{})
}

// Ready reports whether the agent has a leader, answers /v1/agent/self as
// this agent (not something else on the port) and is in the catalog.
func (c *Consul) Ready() bool { return c.core().Ready() }

// Stop stops the agent with SIGTERM (SIGKILL after StopTimeout) and returns
// its exit error. A dev agent is a server, and servers do not leave the
// cluster on SIGTERM (leave_on_terminate=false): consul 1.19 logs "Graceful
// shutdown disabled. Exiting", shuts down in milliseconds and exits with
// status 1. Stop therefore reports exit status 1 after its SIGTERM as nil.
func (c *Consul) Stop() error { return c.core().Stop() }

// Kill kills the agent with SIGKILL.
func (c *Consul) Kill() { c.Proc.Kill() }

// Start starts a stopped or killed agent again on the same ports and waits
// until it is ready. The new agent knows no services.
func (c *Consul) Start(t testing.TB) {
	t.Helper()
	if err := c.core().Start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Restart stops the agent (SIGTERM) and starts it again on the same ports.
func (c *Consul) Restart(t testing.TB) {
	t.Helper()
	_ = c.Stop()
	c.Start(t)
}

// Env returns the environment that points consul/api clients (and svckit
// services) at this agent.
func (c *Consul) Env() []string { return c.core().Env() }
