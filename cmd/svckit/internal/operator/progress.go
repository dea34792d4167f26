package operator

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress shows count and rate: a redrawn bar on a terminal, a plain line
// every second otherwise (logs, CI).
type progress struct {
	w        io.Writer
	tty      bool
	quiet    bool
	total    uint64
	n, bytes uint64
	start    time.Time
	last     time.Time
}

func newProgress(w io.Writer, total uint64, quiet bool) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	now := time.Now()
	return &progress{w: w, tty: tty, quiet: quiet, total: total, start: now, last: now}
}

func (p *progress) add(n uint64, bytes int) {
	p.n += n
	p.bytes += uint64(bytes)
	every := time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if now := time.Now(); now.Sub(p.last) >= every {
		p.last = now
		p.draw(false)
	}
}

func (p *progress) draw(final bool) {
	if p.quiet {
		return
	}
	el := time.Since(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.n) / el
	}
	if p.tty {
		bar := ""
		if p.total > 0 {
			const width = 30
			filled := int(float64(width) * float64(min(p.n, p.total)) / float64(p.total))
			bar = "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "] "
		}
		fmt.Fprintf(p.w, "\r%s%d/%s msgs  %.0f msg/s  %.1f MB", bar, p.n, totalStr(p.total), rate, float64(p.bytes)/1e6)
		if final {
			fmt.Fprintln(p.w)
		}
		return
	}
	fmt.Fprintf(p.w, "replay: %d/%s messages, %.0f msg/s, %.1f MB\n", p.n, totalStr(p.total), rate, float64(p.bytes)/1e6)
}

func totalStr(t uint64) string {
	if t == 0 {
		return "?"
	}
	return fmt.Sprint(t)
}

func (p *progress) done() { p.draw(true) }
