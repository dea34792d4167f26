package infra

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Container is one service of a compose file: what runs on a host.
type Container struct {
	Name string // the compose service name
	Line int    // where the service starts in its file

	Image      string   // as written (after interpolation); "" when only built
	Build      string   // build context directory (absolute), "" if none
	Dockerfile string   // the Dockerfile a build uses (absolute), "" if none
	Command    []string // command (string form split on spaces)
	Entrypoint []string
	// CommandLines and EntrypointLines are the lines of Command's and
	// Entrypoint's elements (where a block scalar's text starts), so that
	// a problem with one flag names its line.
	CommandLines    []int
	EntrypointLines []int

	Env map[string]string // environment (and env_file) after interpolation
	// EnvLines are the lines of the environment's variables in the
	// compose file (an anchor's line for a merged one; none from env_file).
	EnvLines map[string]int
	Ports    []Port
	Volumes  []Volume

	// Aliases are the names other containers reach this one by, besides
	// the service name (network aliases, all networks together).
	Aliases []string

	Restart     string       // "" when not set
	Healthcheck *Healthcheck // nil when not set

	// Role is what the container runs: the image's name under svckit/
	// (consul, sensor, …), or for the nsq image its program (nsqd,
	// nsqlookupd, nsqadmin), or nsqauth for the svckit image running
	// `nsqauth serve`.
	Role string
}

// Port is one published port.
type Port struct {
	HostIP    string // "" = every address
	Published string // host port or range; "" or "0" = any free port
	Target    string // container port or range
	Protocol  string // tcp or udp
	Line      int
}

// Fixed reports whether the port is a fixed host port (so two of them can
// clash).
func (p Port) Fixed() bool { return p.Published != "" && p.Published != "0" }

func (p Port) String() string {
	pub := p.Published
	if !p.Fixed() {
		pub = "*"
	}
	if p.HostIP != "" {
		pub = p.HostIP + ":" + pub
	}
	return pub + "->" + p.Target + "/" + p.Protocol
}

// Volume is one volume of a container.
type Volume struct {
	Type     string // volume, bind or tmpfs
	Source   string // volume name or host path; "" for an anonymous volume
	Target   string // path in the container
	ReadOnly bool
	Line     int
}

func (v Volume) String() string {
	s := v.Target
	if v.Source != "" {
		s = v.Source + ":" + v.Target
	}
	if v.Type == "tmpfs" {
		s = "tmpfs:" + v.Target
	}
	if v.ReadOnly {
		s += ":ro"
	}
	return s
}

// Healthcheck is a container's health check.
type Healthcheck struct {
	Test     []string
	Disabled bool
	Line     int
}

var yamlLine = regexp.MustCompile(`^line (\d+): `)

// composeFile is what parseCompose found in one file.
type composeFile struct {
	Containers  []Container
	Volumes     map[string]bool   // top-level named volumes
	VolumeNames map[string]string // their name on the engine, when the file sets one (name:)
	Networks    []Network         // top-level networks
	Problems    []Problem
	Parsed      bool // the file was read as a whole (services found)
}

// Network is a network declared at the top of a compose file.
type Network struct {
	Key      string // key in the file (default, dc, …)
	Name     string // the name on the engine when set (external networks)
	External bool
}

// parseCompose reads one compose file. rel is its path as reported in
// problems; problems that make the file unusable as a whole are returned
// among the file's problems with no service.
func parseCompose(file, rel string, env Lookup) composeFile {
	var cf composeFile
	p := &parser{file: rel, dir: filepath.Dir(file), env: env, cf: &cf, done: map[*yaml.Node]bool{}}
	data, err := os.ReadFile(file)
	if err != nil {
		p.fail(nil, "", "reading: %v", err)
		return cf
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 says "yaml: line N: …": keep N as the problem's line.
		msg, line := strings.TrimPrefix(err.Error(), "yaml: "), 0
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = strings.TrimPrefix(msg, m[0])
		}
		p.fail(&yaml.Node{Line: line}, "", "does not parse as YAML: %s", msg)
		return cf
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		p.fail(nil, "", "is empty: want a compose file with services")
		return cf
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		p.fail(root, "", "is not a compose file: want a mapping with version and services at the top")
		return cf
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Value == "services" && v.Kind == yaml.MappingNode {
			p.done[v] = true
			for j := 0; j+1 < len(v.Content); j += 2 {
				p.interpolate(v.Content[j+1], v.Content[j].Value)
			}
			continue
		}
		p.interpolate(v, "")
	}
	if v := get(root, "version"); v != nil {
		if v.Kind != yaml.ScalarNode || !(strings.HasPrefix(v.Value, "2") || strings.HasPrefix(v.Value, "3")) {
			p.fail(v, "", "version %q: want \"2.x\" or \"3.x\" (docker-compose 1.29)", v.Value)
		}
	}
	cf.Volumes = map[string]bool{}
	if vols := get(root, "volumes"); vols != nil {
		if vols.Kind != yaml.MappingNode {
			p.fail(vols, "", "volumes: want a mapping of volume names")
		} else {
			cf.VolumeNames = map[string]string{}
			for _, kv := range pairs(vols) {
				cf.Volumes[kv[0].Value] = true
				if n := scalar(get(kv[1], "name")); n != "" {
					cf.VolumeNames[kv[0].Value] = n
				}
			}
		}
	}
	if nets := get(root, "networks"); nets != nil {
		if nets.Kind != yaml.MappingNode {
			p.fail(nets, "", "networks: want a mapping of network names")
		} else {
			for _, kv := range pairs(nets) {
				n := Network{Key: kv[0].Value}
				if kv[1].Kind == yaml.MappingNode {
					n.Name = scalar(get(kv[1], "name"))
					switch ext := get(kv[1], "external"); {
					case ext == nil:
					case ext.Kind == yaml.MappingNode: // version 2/3.0-3.4: external: {name: …}
						n.External = true
						if nm := scalar(get(ext, "name")); nm != "" {
							n.Name = nm
						}
					default:
						n.External = ext.Value == "true"
					}
				}
				cf.Networks = append(cf.Networks, n)
			}
		}
	}
	services := get(root, "services")
	if services == nil || services.Kind != yaml.MappingNode {
		p.fail(root, "", "has no services mapping")
		return cf
	}
	cf.Parsed = true
	for _, kv := range pairs(services) {
		if c, ok := p.service(kv[0].Value, kv[1]); ok {
			cf.Containers = append(cf.Containers, c)
		}
	}
	return cf
}

type parser struct {
	file string
	dir  string
	env  Lookup
	cf   *composeFile
	done map[*yaml.Node]bool
}

func (p *parser) fail(n *yaml.Node, service, format string, a ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.cf.Problems = append(p.cf.Problems, Problem{File: p.file, Line: line, Service: service, Msg: fmt.Sprintf(format, a...)})
}

// interpolate substitutes variables in every scalar value (not in keys), once
// per node even when anchors make a node appear in several places.
func (p *parser) interpolate(n *yaml.Node, service string) {
	if n == nil || p.done[n] {
		return
	}
	p.done[n] = true
	switch n.Kind {
	case yaml.ScalarNode:
		v, _, err := interpolate(n.Value, p.env)
		if err != nil {
			p.fail(n, service, "%v", err)
			return
		}
		n.Value = v
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p.interpolate(n.Content[i+1], service)
		}
	case yaml.SequenceNode, yaml.DocumentNode:
		for _, c := range n.Content {
			p.interpolate(c, service)
		}
	}
}

func (p *parser) service(name string, n *yaml.Node) (Container, bool) {
	c := Container{Name: name, Line: n.Line, Env: map[string]string{}, EnvLines: map[string]int{}}
	if n.Kind != yaml.MappingNode {
		p.fail(n, name, "is not a mapping")
		return c, false
	}
	ok := true
	str := func(key string) string {
		v := get(n, key)
		if v == nil {
			return ""
		}
		if v.Kind != yaml.ScalarNode {
			p.fail(v, name, "%s: want a string", key)
			ok = false
			return ""
		}
		return v.Value
	}
	c.Image = str("image")
	if b := get(n, "build"); b != nil {
		ctx, df := "", "Dockerfile"
		switch b.Kind {
		case yaml.ScalarNode:
			ctx = b.Value
		case yaml.MappingNode:
			ctx = scalar(get(b, "context"))
			if d := scalar(get(b, "dockerfile")); d != "" {
				df = d
			}
		default:
			p.fail(b, name, "build: want a path or a mapping with context and dockerfile")
			ok = false
		}
		if ctx == "" {
			ctx = "."
		}
		c.Build = p.abs(ctx)
		c.Dockerfile = df
		if !filepath.IsAbs(df) {
			c.Dockerfile = filepath.Join(c.Build, df)
		}
	}
	if c.Image == "" && c.Build == "" {
		p.fail(n, name, "has neither image nor build")
		ok = false
	}
	var err error
	if c.Command, c.CommandLines, err = stringsAndLines(get(n, "command")); err != nil {
		p.fail(get(n, "command"), name, "command: %v", err)
		ok = false
	}
	if c.Entrypoint, c.EntrypointLines, err = stringsAndLines(get(n, "entrypoint")); err != nil {
		p.fail(get(n, "entrypoint"), name, "entrypoint: %v", err)
		ok = false
	}
	if files := get(n, "env_file"); files != nil {
		list, err := stringsOf(files)
		if err != nil {
			p.fail(files, name, "env_file: %v", err)
			ok = false
		}
		for _, f := range list {
			if err := readEnvFile(p.abs(f), c.Env); err != nil {
				p.fail(files, name, "env_file: %v", err)
				ok = false
			}
		}
	}
	if e := get(n, "environment"); e != nil {
		if err := environment(e, c.Env, c.EnvLines); err != nil {
			p.fail(e, name, "environment: %v", err)
			ok = false
		}
	}
	if ports := get(n, "ports"); ports != nil {
		if ports.Kind != yaml.SequenceNode {
			p.fail(ports, name, "ports: want a list")
			ok = false
		} else {
			for _, pn := range ports.Content {
				pp, err := parsePort(pn)
				if err != nil {
					p.fail(pn, name, "ports: %v", err)
					ok = false
					continue
				}
				c.Ports = append(c.Ports, pp)
			}
		}
	}
	if vols := get(n, "volumes"); vols != nil {
		if vols.Kind != yaml.SequenceNode {
			p.fail(vols, name, "volumes: want a list")
			ok = false
		} else {
			for _, vn := range vols.Content {
				v, err := parseVolume(vn)
				if err != nil {
					p.fail(vn, name, "volumes: %v", err)
					ok = false
					continue
				}
				if v.Type == "volume" && v.Source != "" && !p.cf.Volumes[v.Source] {
					p.fail(vn, name, "volume %q is not declared in the top-level volumes", v.Source)
					ok = false
				}
				c.Volumes = append(c.Volumes, v)
			}
		}
	}
	if nets := get(n, "networks"); nets != nil && nets.Kind == yaml.MappingNode {
		for _, kv := range pairs(nets) {
			if al := get(kv[1], "aliases"); al != nil {
				list, err := stringsOf(al)
				if err != nil {
					p.fail(al, name, "networks: %s: aliases: %v", kv[0].Value, err)
					ok = false
				}
				c.Aliases = append(c.Aliases, list...)
			}
		}
	}
	if r := get(n, "restart"); r != nil {
		c.Restart = scalar(r)
		if !validRestart(c.Restart) {
			p.fail(r, name, "restart %q: want no, always, unless-stopped or on-failure[:N]", c.Restart)
			ok = false
		}
	}
	if h := get(n, "healthcheck"); h != nil {
		hc, err := parseHealthcheck(h)
		if err != nil {
			p.fail(h, name, "healthcheck: %v", err)
			ok = false
		}
		c.Healthcheck = hc
	}
	c.Role = role(c)
	return c, ok
}

func (p *parser) abs(f string) string {
	if strings.HasPrefix(f, "~") {
		if home, err := os.UserHomeDir(); err == nil {
			f = home + f[1:]
		}
	}
	if filepath.IsAbs(f) {
		return filepath.Clean(f)
	}
	return filepath.Join(p.dir, f)
}

// role is what a container runs (see Container.Role).
func role(c Container) string {
	name := ""
	if c.Image != "" {
		ref := c.Image
		if i := strings.LastIndex(ref, "@"); i >= 0 {
			ref = ref[:i]
		}
		if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
			ref = ref[:i]
		}
		name = path.Base(ref)
	} else if c.Dockerfile != "" {
		name = filepath.Base(filepath.Dir(c.Dockerfile))
	}
	if name == "nsq" {
		prog := c.Entrypoint
		if len(prog) == 0 {
			prog = c.Command
		}
		if len(prog) > 0 {
			return path.Base(prog[0])
		}
	}
	if isNSQAuth(name, c) {
		return NSQAuthRole // the svckit image running `nsqauth serve`
	}
	if name == "svckit" {
		// the svckit image running the console or nsqd-stats
		switch prog := svckitCommand(c); {
		case len(prog) > 0 && prog[0] == ConsoleRole:
			return ConsoleRole
		case len(prog) > 0 && prog[0] == NSQDStatsRole:
			return NSQDStatsRole
		}
	}
	return name
}

// The roles of the svckit image besides nsqauth.
const (
	ConsoleRole   = "console"
	NSQDStatsRole = "nsqd-stats"
)

func validRestart(r string) bool {
	switch r {
	case "no", "always", "unless-stopped", "on-failure":
		return true
	}
	if n, ok := strings.CutPrefix(r, "on-failure:"); ok {
		_, err := strconv.Atoi(n)
		return err == nil
	}
	return false
}

// get returns the value of key in a mapping, following aliases and merge
// keys (<<) as YAML and compose do; nil when absent.
func get(n *yaml.Node, key string) *yaml.Node {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" && k.Tag == "!!merge" {
			merged = append(merged, v)
			continue
		}
		if k.Value == key {
			return deref(v)
		}
	}
	for _, m := range merged {
		m = deref(m)
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, s := range srcs {
			if v := get(s, key); v != nil {
				return v
			}
		}
	}
	return nil
}

// pairs returns the key/value pairs of a mapping, merges included (an
// explicit key wins over a merged one), in file order.
func pairs(n *yaml.Node) [][2]*yaml.Node {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var out [][2]*yaml.Node
	seen := map[string]bool{}
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "<<" && k.Tag == "!!merge" {
			merged = append(merged, v)
			continue
		}
		seen[k.Value] = true
		out = append(out, [2]*yaml.Node{k, deref(v)})
	}
	for _, m := range merged {
		m = deref(m)
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, s := range srcs {
			for _, kv := range pairs(s) {
				if !seen[kv[0].Value] {
					seen[kv[0].Value] = true
					out = append(out, kv)
				}
			}
		}
	}
	return out
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func scalar(n *yaml.Node) string {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

// stringsOf reads a string (split on white space, as compose does for
// command and entrypoint) or a list of strings.
func stringsOf(n *yaml.Node) ([]string, error) {
	s, _, err := stringsAndLines(n)
	return s, err
}

// stringsAndLines is stringsOf with the line each string starts on.
func stringsAndLines(n *yaml.Node) ([]string, []int, error) {
	n = deref(n)
	if n == nil {
		return nil, nil, nil
	}
	switch n.Kind {
	case yaml.ScalarNode:
		out := strings.Fields(n.Value)
		lines := make([]int, len(out))
		for i := range lines {
			lines[i] = textLine(n)
		}
		return out, lines, nil
	case yaml.SequenceNode:
		out := make([]string, 0, len(n.Content))
		lines := make([]int, 0, len(n.Content))
		for _, c := range n.Content {
			c = deref(c)
			if c.Kind != yaml.ScalarNode {
				return nil, nil, fmt.Errorf("line %d: want a string", c.Line)
			}
			out = append(out, c.Value)
			lines = append(lines, textLine(c))
		}
		return out, lines, nil
	}
	return nil, nil, fmt.Errorf("want a string or a list of strings")
}

// textLine is the line a scalar's text starts on: a block scalar's (| or
// >) starts on the line after its indicator.
func textLine(n *yaml.Node) int {
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return n.Line + 1
	}
	return n.Line
}

// environment reads a mapping (KEY: value) or a list (KEY=value) into env,
// and each variable's line into lines.
func environment(n *yaml.Node, env map[string]string, lines map[string]int) error {
	switch n.Kind {
	case yaml.MappingNode:
		for _, kv := range pairs(n) {
			v := kv[1]
			if v.Kind != yaml.ScalarNode {
				return fmt.Errorf("%s: want a string value", kv[0].Value)
			}
			lines[kv[0].Value] = kv[0].Line
			if v.Tag == "!!null" {
				env[kv[0].Value] = ""
				continue
			}
			env[kv[0].Value] = v.Value
		}
		return nil
	case yaml.SequenceNode:
		for _, c := range n.Content {
			c = deref(c)
			if c.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: want KEY=value", c.Line)
			}
			k, v, _ := strings.Cut(c.Value, "=")
			env[k] = v
			lines[k] = c.Line
		}
		return nil
	}
	return fmt.Errorf("want a mapping or a list of KEY=value")
}

func readEnvFile(file string, env map[string]string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		env[strings.TrimSpace(k)] = v
	}
	return nil
}

// parsePort reads the short syntax [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTO]
// or the long one (target, published, protocol, host_ip).
func parsePort(n *yaml.Node) (Port, error) {
	n = deref(n)
	pp := Port{Protocol: "tcp", Line: n.Line}
	switch n.Kind {
	case yaml.MappingNode:
		pp.Target = scalar(get(n, "target"))
		pp.Published = scalar(get(n, "published"))
		pp.HostIP = scalar(get(n, "host_ip"))
		if pr := scalar(get(n, "protocol")); pr != "" {
			pp.Protocol = pr
		}
	case yaml.ScalarNode:
		s := n.Value
		if spec, proto, ok := strings.Cut(s, "/"); ok {
			s, pp.Protocol = spec, proto
		}
		// An IPv6 host address comes in brackets: [::1]:8500:8500.
		if strings.HasPrefix(s, "[") {
			end := strings.Index(s, "]:")
			if end < 0 {
				return pp, fmt.Errorf("%q: unterminated [IPv6 address]", n.Value)
			}
			pp.HostIP, s = s[1:end], s[end+2:]
			parts := strings.Split(s, ":")
			if len(parts) != 2 {
				return pp, fmt.Errorf("%q: want [IP]:HOST_PORT:CONTAINER_PORT", n.Value)
			}
			pp.Published, pp.Target = parts[0], parts[1]
			break
		}
		parts := strings.Split(s, ":")
		switch len(parts) {
		case 1:
			pp.Target = parts[0]
		case 2:
			pp.Published, pp.Target = parts[0], parts[1]
		case 3:
			pp.HostIP, pp.Published, pp.Target = parts[0], parts[1], parts[2]
		default:
			return pp, fmt.Errorf("%q: want [[HOST_IP:]HOST_PORT:]CONTAINER_PORT[/PROTOCOL]", n.Value)
		}
	default:
		return pp, fmt.Errorf("want a string or a mapping")
	}
	if pp.Protocol != "tcp" && pp.Protocol != "udp" && pp.Protocol != "sctp" {
		return pp, fmt.Errorf("%q: protocol %q: want tcp, udp or sctp", n.Value, pp.Protocol)
	}
	if !validPortRange(pp.Target) {
		return pp, fmt.Errorf("container port %q: want a port or a range (1-65535)", pp.Target)
	}
	if pp.Published != "" && pp.Published != "0" && !validPortRange(pp.Published) {
		return pp, fmt.Errorf("host port %q: want a port or a range (1-65535)", pp.Published)
	}
	return pp, nil
}

func validPortRange(s string) bool {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 1 || a > 65535 {
		return false
	}
	if !isRange {
		return true
	}
	b, err := strconv.Atoi(hi)
	return err == nil && b >= a && b <= 65535
}

// portNumbers expands a port or range.
func portNumbers(s string) []int {
	lo, hi, isRange := strings.Cut(s, "-")
	a, _ := strconv.Atoi(lo)
	b := a
	if isRange {
		b, _ = strconv.Atoi(hi)
	}
	var out []int
	for p := a; p <= b && p > 0; p++ {
		out = append(out, p)
	}
	return out
}

// parseVolume reads the short syntax [SOURCE:]TARGET[:MODE] or the long one.
func parseVolume(n *yaml.Node) (Volume, error) {
	n = deref(n)
	v := Volume{Type: "volume", Line: n.Line}
	switch n.Kind {
	case yaml.MappingNode:
		if t := scalar(get(n, "type")); t != "" {
			v.Type = t
		}
		v.Source = scalar(get(n, "source"))
		v.Target = scalar(get(n, "target"))
		v.ReadOnly = scalar(get(n, "read_only")) == "true"
	case yaml.ScalarNode:
		parts := strings.Split(n.Value, ":")
		switch len(parts) {
		case 1:
			v.Target = parts[0]
		case 2, 3:
			v.Source, v.Target = parts[0], parts[1]
			if len(parts) == 3 {
				v.ReadOnly = strings.Contains(","+parts[2]+",", ",ro,")
			}
		default:
			return v, fmt.Errorf("%q: want [SOURCE:]TARGET[:MODE]", n.Value)
		}
		if s := v.Source; strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") || strings.HasPrefix(s, "~") {
			v.Type = "bind"
		}
	default:
		return v, fmt.Errorf("want a string or a mapping")
	}
	switch v.Type {
	case "volume", "bind", "tmpfs", "npipe":
	default:
		return v, fmt.Errorf("type %q: want volume, bind or tmpfs", v.Type)
	}
	if !strings.HasPrefix(v.Target, "/") {
		return v, fmt.Errorf("target %q: want an absolute path in the container", v.Target)
	}
	return v, nil
}

func parseHealthcheck(n *yaml.Node) (*Healthcheck, error) {
	h := &Healthcheck{Line: n.Line}
	if n.Kind != yaml.MappingNode {
		return h, fmt.Errorf("want a mapping with test, interval, timeout, retries")
	}
	h.Disabled = scalar(get(n, "disable")) == "true"
	t := get(n, "test")
	if t == nil {
		if !h.Disabled {
			return h, fmt.Errorf("no test")
		}
		return h, nil
	}
	if t.Kind == yaml.ScalarNode { // a string runs in a shell
		h.Test = []string{"CMD-SHELL", t.Value}
		return h, nil
	}
	test, err := stringsOf(t)
	if err != nil {
		return h, fmt.Errorf("test: %v", err)
	}
	if len(test) == 0 {
		return h, fmt.Errorf("test is empty")
	}
	switch test[0] {
	case "NONE":
		h.Disabled = true
	case "CMD", "CMD-SHELL":
		if len(test) < 2 {
			return h, fmt.Errorf("test %v: %s with no command", test, test[0])
		}
	default:
		return h, fmt.Errorf("test %v: the first element must be CMD, CMD-SHELL or NONE", test)
	}
	h.Test = test
	return h, nil
}
