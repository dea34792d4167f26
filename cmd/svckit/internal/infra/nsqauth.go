package infra

import (
	"net"
	"slices"
	"strings"
)

// NSQAuthRole is the role of a container running nsqd's authorization
// server: the svckit image with the command `nsqauth serve`.
const NSQAuthRole = "nsqauth"

// nsqdDefaultHTTP is where nsqd serves its HTTP API without --http-address.
const nsqdDefaultHTTP = "0.0.0.0:4151"

// checkNSQDAuth: who may publish where. An nsqd of a datacenter must ask an
// authorization server (--auth-http-address): without one, whoever reaches
// its TCP port publishes to any topic. Every address it is given must name
// an nsqauth container of the datacenter (its service name or a network
// alias, and the port it listens on), or nsqd asks nothing that answers
// and refuses every client. Its HTTP API, which the auth protocol does not
// cover (/pub takes any topic from anyone), must listen on loopback only.
// nsqauth containers are services of ours: they get checkOurs.
func checkNSQDAuth(dc *Datacenter, add addFunc) {
	servers := map[string]string{} // name or alias → port it listens on ("" unknown)
	for _, h := range dc.Hosts {
		for i := range h.Containers {
			c := &h.Containers[i]
			if c.Role != NSQAuthRole {
				continue
			}
			checkOurs(h, c, add)
			port := ""
			if a := c.Env["SVCKIT_HTTP_ADDR"]; a != "" {
				_, port, _ = net.SplitHostPort(a)
			}
			for _, n := range append([]string{c.Name}, c.Aliases...) {
				servers[n] = port
			}
		}
	}
	for _, h := range dc.Hosts {
		for i := range h.Containers {
			c := &h.Containers[i]
			if c.Role != "nsqd" {
				continue
			}
			args := append(append([]string(nil), c.Entrypoint...), c.Command...)
			addrs := flagValues(args, "auth-http-address")
			if len(addrs) == 0 {
				add(h, c, 0, "no --auth-http-address: whoever reaches its TCP port may publish to any topic (run svckit nsqauth serve in datacenter %s and give nsqd its address)", dc.Name)
			}
			for _, a := range addrs {
				host, port, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(a, "http://"), "https://"))
				if i := strings.Index(port, "/"); i >= 0 {
					port = port[:i] // a full URL: http://host:port/auth
				}
				want, ok := servers[host]
				switch {
				case err != nil:
					add(h, c, 0, "--auth-http-address %q: want HOST:PORT", a)
				case !ok:
					add(h, c, 0, "--auth-http-address %s names no nsqauth container of datacenter %s (by service name or network alias): nsqd would refuse every client", a, dc.Name)
				case want != "" && want != port:
					add(h, c, 0, "--auth-http-address %s: nsqauth %s listens on port %s", a, host, want)
				}
			}
			httpAddr := flagValue(args, "http-address")
			if httpAddr == "" {
				httpAddr = nsqdDefaultHTTP
			}
			if host, _, err := net.SplitHostPort(httpAddr); err == nil {
				if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
					add(h, c, 0, "--http-address %s: nsqd's HTTP API is not covered by NSQ's auth (its /pub takes any topic from anyone who reaches it): bind it to 127.0.0.1 (the container's health check still reaches it)", httpAddr)
				}
			}
		}
	}
}

// flagValues finds every -name=v, --name=v, -name v or --name v in args (a
// repeatable flag).
func flagValues(args []string, name string) []string {
	var out []string
	for i, a := range args {
		for _, p := range []string{"-" + name, "--" + name} {
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				out = append(out, v)
			} else if a == p && i+1 < len(args) {
				out = append(out, args[i+1])
			}
		}
	}
	return out
}

// isNSQAuth reports whether a container of the svckit image runs the
// authorization server (its command is `nsqauth serve …`).
func isNSQAuth(name string, c Container) bool {
	prog := svckitCommand(c)
	return name == "svckit" && len(prog) >= 2 && prog[0] == "nsqauth" && prog[1] == "serve"
}

// svckitCommand is the svckit command line a container of the svckit
// image runs (its entrypoint is /bin/svckit), without the program.
func svckitCommand(c Container) []string {
	prog := slices.Clone(c.Entrypoint)
	if len(prog) > 0 && path0(prog[0]) == "svckit" {
		prog = prog[1:]
	}
	if len(prog) == 0 {
		return c.Command
	}
	return append(prog, c.Command...)
}

func path0(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
