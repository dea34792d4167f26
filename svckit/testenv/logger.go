package testenv

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// SyncBuffer is a bytes.Buffer safe for concurrent writers (logs, a CLI's output).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Logger returns an info-level slog logger whose output (its last 16 KiB) is
// printed only if the test failed.
func Logger(t testing.TB) *slog.Logger {
	t.Helper()
	buf := &SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			out := buf.String()
			if len(out) > 16<<10 {
				out = "…" + out[len(out)-16<<10:]
			}
			t.Logf("svckit log:\n%s", out)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
