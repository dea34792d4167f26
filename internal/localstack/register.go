package localstack

import (
	"fmt"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// ServiceID returns the Consul service ID svckit expects for an NSQ program:
// "<name>-127.0.0.1-<tcp port>".
func ServiceID(name string, tcpPort int) string {
	return fmt.Sprintf("%s-127.0.0.1-%d", name, tcpPort)
}

// NSQService returns the registration of an NSQ program as svckit expects to
// find it in Consul: service port = TCP port, meta http_port = HTTP port, an
// HTTP check on /ping every second.
func NSQService(name string, tcpPort, httpPort int) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{
		ID:      ServiceID(name, tcpPort),
		Name:    name,
		Address: "127.0.0.1",
		Port:    tcpPort,
		Meta:    map[string]string{"http_port": strconv.Itoa(httpPort)},
		Check: &api.AgentServiceCheck{
			HTTP:                           fmt.Sprintf("http://%s/ping", Addr(httpPort)),
			Interval:                       "1s",
			Timeout:                        "1s",
			DeregisterCriticalServiceAfter: "1m",
		},
	}
}
