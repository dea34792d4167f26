// Package guide proves docs/guide.md ("Writing your own service"): its
// commands run, its code is examples/splitter and builds in a module of
// its own, its Procfile lines run the splitter next to the reference
// pipeline under goreman, its image builds and starts, its compose
// service passes `svckit infra check`, and ./build.sh secrets then makes
// the splitter's token, so that ./build.sh up can fill its secrets
// volume.
package guide_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/localstack"
	"github.com/svckit/svckit/internal/skip"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/testenv"
)

// root is the repository, two levels up from this package.
const root = "../.."

// upTimeout bounds each wait for the system to come up: generous, because
// other suites run their own stacks on the same small machine meanwhile.
const upTimeout = 3 * time.Minute

// step is a block of the guide the test acts on: the fenced block after a
// line "<!-- guide-test: ACTION BASE [PATH] -->".
//
//	run BASE                      run the block with sh -e in BASE
//	write BASE PATH               write the block to BASE/PATH
//	append BASE PATH              append the block to BASE/PATH
//	json-merge BASE PATH KEY      add the block's members to the object
//	                              KEY of the JSON file BASE/PATH
//	compose-service BASE PATH     add the block at the end of the
//	                              services: of the compose file BASE/PATH
//	compose-volume BASE PATH      add the block at the end of its volumes:
//	compose-edit-service BASE PATH NAME
//	                              replace its service NAME by the block,
//	                              which must be that service as it is plus
//	                              the lines naming the new service
//
// BASE is module (the new module's directory) or svckit (the checkout).
type step struct {
	line                    int
	action, base, path, arg string
	body                    string
}

// newService is the service the guide adds: the lines of an edited
// service that name it are the guide's, the others must be the file's.
const newService = "splitter"

var marker = regexp.MustCompile(`^<!-- guide-test: ([a-z-]+) (module|svckit)(?: (\S+))?(?: (\S+))? -->$`)

func readGuide(t *testing.T) []step {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "docs", "guide.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []step
	var cur *step
	inBlock := false
	var body strings.Builder
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case inBlock && strings.HasPrefix(l, "```"):
			inBlock = false
			if cur != nil {
				cur.body = body.String()
				steps = append(steps, *cur)
				cur = nil
			}
		case inBlock:
			body.WriteString(l + "\n")
		case strings.HasPrefix(l, "```"):
			inBlock = true
			body.Reset()
		case marker.MatchString(l):
			if cur != nil {
				t.Fatalf("docs/guide.md:%d: a guide-test marker with no code block after it (line %d)", cur.line, n)
			}
			m := marker.FindStringSubmatch(l)
			cur = &step{line: n, action: m[1], base: m[2], path: m[3], arg: m[4]}
		case strings.Contains(l, "<!-- guide-test:") && strings.HasPrefix(l, "<!--"):
			t.Fatalf("docs/guide.md:%d: malformed marker %q", n, l)
		}
	}
	if cur != nil {
		t.Fatalf("docs/guide.md:%d: a guide-test marker with no code block after it", cur.line)
	}
	// The guide's worked example, whole: a test that found fewer blocks
	// would pass having checked less than the guide shows.
	count := map[string]int{}
	for _, s := range steps {
		count[s.action+" "+s.base]++
	}
	for k, n := range map[string]int{"run module": 2, "write module": 2, "json-merge svckit": 2, "append svckit": 2, "write svckit": 1,
		"compose-edit-service svckit": 1, "compose-service svckit": 1, "compose-volume svckit": 1, "run svckit": 2} {
		if count[k] < n {
			t.Fatalf("docs/guide.md has %d %q blocks marked for this test, want at least %d (markers: %v)", count[k], k, n, count)
		}
	}
	return steps
}

// TestGuide follows docs/guide.md in a fresh checkout of the repository.
func TestGuide(t *testing.T) {
	if runtime.GOOS != "linux" {
		skip.CannotRun(t, "finds goreman's children in /proc (Linux)")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		skip.CannotRun(t, "no git")
	}
	if out, err := exec.Command(git, "rev-parse", "--is-inside-work-tree").Output(); err != nil || strings.TrimSpace(string(out)) != "true" {
		skip.CannotRun(t, "not in a git checkout")
	}
	goBin, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	steps := readGuide(t)
	tmp := t.TempDir()
	checkout := copyWorkingTree(t, git, filepath.Join(tmp, "svckit"))
	// bin/: the programs ./build.sh built, each linked, but not the
	// splitter: the guide builds that one.
	if err := os.Mkdir(filepath.Join(checkout, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"consul", "nsqd", "nsqlookupd", "nsqadmin", "goreman", "sensor", "worker", "app", "svckit"} {
		if err := os.Symlink(testenv.Bin(t, b), filepath.Join(checkout, "bin", b)); err != nil {
			t.Fatal(err)
		}
	}
	module := filepath.Join(tmp, "splitter")
	if err := os.Mkdir(module, 0o755); err != nil {
		t.Fatal(err)
	}
	// The examples module's go.sum: `go mod tidy` then needs no checksum
	// database for the modules svckit requires (the module cache has them).
	if b, err := os.ReadFile(filepath.Join(root, "examples", "go.sum")); err == nil {
		_ = os.WriteFile(filepath.Join(module, "go.sum"), b, 0o644)
	}
	// The datacenters' secrets (./build.sh secrets): never the user's.
	secrets := filepath.Join(tmp, "secrets")
	env := append(os.Environ(), "SVCKIT="+checkout, "SVCKIT_SECRETS="+secrets, "PATH="+filepath.Dir(goBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	// The reader made dev's secrets once, before the guide: its
	// ./build.sh secrets dev is a second run, which must keep these.
	before := makeSecrets(t, checkout, env)
	dirOf := map[string]string{"module": module, "svckit": checkout}
	for _, s := range steps {
		dir := dirOf[s.base]
		where := fmt.Sprintf("docs/guide.md:%d (%s %s %s)", s.line, s.action, s.base, s.path)
		switch s.action {
		case "run":
			cmd := exec.Command("sh", "-e", "-c", s.body)
			cmd.Dir, cmd.Env = dir, env
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s\n--- output:\n%s", where, err, s.body, out)
			}
		case "write":
			p := filepath.Join(dir, s.path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(s.body), 0o644); err != nil {
				t.Fatal(err)
			}
		case "append":
			f, err := os.OpenFile(filepath.Join(dir, s.path), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			_, err = f.WriteString(s.body)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
		case "json-merge":
			jsonMerge(t, filepath.Join(dir, s.path), s.arg, s.body, where)
		case "compose-service":
			appendToSection(t, filepath.Join(dir, s.path), "services", s.body, where)
		case "compose-volume":
			appendToSection(t, filepath.Join(dir, s.path), "volumes", s.body, where)
		case "compose-edit-service":
			editService(t, filepath.Join(dir, s.path), s.arg, s.body, where)
		default:
			t.Fatalf("%s: unknown action %q", where, s.action)
		}
	}

	t.Run("the code is examples/splitter", func(t *testing.T) {
		files, _ := filepath.Glob(filepath.Join(root, "examples", "splitter", "*.go"))
		var n int
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			n++
			want, _ := os.ReadFile(f)
			got, err := os.ReadFile(filepath.Join(module, filepath.Base(f)))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("the guide's %s is not %s (%v): the guide shows the tested example, update one from the other", filepath.Base(f), f, err)
			}
		}
		if n == 0 {
			t.Error("no examples/splitter/*.go")
		}
	})

	// The check sees the service: without its image's Dockerfile the same
	// tree fails, naming it.
	t.Run("infra check sees the splitter", func(t *testing.T) {
		df := filepath.Join(checkout, "images", "splitter", "Dockerfile")
		b, err := os.ReadFile(df)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(df); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(df, b, 0o644)
		out, err := exec.Command(filepath.Join(checkout, "bin", "svckit"), "infra", "check", "--root", checkout).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "service splitter") {
			t.Errorf("infra check without images/splitter/Dockerfile: %v; want exit 1 naming service splitter:\n%s", err, out)
		}
	})

	t.Run("secrets", func(t *testing.T) { testSecrets(t, checkout, filepath.Join(secrets, "dev"), before) })

	t.Run("image", func(t *testing.T) { testImage(t, checkout) })

	t.Run("goreman", func(t *testing.T) { testGoreman(t, checkout) })
}

// section returns the lines of a compose file and the bounds [start, end)
// of its top-level key (start is the key's line; end excludes the blank
// lines that close the section).
func section(t *testing.T, lines []string, key, where string) (int, int) {
	t.Helper()
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, key+":") })
	if start < 0 {
		t.Fatalf("%s: no top-level %s:", where, key)
	}
	end := len(lines)
	for i := start + 1; i < len(lines); i++ {
		if l := lines[i]; strings.TrimSpace(l) != "" && l[0] != ' ' && l[0] != '\t' && l[0] != '#' {
			end = i
			break
		}
	}
	for end > start+1 && strings.TrimSpace(lines[end-1]) == "" {
		end--
	}
	return start, end
}

// appendToSection adds block at the end of the top-level key's section
// (services: or volumes:), after a blank line for a service.
func appendToSection(t *testing.T, file, key, block, where string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	_, end := section(t, lines, key, where)
	sep := ""
	if key == "services" {
		sep = "\n"
	}
	out := strings.Join(lines[:end], "") + sep + block + strings.Join(lines[end:], "")
	if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

// editService replaces the service name of a compose file by block, after
// checking that block is the service as the file has it plus the lines
// naming newService: a guide showing an older version of it is out of
// date.
func editService(t *testing.T, file, name, block, where string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	sStart, sEnd := section(t, lines, "services", where)
	from := slices.Index(lines[sStart:sEnd], "  "+name+":\n")
	if from < 0 {
		t.Fatalf("%s: no service %s in %s", where, name, file)
	}
	from += sStart
	to := sEnd
	for i := from + 1; i < sEnd; i++ {
		if l := lines[i]; strings.TrimSpace(l) != "" && !strings.HasPrefix(l, "   ") {
			to = i
			break
		}
	}
	for to > from+1 && strings.TrimSpace(lines[to-1]) == "" {
		to--
	}
	var without []string
	for _, l := range strings.SplitAfter(block, "\n") {
		if !strings.Contains(l, newService) {
			without = append(without, l)
		}
	}
	if got, want := strings.Join(lines[from:to], ""), strings.Join(without, ""); got != want {
		t.Fatalf("%s: the guide's service %s, without its lines naming %s, is not the one in %s: update the guide\n--- the file's:\n%s--- the guide's:\n%s", where, name, newService, file, got, want)
	}
	out := strings.Join(lines[:from], "") + block + strings.Join(lines[to:], "")
	if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
}

// jsonMerge adds the members of the JSON object block to the object key of
// the JSON file (members it has already are an error: the guide adds).
func jsonMerge(t *testing.T, file, key, block, where string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %s: %v", where, file, err)
	}
	var add map[string]any
	if err := json.Unmarshal([]byte(block), &add); err != nil {
		t.Fatalf("%s: the guide's block is not a JSON object: %v", where, err)
	}
	obj, ok := doc[key].(map[string]any)
	if !ok {
		t.Fatalf("%s: %s has no object %q", where, file, key)
	}
	for k, v := range add {
		if _, dup := obj[k]; dup {
			t.Fatalf("%s: %s already has %s.%s", where, file, key, k)
		}
		obj[k] = v
	}
	out, _ := json.MarshalIndent(doc, "", "  ")
	if err := os.WriteFile(file, append(out, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// makeSecrets runs ./build.sh secrets dev in the checkout and returns the
// files it made (path under the datacenter's directory → content).
func makeSecrets(t *testing.T, checkout string, env []string) map[string]string {
	t.Helper()
	cmd := exec.Command("./build.sh", "secrets", "dev")
	cmd.Dir, cmd.Env = checkout, env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("./build.sh secrets dev: %v\n%s", err, out)
	}
	return readSecrets(t, filepath.Join(envValue(env, "SVCKIT_SECRETS"), "dev"))
}

// envValue is the last value of key in env.
func envValue(env []string, key string) string {
	v := ""
	for _, e := range env {
		if k, val, ok := strings.Cut(e, "="); ok && k == key {
			v = val
		}
	}
	return v
}

func readSecrets(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// testSecrets checks datacenters/dev/host1 as the guide left it against
// the secrets in dir, which the guide's ./build.sh secrets dev completed:
// it kept every secret made before and made the splitter's token; every
// secrets volume the compose file names can be filled by ./build.sh up
// (which wants tokens/<id>.token for a service); and the splitter reaches
// Consul over HTTPS and nsqd over TLS with the CA, its token and the
// replay secret from its own volume, read-only.
func testSecrets(t *testing.T, checkout, dir string, before map[string]string) {
	after := readSecrets(t, dir)
	for f, b := range before {
		if after[f] != b {
			t.Errorf("./build.sh secrets dev, run again, changed %s: it must make only what is missing", f)
		}
	}
	if _, ok := before["tokens/splitter.token"]; ok {
		t.Fatal("tokens/splitter.token was there before the guide named the splitter in acl.flags")
	}
	if strings.TrimSpace(after["tokens/splitter.token"]) == "" {
		t.Fatalf("./build.sh secrets dev made no tokens/splitter.token after the guide's --service=splitter (made: %v)", slices.Sorted(maps.Keys(after)))
	}

	tree := infraLs(t, checkout)
	var host *infraHost
	for _, dc := range tree.Datacenters {
		for _, h := range dc.Hosts {
			if dc.Name == "dev" && h.Name == "host1" {
				host = h
			}
		}
	}
	if host == nil || !host.Parsed {
		t.Fatalf("datacenters/dev/host1 not read (%v)", tree.Problems)
	}
	// What install_secrets in build.sh puts into each volume: consul's
	// and nsqd's come from hosts/host1/, nsqd-stats' is the replay secret
	// alone, a service's token from tokens/.
	ids := map[string]bool{}
	for key, name := range host.VolumeNames {
		_, id, ok := strings.Cut(name, "-secrets-")
		if !ok || !strings.HasPrefix(key, "secrets-") {
			continue
		}
		ids[id] = true
		if id != "consul" && id != "nsqd" && id != "nsqdstats" && after["tokens/"+id+".token"] == "" {
			t.Errorf("volume %s (%s): no tokens/%s.token in the secrets, ./build.sh up would stop", key, name, id)
		}
	}
	if !ids[newService] {
		t.Fatalf("datacenters/dev/host1 names no secrets volume of the %s (volumes: %v)", newService, host.VolumeNames)
	}
	i := slices.IndexFunc(host.Containers, func(c infraContainer) bool { return c.Name == newService })
	if i < 0 {
		t.Fatalf("datacenters/dev/host1 has no service %s", newService)
	}
	c := host.Containers[i]
	if a := c.Env["CONSUL_HTTP_ADDR"]; !strings.HasPrefix(a, "https://") {
		t.Errorf("the %s's CONSUL_HTTP_ADDR is %q, want https://…", newService, a)
	}
	if v := c.Env["SVCKIT_NSQ_TLS"]; v != "true" {
		t.Errorf("the %s's SVCKIT_NSQ_TLS is %q, want true", newService, v)
	}
	for k, want := range map[string]string{"CONSUL_CACERT": "ca.pem", "SVCKIT_NSQ_TLS_CACERT": "ca.pem", "CONSUL_HTTP_TOKEN_FILE": "consul.token", "SVCKIT_REPLAY_SECRET_FILE": "replay.secret"} {
		p := c.Env[k]
		var m *infraVolume
		for j := range c.Volumes {
			v := &c.Volumes[j]
			if strings.HasPrefix(p, strings.TrimSuffix(v.Target, "/")+"/") && (m == nil || len(v.Target) > len(m.Target)) {
				m = v
			}
		}
		switch {
		case m == nil:
			t.Errorf("the %s's %s=%q is on none of its volumes", newService, k, p)
		case host.VolumeNames[m.Source] != "dev-host1-secrets-"+newService || !m.ReadOnly:
			t.Errorf("the %s's %s=%q is on %s (%s), want its own secrets volume dev-host1-secrets-%s, read-only", newService, k, p, m.Source+":"+m.Target, host.VolumeNames[m.Source], newService)
		case path.Base(p) != want || path.Dir(p) != path.Clean(m.Target):
			t.Errorf("the %s's %s=%q: ./build.sh up puts %s at the top of the volume (%s)", newService, k, p, want, m.Target)
		}
	}
}

// infraTree is what testSecrets reads of `svckit infra ls --json`: the
// tree as the CLI's infra package reads it (its Tree, in Go's field names).
type infraTree struct {
	Datacenters []struct {
		Name  string
		Hosts []*infraHost
	}
	Problems []struct {
		File    string
		Line    int
		Service string
		Msg     string
	}
}

type infraHost struct {
	Name string
	// VolumeNames are the names on the engine of the file's volumes, by key.
	VolumeNames map[string]string
	Containers  []infraContainer
	Parsed      bool
}

type infraContainer struct {
	Name    string
	Env     map[string]string
	Volumes []infraVolume
}

type infraVolume struct {
	Source, Target string
	ReadOnly       bool
}

// infraLs reads the checkout's datacenters with the checkout's bin/svckit
// (infra ls --json), in an empty environment: every ${VAR:-default} of the
// compose files takes its default, as for a user with nothing set.
func infraLs(t *testing.T, checkout string) *infraTree {
	t.Helper()
	cmd := exec.Command(filepath.Join(checkout, "bin", "svckit"), "infra", "ls", "--json", "--root", checkout)
	cmd.Env = []string{}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("svckit infra ls --json --root %s: %v\n%s", checkout, err, stderr.Bytes())
	}
	var tree infraTree
	if err := json.Unmarshal(out, &tree); err != nil {
		t.Fatalf("svckit infra ls --json: %v\n%s", err, out)
	}
	return &tree
}

// testImage builds images/splitter/Dockerfile as ./build.sh images would
// (a context of images/ and the binaries the Dockerfile names) and starts
// it with a Consul address nothing answers: exit 3 means the binary runs
// as the image's user, in its data directory, up to waiting for Consul.
func testImage(t *testing.T, checkout string) {
	docker, err := exec.LookPath("docker")
	if err != nil {
		skip.CannotRun(t, "no docker on PATH")
	}
	if err := exec.Command(docker, "info").Run(); err != nil {
		skip.CannotRun(t, "no Docker engine answers (docker info: %v)", err)
	}
	df := "images/splitter/Dockerfile"
	b, err := os.ReadFile(filepath.Join(checkout, df))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^FROM scratch$`).Match(b) {
		t.Errorf("%s is not FROM scratch (there is no registry to pull from)", df)
	}
	args := []string{"-chf", "-", "--exclude=.keep", "images"} // -h: bin/ holds links
	for _, m := range regexp.MustCompile(`bin/[A-Za-z0-9_-]+`).FindAllString(string(b), -1) {
		if !slices.Contains(args, m) {
			args = append(args, m)
		}
	}
	tag := fmt.Sprintf("svckit-guidetest/splitter:%d", os.Getpid())
	tarCmd := exec.Command("tar", args...)
	tarCmd.Dir = checkout
	ctx, err := tarCmd.Output()
	if err != nil {
		t.Fatalf("tar %v: %v", args, err)
	}
	build := exec.Command(docker, "build", "-q", "-f", df, "-t", tag, "-")
	build.Stdin = bytes.NewReader(ctx)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build -f %s: %v\n%s", df, err, out)
	}
	t.Cleanup(func() { _ = exec.Command(docker, "rmi", "-f", tag).Run() })
	run := exec.Command(docker, "run", "--rm", "--network", "none", tag, "--consul-addr=127.0.0.1:1", "--consul-start-timeout=2s")
	out, err := run.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("docker run %s: %v; want exit 3 (Consul unreachable: the program ran and locked its data directory)\n%s", tag, err, out)
	}
}

// The Procfile's port variables.
var portVars = []string{
	"LAPTOP_CONSUL_HTTP_PORT", "LAPTOP_CONSUL_SERVER_PORT", "LAPTOP_CONSUL_SERF_LAN_PORT",
	"LAPTOP_CONSUL_SERF_WAN_PORT", "LAPTOP_CONSUL_DNS_PORT", "LAPTOP_CONSUL_GRPC_PORT",
	"LAPTOP_CONSUL_GRPC_TLS_PORT", "LAPTOP_NSQLOOKUPD_TCP_PORT", "LAPTOP_NSQLOOKUPD_HTTP_PORT",
	"LAPTOP_NSQD_TCP_PORT", "LAPTOP_NSQD_HTTP_PORT", "LAPTOP_NSQADMIN_HTTP_PORT",
}

// testGoreman runs the checkout's Procfile, with the guide's lines, under
// goreman on free ports: the splitter registers as a relay of
// split-results, and the second app applies its parts (a count of twice
// its zeros) while the first app keeps applying results.
func testGoreman(t *testing.T, checkout string) {
	env := []string{"GOREMAN_RPC_ADDR=127.0.0.1", "GOREMAN_RPC_PORT=" + strconv.Itoa(testenv.FreePort(t))}
	ports := map[string]int{}
	for _, v := range portVars {
		ports[v] = testenv.FreePort(t)
		env = append(env, fmt.Sprintf("%s=%d", v, ports[v]))
	}
	logDir := t.TempDir()
	g := &localstack.Group{TempDir: func() (string, error) { return logDir, nil }}
	goreman, err := g.StartProcessWith(localstack.ProcessOptions{
		Name: "goreman", Bin: filepath.Join(checkout, "bin", "goreman"), Args: []string{"start"}, Env: env, Dir: checkout,
		ParentDeathSignal: syscall.SIGTERM, // were this test killed, goreman stops its programs
	})
	t.Cleanup(func() {
		if goreman == nil {
			return
		}
		// goreman runs each program in a process group of its own:
		// stop it as Ctrl-C does, then kill what is left.
		groups := children(goreman.Pid())
		_ = goreman.StopWith(syscall.SIGINT, time.Minute)
		for _, pg := range groups {
			_ = syscall.Kill(-pg, syscall.SIGKILL)
		}
		goreman.Kill()
		if t.Failed() {
			b, _ := goreman.LogTail(16 << 10)
			t.Logf("goreman's output (%s), last %d bytes:\n%s", goreman.LogPath(), len(b), b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = localstack.Addr(ports["LAPTOP_CONSUL_HTTP_PORT"]), "http", "", ""
	cfg.TLSConfig = api.TLSConfig{}
	consul, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	passing := func(name, id string) *api.AgentService {
		var svc *api.AgentService
		waitFor(t, goreman, fmt.Sprintf("%s %s passing in consul", name, id), func() bool {
			es, _, err := consul.Health().Service(name, "", true, nil)
			for _, e := range es {
				if err == nil && (id == "" || e.Service.ID == id) {
					svc = e.Service
					return true
				}
			}
			return false
		})
		return svc
	}
	split := passing("splitter", "")
	for _, tag := range []string{"replay-relay", "publishes=split-results"} {
		if !slices.Contains(split.Tags, tag) {
			t.Errorf("the splitter's tags %v lack %s", split.Tags, tag)
		}
	}
	appSplit := passing("app", "app-split")
	addr := fmt.Sprintf("%s:%d", appSplit.Address, appSplit.Port)
	var got pipeline.Totals
	waitFor(t, goreman, "app-split to apply parts of sensor-laptop (a count of twice its zeros)", func() bool {
		var state map[string]pipeline.Totals
		code, body, err := localstack.HTTPGet("http://" + addr + "/state")
		if err != nil || code != 200 || json.Unmarshal([]byte(body), &state) != nil {
			return false
		}
		got = state["sensor-laptop"]
		return got.Count >= 20 && got.Count == 2*got.Zeros
	})
	t.Logf("app-split applied %d parts of sensor-laptop (sum %d, sum of results %d)", got.Count, got.Sum, got.SumResults)
	// Through NSQ, not only by replay (which app-split would also get
	// its parts from, through the splitter, were NSQ refusing them): the
	// splitter consumes results and publishes parts, app-split consumes
	// them.
	splitAddr := fmt.Sprintf("%s:%d", split.Address, split.Port)
	for _, m := range []struct{ addr, name, topic string }{
		{splitAddr, "svckit_messages_consumed_total", "results"},
		{splitAddr, "svckit_messages_published_total", "split-results"},
		{addr, "svckit_messages_consumed_total", "split-results"},
	} {
		waitFor(t, goreman, fmt.Sprintf("%s{topic=%q} above 0 at %s", m.name, m.topic, m.addr), func() bool {
			return metric(m.addr, m.name, m.topic) > 0
		})
	}
	passing("worker", "")
	passing("sensor", "")

	if err := goreman.StopWith(syscall.SIGINT, 2*time.Minute); err != nil {
		t.Errorf("goreman after SIGINT: %v", err)
	}
}

// metric is the sum of a metric's values whose labels include topic.
func metric(addr, name, topic string) float64 {
	code, body, err := localstack.HTTPGet("http://" + addr + "/metrics")
	if err != nil || code != 200 {
		return 0
	}
	var sum float64
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, name+"{") || !strings.Contains(l, `topic="`+topic+`"`) {
			continue
		}
		f := strings.Fields(l)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// waitFor is testenv.WaitFor that gives up at once when a program under
// goreman exited (goreman says "Terminating <name>").
func waitFor(t *testing.T, goreman *localstack.Process, what string, cond func() bool) {
	t.Helper()
	var exited string
	err := goreman.AwaitReady(upTimeout, func() bool {
		for _, l := range strings.Split(goreman.Log(), "\n") {
			if strings.Contains(l, "Terminating ") {
				exited = l
				return true
			}
		}
		return cond()
	})
	switch {
	case exited != "":
		t.Fatalf("waiting for %s: a program exited: %s", what, exited)
	case err != nil:
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// copyWorkingTree copies the repository this test runs in to dir: every
// file git tracks or would track (not ignored), as the working tree has
// it. That is a fresh checkout of what is being tested, edits not yet
// committed included, with no bin/, var/ or .env.
func copyWorkingTree(t *testing.T, git, dir string) string {
	t.Helper()
	top, err := exec.Command(git, "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v", err)
	}
	src := strings.TrimSpace(string(top))
	cmd := exec.Command(git, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = src
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		st, err := os.Lstat(filepath.Join(src, f))
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the working tree, or not a file
		}
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// children returns the pids of pid's children that lead their own process
// group (goreman runs each Procfile line so).
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		if ppid == pid && pgrp == p && f[0] != "Z" {
			out = append(out, p)
		}
	}
	return out
}
