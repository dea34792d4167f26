// Package logging builds the log/slog logger every svckit service uses and
// adapts go-nsq's logger interface onto it.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// Options selects the output format and level. The zero value is text at
// level info.
type Options struct {
	Format string // "text" (default) or "json"
	Level  string // "debug", "info" (default), "warn", "error"
}

// ParseLevel maps a level name onto slog.Level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// New returns a logger writing to w.
func New(w io.Writer, o Options) (*slog.Logger, error) {
	lvl := slog.LevelInfo
	if o.Level != "" {
		var err error
		if lvl, err = ParseLevel(o.Level); err != nil {
			return nil, err
		}
	}
	ho := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(o.Format) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", o.Format)
	}
}

// Discard is a logger that drops everything (tests, benchmarks).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// NSQLogger adapts a slog.Logger to go-nsq's Output(calldepth, s) interface.
// go-nsq prefixes each line with its own level ("INF", "WRN", "ERR", "DBG");
// the adapter maps it back onto slog levels so filtering works as configured.
type NSQLogger struct{ L *slog.Logger }

// Output implements go-nsq's logger interface.
func (n NSQLogger) Output(_ int, s string) error {
	lvl := slog.LevelInfo
	switch {
	case strings.HasPrefix(s, "DBG"):
		lvl = slog.LevelDebug
	case strings.HasPrefix(s, "WRN"):
		lvl = slog.LevelWarn
	case strings.HasPrefix(s, "ERR"):
		lvl = slog.LevelError
	}
	if len(s) > 4 {
		s = strings.TrimSpace(s[3:])
	}
	if lvl > slog.LevelDebug && strings.Contains(s, "TOPIC_NOT_FOUND") {
		// nsqlookupd does not know the topic until a producer created it:
		// normal for a consumer that starts first, not an error.
		lvl = slog.LevelDebug
	}
	n.L.Log(context.Background(), lvl, s, "component", "go-nsq")
	return nil
}

// NSQLevel is the go-nsq level matching the logger's enabled level, so go-nsq
// does not format lines that would be dropped anyway.
func NSQLevel(l *slog.Logger) nsq.LogLevel {
	switch {
	case l.Enabled(context.Background(), slog.LevelDebug):
		return nsq.LogLevelDebug
	case l.Enabled(context.Background(), slog.LevelInfo):
		return nsq.LogLevelInfo
	case l.Enabled(context.Background(), slog.LevelWarn):
		return nsq.LogLevelWarning
	default:
		return nsq.LogLevelError
	}
}
