package service

import (
	"context"
	"errors"
	"testing"
	"time"
)

// runStopHook stops waiting for a hook that does not honour its context
// (a save stuck in an fsync) at the context's end, and returns what a
// hook that does return says.
func TestRunStopHook(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	stuck := make(chan struct{})
	defer close(stuck)
	start := time.Now()
	err := runStopHook(ctx, func(context.Context) error { <-stuck; return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a stuck hook: %v, want the context's deadline", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("waited %s for a stuck hook with a 200ms context", took)
	}
	want := errors.New("saved badly")
	if err := runStopHook(context.Background(), func(context.Context) error { return want }); !errors.Is(err, want) {
		t.Fatalf("a hook's own error: %v", err)
	}
}
