package infra

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// repoRoot is the repository, four levels up from this package.
const repoRoot = "../../../.."

func loadCommitted(t *testing.T) *Tree {
	t.Helper()
	tr, err := Load(repoRoot, Options{})
	if err != nil {
		t.Fatalf("Load(%s): %v", repoRoot, err)
	}
	return tr
}

// baseProblems is what Check finds without checkSecurity. The fixtures of
// the tests that use it predate secure-by-default datacenters: each would
// also show every problem of an insecure datacenter, which
// TestSecurityFixtures covers.
func baseProblems(t *Tree) []Problem {
	ps := problems(append([]Problem(nil), t.Problems...))
	checkBase(t, &ps)
	ps.sort()
	return ps
}

// The committed tree is clean, and it is the tree the README describes.
func TestCommittedTreeChecksClean(t *testing.T) {
	tr := loadCommitted(t)
	for _, p := range Check(tr, CheckOptions{}) {
		t.Errorf("%s", p)
	}
	var hosts []string
	for _, dc := range tr.Datacenters {
		for _, h := range dc.Hosts {
			hosts = append(hosts, dc.Name+"/"+h.Name)
		}
	}
	for _, want := range []string{"dev/host1", "aws/node1", "aws/node2", "aws/node3"} {
		if !slices.Contains(hosts, want) {
			t.Errorf("no host %s in the tree (have %v)", want, hosts)
		}
	}
	for _, img := range []string{"sensor", "worker", "app", "svckit", "consul", "nsq"} {
		if !tr.Images[img] {
			t.Errorf("no images/%s/Dockerfile", img)
		}
	}
}

// dev/host1 runs what the Procfile runs but nsqadmin (which has no
// authentication), and publishes the Consul UI on the host (HTTPS,
// configurable, 127.0.0.1:8501 by default).
func TestDevHost1IsTheProcfile(t *testing.T) {
	h := loadCommitted(t).Host("dev", "host1")
	if h == nil {
		t.Fatal("no dev/host1")
	}
	roles := map[string]int{}
	for _, c := range h.Containers {
		roles[c.Role]++
	}
	want := map[string]int{"consul": 1, "nsqlookupd": 1, "nsqd": 1, "nsqadmin": 0, "nsqauth": 1, "sensor": 1, "worker": 2, "app": 1}
	for r, n := range want {
		if roles[r] != n {
			t.Errorf("dev/host1 runs %d %s, want %d (roles %v)", roles[r], r, n, roles)
		}
	}
	if c := h.Container("consul"); c == nil || len(c.Ports) != 1 || c.Ports[0].String() != "127.0.0.1:8501->8501/tcp" {
		t.Errorf("consul should publish its HTTPS API on 127.0.0.1:8501: %+v", c)
	}
	env := func(k, v string) Lookup {
		return func(n string) (string, bool) {
			if n == k {
				return v, true
			}
			return "", false
		}
	}
	tr, err := Load(repoRoot, Options{Env: env("DC_CONSUL_PUBLISH", "127.0.0.1:18501")})
	if err != nil {
		t.Fatal(err)
	}
	if p := tr.Host("dev", "host1").Container("consul").Ports[0]; p.HostIP != "127.0.0.1" || p.Published != "18501" {
		t.Errorf("DC_CONSUL_PUBLISH=127.0.0.1:18501 gives %s", p)
	}
}

// Consistency the checks do not cover: within each datacenter, every host's
// Consul agent registers that host's nsqd and nsqlookupd under the names
// they broadcast, every nsqd registers with every nsqlookupd, and every
// service of ours talks to its own host's agent.
func TestDatacentersAreWiredConsistently(t *testing.T) {
	tr := loadCommitted(t)
	for _, dc := range tr.Datacenters {
		var lookupds []string // nsqlookupd broadcast addresses with TCP port
		for _, h := range dc.Hosts {
			for _, c := range h.Containers {
				if c.Role == "nsqlookupd" {
					lookupds = append(lookupds, flagValue(c.Command, "broadcast-address")+":4160")
				}
			}
		}
		if len(lookupds) == 0 {
			t.Errorf("datacenter %s has no nsqlookupd", dc.Name)
		}
		for _, h := range dc.Hosts {
			consul := h.Container("consul")
			if consul == nil {
				t.Errorf("%s: no consul agent", h.File)
				continue
			}
			if len(consul.Ports) == 0 || consul.Ports[0].Target != "8501" {
				t.Errorf("%s: consul does not publish its HTTPS API (8501): %v", h.File, consul.Ports)
			}
			hcl := strings.Join(consul.Command, "\n")
			// On a network shared by the hosts of a datacenter, bare service
			// names resolve to every host's container: names are <host>-….
			prefix := ""
			for _, n := range h.Networks {
				if n.External {
					prefix = h.Name + "-"
				}
			}
			consulAddr := "https://" + prefix + "consul:8501"
			if prefix != "" && !slices.Contains(consul.Aliases, prefix+"consul") {
				t.Errorf("%s: consul has no alias %sconsul on the shared network (aliases %v)", h.File, prefix, consul.Aliases)
			}
			var nsqds int
			for _, c := range h.Containers {
				switch c.Role {
				case "nsqd", "nsqlookupd":
					b := flagValue(c.Command, "broadcast-address")
					if b != prefix+c.Role || !(b == c.Name || slices.Contains(c.Aliases, b)) {
						t.Errorf("%s: %s broadcasts %q, want %q, a name it has on the network (aliases %v)", h.File, c.Name, b, prefix+c.Role, c.Aliases)
					}
					wants := []string{`name    = "` + c.Role + `"`, `address = "` + b + `"`}
					if c.Role == "nsqlookupd" {
						wants = append(wants, `http = "http://`+b+`:4161/ping"`, `meta    = { http_port = "4161" }`)
					} else {
						// nsqd's HTTP API is on its container's loopback
						// (NSQ's auth does not cover it): a TCP check, and
						// no http_port for consumers to call.
						wants = append(wants, `tcp = "`+b+`:4150"`)
						if strings.Contains(hcl, `http_port = "4151"`) {
							t.Errorf("%s: the consul agent registers nsqd with its HTTP port, which only its own container reaches", h.File)
						}
					}
					for _, want := range wants {
						if !strings.Contains(hcl, want) {
							t.Errorf("%s: the consul agent does not register %s as %s", h.File, c.Name, want)
						}
					}
					if c.Role == "nsqd" {
						nsqds++
						var got []string
						for i, a := range c.Command {
							if v, ok := strings.CutPrefix(a, "--lookupd-tcp-address="); ok {
								got = append(got, v)
							} else if a == "--lookupd-tcp-address" && i+1 < len(c.Command) {
								got = append(got, c.Command[i+1])
							}
						}
						slices.Sort(got)
						want := slices.Sorted(slices.Values(lookupds))
						if !slices.Equal(got, want) {
							t.Errorf("%s: nsqd registers with lookupds %v, want every lookupd of %s: %v", h.File, got, dc.Name, want)
						}
					}
				case "sensor", "worker", "app":
					if got := c.Env["CONSUL_HTTP_ADDR"]; got != consulAddr {
						t.Errorf("%s: %s has CONSUL_HTTP_ADDR=%s, want its host's agent %s", h.File, c.Name, got, consulAddr)
					}
					if got := c.Env["SVCKIT_HTTP_ADDR"]; got != "0.0.0.0:8080" {
						t.Errorf("%s: %s has SVCKIT_HTTP_ADDR=%q, want 0.0.0.0:8080 (the health checks probe 8080)", h.File, c.Name, got)
					}
				}
			}
			if nsqds != 1 {
				t.Errorf("%s: %d nsqd, want one on every host", h.File, nsqds)
			}
		}
	}
}

// Each problem class is found in the broken fixtures, naming its file and
// service, and nothing else is reported.
func TestBrokenFixtures(t *testing.T) {
	root := filepath.Join("testdata", "broken")
	tr, err := Load(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	probs := baseProblems(tr)
	// Check finds them too (and the fixtures' security problems).
	all := Check(tr, CheckOptions{})
	for _, p := range probs {
		if !slices.Contains(all, p) {
			t.Errorf("Check lost %s", p)
		}
	}
	want := []struct {
		class, file, service, msg string
	}{
		{"does not parse", "bad/noparse", "", "does not parse as YAML"},
		{"does not parse", "bad/badfield", "worker", `host port "http"`},
		{"does not parse", "bad/badinterp", "worker", "invalid interpolation"},
		{"does not parse", "bad/undeclared", "consul", `volume "consul-state" is not declared`},
		{"no Dockerfile", "bad/noimage", "cache", "no Dockerfile under images/ (want images/cache/Dockerfile)"},
		{"no Dockerfile", "bad/noimage", "redis", `image "redis:7" has no Dockerfile under images/`},
		{"port twice", "bad/dupport", "nsqadmin", "host port 8500/tcp is published twice on this host (also by service consul)"},
		{"port twice", "shared/hostb", "consul", "host port 8501/tcp is also published by host hosta"},
		{"no consul address", "bad/noconsul", "worker", "no CONSUL_HTTP_ADDR"},
		{"no volume", "bad/novolume", "nsqd", "nsqd keeps state (in /data) but has no volume"},
		{"no volume", "bad/novolume", "app", "keeps its state in /var/lib/app, which none of its volumes covers"},
		{"no healthcheck", "bad/nohealth", "nsqlookupd", "no healthcheck"},
		{"no healthcheck", "bad/nohealth", "nsqadmin", "healthcheck needs a shell"},
		{"no restart", "bad/norestart", "worker", "no restart policy"},
		{"no restart", "bad/norestart", "consul", "restart: no"},
		{"no compose file", "empty/nofile", "", "host directory without its compose file"},
		{"no data directory", "bad/nodatadir", "worker", "its data directory /data (the default --data-dir, as the image sets no SVCKIT_DATA_DIR) is not made by images/worker/Dockerfile.nodata for its user 65534:65534"},
		{"no data directory", "bad/nodatadir", "sensor", "its data directory /var/lib/sensor (SVCKIT_DATA_DIR in the compose file) is not made by images/sensor/Dockerfile.data"},
		{"flush floor", "flush/a", "nsqd", "--min-output-buffer-timeout is 25ms (set here), above the 1ms flush timeout svckit consumers ask for (worker on host b)"},
		{"slow flush", "flush/a", "nsqd", "--output-buffer-timeout is 250ms (nsqd's default), above the 100µs flush timeout svckit consumers ask for (worker on host c)"},
		{"flush zero", "flushzero/a", "nsqd", "--output-buffer-timeout=0: nsqd would panic at its first connection"},
		{"flush twice", "flushzero/b", "nsqd", "--output-buffer-timeout is 250ms (set here), above the 100µs flush timeout svckit consumers ask for (worker on host b)"},
	}
	found := make([]bool, len(probs))
	for _, w := range want {
		file := "datacenters/" + w.file + "/docker-compose.yml"
		ok := false
		for i, p := range probs {
			if p.File == file && p.Service == w.service && strings.Contains(p.Msg, w.msg) {
				ok, found[i] = true, true
			}
		}
		if !ok {
			t.Errorf("%s: no problem for %s service %q containing %q", w.class, file, w.service, w.msg)
		}
	}
	for i, p := range probs {
		if !found[i] {
			t.Errorf("unexpected problem: %s", p)
		}
		if p.Line == 0 && p.Msg != "host directory without its compose file" {
			t.Errorf("problem without a line: %s", p)
		}
		s := p.String()
		if !strings.HasPrefix(s, p.File) || (p.Service != "" && !strings.Contains(s, "service "+p.Service+":")) {
			t.Errorf("Problem.String() %q does not name file and service", s)
		}
	}
}

func TestMissingTree(t *testing.T) {
	dir := t.TempDir()
	tr, err := Load(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	probs := Check(tr, CheckOptions{})
	if len(probs) != 2 {
		t.Fatalf("empty root: want 2 problems (no images/, no datacenters/), got %v", probs)
	}
	if _, err := Load(filepath.Join(dir, "nope"), Options{}); err == nil {
		t.Error("Load of a missing root: no error")
	}
}

func TestPortsVolumesAndMerges(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"images/consul", "datacenters/x/h"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "images/consul/Dockerfile"), []byte("FROM scratch\n"), 0o644)
	compose := `
x-base: &base
  restart: always
  healthcheck: {test: ["CMD", "/bin/consul", "info"]}
services:
  consul:
    <<: *base
    image: svckit/consul:${TAG-1.0}
    ports:
      - "${PUB:-8500}:8500"
      - "[::1]:8600:8600/udp"
      - target: 8300
        published: 8300
        protocol: tcp
      - 127.0.0.1::8301
    volumes:
      - type: volume
        source: data
        target: /consul/data
      - ./conf:/etc/consul:ro
      - type: tmpfs
        target: /tmp
volumes:
  data: {}
`
	os.WriteFile(filepath.Join(dir, "datacenters/x/h/docker-compose.yml"), []byte(compose), 0o644)
	env := func(n string) (string, bool) {
		if n == "PUB" {
			return "0.0.0.0:18500", true
		}
		return "", false
	}
	tr, err := Load(dir, Options{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if p := baseProblems(tr); len(p) != 0 {
		t.Fatalf("problems: %v", p)
	}
	c := tr.Host("x", "h").Container("consul")
	if c.Image != "svckit/consul:1.0" || c.Restart != "always" || c.Healthcheck == nil {
		t.Errorf("merge or interpolation lost: image %q restart %q healthcheck %v", c.Image, c.Restart, c.Healthcheck)
	}
	var ports []string
	for _, p := range c.Ports {
		ports = append(ports, p.String())
	}
	wantPorts := []string{"0.0.0.0:18500->8500/tcp", "::1:8600->8600/udp", "8300->8300/tcp", "127.0.0.1:*->8301/tcp"}
	if !slices.Equal(ports, wantPorts) {
		t.Errorf("ports %v, want %v", ports, wantPorts)
	}
	var vols []string
	for _, v := range c.Volumes {
		vols = append(vols, v.Type+" "+v.String())
	}
	wantVols := []string{"volume data:/consul/data", "bind ./conf:/etc/consul:ro", "tmpfs tmpfs:/tmp"}
	if !slices.Equal(vols, wantVols) {
		t.Errorf("volumes %v, want %v", vols, wantVols)
	}
	var out bytes.Buffer
	if err := Fprint(&out, tr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"x\n", "h", "datacenters/x/h/docker-compose.yml", "svckit/consul:1.0", "0.0.0.0:18500->8500/tcp", "data:/consul/data"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ls output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestInterpolate(t *testing.T) {
	env := func(n string) (string, bool) {
		switch n {
		case "SET":
			return "v", true
		case "EMPTY":
			return "", true
		}
		return "", false
	}
	for in, want := range map[string]string{
		"plain":                  "plain",
		"$SET/${SET}":            "v/v",
		"${UNSET:-d}":            "d",
		"${EMPTY:-d}":            "d",
		"${EMPTY-d}":             "",
		"${UNSET-d}":             "d",
		"${SET:-d}":              "v",
		"$$SET $${SET}":          "$SET ${SET}",
		"a${UNSET}b":             "ab",
		"${SET:?must be set}":    "v",
		"{{ GetInterfaceIP }}":   "{{ GetInterfaceIP }}",
		"${UNSET:-127.0.0.1:85}": "127.0.0.1:85",
	} {
		got, _, err := interpolate(in, env)
		if err != nil || got != want {
			t.Errorf("interpolate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"${UNSET:?need it}", "${EMPTY:?need it}", "${UNSET?need it}", "${X", "$", "$-", "${1X}", "${X/y}"} {
		if got, _, err := interpolate(bad, env); err == nil {
			t.Errorf("interpolate(%q) = %q, want an error", bad, got)
		}
	}
}
