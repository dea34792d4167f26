package infra

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/svckit/svckit/svckit/nsqauth"
)

// The datacenter's files beside its hosts' directories.
const (
	// ACLFlagsFile holds svckit acl apply's flags of the datacenter, one
	// --flag=value a line (# comments): ./build.sh secrets makes the token
	// secrets of the services it names, ./build.sh up applies them.
	ACLFlagsFile = "acl.flags"
	// NSQAuthPolicyFile is nsqd's authorization policy, which ./build.sh
	// up writes into Consul KV (svckit acl apply --nsqauth-policy) when
	// none is there.
	NSQAuthPolicyFile = "nsqauth-policy.json"
)

// checkSecurity: a datacenter is secure by default (docs/security.md).
//
//   - Consul: ACLs denying by default, gossip encryption and TLS with
//     verification come from the agent's configuration file in the
//     datacenter's secrets (a read-only secrets volume), nothing in the
//     compose file weakens them, and the API is HTTPS only. With
//     o.Secrets, the file itself is read and checked.
//   - nsqd requires TLS (1.2 or later) on TCP, with its certificate from a
//     volume; nsqadmin, which has no authentication, does not run.
//   - Our services (and nsqauth) reach Consul over HTTPS with a CA and a
//     token from a file, speak TLS to nsqd, have a replay secret, and hold
//     no secret in their environment.
//   - The datacenter's nsqauth policy refuses secrets sent in clear, and
//     its acl.flags give every service the token it needs.
func checkSecurity(t *Tree, o CheckOptions, ps *problems) {
	for _, dc := range t.Datacenters {
		secrets := "" // the datacenter's secrets directory; "" = not read
		if o.Secrets != "" && runs(dc, func(c *Container) bool { return c.Role == "consul" }) {
			dir := filepath.Join(o.Secrets, dc.Name)
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				ps.addFile(path.Join(DatacentersDir, dc.Name), 0, "no secrets of datacenter %s in %s (--secrets): run ./build.sh secrets %s (with SVCKIT_SECRETS=%s), or check without --secrets",
					dc.Name, dir, dc.Name, o.Secrets)
			} else {
				secrets = dir
			}
		}
		for _, h := range dc.Hosts {
			for i := range h.Containers {
				c := &h.Containers[i]
				switch {
				case c.Role == "consul":
					checkConsulSecurity(t, dc, h, c, secrets, ps)
				case c.Role == "nsqd":
					checkNSQDTLS(h, c, ps)
				case c.Role == "nsqadmin":
					ps.add(h, c, 0, "nsqadmin has no authentication: whoever reaches it can delete topics and channels; do not run it in a datacenter")
				case ours[c.Role] || c.Role == NSQAuthRole:
					checkOurSecrets(h, c, ps)
				}
			}
		}
		checkNSQAuthPolicy(t, dc, ps)
		checkACLFlags(t, dc, ps)
	}
}

// runs reports whether a container of the datacenter matches.
func runs(dc *Datacenter, match func(*Container) bool) bool {
	for _, h := range dc.Hosts {
		for i := range h.Containers {
			if match(&h.Containers[i]) {
				return true
			}
		}
	}
	return false
}

// arg is one element of a container's entrypoint and command.
type arg struct {
	s    string
	line int // 0 when unknown (the image's)
}

// flagUse is one flag of a command line.
type flagUse struct {
	name  string // without dashes
	value string // "" for a boolean flag given bare
	bare  bool   // given without a value
	line  int
}

// flagKinds tells parseFlags how a flag takes its value (Go's flag
// package: -name=value, or -name value unless the flag is boolean).
type flagKinds struct {
	valued  func(name string) bool // always takes the next argument when bare
	boolean func(name string) bool // never does
}

// parseFlags reads the flags of args in order. A flag of neither kind
// takes the next argument when that is not a flag: the programs checked
// (consul agent, nsqd) take no positional arguments.
func parseFlags(args []arg, k flagKinds) []flagUse {
	var out []flagUse
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a.s, "-") || a.s == "-" || a.s == "--" {
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a.s, "-"), "-")
		if n, v, ok := strings.Cut(name, "="); ok {
			out = append(out, flagUse{name: n, value: v, line: a.line})
			continue
		}
		f := flagUse{name: name, bare: true, line: a.line}
		switch {
		case k.boolean != nil && k.boolean(name):
		case (k.valued != nil && k.valued(name)) || (i+1 < len(args) && !strings.HasPrefix(args[i+1].s, "-")):
			if i+1 < len(args) {
				i++
				f.value, f.bare = args[i].s, false
			}
		}
		out = append(out, f)
	}
	return out
}

// lastFlag is the last use of a flag (the one Go's flag package keeps).
func lastFlag(flags []flagUse, name string) (flagUse, bool) {
	for i := len(flags) - 1; i >= 0; i-- {
		if flags[i].name == name {
			return flags[i], true
		}
	}
	return flagUse{}, false
}

// commandLine is what the container runs, as compose runs it: its own
// entrypoint and command, or its image's (a compose entrypoint clears the
// image's command). fromImage says that the command is the image's; known
// is false when that could not be read.
func commandLine(t *Tree, c *Container) (args []arg, fromImage, known bool) {
	ep, epLines := c.Entrypoint, c.EntrypointLines
	cmd, cmdLines := c.Command, c.CommandLines
	if len(c.Entrypoint) == 0 {
		file := imageDockerfile(t, c)
		df, ok := readDockerfile(file)
		ok = ok && file != ""
		if ok {
			ep, epLines = df.Entrypoint, nil
		}
		if len(cmd) == 0 {
			if !ok {
				return nil, true, false
			}
			cmd, cmdLines, fromImage = df.Cmd, nil, len(df.Cmd) > 0
		}
	}
	for i, s := range ep {
		args = append(args, arg{s, lineOf(epLines, i)})
	}
	for i, s := range cmd {
		args = append(args, arg{s, lineOf(cmdLines, i)})
	}
	return args, fromImage, true
}

// mountOf is the container's mount that holds p (a path in the
// container), the deepest one, and p below it; nil when none does.
func mountOf(c *Container, p string) (*Volume, string) {
	p = path.Clean(p)
	var best *Volume
	rel := ""
	for i := range c.Volumes {
		v := &c.Volumes[i]
		t := path.Clean(v.Target)
		r, ok := strings.CutPrefix(p, t)
		if !ok || (r != "" && !strings.HasPrefix(r, "/") && t != "/") {
			continue
		}
		if best == nil || len(t) > len(path.Clean(best.Target)) {
			best, rel = v, strings.TrimPrefix(r, "/")
		}
	}
	return best, rel
}

// secretsID is the identity whose secrets a named volume holds, "" when
// it is not a secrets volume: a volume whose name on the engine or key in
// the file says secrets. ./build.sh up fills <project>-secrets-<id> from
// the datacenter's secrets directory.
func secretsID(h *Host, v *Volume) string {
	if v.Type != "volume" || v.Source == "" {
		return ""
	}
	for _, n := range []string{h.VolumeNames[v.Source], v.Source} {
		if i := strings.LastIndex(n, "secrets-"); i >= 0 && len(n) > i+len("secrets-") {
			return n[i+len("secrets-"):]
		}
	}
	for _, n := range []string{h.VolumeNames[v.Source], v.Source} {
		if strings.Contains(n, "secrets") {
			return v.Source
		}
	}
	return ""
}

func isTrue(s string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	return err == nil && b
}

func isFalse(s string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	return err == nil && !b
}

// agentFlags are the flags of the consul agent a container runs (see
// commandLine for fromImage and known); agent is false when it runs
// another consul command.
func agentFlags(t *Tree, c *Container) (flags []flagUse, fromImage, known, agent bool) {
	args, fromImage, known := commandLine(t, c)
	if len(args) > 0 && path.Base(args[0].s) == "consul" {
		args = args[1:]
	}
	if !known || len(args) == 0 || args[0].s != "agent" {
		return nil, fromImage, known, false
	}
	return parseFlags(args[1:], flagKinds{valued: consulValued, boolean: consulBoolean}), fromImage, true, true
}

// consulValued are the consul agent flags that take a value and that a
// value starting with "-" (-http-port -1) must not fool.
func consulValued(name string) bool {
	switch name {
	case "config-file", "config-dir", "hcl", "node", "http-port", "https-port", "encrypt", "data-dir", "datacenter":
		return true
	}
	return false
}

// consulBoolean are the consul agent's boolean flags.
func consulBoolean(name string) bool {
	switch name {
	case "dev", "server", "ui", "bootstrap", "disable-host-node-id", "disable-keyring-file", "rejoin", "syslog", "enable-script-checks", "enable-local-script-checks":
		return true
	}
	return false
}

// confSource is one -config-file or -config-dir of a Consul agent on a
// secrets volume.
type confSource struct {
	flag string // config-file or config-dir
	path string // in the container
	rel  string // below the volume's mount: the path in the secrets directory
	line int
}

// checkConsulSecurity: the agent's ACLs (default deny), gossip encryption
// and TLS with verification come from its configuration in the
// datacenter's secrets, which is mounted read-only from a secrets volume;
// nothing in its command line weakens them (Consul merges -hcl after the
// configuration files, so an -hcl wins); its API is HTTPS only. With
// secrets (the datacenter's secrets directory), the configuration files
// are read from there and checked.
//
// A configuration file or directory elsewhere (another volume, a bind
// mount) is a problem even if harmless: infra check cannot see what it
// sets. Keep other settings in -hcl, where it can.
func checkConsulSecurity(t *Tree, dc *Datacenter, h *Host, c *Container, secrets string, ps *problems) {
	flags, fromImage, known, agent := agentFlags(t, c)
	add := func(line int, format string, a ...any) {
		if fromImage {
			format = "its image's default command: " + format
		}
		ps.add(h, c, line, format, a...)
	}
	if !known {
		add(0, "no command, and its image's Dockerfile gives none that infra check can read: give the agent its command (agent … -config-file=… on the secrets volume)")
		return
	}
	if !agent {
		return // a consul CLI command
	}
	var sources []confSource
	var inline []confAttr // the -hcl settings, their lines in the compose file
	configFlags, httpSet, httpsOn := 0, false, false
	for _, f := range flags {
		switch f.name {
		case "dev":
			if f.bare || isTrue(f.value) {
				add(f.line, "-dev runs a development agent: in memory, without ACLs, gossip encryption or TLS; remove it")
			}
		case "encrypt":
			add(f.line, "-encrypt=…: a secret in the compose file (the gossip key): it belongs in the agent's configuration in the datacenter's secrets (svckit secrets init writes it into consul.hcl)")
		case "http-port":
			httpSet = true
			if strings.TrimSpace(f.value) != "-1" {
				add(f.line, "-http-port=%s serves Consul's API over plain HTTP: tokens would cross the network in clear; want the HTTPS API only (-hcl=ports { http = -1, https = 8501 })", f.value)
			}
		case "https-port":
			n, err := strconv.Atoi(strings.TrimSpace(f.value))
			httpsOn = err == nil && n > 0
		case "config-file", "config-dir":
			configFlags++
			v, rel := mountOf(c, f.value)
			switch {
			case v == nil || v.Type == "tmpfs":
				add(f.line, "-%s=%s is on no volume: the agent's security configuration comes from the datacenter's secrets, on a read-only secrets volume (./build.sh up fills it)", f.name, f.value)
				continue
			case secretsID(h, v) == "":
				add(f.line, "-%s=%s is on %s, not on a secrets volume: infra check reads only the secrets (--secrets), so it cannot see whether this turns ACLs or TLS off; keep settings that are not secret inline (-hcl)", f.name, f.value, v)
				continue
			case !v.ReadOnly:
				ps.add(h, c, v.Line, "the secrets volume %s is mounted read-write at %s: mount it read-only (%s:%s:ro), so that the agent cannot rewrite its own security configuration", v.Source, v.Target, v.Source, v.Target)
			}
			sources = append(sources, confSource{flag: f.name, path: f.value, rel: rel, line: f.line})
		case "hcl":
			attrs, err := parseHCL(f.value)
			if err != nil {
				line, why := f.line, err.Error()
				if he := (*hclError)(nil); errors.As(err, &he) && f.line > 0 {
					line, why = f.line+he.Line-1, he.Msg
				}
				add(line, "-hcl does not parse (%s): infra check cannot tell whether it weakens the agent's security", why)
				continue
			}
			for _, a := range attrs {
				if f.line > 0 {
					a.Line += f.line - 1
				} else {
					a.Line = 0
				}
				inline = append(inline, a)
				switch canonical(a.Path) {
				case "ports.http":
					httpSet = true
				case "ports.https":
					n, err := strconv.Atoi(strings.TrimSpace(a.Value))
					httpsOn = err == nil && n > 0
				}
				if why := inlineWeakens(a); why != "" {
					add(a.Line, "-hcl %s", why)
				}
			}
		}
	}
	if configFlags == 0 {
		add(0, "no -config-file: ACLs denying by default, gossip encryption and TLS come from the agent's configuration in the datacenter's secrets (-config-file=/secrets/hosts/%s/consul.hcl on the read-only volume secrets-consul; ./build.sh secrets %s makes it)", h.Name, dc.Name)
	}
	if !httpSet {
		add(0, "its plain HTTP API is on (Consul's default, port 8500): tokens would cross the network in clear; add -hcl=ports { http = -1, https = 8501 }")
	}
	if !httpsOn {
		add(0, "no HTTPS API (ports { https = … }): the services reach their agent over HTTPS only; add -hcl=ports { http = -1, https = 8501 }")
	}
	if secrets != "" {
		checkConsulConfig(dc, h, c, secrets, sources, inline, ps)
	}
}

// inlineWeakens says how an -hcl setting weakens the agent's security,
// "" when it does not. Settings that only strengthen it, and tls.https's
// verify_incoming = false (clients of the HTTPS API prove who they are
// with their ACL token), are fine.
func inlineWeakens(a confAttr) string {
	v := strings.TrimSpace(a.Value)
	set := a.String()
	switch p := canonical(a.Path); {
	case p == "acl.enabled" && isFalse(v):
		return set + " turns Consul's ACLs off: every request may do anything; remove it"
	case p == "acl.default_policy" && !strings.EqualFold(v, "deny"):
		return set + ": a request without a token may do whatever no rule denies; remove it (the configuration in the secrets says \"deny\")"
	case p == "ports.http" && v != "-1":
		return set + " serves Consul's API over plain HTTP: tokens would cross the network in clear; want http = -1 (HTTPS only)"
	case p == "tls.grpc.verify_incoming" && isFalse(v):
		return set + ": the agent's gRPC port (8503 on servers) would accept clients without a certificate of the datacenter's CA; remove it"
	case (p == "tls.defaults.verify_incoming" || p == "tls.internal_rpc.verify_incoming") && isFalse(v):
		return set + ": the agent would accept connections without a certificate of the datacenter's CA (anyone could speak to it as a Consul agent); remove it"
	case (p == "tls.defaults.verify_outgoing" || p == "tls.internal_rpc.verify_outgoing") && isFalse(v):
		return set + ": the agent would connect to others without verifying them (or without TLS); remove it"
	case p == "tls.internal_rpc.verify_server_hostname" && isFalse(v):
		return set + ": any certificate of the datacenter's CA could pose as a Consul server; remove it"
	case (p == "encrypt_verify_incoming" || p == "encrypt_verify_outgoing") && isFalse(v):
		return set + ": the agent would accept or send gossip in clear; remove it"
	case p == "encrypt":
		return a.Path + " = …: a secret in the compose file (the gossip key): it belongs in the agent's configuration in the datacenter's secrets"
	case strings.HasPrefix(p, "acl.tokens.") && v != "":
		return a.Path + " = …: a secret in the compose file (a Consul token): it belongs in the agent's configuration in the datacenter's secrets"
	}
	return ""
}

// setting is a configuration value and where it came from.
type setting struct {
	value  string
	inline bool // an -hcl of the compose file (checked by inlineWeakens)
}

// checkConsulConfig reads the agent's configuration files from the
// datacenter's secrets directory and checks what they make of its
// security, with the compose file's -hcl laid over them as Consul does.
// A value that an -hcl decides is left to inlineWeakens. Problems are the
// compose file's, at the -config-file flag, naming the file to fix.
func checkConsulConfig(dc *Datacenter, h *Host, c *Container, secrets string, sources []confSource, inline []confAttr, ps *problems) {
	eff := map[string]setting{}
	var read []string
	line := 0
	for _, s := range sources {
		file := filepath.Join(secrets, filepath.FromSlash(s.rel))
		attrs, files, err := readConsulConfig(file, s.flag == "config-dir")
		switch {
		case errors.Is(err, fs.ErrNotExist):
			ps.add(h, c, s.line, "%s (its -%s=%s) is missing: run ./build.sh secrets %s", file, s.flag, s.path, dc.Name)
			continue
		case err != nil:
			ps.add(h, c, s.line, "%s (its -%s=%s): %v; run ./build.sh secrets %s or fix it", file, s.flag, s.path, err, dc.Name)
			continue
		}
		if line == 0 {
			line = s.line
		}
		read = append(read, files...)
		for _, a := range attrs {
			eff[canonical(a.Path)] = setting{value: strings.TrimSpace(a.Value)}
		}
	}
	if len(read) == 0 {
		return
	}
	for _, a := range inline {
		eff[canonical(a.Path)] = setting{value: strings.TrimSpace(a.Value), inline: true}
	}
	where := strings.Join(read, ", ")
	bad := func(format string, a ...any) {
		ps.add(h, c, line, "%s: %s", where, fmt.Sprintf(format, a...))
	}
	// check reports p unless an -hcl decides it, or ok accepts its value
	// ("" when unset).
	check := func(p string, ok func(v string) bool, format string, a ...any) {
		s := eff[p]
		if s.inline || ok(s.value) {
			return
		}
		bad(format, a...)
	}
	check("acl.enabled", isTrue, "ACLs are not enabled (want acl { enabled = true }): every request may do anything")
	check("acl.default_policy", func(v string) bool { return strings.EqualFold(v, "deny") },
		"acl default_policy is %s: want \"deny\", or a request without a token may do whatever no rule denies", orDefault(eff["acl.default_policy"].value, "\"allow\" (Consul's default)"))
	check("encrypt", func(v string) bool { return v != "" }, "no gossip encryption key (encrypt): whoever reaches the agents' gossip port can join the datacenter and read its gossip")
	for _, p := range []string{"encrypt_verify_incoming", "encrypt_verify_outgoing"} {
		check(p, func(v string) bool { return !isFalse(v) }, "%s = false: the agent would accept or send gossip in clear", p)
	}
	var missing []string
	for _, p := range []string{"ca_file", "cert_file", "key_file"} {
		s := eff["tls.defaults."+p]
		if !s.inline && s.value == "" && !(p == "ca_file" && eff["tls.defaults.ca_path"].value != "") {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		bad("tls { defaults { … } } has no %s: the agent cannot speak TLS with the datacenter's certificates", strings.Join(missing, ", "))
	}
	check("tls.defaults.verify_incoming", isTrue, "tls.defaults.verify_incoming is not true: the agent would accept RPC from whoever has no certificate of the datacenter's CA")
	check("tls.defaults.verify_outgoing", isTrue, "tls.defaults.verify_outgoing is not true: the agent would connect to others without TLS")
	for _, p := range []string{"tls.internal_rpc.verify_incoming", "tls.internal_rpc.verify_outgoing"} {
		check(p, func(v string) bool { return !isFalse(v) }, "%s = false: RPC between the agents would go unverified", p)
	}
	check("tls.internal_rpc.verify_server_hostname", isTrue, "tls.internal_rpc.verify_server_hostname is not true: any certificate of the datacenter's CA (a client's too) could pose as a Consul server")
	// initial_management is expected: it makes the operator's token
	// Consul's at the first leader, so that nobody can take the ACL
	// bootstrap before the operator (Consul's data holds every token's
	// secret anyway).
	check("acl.tokens.initial_management", func(v string) bool { return v != "" },
		"no initial management token (acl { tokens { initial_management } }): until someone bootstraps the ACLs, anyone reaching the HTTPS API can (PUT /v1/acl/bootstrap) and get a management token; run ./build.sh secrets again after removing this consul.hcl")
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return strconv.Quote(v)
}

// readConsulConfig reads a configuration file, or a directory's (its .hcl
// and .json files in lexical order, as Consul does). files are those read.
// A directory without one is an error: it holds no security configuration.
func readConsulConfig(file string, dir bool) (attrs []confAttr, files []string, err error) {
	names := []string{file}
	if dir {
		ents, err := os.ReadDir(file)
		if err != nil {
			return nil, nil, err
		}
		names = nil
		for _, e := range ents {
			if !e.IsDir() && (strings.HasSuffix(e.Name(), ".hcl") || strings.HasSuffix(e.Name(), ".json")) {
				names = append(names, filepath.Join(file, e.Name()))
			}
		}
		sort.Strings(names)
		if len(names) == 0 {
			return nil, nil, errors.New("no .hcl or .json file in it")
		}
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, nil, err
		}
		var as []confAttr
		if strings.HasSuffix(n, ".json") {
			as, err = parseConfJSON(b)
		} else {
			as, err = parseHCL(string(b))
		}
		switch {
		case err != nil && dir:
			return nil, nil, fmt.Errorf("%s does not parse: %w", filepath.Base(n), err)
		case err != nil:
			return nil, nil, fmt.Errorf("does not parse: %w", err)
		}
		attrs = append(attrs, as...)
		files = append(files, n)
	}
	return attrs, files, nil
}

// nsqdTLSMin are the --tls-min-version values that are not broken.
func nsqdTLSMin(v string) bool { return v == "tls1.2" || v == "tls1.3" }

// checkNSQDTLS: nsqd requires TLS 1.2 or later on TCP (the messages and the
// clients' AUTH secrets cross the network between the hosts), with its
// certificate and key from a volume (an image holds no secret).
func checkNSQDTLS(h *Host, c *Container, ps *problems) {
	flags := parseFlags(composeArgs(c), flagKinds{boolean: func(n string) bool { return n == "tls-required" }})
	var missing []string
	for _, name := range []string{"tls-cert", "tls-key"} {
		f, ok := lastFlag(flags, name)
		if !ok || f.value == "" {
			missing = append(missing, "--"+name)
			continue
		}
		if v, _ := mountOf(c, f.value); v == nil || v.Type == "tmpfs" {
			ps.add(h, c, f.line, "--%s=%s is on no volume: it would have to be in the image; mount it from the host's secrets volume (read-only)", name, f.value)
		}
	}
	if len(missing) > 0 {
		ps.add(h, c, 0, "no %s: nsqd speaks TCP in clear, so the clients' AUTH secrets and the messages cross the network readable; give it its certificate from its secrets volume (--tls-cert=/secrets/nsqd.pem --tls-key=/secrets/nsqd-key.pem)", strings.Join(missing, " or "))
	}
	switch f, ok := lastFlag(flags, "tls-required"); {
	case !ok:
		ps.add(h, c, 0, "no --tls-required (nsqd's default: false): clients may speak to nsqd in clear, AUTH secret included; want --tls-required=tcp-https")
	case !f.bare && f.value != "true" && f.value != "tcp-https":
		ps.add(h, c, f.line, "--tls-required=%s: clients may speak to nsqd in clear, AUTH secret included; want --tls-required=tcp-https", f.value)
	}
	switch f, ok := lastFlag(flags, "tls-min-version"); {
	case !ok:
		ps.add(h, c, 0, "no --tls-min-version (nsqd's default: tls1.0, which is broken): want --tls-min-version=tls1.2 (or tls1.3)")
	case !nsqdTLSMin(f.value):
		ps.add(h, c, f.line, "--tls-min-version=%s: want tls1.2 or tls1.3", f.value)
	}
	// With a certificate nsqd also serves its HTTP API over TLS, on
	// 0.0.0.0:4152 by default: /pub, /topic/delete and /config to whoever
	// reaches it, NSQ's auth covering none of it.
	if _, ok := lastFlag(flags, "tls-cert"); ok {
		switch f, ok := lastFlag(flags, "https-address"); {
		case !ok:
			ps.add(h, c, 0, "no --https-address: with a certificate nsqd serves its HTTP API over TLS on 0.0.0.0:4152, to whoever reaches it (/pub, /topic/delete; NSQ's auth covers none of it): want --https-address=127.0.0.1:4152")
		case f.value != "" && !loopbackAddr(f.value):
			ps.add(h, c, f.line, "--https-address=%s: nsqd's HTTP API over TLS (/pub, /topic/delete; NSQ's auth covers none of it) must listen on loopback only", f.value)
		}
	}
	// nsqd sends every client's AUTH secret to the authorization server:
	// over HTTPS, verified against the datacenter's CA.
	for _, f := range flags {
		if f.name != "auth-http-address" {
			continue
		}
		if !strings.HasPrefix(f.value, "https://") {
			ps.add(h, c, f.line, "--auth-http-address=%s: nsqd would send the clients' AUTH secrets in clear; want https://<nsqauth>:<port>/auth (nsqauth with SVCKIT_HTTP_TLS_CERT)", f.value)
		} else if _, ok := lastFlag(flags, "tls-root-ca-file"); !ok {
			ps.add(h, c, f.line, "--auth-http-address over HTTPS without --tls-root-ca-file: nsqd cannot verify nsqauth's certificate (give it the datacenter's CA)")
		}
	}
}

// loopbackAddr reports whether host:port listens on loopback only.
func loopbackAddr(a string) bool {
	host, _, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// composeArgs are the entrypoint and command the compose file gives the
// container, with their lines.
func composeArgs(c *Container) []arg {
	var args []arg
	for i, s := range c.Entrypoint {
		args = append(args, arg{s, lineOf(c.EntrypointLines, i)})
	}
	for i, s := range c.Command {
		args = append(args, arg{s, lineOf(c.CommandLines, i)})
	}
	return args
}

func lineOf(lines []int, i int) int {
	if i < len(lines) {
		return lines[i]
	}
	return 0
}

// checkOurSecrets: a service of ours (or nsqauth) reaches its Consul agent
// over HTTPS, verifying it with the datacenter's CA, with its own token
// from a file; speaks TLS to nsqd; has the replay secret (nsqauth too: its
// /identities and dead letters); nsqauth serves HTTPS; and holds no secret
// in its environment, which the
// repository and docker inspect show to anyone.
func checkOurSecrets(h *Host, c *Container, ps *problems) {
	env := c.Env
	add := func(k, format string, a ...any) { ps.add(h, c, c.EnvLines[k], format, a...) }
	if addr := env["CONSUL_HTTP_ADDR"]; addr != "" && !strings.HasPrefix(addr, "https://") && !isTrue(env["CONSUL_HTTP_SSL"]) {
		add("CONSUL_HTTP_ADDR", "CONSUL_HTTP_ADDR=%s is plain HTTP: the service's Consul token would cross the network in clear (and the agent serves HTTPS only); want https://<its agent>:8501", addr)
	}
	if v, ok := env["CONSUL_HTTP_SSL_VERIFY"]; ok && isFalse(v) {
		add("CONSUL_HTTP_SSL_VERIFY", "CONSUL_HTTP_SSL_VERIFY=%s: the service would give its token to whoever answers; remove it", v)
	}
	for _, k := range []string{"CONSUL_HTTP_TOKEN", "SVCKIT_REPLAY_SECRET", "SVCKIT_NSQ_AUTH_SECRET", "SVCKIT_METRICS_TOKEN", "SVCKIT_OPERATOR_TOKEN", "SVCKIT_NSQD_STATS_SECRET"} {
		if env[k] != "" {
			add(k, "%s=…: a secret in the compose file (the repository and docker inspect show it); put it in the service's secrets volume and name the file in %s_FILE", k, k)
		}
	}
	file := func(k, why string) {
		v := env[k]
		if v == "" {
			add(k, "no %s: %s", k, why)
			return
		}
		if m, _ := mountOf(c, v); m == nil || m.Type == "tmpfs" {
			add(k, "%s=%s is on no volume of the service: the image holds no secret; mount its secrets volume (read-only)", k, v)
		}
	}
	file("CONSUL_CACERT", "the service cannot verify its agent's certificate (the datacenter's CA, ca.pem in its secrets volume)")
	file("CONSUL_HTTP_TOKEN_FILE", "without its token the service is anonymous, which Consul (ACLs denying by default) refuses")
	if !isTrue(env["SVCKIT_NSQ_TLS"]) {
		add("SVCKIT_NSQ_TLS", "SVCKIT_NSQ_TLS is not true: the service would speak to nsqd in clear (which nsqd refuses), its AUTH secret readable on the network; set SVCKIT_NSQ_TLS: \"true\" and SVCKIT_NSQ_TLS_CACERT")
	} else {
		file("SVCKIT_NSQ_TLS_CACERT", "nsqd's certificate is signed by the datacenter's CA, which the image does not hold: the service cannot verify it")
	}
	if isTrue(env["SVCKIT_PPROF"]) {
		add("SVCKIT_PPROF", "SVCKIT_PPROF is true: the service's runtime profiles (/debug/pprof, its memory included) would answer whoever reaches its port; turn it on only where its port is not on a shared network")
	}
	if isTrue(env["SVCKIT_NSQ_TLS_INSECURE_SKIP_VERIFY"]) {
		add("SVCKIT_NSQ_TLS_INSECURE_SKIP_VERIFY", "SVCKIT_NSQ_TLS_INSECURE_SKIP_VERIFY is true: the service would send its AUTH secret to whoever answers; remove it")
	}
	file("SVCKIT_REPLAY_SECRET_FILE", "its data endpoints (/streams, /replay, /snapshot, /deadletters, nsqauth's /identities) would answer anyone; name the replay secret in its secrets volume")
	if c.Role == NSQAuthRole {
		// nsqd sends it every client's AUTH secret.
		file("SVCKIT_HTTP_TLS_CERT", "nsqd would send it the clients' AUTH secrets in clear; serve HTTPS with its certificate (nsqauth.pem in its secrets volume)")
		file("SVCKIT_HTTP_TLS_KEY", "nsqd would send it the clients' AUTH secrets in clear; serve HTTPS with its key (nsqauth-key.pem in its secrets volume)")
	}
}

// checkNSQAuthPolicy: a datacenter that runs nsqauth has its policy in
// datacenters/<dc>/nsqauth-policy.json (or, as before, a seed on an nsqauth:
// SVCKIT_NSQAUTH_SEED or --seed, JSON), which parses and refuses secrets
// sent in clear (require_tls), for every identity.
func checkNSQAuthPolicy(t *Tree, dc *Datacenter, ps *problems) {
	if !runs(dc, func(c *Container) bool { return c.Role == NSQAuthRole }) {
		return
	}
	rel := path.Join(DatacentersDir, dc.Name, NSQAuthPolicyFile)
	sources := 0
	b, err := os.ReadFile(filepath.Join(t.Root, filepath.FromSlash(rel)))
	switch {
	case err == nil:
		sources++
		checkPolicy(b, func(line int, format string, a ...any) { ps.addFile(rel, line, format, a...) })
	case !errors.Is(err, fs.ErrNotExist):
		ps.addFile(rel, 0, "%v", err)
		sources++
	}
	for _, h := range dc.Hosts {
		for i := range h.Containers {
			c := &h.Containers[i]
			if c.Role != NSQAuthRole {
				continue
			}
			seed, line := c.Env["SVCKIT_NSQAUTH_SEED"], c.EnvLines["SVCKIT_NSQAUTH_SEED"]
			if f, ok := lastFlag(parseFlags(composeArgs(c), flagKinds{}), "seed"); ok {
				seed, line = f.value, f.line
			}
			if seed == "" || strings.HasPrefix(seed, "@") {
				continue // none, or a file in the container
			}
			sources++
			checkPolicy([]byte(seed), func(_ int, format string, a ...any) {
				ps.add(h, c, line, "its seed policy: "+format, a...)
			})
		}
	}
	if sources == 0 {
		ps.addFile(rel, 0, "missing: datacenter %s runs nsqauth, whose policy (who may publish and subscribe where) ./build.sh up writes into Consul KV from this file; without one nsqd refuses every client. Write it (like etc/nsqauth/policy.json, with \"require_tls\": true)", dc.Name)
	}
}

// checkPolicy checks one policy's text; bad gets the line of a problem in
// it (0 when unknown).
func checkPolicy(b []byte, bad func(line int, format string, a ...any)) {
	p, err := nsqauth.ParsePolicy(b)
	if err != nil {
		line := 0
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			line = lineAt(b, se.Offset)
		case errors.As(err, &te):
			line = lineAt(b, te.Offset)
		}
		bad(line, "does not parse: %v", err)
		return
	}
	if !p.RequireTLS {
		bad(jsonKeyLine(b, "require_tls"), "require_tls is not true: nsqauth would accept a secret that crossed the network in clear; set \"require_tls\": true")
	}
	for _, name := range slices.Sorted(maps.Keys(p.Identities)) {
		if r := p.Identities[name].RequireTLS; r != nil && !*r {
			bad(jsonKeyLine(b, "identities", name, "require_tls"), "identity %s has require_tls false: its secret would be accepted after crossing the network in clear; remove it", name)
		}
	}
}

// lineAt is the line of byte offset off in b.
func lineAt(b []byte, off int64) int {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	return 1 + bytes.Count(b[:off], []byte("\n"))
}

// jsonKeyLine is the line of the key at path (object keys from the top) in
// a JSON text, 0 when it is not there.
func jsonKeyLine(b []byte, path ...string) int {
	type frame struct {
		obj     bool
		key     string // the key whose value is being read
		wantKey bool
	}
	var stack []frame
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := dec.Token()
		if err != nil {
			return 0
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				if n := len(stack); n > 0 && stack[n-1].obj {
					stack[n-1].wantKey = true // after this value, the next key
				}
				stack = append(stack, frame{obj: d == '{', wantKey: d == '{'})
			} else if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		n := len(stack)
		if n == 0 || !stack[n-1].obj {
			continue
		}
		if !stack[n-1].wantKey {
			stack[n-1].wantKey = true // a scalar value: the next key follows
			continue
		}
		stack[n-1].key, stack[n-1].wantKey = tok.(string), false
		if n == len(path) {
			match := true
			for i := range stack {
				match = match && stack[i].obj && stack[i].key == path[i]
			}
			if match {
				return lineAt(b, dec.InputOffset())
			}
		}
	}
}

// aclFlags are the flags of a datacenter's acl.flags.
type aclFlags struct {
	values map[string][]aclValue // flag name (without dashes) → its values
}

type aclValue struct {
	value string
	line  int
}

// aclFlagName reports whether acl.flags may hold the flag: svckit acl
// apply's that name what gets a token (./build.sh adds the others).
func aclFlagName(n string) bool {
	switch n {
	case "service", "node", "owner", "nsqauth", "agent", "agent-service":
		return true
	}
	return false
}

// readACLFlags reads acl.flags as ./build.sh does (# to the end of the line
// is a comment, flags are separated by white space). ok is false when the
// file does not exist.
func readACLFlags(root, rel string, ps *problems) (f aclFlags, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
	if errors.Is(err, fs.ErrNotExist) {
		return f, false, nil
	}
	if err != nil {
		return f, false, err
	}
	f = aclFlags{values: map[string][]aclValue{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		for _, w := range strings.Fields(line) {
			name, value, hasValue := strings.Cut(strings.TrimPrefix(w, "--"), "=")
			switch {
			case !strings.HasPrefix(w, "--") || !hasValue || !aclFlagName(name):
				ps.addFile(rel, n, "%q: want --service=, --node=, --agent=, --owner=NAME=STREAM, --nsqauth= or --agent-service=, one --flag=value a line (./build.sh reads them so)", w)
			case value == "":
				ps.addFile(rel, n, "%s has no value", w)
			case name == "owner" && !strings.Contains(value, "="):
				ps.addFile(rel, n, "%s: want --owner=NAME=STREAM", w)
			default:
				f.values[name] = append(f.values[name], aclValue{value, n})
			}
		}
	}
	return f, true, sc.Err()
}

// has reports whether flag name has value v.
func (f aclFlags) has(name, v string) bool {
	return slices.ContainsFunc(f.values[name], func(a aclValue) bool { return a.value == v })
}

// names are the service names the flags give a token: --service, the NAME
// of --owner=NAME=STREAM, --nsqauth.
func (f aclFlags) names() map[string]bool {
	out := map[string]bool{}
	for _, v := range f.values["service"] {
		out[v.value] = true
	}
	for _, v := range f.values["nsqauth"] {
		out[v.value] = true
	}
	for _, v := range f.values["owner"] {
		n, _, _ := strings.Cut(v.value, "=")
		out[n] = true
	}
	return out
}

// checkACLFlags: a datacenter that runs Consul (or services of ours) has
// its acl.flags, and they give every agent and service the token it needs:
// every Consul agent an --agent (its node name, which must be its host's
// directory: svckit secrets init puts the token of agent <host> into the
// host's consul.hcl), the agents that our services talk to a --node (and
// no --node or --agent names an agent that is not there), every sensor's
// stream an --owner, and every service of ours that mounts the secrets of
// an identity a token of that identity (--service, --owner or --nsqauth;
// ./build.sh secrets makes token secrets only for those).
func checkACLFlags(t *Tree, dc *Datacenter, ps *problems) {
	consul := runs(dc, func(c *Container) bool { return c.Role == "consul" })
	anyOurs := runs(dc, func(c *Container) bool { return ours[c.Role] || c.Role == NSQAuthRole })
	if !consul && !anyOurs {
		return
	}
	rel := path.Join(DatacentersDir, dc.Name, ACLFlagsFile)
	f, ok, err := readACLFlags(t.Root, rel, ps)
	switch {
	case err != nil:
		ps.addFile(rel, 0, "%v", err)
		return
	case !ok:
		ps.addFile(rel, 0, "missing: Consul denies by default, and this file names what gets a token (svckit acl apply's flags, one a line: --node, --agent, --service, --owner, --nsqauth); ./build.sh secrets %s and up read it", dc.Name)
		return
	}
	nodes := map[string]bool{} // the -node of every agent
	tokens := f.names()
	for _, h := range dc.Hosts {
		var agent *Container
		var node flagUse
		for i := range h.Containers {
			c := &h.Containers[i]
			if c.Role != "consul" {
				continue
			}
			flags, fromImage, _, isAgent := agentFlags(t, c)
			if !isAgent || fromImage {
				continue // checkConsulSecurity says what is wrong with it
			}
			n, ok := lastFlag(flags, "node")
			if !ok || n.value == "" {
				ps.add(h, c, 0, "no -node: the agent's node name would be its container's host name, which changes with the container, and %s cannot name it; add -node=%s", rel, h.Name)
				continue
			}
			agent, node = c, n
			nodes[n.value] = true
			if n.value != h.Name {
				ps.add(h, c, n.line, "-node=%s is not its host's name %s: ./build.sh secrets gives this host's consul.hcl the token of agent %s, which --agent=%s would not make; use -node=%s", n.value, h.Name, h.Name, n.value, h.Name)
			}
			if !f.has("agent", n.value) {
				ps.add(h, c, n.line, "%s has no --agent=%s: the agent's token gets no policy, so it cannot register its node nor the services of its configuration", rel, n.value)
			}
		}
		for i := range h.Containers {
			c := &h.Containers[i]
			if !ours[c.Role] && c.Role != NSQAuthRole {
				continue
			}
			if agent != nil && !f.has("node", node.value) {
				ps.add(h, agent, node.line, "%s has no --node=%s: the services of this host talk to this agent, and their tokens may neither read it nor create sessions on it", rel, node.value)
				agent = nil // once per host
			}
			if c.Role == "sensor" && c.Env["SVCKIT_STREAM_ID"] == "" {
				ps.add(h, c, 0, "no SVCKIT_STREAM_ID: the sensor would make a random stream id, which no --owner in %s can name, so its token may not claim the stream", rel)
			}
			if s := c.Env["SVCKIT_STREAM_ID"]; s != "" && !f.has("owner", c.Role+"="+s) {
				ps.add(h, c, c.EnvLines["SVCKIT_STREAM_ID"], "SVCKIT_STREAM_ID=%s has no --owner=%s=%s in %s: its token may not claim the stream", s, c.Role, s, rel)
			}
			for j := range c.Volumes {
				v := &c.Volumes[j]
				if id := secretsID(h, v); id != "" && !tokens[id] {
					ps.add(h, c, v.Line, "mounts the secrets of %s (volume %s), which %s gives no token (--service=%s, --owner or --nsqauth): ./build.sh secrets makes none, and ./build.sh up cannot fill the volume", id, v.Source, rel, id)
				}
			}
		}
	}
	have := "it has none with a -node"
	if len(nodes) > 0 {
		have = "its agents' -node: " + strings.Join(slices.Sorted(maps.Keys(nodes)), ", ")
	}
	for _, name := range []string{"node", "agent"} {
		for _, v := range f.values[name] {
			if !nodes[v.value] {
				ps.addFile(rel, v.line, "--%s=%s names no Consul agent of datacenter %s (%s)", name, v.value, dc.Name, have)
			}
		}
	}
}
