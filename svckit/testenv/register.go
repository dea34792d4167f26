package testenv

import (
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/localstack"
)

// ServiceID returns the Consul service ID svckit expects for an NSQ program:
// "<name>-127.0.0.1-<tcp port>".
func ServiceID(name string, tcpPort int) string { return localstack.ServiceID(name, tcpPort) }

// NSQService returns the registration of an NSQ program as svckit expects to
// find it in Consul: service port = TCP port, meta http_port = HTTP port, an
// HTTP check on /ping every second.
func NSQService(name string, tcpPort, httpPort int) *api.AgentServiceRegistration {
	return localstack.NSQService(name, tcpPort, httpPort)
}

// RegisterNSQD registers n in c as service "nsqd".
func RegisterNSQD(t testing.TB, c *Consul, n *NSQD) {
	t.Helper()
	Register(t, c, NSQService("nsqd", n.TCPPort, n.HTTPPort))
}

// RegisterNSQLookupd registers l in c as service "nsqlookupd".
func RegisterNSQLookupd(t testing.TB, c *Consul, l *NSQLookupd) {
	t.Helper()
	Register(t, c, NSQService("nsqlookupd", l.TCPPort, l.HTTPPort))
}

// Register registers a service with the agent, failing the test on error.
func Register(t testing.TB, c *Consul, reg *api.AgentServiceRegistration) {
	t.Helper()
	if err := c.core().Register(reg); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Passing returns the passing instances of service (the health API with
// passing only, as svckit's discovery asks).
func Passing(c *Consul, service string) ([]*api.ServiceEntry, error) {
	return c.core().Passing(service)
}

// WaitPassing waits (up to PassingTimeout) until service has exactly n
// passing instances in c, and returns them. n = 0 waits for the last one to
// go critical or away.
func WaitPassing(t testing.TB, c *Consul, service string, n int) []*api.ServiceEntry {
	t.Helper()
	var got []*api.ServiceEntry
	WaitFor(t, PassingTimeout, fmt.Sprintf("%d passing instance(s) of %q in consul %s", n, service, c.HTTPAddr), func() bool {
		entries, err := Passing(c, service)
		got = entries
		return err == nil && len(entries) == n
	})
	return got
}

// WaitPassingAtLeast waits until service has at least n passing instances.
func WaitPassingAtLeast(t testing.TB, c *Consul, service string, n int) []*api.ServiceEntry {
	t.Helper()
	var got []*api.ServiceEntry
	WaitFor(t, PassingTimeout, fmt.Sprintf("at least %d passing instance(s) of %q in consul %s", n, service, c.HTTPAddr), func() bool {
		entries, err := Passing(c, service)
		got = entries
		return err == nil && len(entries) >= n
	})
	return got
}
