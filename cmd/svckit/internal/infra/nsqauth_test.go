package infra

import (
	"os"
	"path"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/nsqauth"
)

// Who may publish where, as a property of the tree: an nsqd without
// --auth-http-address, one whose auth address names no nsqauth container
// of its datacenter (or the wrong port, or no port), and one whose HTTP API
// (which NSQ's auth does not cover) listens beyond loopback are found, and
// an nsqauth container gets the checks of a service of ours. Nothing else.
func TestNSQDAuthFixtures(t *testing.T) {
	tr, err := Load("testdata/nsqauth", Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range baseProblems(tr) {
		got = append(got, strings.TrimPrefix(p.File, "datacenters/dc/")+" "+p.Service+": "+p.Msg)
	}
	want := []string{
		`a/docker-compose.yml nsqauth-noconsul: no CONSUL_HTTP_ADDR`,
		`b/docker-compose.yml open: no --auth-http-address: whoever reaches its TCP port may publish to any topic`,
		`b/docker-compose.yml open: --http-address 0.0.0.0:4151: nsqd's HTTP API is not covered by NSQ's auth`,
		`b/docker-compose.yml openhttp: --http-address 0.0.0.0:4151: nsqd's HTTP API is not covered by NSQ's auth`,
		`b/docker-compose.yml nowhere: --auth-http-address b-nsqauth:8080 names no nsqauth container of datacenter dc`,
		`b/docker-compose.yml nowhere: --auth-http-address http://a-nsqauth:9999/auth: nsqauth a-nsqauth listens on port 8080`,
		`b/docker-compose.yml nowhere: --auth-http-address "a-nsqauth": want HOST:PORT`,
	}
	if len(got) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("no problem %q in:\n%s", w, strings.Join(got, "\n"))
		}
	}
	roles := map[string]string{}
	for _, h := range tr.Datacenters[0].Hosts {
		for _, c := range h.Containers {
			roles[c.Name] = c.Role
		}
	}
	if roles["nsqauth"] != NSQAuthRole || roles["nsqauth-noconsul"] != NSQAuthRole || roles["cli"] != "svckit" {
		t.Errorf("roles %v: want nsqauth for `svckit nsqauth serve` (command or entrypoint), svckit for the CLI", roles)
	}
}

// The committed datacenters run authorization as the README says: every
// host has one nsqauth (svckit nsqauth serve --kv svckit/nsqauth) that
// issues exactly the identities of the host's services, each into a tmpfs
// volume of its own that the service mounts read-only and names in
// SVCKIT_NSQ_AUTH_SECRET_FILE; every nsqd asks every nsqauth of its
// datacenter; the datacenter's policy (datacenters/<dc>/nsqauth-policy.json,
// which ./build.sh up writes into Consul KV; no nsqauth seeds its own) grants
// the pipeline what the laptop's policy (etc/nsqauth/policy.json) grants it.
func TestDatacentersRunNSQAuth(t *testing.T) {
	tr := loadCommitted(t)
	laptop := readPolicy(t, path.Join(repoRoot, "etc/nsqauth/policy.json"))
	for _, dc := range tr.Datacenters {
		var servers []string // addresses of the datacenter's nsqauth
		for _, h := range dc.Hosts {
			var auth []*Container
			for i := range h.Containers {
				if h.Containers[i].Role == NSQAuthRole {
					auth = append(auth, &h.Containers[i])
				}
			}
			if len(auth) != 1 {
				t.Errorf("%s: %d nsqauth, want one on every host", h.File, len(auth))
				continue
			}
			a := auth[0]
			name := a.Name
			for _, al := range a.Aliases {
				name = al // on a shared network, the host's alias
			}
			servers = append(servers, name+":8080")
			if !slices.Contains(a.Command, "--kv=svckit/nsqauth") {
				t.Errorf("%s: nsqauth %v does not follow svckit/nsqauth in Consul KV", h.File, a.Command)
			}
			if s := a.Env["SVCKIT_NSQAUTH_SEED"]; s != "" || slices.ContainsFunc(a.Command, func(s string) bool { return strings.HasPrefix(s, "--seed") }) {
				t.Errorf("%s: nsqauth seeds a policy: the datacenter's is %s", h.File, NSQAuthPolicyFile)
			}
			issued := map[string]string{} // identity → volume
			for _, is := range flagValues(a.Command, "issue") {
				id, file, _ := strings.Cut(is, "=")
				v := volumeAt(a, path.Dir(file))
				if v == nil || v.ReadOnly || !h.Volumes[v.Source] {
					t.Errorf("%s: nsqauth issues %s into %s, which no declared volume of its own holds", h.File, id, file)
					continue
				}
				issued[id] = v.Source
			}
			var clients []string
			for i := range h.Containers {
				c := &h.Containers[i]
				identity := c.Role
				switch c.Role {
				case "sensor", "worker", "app":
				case ConsoleRole:
					identity = "operator" // it reads <topic>.dead and requeues
				default:
					continue
				}
				if !slices.Contains(clients, identity) {
					clients = append(clients, identity)
				}
				file := c.Env["SVCKIT_NSQ_AUTH_SECRET_FILE"]
				v := volumeAt(c, path.Dir(file))
				switch {
				case file == "":
					t.Errorf("%s: %s has no SVCKIT_NSQ_AUTH_SECRET_FILE: nsqd would refuse it", h.File, c.Name)
				case issued[identity] == "":
					t.Errorf("%s: %s (identity %s): the host's nsqauth issues no secret of %s", h.File, c.Name, identity, identity)
				case v == nil || v.Source != issued[identity] || !v.ReadOnly:
					t.Errorf("%s: %s reads %s, want it from volume %s (read-only), where nsqauth issues %s's secret", h.File, c.Name, file, issued[identity], identity)
				}
			}
			ids := slices.Sorted(func(yield func(string) bool) {
				for id := range issued {
					if !yield(id) {
						return
					}
				}
			})
			sort.Strings(clients)
			if !slices.Equal(ids, clients) {
				t.Errorf("%s: nsqauth issues %v, the host runs %v: want exactly those", h.File, ids, clients)
			}
		}
		for _, h := range dc.Hosts {
			for _, c := range h.Containers {
				if c.Role != "nsqd" {
					continue
				}
				var got []string
				for _, a := range flagValues(c.Command, "auth-http-address") {
					// https://nsqauth:8080/auth: nsqauth serves TLS
					got = append(got, strings.TrimSuffix(strings.TrimPrefix(a, "https://"), "/auth"))
				}
				slices.Sort(got)
				if want := slices.Sorted(slices.Values(servers)); !slices.Equal(got, want) {
					t.Errorf("%s: nsqd asks %v, want every nsqauth of %s: %v", h.File, got, dc.Name, want)
				}
			}
		}
		p := readPolicy(t, path.Join(repoRoot, DatacentersDir, dc.Name, NSQAuthPolicyFile))
		if !p.RequireTLS {
			t.Errorf("datacenter %s: the policy does not require TLS", dc.Name)
		}
		if len(p.Identities) != len(laptop.Identities) {
			t.Errorf("datacenter %s: identities %d, the laptop's %d", dc.Name, len(p.Identities), len(laptop.Identities))
		}
		for name, id := range laptop.Identities {
			got := p.Identities[name]
			if id.SecretEnv == "" || got.SecretEnv != "" || len(got.SecretSHA256) != 0 {
				t.Errorf("datacenter %s, identity %s: want secrets issued (no secret_env, no hash in the repository)", dc.Name, name)
			}
			if !reflect.DeepEqual(got.Authorizations(), id.Authorizations()) {
				t.Errorf("datacenter %s, identity %s: authorizations %+v, the laptop's %+v", dc.Name, name, got.Authorizations(), id.Authorizations())
			}
		}
	}
}

func readPolicy(t *testing.T, file string) *nsqauth.Policy {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p, err := nsqauth.ParsePolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// volumeAt is the container's volume mounted at dir, or nil.
func volumeAt(c *Container, dir string) *Volume {
	for i := range c.Volumes {
		if strings.TrimSuffix(c.Volumes[i].Target, "/") == dir {
			return &c.Volumes[i]
		}
	}
	return nil
}
