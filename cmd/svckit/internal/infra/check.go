package infra

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Roles of the containers the checks know about.
var (
	// ours are the services built from this repository: configured by
	// environment, they need their Consul agent's address.
	ours = map[string]bool{"sensor": true, "worker": true, "app": true}
	// stateful roles keep state that must survive the container.
	stateful = map[string]bool{"consul": true, "nsqd": true, "sensor": true, "app": true}
)

// CheckOptions tunes Check.
type CheckOptions struct {
	// Secrets is the directory that holds the datacenters' secrets
	// directories (<Secrets>/<dc>, made by ./build.sh secrets, i.e. svckit
	// secrets init --out <Secrets>/<dc>). When set, the configuration file
	// of each Consul agent is read from there and checked too; "" skips
	// that: the secrets are not in the repository.
	Secrets string
}

// Check validates the tree and returns every problem (those Load found
// first), ordered by file, line and service. None means the tree is good.
func Check(t *Tree, o CheckOptions) []Problem {
	ps := problems(append([]Problem(nil), t.Problems...))
	checkBase(t, &ps)
	checkSecurity(t, o, &ps)
	ps.sort()
	return ps
}

// problems collects what the checks find.
type problems []Problem

// add records a problem of host h's file, of container c when not nil (at
// its line unless line says better).
func (ps *problems) add(h *Host, c *Container, line int, format string, a ...any) {
	p := Problem{File: h.File, Line: line, Msg: fmt.Sprintf(format, a...)}
	if c != nil {
		p.Service = c.Name
		if p.Line == 0 {
			p.Line = c.Line
		}
	}
	*ps = append(*ps, p)
}

// addFile records a problem of a file that is not a host's (a
// datacenter's acl.flags, say).
func (ps *problems) addFile(file string, line int, format string, a ...any) {
	*ps = append(*ps, Problem{File: file, Line: line, Msg: fmt.Sprintf(format, a...)})
}

// sort orders the problems by file, line and service.
func (ps problems) sort() {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Service < b.Service
	})
}

// checkBase: the checks of a tree that runs (images, ports, state, health,
// nsqd's flush floor and its authorization server); checkSecurity has those
// of a tree that runs secure.
func checkBase(t *Tree, ps *problems) {
	add := ps.add
	for _, dc := range t.Datacenters {
		checkNSQDFlush(dc, add)
		checkNSQDAuth(dc, add)
		type owner struct {
			host, service string
		}
		dcPorts := map[string]owner{} // proto/port → first host publishing it
		for _, h := range dc.Hosts {
			type pub struct {
				ip      string
				service string
			}
			hostPorts := map[string][]pub{} // proto/port → publishers on this host
			for i := range h.Containers {
				c := &h.Containers[i]
				checkImage(t, h, c, add)
				checkRunPolicy(h, c, add)
				if ours[c.Role] {
					checkOurs(h, c, add)
					checkDataDir(t, h, c, add)
				}
				if stateful[c.Role] {
					checkState(h, c, add)
				}
				for _, p := range c.Ports {
					if !p.Fixed() {
						continue
					}
					for _, n := range portNumbers(p.Published) {
						key := fmt.Sprintf("%d/%s", n, p.Protocol)
						for _, other := range hostPorts[key] {
							if sameHostIP(other.ip, p.HostIP) {
								who := "service " + other.service
								if other.service == c.Name {
									who = "this service"
								}
								add(h, c, p.Line, "host port %s is published twice on this host (also by %s)", key, who)
								break
							}
						}
						hostPorts[key] = append(hostPorts[key], pub{p.HostIP, c.Name})
						if o, ok := dcPorts[key]; ok && o.host != h.Name {
							add(h, c, p.Line, "host port %s is also published by host %s (service %s): the hosts of datacenter %s must be able to share one engine",
								key, o.host, o.service, dc.Name)
						} else if !ok {
							dcPorts[key] = owner{h.Name, c.Name}
						}
					}
				}
			}
		}
	}
}

type addFunc func(h *Host, c *Container, line int, format string, a ...any)

// nsqdMinFlush and nsqdFlush are nsqd's defaults for
// --min-output-buffer-timeout and --output-buffer-timeout; svckit's
// consumers ask for svckitFlush unless SVCKIT_NSQ_OUTPUT_BUFFER_TIMEOUT says
// otherwise (or SVCKIT_NSQ_OUTPUT_BUFFER_SIZE=-1 turns buffering off).
const (
	nsqdMinFlush = 25 * time.Millisecond
	nsqdFlush    = 250 * time.Millisecond
	svckitFlush  = 100 * time.Microsecond
)

// checkNSQDFlush: a consumer asks nsqd for its flush timeout in IDENTIFY, in
// whole milliseconds, and nsqd refuses one below its
// --min-output-buffer-timeout (the consumer then never connects). A timeout
// below a millisecond is sent as 0, which gets nsqd's own
// --output-buffer-timeout: above what was asked, every lone message waits
// for it. Every nsqd of a datacenter must serve the smallest timeouts its
// svckit services ask for, of both kinds.
func checkNSQDFlush(dc *Datacenter, add addFunc) {
	// The smallest timeout asked below 1ms, and at 1ms or more.
	var sub, whole time.Duration
	var subWho, wholeWho string
	for _, h := range dc.Hosts {
		for i := range h.Containers {
			c := &h.Containers[i]
			if !ours[c.Role] || c.Env["SVCKIT_NSQ_OUTPUT_BUFFER_SIZE"] == "-1" {
				continue
			}
			d := svckitFlush
			if v, ok := c.Env["SVCKIT_NSQ_OUTPUT_BUFFER_TIMEOUT"]; ok {
				var err error
				if d, err = time.ParseDuration(v); err != nil || d <= 0 {
					continue // interpolated or invalid: the service itself will say
				}
			}
			who := fmt.Sprintf("%s on host %s", c.Name, h.Name)
			switch {
			case d < time.Millisecond && (sub == 0 || d < sub):
				sub, subWho = d, who
			case d >= time.Millisecond && (whole == 0 || d < whole):
				whole, wholeWho = d, who
			}
		}
	}
	if sub == 0 && whole == 0 {
		return
	}
	for _, h := range dc.Hosts {
		for i := range h.Containers {
			c := &h.Containers[i]
			if c.Role != "nsqd" {
				continue
			}
			args := append(append([]string(nil), c.Entrypoint...), c.Command...)
			flush, flushWhat := nsqdFlush, "nsqd's default"
			if v := flagValue(args, "output-buffer-timeout"); v != "" {
				d, err := time.ParseDuration(v)
				switch {
				case err != nil:
					add(h, c, 0, "--output-buffer-timeout %q is not a duration", v)
					flush = 0
				case d <= 0:
					// nsqd starts every client's flush ticker with it
					// before IDENTIFY: time.NewTicker panics.
					add(h, c, 0, "--output-buffer-timeout=%s: nsqd would panic at its first connection; want a positive duration such as 100us", v)
					flush = 0
				default:
					flush, flushWhat = d, "set here"
				}
			}
			if sub > 0 && flush > sub {
				// "us": what a compose file can hold without µ.
				add(h, c, 0, "--output-buffer-timeout is %s (%s), above the %s flush timeout svckit consumers ask for (%s): every lone message would wait for it; set --output-buffer-timeout=%s",
					flush, flushWhat, sub, subWho, strings.ReplaceAll(sub.String(), "µ", "u"))
			}
			if whole > 0 {
				floor, what := nsqdMinFlush, "nsqd's default"
				if v := flagValue(args, "min-output-buffer-timeout"); v != "" {
					d, err := time.ParseDuration(v)
					if err != nil {
						add(h, c, 0, "--min-output-buffer-timeout %q is not a duration", v)
						continue
					}
					floor, what = d, "set here"
				}
				if floor > whole {
					add(h, c, 0, "--min-output-buffer-timeout is %s (%s), above the %s flush timeout svckit consumers ask for (%s): nsqd would refuse them; set --min-output-buffer-timeout=%s",
						floor, what, whole, wholeWho, whole)
				}
			}
		}
	}
}

// sameHostIP reports whether two host addresses of published ports clash:
// the same address, or either is every address.
func sameHostIP(a, b string) bool {
	any := func(s string) bool { return s == "" || s == "0.0.0.0" || s == "::" }
	return a == b || any(a) || any(b)
}

func checkImage(t *Tree, h *Host, c *Container, add addFunc) {
	if c.Build != "" {
		if _, err := os.Stat(c.Dockerfile); err != nil {
			add(h, c, 0, "build: no Dockerfile at %s", c.Dockerfile)
			return
		}
		rel, err := filepath.Rel(filepath.Join(t.Root, ImagesDir), c.Dockerfile)
		if err != nil || strings.HasPrefix(rel, "..") {
			add(h, c, 0, "build: %s is not under %s/ (every image has its Dockerfile in images/<name>/)", c.Dockerfile, ImagesDir)
		}
		return
	}
	name, ok := strings.CutPrefix(c.Image, ImagePrefix)
	if ok {
		if i := strings.IndexAny(name, ":@"); i >= 0 {
			name = name[:i]
		}
	}
	switch {
	case !ok:
		add(h, c, 0, "image %q has no Dockerfile under %s/: nothing can be pulled here, every image is svckit/<name> built from %s/<name>/Dockerfile", c.Image, ImagesDir, ImagesDir)
	case !t.Images[name]:
		add(h, c, 0, "image %q has no Dockerfile under %s/ (want %s)", c.Image, ImagesDir, path.Join(ImagesDir, name, "Dockerfile"))
	}
}

func checkRunPolicy(h *Host, c *Container, add addFunc) {
	switch c.Restart {
	case "":
		add(h, c, 0, "no restart policy (want restart: unless-stopped, always or on-failure)")
	case "no":
		add(h, c, 0, "restart: no: a container that exits stays down (want unless-stopped, always or on-failure)")
	}
	switch hc := c.Healthcheck; {
	case hc == nil:
		add(h, c, 0, "no healthcheck (images are FROM scratch: use the binaries, e.g. [\"CMD\", \"/bin/svckit\", \"probe\", \"http://127.0.0.1:PORT/health\"])")
	case hc.Disabled:
		add(h, c, hc.Line, "healthcheck is disabled")
	case len(hc.Test) > 0 && hc.Test[0] == "CMD-SHELL":
		add(h, c, hc.Line, "healthcheck needs a shell (CMD-SHELL or a string test), which images FROM scratch do not have: use [\"CMD\", …]")
	}
}

func checkOurs(h *Host, c *Container, add addFunc) {
	if c.Env["CONSUL_HTTP_ADDR"] == "" {
		add(h, c, 0, "no CONSUL_HTTP_ADDR in its environment: a service of ours is given only its Consul agent's address (the default 127.0.0.1:8500 is the container itself)")
	}
	if a, ok := c.Env["SVCKIT_HTTP_ADDR"]; ok {
		host, _, err := net.SplitHostPort(a)
		if ip := net.ParseIP(host); err == nil && (host == "localhost" || (ip != nil && ip.IsLoopback())) {
			add(h, c, 0, "SVCKIT_HTTP_ADDR=%s listens on loopback only: Consul's health check and the other containers cannot reach it (want 0.0.0.0:PORT)", a)
		}
	}
}

func checkState(h *Host, c *Container, add addFunc) {
	var durable []Volume
	for _, v := range c.Volumes {
		if v.Type != "tmpfs" {
			durable = append(durable, v)
		}
	}
	dir := dataDir(c)
	if len(durable) == 0 {
		add(h, c, 0, "%s keeps state (in %s) but has no volume: it is lost with the container", c.Role, dir)
		return
	}
	for _, v := range durable {
		t := strings.TrimSuffix(v.Target, "/")
		if dir == t || strings.HasPrefix(dir, t+"/") {
			return
		}
	}
	add(h, c, 0, "%s keeps its state in %s, which none of its volumes covers", c.Role, dir)
}

// dataDir is where a stateful container keeps its state.
func dataDir(c *Container) string {
	args := append(append([]string(nil), c.Entrypoint...), c.Command...)
	switch c.Role {
	case "consul":
		if d := flagValue(args, "data-dir"); d != "" {
			return d
		}
		return "/consul/data"
	case "nsqd":
		if d := flagValue(args, "data-path"); d != "" {
			return d
		}
		return "/data" // the nsq image's working directory
	}
	if d := c.Env["SVCKIT_DATA_DIR"]; d != "" {
		return d
	}
	return "/data" // our images' SVCKIT_DATA_DIR
}

// flagValue finds -name=v, --name=v, -name v or --name v in args.
func flagValue(args []string, name string) string {
	// Go's flag package (consul's, nsqd's, ours) keeps the last of several.
	v := flagValues(args, name)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}
