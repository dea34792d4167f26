package infra

import (
	"fmt"
	"strings"
)

// Lookup returns an environment variable's value and whether it is set
// (os.LookupEnv has this shape).
type Lookup func(name string) (string, bool)

// NoEnv is a Lookup in which no variable is set: every ${VAR:-default}
// takes its default, as on a machine with nothing exported.
func NoEnv(string) (string, bool) { return "", false }

// interpolate substitutes variables the way docker-compose does in values of
// a compose file: $VAR, ${VAR}, ${VAR:-default} (default when unset or
// empty), ${VAR-default} (default when unset), ${VAR:?message} and
// ${VAR?message} (an error when unset [or empty]), and $$ for a literal $.
// An unset variable without a default becomes "" (compose warns about it;
// the warning is returned in unset).
func interpolate(s string, env Lookup) (out string, unset []string, err error) {
	if !strings.Contains(s, "$") {
		return s, nil, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' {
			b.WriteByte(c)
			i++
			continue
		}
		if i+1 >= len(s) {
			return "", nil, fmt.Errorf("invalid interpolation %q: a lone $ at the end (write $$ for a literal $)", s)
		}
		switch n := s[i+1]; {
		case n == '$':
			b.WriteByte('$')
			i += 2
		case n == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", nil, fmt.Errorf("invalid interpolation %q: ${ without }", s)
			}
			expr := s[i+2 : i+2+end]
			v, u, err := expand(expr, env)
			if err != nil {
				return "", nil, fmt.Errorf("invalid interpolation %q: %w", s, err)
			}
			if u != "" {
				unset = append(unset, u)
			}
			b.WriteString(v)
			i += 2 + end + 1
		case isNameStart(n):
			j := i + 1
			for j < len(s) && isNameChar(s[j]) {
				j++
			}
			name := s[i+1 : j]
			v, ok := env(name)
			if !ok {
				unset = append(unset, name)
			}
			b.WriteString(v)
			i = j
		default:
			return "", nil, fmt.Errorf("invalid interpolation %q: $ must be followed by a name, { or $", s)
		}
	}
	return b.String(), unset, nil
}

// expand evaluates the inside of ${…}.
func expand(expr string, env Lookup) (value, unset string, err error) {
	j := 0
	for j < len(expr) && isNameChar(expr[j]) {
		j++
	}
	name, rest := expr[:j], expr[j:]
	if name == "" || !isNameStart(name[0]) {
		return "", "", fmt.Errorf("${%s}: not a variable name", expr)
	}
	v, ok := env(name)
	switch {
	case rest == "":
		if !ok {
			return "", name, nil
		}
		return v, "", nil
	case strings.HasPrefix(rest, ":-"):
		if !ok || v == "" {
			return rest[2:], "", nil
		}
		return v, "", nil
	case strings.HasPrefix(rest, "-"):
		if !ok {
			return rest[1:], "", nil
		}
		return v, "", nil
	case strings.HasPrefix(rest, ":?"):
		if !ok || v == "" {
			return "", "", fmt.Errorf("%s is required: %s", name, rest[2:])
		}
		return v, "", nil
	case strings.HasPrefix(rest, "?"):
		if !ok {
			return "", "", fmt.Errorf("%s is required: %s", name, rest[1:])
		}
		return v, "", nil
	}
	return "", "", fmt.Errorf("${%s}: unsupported modifier %q", expr, rest)
}

func isNameStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isNameChar(c byte) bool { return isNameStart(c) || (c >= '0' && c <= '9') }
