package config

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// setting is one tagged field found by walk.
type setting struct {
	name, usage, min, file string
	env                    []string
	v                      reflect.Value // the field, settable when walked from a pointer
}

// walk calls f for each setting of the struct v points to (or is).
func walk(v reflect.Value, f func(setting) error) error {
	if !v.IsValid() {
		return fmt.Errorf("settings: nil, not a struct")
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return fmt.Errorf("settings: a nil %s", v.Type())
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return fmt.Errorf("settings: %s is not a struct", v.Type())
	}
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := sf.Tag.Lookup("flag")
		if !ok {
			if sf.Type.Kind() == reflect.Struct && sf.Type != reflect.TypeFor[time.Time]() && sf.IsExported() {
				if err := walk(v.Field(i), f); err != nil {
					return err
				}
			}
			continue
		}
		if !sf.IsExported() {
			return fmt.Errorf("setting --%s: field %s is not exported", name, sf.Name)
		}
		s := setting{name: name, usage: sf.Tag.Get("usage"), min: sf.Tag.Get("min"), file: sf.Tag.Get("file"), v: v.Field(i)}
		s.env = Env(name)
		if e := sf.Tag.Get("env"); e != "" {
			s.env = strings.Split(e, ",")
		}
		if err := f(s); err != nil {
			return err
		}
	}
	return nil
}

// A setting is declared once, as a field of a settings struct (Config, or a
// service's own) with its flag in tags; its default is the field's value in
// the struct given to FlagsOf, and its environment variable follows from
// the flag's name:
//
//	MaxInFlight int `flag:"nsq-max-in-flight" min:"1" usage:"messages a consumer may hold un-finished"`
//
// Tags:
//
//	flag   the flag's name (a field without one is not a setting; a struct
//	       field without one is walked for settings of its own)
//	usage  the help text
//	env    the environment variable, when it is not SVCKIT_<FLAG> (Consul's
//	       own, CONSUL_HTTP_ADDR and the like, so that one environment
//	       configures both the consul CLI and every service)
//	min    the smallest valid value (Validate reports a smaller one by its
//	       flag); for a duration, as time.ParseDuration reads it
//	file   a string setting that may come from a file instead: a second
//	       flag <flag>-file with this help text (a mounted secret stays out
//	       of the process list and the environment)
//
// Field types: string, bool, int, int64, uint64, float64, time.Duration and
// []string.
//
// FlagsOf returns the flags of the settings in defaults (a struct or a
// pointer to one), each with its field's value as its default. A field
// of a type not listed above, or a tagged field that is not exported, is
// a mistake in the program: FlagsOf panics on it.
func FlagsOf(defaults any) []cli.Flag {
	var flags []cli.Flag
	err := walk(reflect.ValueOf(defaults), func(s setting) error {
		var f cli.Flag
		switch v := s.v.Interface().(type) {
		case string:
			f = &cli.StringFlag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case bool:
			f = &cli.BoolFlag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case int:
			f = &cli.IntFlag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case int64:
			f = &cli.Int64Flag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case uint64:
			f = &cli.Uint64Flag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case float64:
			f = &cli.Float64Flag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case time.Duration:
			f = &cli.DurationFlag{Name: s.name, Value: v, Usage: s.usage, EnvVars: s.env}
		case []string:
			f = &cli.StringSliceFlag{Name: s.name, Usage: s.usage, EnvVars: s.env}
			if len(v) > 0 {
				f.(*cli.StringSliceFlag).Value = cli.NewStringSlice(v...)
			}
		default:
			return fmt.Errorf("setting --%s: unsupported type %s", s.name, s.v.Type())
		}
		flags = append(flags, f)
		if s.file != "" {
			flags = append(flags, &cli.StringFlag{Name: s.name + "-file", Usage: s.file, EnvVars: Env(s.name + "-file")})
		}
		return nil
	})
	if err != nil {
		// A settings struct with a field FlagsOf cannot make a flag of is
		// a mistake in the program, not in its input.
		panic(err)
	}
	return flags
}

// Load sets the settings of the struct dst points to from the parsed
// command line, whose flags must include FlagsOf's for dst's type: a
// setting given neither as a flag nor in the environment gets the flag's
// default. A setting with a file tag is read from <flag>-file when that is
// given. A setting without its flag is an error, not a silent zero.
func Load(c *cli.Context, dst any) error {
	v := reflect.ValueOf(dst)
	if !v.IsValid() || v.Kind() != reflect.Pointer || v.IsNil() {
		return fmt.Errorf("settings: Load needs a non-nil pointer to a struct, not %T", dst)
	}
	defined := map[string]bool{}
	for _, ctx := range c.Lineage() {
		var flags []cli.Flag
		if ctx.Command != nil {
			flags = append(flags, ctx.Command.Flags...)
		}
		if ctx.App != nil {
			flags = append(flags, ctx.App.Flags...)
		}
		for _, f := range flags {
			for _, n := range f.Names() {
				defined[n] = true
			}
		}
	}
	return walk(v, func(s setting) error {
		if !defined[s.name] {
			return fmt.Errorf("setting --%s: no such flag (give the command config.FlagsOf of the settings it loads)", s.name)
		}
		switch s.v.Interface().(type) {
		case string:
			val := c.String(s.name)
			if s.file != "" {
				var err error
				if val, err = secretOrFile(s.name, val, c.String(s.name+"-file")); err != nil {
					return err
				}
			}
			s.v.SetString(val)
		case bool:
			s.v.SetBool(c.Bool(s.name))
		case int:
			s.v.SetInt(int64(c.Int(s.name)))
		case int64:
			s.v.SetInt(c.Int64(s.name))
		case uint64:
			s.v.SetUint(c.Uint64(s.name))
		case float64:
			s.v.SetFloat(c.Float64(s.name))
		case time.Duration:
			s.v.SetInt(int64(c.Duration(s.name)))
		case []string:
			s.v.Set(reflect.ValueOf(c.StringSlice(s.name)))
		}
		return nil
	})
}

// CheckMin reports the first setting of the struct v points to (or is)
// below its min tag, naming its flag.
func CheckMin(v any) error {
	return walk(reflect.ValueOf(v), func(s setting) error {
		if s.min == "" {
			return nil
		}
		switch x := s.v.Interface().(type) {
		case time.Duration:
			m, err := time.ParseDuration(s.min)
			if err != nil {
				return fmt.Errorf("setting --%s: min %q: %w", s.name, s.min, err)
			}
			if x < m {
				switch m {
				case time.Nanosecond:
					return fmt.Errorf("--%s %s: must be positive", s.name, x)
				case 0:
					return fmt.Errorf("--%s %s: must not be negative", s.name, x)
				}
				return fmt.Errorf("--%s %s: must be at least %s", s.name, x, m)
			}
		case int, int64:
			m, err := strconv.ParseInt(s.min, 0, 64)
			if err != nil {
				return fmt.Errorf("setting --%s: min %q: %w", s.name, s.min, err)
			}
			if s.v.Int() < m {
				return fmt.Errorf("--%s %d: must be at least %d", s.name, s.v.Int(), m)
			}
		case uint64:
			m, err := strconv.ParseUint(s.min, 0, 64)
			if err != nil {
				return fmt.Errorf("setting --%s: min %q: %w", s.name, s.min, err)
			}
			if x < m {
				return fmt.Errorf("--%s %d: must be at least %d", s.name, x, m)
			}
		case float64:
			m, err := strconv.ParseFloat(s.min, 64)
			if err != nil {
				return fmt.Errorf("setting --%s: min %q: %w", s.name, s.min, err)
			}
			if x < m {
				return fmt.Errorf("--%s %g: must be at least %g", s.name, x, m)
			}
		default:
			return errors.New("setting --" + s.name + ": min on a " + s.v.Type().String())
		}
		return nil
	})
}
