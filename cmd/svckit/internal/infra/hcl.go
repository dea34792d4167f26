package infra

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// confAttr is one setting of a Consul agent's configuration (HCL or JSON),
// flattened: Path joins the keys of the blocks and objects that hold it
// with "." (tls.defaults.verify_incoming), block labels included
// (service "web" { … } is service.web). The objects of a list add nothing
// to the path (services = [{ name = … }] gives services.name).
type confAttr struct {
	Path  string
	Value string // a string's content; a number, bool or identifier as written
	Str   bool   // Value is a string's content
	Line  int    // 1-based line in the text parsed (0 for JSON)
}

// String is the setting as written: path = value.
func (a confAttr) String() string {
	if a.Str {
		return a.Path + " = " + strconv.Quote(a.Value)
	}
	return a.Path + " = " + a.Value
}

// parseHCL flattens the HCL of a Consul configuration (a file, or the value
// of an -hcl flag) into its scalar settings, in the order written.
//
// It is a reader of the HCL Consul's configurations are written in, not
// Consul's parser: attributes (key = value), blocks with or without labels
// (key "label" { … }), objects ({ … }), lists ([ … ]), quoted strings with
// escapes, heredocs (<<EOF), numbers, bools and identifiers, and #, // and
// /* */ comments. It evaluates nothing: a string's ${…} stays as written,
// and the arithmetic and functions of HCL2 are not understood (Consul's
// configuration language is HCL1, which has neither). It reports what it
// cannot read rather than guess, so that a setting it would miss is a
// problem instead of a silent pass.
func parseHCL(src string) ([]confAttr, error) {
	toks, err := lexHCL(src)
	if err != nil {
		return nil, err
	}
	p := &hclParser{toks: toks}
	if err := p.body("", tokEOF, 0); err != nil {
		return nil, err
	}
	return p.out, nil
}

// hclError is a reason why a text does not parse, at a line of it (so that
// the caller can say where that is in the file that holds the text).
type hclError struct {
	Line int
	Msg  string
}

func (e *hclError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

func errAt(line int, format string, a ...any) error {
	return &hclError{Line: line, Msg: fmt.Sprintf(format, a...)}
}

type tokKind int

const (
	tokEOF    tokKind = iota
	tokWord           // identifier, number, bool
	tokString         // quoted string or heredoc (unquoted content)
	tokPunct          // { } [ ] = ,
)

type hclToken struct {
	kind tokKind
	text string
	line int
}

func (t hclToken) String() string {
	switch t.kind {
	case tokEOF:
		return "end of input"
	case tokString:
		return strconv.Quote(t.text)
	}
	return fmt.Sprintf("%q", t.text)
}

func lexHCL(src string) ([]hclToken, error) {
	var toks []hclToken
	line := 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#' || (c == '/' && i+1 < len(src) && src[i+1] == '/'):
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(src) && src[i+1] == '*':
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, errAt(line, "unterminated /* comment")
			}
			line += strings.Count(src[i:i+2+end+2], "\n")
			i += 2 + end + 2
		case strings.ContainsRune("{}[]=,", rune(c)):
			toks = append(toks, hclToken{tokPunct, string(c), line})
			i++
		case c == '"':
			start := line
			var b strings.Builder
			j := i + 1
			for ; j < len(src) && src[j] != '"'; j++ {
				switch src[j] {
				case '\n':
					return nil, errAt(start, "unterminated string")
				case '\\':
					if j+1 >= len(src) {
						return nil, errAt(start, "unterminated string")
					}
					j++
					switch e := src[j]; e {
					case 'n':
						b.WriteByte('\n')
					case 't':
						b.WriteByte('\t')
					case 'r':
						b.WriteByte('\r')
					default: // \" \\ and the rest: the character itself
						b.WriteByte(e)
					}
				default:
					b.WriteByte(src[j])
				}
			}
			if j >= len(src) {
				return nil, errAt(start, "unterminated string")
			}
			toks = append(toks, hclToken{tokString, b.String(), start})
			i = j + 1
		case c == '<' && strings.HasPrefix(src[i:], "<<"):
			// <<EOF or <<-EOF … EOF on a line of its own.
			nl := strings.IndexByte(src[i:], '\n')
			if nl < 0 {
				return nil, errAt(line, "heredoc without a body")
			}
			marker := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(src[i:i+nl], "<<"), "-"))
			if marker == "" {
				return nil, errAt(line, "heredoc without a marker")
			}
			start := line
			line++ // the newline after the marker
			rest := src[i+nl+1:]
			var body []string
			found := false
			consumed := i + nl + 1
			for _, l := range strings.SplitAfter(rest, "\n") {
				consumed += len(l)
				if strings.HasSuffix(l, "\n") {
					line++
				}
				if strings.TrimSpace(l) == marker {
					found = true
					break
				}
				body = append(body, l)
			}
			if !found {
				return nil, errAt(start, "heredoc %s is not closed", marker)
			}
			toks = append(toks, hclToken{tokString, strings.Join(body, ""), start})
			i = consumed
		case isWordByte(c):
			j := i
			for j < len(src) && isWordByte(src[j]) {
				j++
			}
			toks = append(toks, hclToken{tokWord, src[i:j], line})
			i = j
		default:
			return nil, errAt(line, "unexpected %q", c)
		}
	}
	return append(toks, hclToken{tokEOF, "", line}), nil
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_-.+", c) >= 0
}

type hclParser struct {
	toks []hclToken
	pos  int
	out  []confAttr
}

func (p *hclParser) peek() hclToken { return p.toks[p.pos] }
func (p *hclParser) next() hclToken {
	t := p.toks[p.pos]
	if t.kind != tokEOF {
		p.pos++
	}
	return t
}

func (p *hclParser) isPunct(s string) bool {
	t := p.peek()
	return t.kind == tokPunct && t.text == s
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// body reads items up to end (a closing brace, or the end of input); open
// is the line of the opening brace.
func (p *hclParser) body(prefix string, end tokKind, open int) error {
	for {
		t := p.peek()
		switch {
		case end == tokEOF && t.kind == tokEOF:
			return nil
		case end == tokPunct && p.isPunct("}"):
			p.next()
			return nil
		case t.kind == tokEOF:
			return errAt(open, "unclosed {")
		case p.isPunct(","):
			p.next() // objects may separate their items with commas
			continue
		case t.kind != tokWord && t.kind != tokString:
			return errAt(t.line, "want a key, got %s", t)
		}
		key := p.next()
		path := join(prefix, key.text)
		// Labels: key "a" "b" { … } is key = { a = { b = { … } } }.
		for p.peek().kind == tokString || (p.peek().kind == tokWord && !p.isPunct("=")) {
			path = join(path, p.next().text)
		}
		switch {
		case p.isPunct("="):
			p.next()
			if err := p.value(path); err != nil {
				return err
			}
		case p.isPunct("{"):
			if err := p.body(path, tokPunct, p.next().line); err != nil {
				return err
			}
		default:
			return errAt(key.line, "after %s want = or {, got %s", key, p.peek())
		}
	}
}

func (p *hclParser) value(path string) error {
	t := p.next()
	switch {
	case t.kind == tokWord || t.kind == tokString:
		p.out = append(p.out, confAttr{Path: path, Value: t.text, Str: t.kind == tokString, Line: t.line})
		return nil
	case t.kind == tokPunct && t.text == "{":
		return p.body(path, tokPunct, t.line)
	case t.kind == tokPunct && t.text == "[":
		for {
			if p.isPunct("]") {
				p.next()
				return nil
			}
			if p.peek().kind == tokEOF {
				return errAt(t.line, "unclosed [")
			}
			if err := p.value(path); err != nil {
				return err
			}
			if p.isPunct(",") {
				p.next()
			} else if !p.isPunct("]") {
				return errAt(p.peek().line, "in a list want , or ], got %s", p.peek())
			}
		}
	}
	return errAt(t.line, "want a value, got %s", t)
}

// parseConfJSON flattens a Consul configuration in JSON as parseHCL does
// HCL (without lines: encoding/json keeps none).
func parseConfJSON(b []byte) ([]confAttr, error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	var out []confAttr
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(join(path, k), x[k])
			}
		case []any:
			for _, e := range x {
				walk(path, e)
			}
		case string:
			out = append(out, confAttr{Path: path, Value: x, Str: true})
		case nil:
		default: // float64, bool
			out = append(out, confAttr{Path: path, Value: fmt.Sprint(x)})
		}
	}
	walk("", v)
	return out, nil
}

// canonical is a setting's current name: Consul still accepts older
// names for the settings the checks read, and a check of
// tls.defaults.verify_incoming must see a top-level verify_incoming too.
func canonical(path string) string {
	switch path {
	case "acl_default_policy":
		return "acl.default_policy"
	case "acl_master_token", "acl.tokens.master":
		return "acl.tokens.initial_management"
	case "acl_token":
		return "acl.tokens.default"
	case "acl_agent_token":
		return "acl.tokens.agent"
	case "acl_agent_master_token", "acl.tokens.agent_master":
		return "acl.tokens.agent_recovery"
	case "acl_replication_token":
		return "acl.tokens.replication"
	case "verify_incoming", "verify_outgoing", "ca_file", "ca_path", "cert_file", "key_file", "tls_min_version":
		return "tls.defaults." + path
	case "verify_incoming_rpc":
		return "tls.internal_rpc.verify_incoming"
	case "verify_incoming_https":
		return "tls.https.verify_incoming"
	case "verify_server_hostname":
		return "tls.internal_rpc.verify_server_hostname"
	}
	return path
}
